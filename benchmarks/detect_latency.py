#!/usr/bin/env python
"""Batch-1 latency of lighter detector configurations: the latency half of a latency / AP curve.

Each configuration (backbone, pyramid levels, neck width, input size) is built freshly
initialised (latency does not depend on the weights), exported to ONNX as ``tools/export.py``
does, and timed with the peers harness's timer (``benchmarks/peers/peerlib.latency``: one
thread, batch 1, median after warm-up, eager torch in channels-last and ONNX Runtime), so the
figures sit beside YOLOv8n's in ``benchmarks/peers.json``. Writes
``benchmarks/detect_latency.json`` and prints a table.

    python benchmarks/detect_latency.py                       # the default grid
    python benchmarks/detect_latency.py --sizes 256 320 --widths 32 64 --repeats 30
    python benchmarks/detect_latency.py --levels c3,c4,c5 c3,c4 --widths 32 --sizes 224 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))

from peerlib import latency  # noqa: E402

from vision_tasks.benchmark import environment  # noqa: E402
from vision_tasks.export import export_onnx  # noqa: E402
from vision_tasks.tasks.detect import DetectTask  # noqa: E402
from vision_tasks.utils import atomic_write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "detect_latency.json"
BCCD_CATEGORIES = [{"id": i, "name": n} for i, n in enumerate(["Platelets", "RBC", "WBC"], 1)]


def measure(
    backbone: str,
    levels: tuple[str, ...],
    width: int,
    size: int,
    threads: int,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """One configuration's parameters and batch-1 latency in torch and ONNX Runtime."""
    model = DetectTask(
        categories=BCCD_CATEGORIES,
        image_size=size,
        neck_width=width,
        levels=levels,
        backbone=backbone,
    ).eval()
    network = model.to(memory_format=torch.channels_last)
    network.peers_memory_format = torch.channels_last  # how predict feeds it
    with tempfile.TemporaryDirectory() as work:
        onnx = export_onnx(model, Path(work) / "model.onnx")
        timing = latency(network, onnx, size, threads, warmup, repeats)
    return {
        "backbone": backbone,
        "levels": list(levels),
        "neck_width": width,
        "image_size": size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_ms": timing["torch"]["median_ms"],
        "onnxruntime_ms": timing["onnxruntime"]["median_ms"],
        "threads": threads,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table row per configuration."""
    lines = [
        "| backbone | levels | neck width | input | parameters | torch ms | ONNX Runtime ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {'-'.join(r['levels'])} | {r['neck_width']} | "
            f"{r['image_size']} | "
            f"{r['parameters'] / 1e6:.1f} M | {r['torch_ms']:.1f} | {r['onnxruntime_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Time every (backbone, width, size) of the grid; write JSON; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18"])
    parser.add_argument(
        "--levels",
        nargs="+",
        default=["c3,c4,c5"],
        help="pyramid level sets, each comma-separated (e.g. c3,c4,c5 c3,c4)",
    )
    parser.add_argument("--widths", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 256, 320])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    grid = [
        (backbone, tuple(levels.split(",")), width, size)
        for backbone in args.backbones
        for levels in args.levels
        for width in args.widths
        for size in args.sizes
    ]
    for configuration in grid:
        rows.append(measure(*configuration, args.threads, args.warmup, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(args.output, {"environment": environment(), "rows": rows})
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
