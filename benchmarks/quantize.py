#!/usr/bin/env python
"""A detector in torch, ONNX Runtime float32 and ONNX Runtime int8: batch-1 latency and COCO AP.

For one ``detect`` checkpoint and a COCO val split: the float32 export (checked against torch)
and the int8 one (``tools/export.py --int8``: static, QDQ, per-channel, calibrated on the
checkpoint's training images unless ``--calibration`` names others) are written to ``--work``.
Latency: the network alone (``model(image)`` / the ONNX graph; the decode is shared), one
thread, batch 1, on the first val image as predict preprocesses it; the engines take turns,
``--warmup`` rounds then ``--repeats`` timed ones, median reported. AP: ``tools/predict.py
--coco`` with each engine, scored by the project's ``coco_evaluate`` (pycocotools). Writes
``benchmarks/quantize.json`` and prints a markdown table.

    python benchmarks/quantize.py --ckpt CKPT --val-json VAL.json --val-images DIR
    python benchmarks/quantize.py ... --limit 5 --repeats 5 --output /tmp/q.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing

from vision_tasks.benchmark import environment  # noqa: E402
from vision_tasks.checkpoint import load_task_checkpoint, read_checkpoint  # noqa: E402
from vision_tasks.cli import predict_main  # noqa: E402
from vision_tasks.data.coco import CocoIndex  # noqa: E402
from vision_tasks.evaluation.coco_eval import coco_evaluate  # noqa: E402
from vision_tasks.export import OnnxRunner, export_onnx  # noqa: E402
from vision_tasks.export.engine import DEFAULT_OPSET, checkpoint_source  # noqa: E402
from vision_tasks.export.quantize import calibration_images, quantize_int8  # noqa: E402
from vision_tasks.utils import atomic_write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "quantize.json"


def build_parser() -> argparse.ArgumentParser:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, type=Path, help="a detect checkpoint")
    parser.add_argument("--val-json", required=True, type=Path)
    parser.add_argument("--val-images", required=True, type=Path)
    parser.add_argument("--calibration", type=Path, help="images folder or COCO JSON")
    parser.add_argument("--calibration-root", type=Path)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--limit", type=int, help="score the first N val images only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "quantize")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser


def build_graphs(args: argparse.Namespace, model: Any) -> tuple[dict[str, Path], dict[str, Any]]:
    """The float32 and int8 ONNX files of the checkpoint, and how they were made."""
    source = checkpoint_source(args.ckpt, model, DEFAULT_OPSET)
    work = args.work / args.ckpt.stem
    start = time.perf_counter()
    fp32 = export_onnx(model, work / "fp32.onnx", DEFAULT_OPSET, source)
    exported = time.perf_counter() - start
    data = read_checkpoint(args.ckpt, mmap=True).get("datamodule_hyper_parameters", {})
    images, described = calibration_images(
        data, args.calibration, args.calibration_root, args.calibration_images
    )
    start = time.perf_counter()
    int8 = quantize_int8(model, work / "int8.onnx", images, DEFAULT_OPSET, source, described)
    made = {
        "export_s": exported,
        "quantize_s": time.perf_counter() - start,
        "calibration": described,
        "fp32_check": OnnxRunner(fp32).meta["check"],
    }
    return {"onnx fp32": fp32, "onnx int8": int8}, made


def latencies(
    model: Any, graphs: dict[str, Path], image: torch.Tensor, args: argparse.Namespace
) -> dict[str, list[float]]:
    """Batch-1 network times (ms) per engine, the engines taking turns round by round."""
    torch.set_num_threads(args.threads)
    model = model.to(memory_format=torch.channels_last)  # as predict runs torch
    torch_input = image[None].contiguous(memory_format=torch.channels_last)
    runners = {name: OnnxRunner(path, threads=args.threads) for name, path in graphs.items()}
    calls = {"torch": lambda: model(torch_input)} | {
        name: (lambda r=runner: r(image[None])) for name, runner in runners.items()
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for round_ in range(args.warmup + args.repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                if round_ >= args.warmup:
                    times[name].append(1000 * (time.perf_counter() - start))
    return times


def average_precision(args: argparse.Namespace, val_json: Path, engine: str, onnx: Path | None):
    """COCO bbox stats of ``tools/predict.py --coco`` run with one engine."""
    out = args.work / args.ckpt.stem / engine.replace(" ", "_")
    options = ["--engine", "torch"] if onnx is None else ["--onnx", str(onnx)]
    common = ["--coco", str(val_json), "--images", str(args.val_images), "--ckpt", str(args.ckpt)]
    predict_main([*common, "--output", str(out), *options])
    records = json.loads((out / "results.json").read_text())
    return coco_evaluate(CocoIndex(val_json, args.val_images), records, "bbox").stats


def _val_subset(args: argparse.Namespace) -> Path:
    """The val JSON, or a copy holding its first ``--limit`` images and their annotations."""
    if args.limit is None:
        return args.val_json
    dataset = json.loads(args.val_json.read_text())
    dataset["images"] = dataset["images"][: args.limit]
    kept = {image["id"] for image in dataset["images"]}
    dataset["annotations"] = [a for a in dataset["annotations"] if a["image_id"] in kept]
    return atomic_write_json(args.work / args.ckpt.stem / "val_subset.json", dataset)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison, write the JSON, print the table."""
    import onnxruntime

    args = build_parser().parse_args(argv)
    model = load_task_checkpoint(args.ckpt, "detect")
    torch.set_num_threads(args.threads)
    graphs, made = build_graphs(args, model)
    val_json = _val_subset(args)
    index = CocoIndex(val_json, args.val_images)
    first = model.predict_sample(index.load_image(index.image_ids[0]))["image"]
    times = latencies(model, graphs, first, args)
    rows = []
    for engine, path in {"torch": None, **graphs}.items():
        stats = average_precision(args, val_json, engine, path)
        rows.append(
            {
                "engine": engine,
                "latency_ms_median": statistics.median(times[engine]),
                "latency_ms_min": min(times[engine]),
                "AP": stats["AP"],
                "AP50": stats["AP50"],
                "file_mb": None if path is None else path.stat().st_size / 2**20,
            }
        )
    summary = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment() | {"onnxruntime": onnxruntime.__version__},
        "checkpoint": str(args.ckpt),
        "val_json": str(args.val_json),
        "val_images_scored": len(index.image_ids),
        "input": list(first.shape),
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        **made,
        "rows": rows,
    }
    atomic_write_json(args.output, summary)
    print(table(summary))
    print(f"-> {args.output}")
    return summary


def table(summary: dict[str, Any]) -> str:
    """The rows as a markdown table."""
    lines = [
        f"| engine | batch-1 ms ({summary['threads']} thread, median of {summary['repeats']}) "
        f"| AP | AP50 | file MB |",
        "|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        size = "-" if row["file_mb"] is None else f"{row['file_mb']:.1f}"
        lines.append(
            f"| {row['engine']} | {row['latency_ms_median']:.1f} | {row['AP']:.3f} "
            f"| {row['AP50']:.3f} | {size} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
