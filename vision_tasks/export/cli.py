"""``tools/export.py`` / ``vision-tasks export``: write a checkpoint's ONNX graph and check it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from vision_tasks.checkpoint import load_task_checkpoint
from vision_tasks.export.engine import DEFAULT_OPSET, checkpoint_source
from vision_tasks.export.graph import OnnxRunner, compare, export_onnx


def export_main(argv: list[str] | None = None) -> dict[str, Any]:
    """``tools/export.py --ckpt PATH [--format onnx] [--output FILE]``: export and check."""
    parser = argparse.ArgumentParser(description=export_main.__doc__)
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--output", type=Path, help="default: the checkpoint with .onnx")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    args = parser.parse_args(argv)
    model = load_task_checkpoint(args.ckpt)
    if not getattr(model, "exportable", True):
        raise SystemExit(
            f"{model.task_name}: ONNX export is not supported (its inference "
            f"forward runs NMS and per-box heads on a data-dependent number of "
            f"boxes); predict with --engine torch"
        )
    source = checkpoint_source(args.ckpt, model, args.opset)
    path = export_onnx(model, args.output or args.ckpt.with_suffix(".onnx"), args.opset, source)
    check = compare(model, OnnxRunner(path, threads=torch.get_num_threads()))
    print(f"{model.task_name} -> {path}")
    print(
        f"  max |torch - onnxruntime| = {check['max_abs_diff']:.2e} (outputs up to "
        f"{check['max_abs_output']:.3g}, batch {check['batch_checked']})"
    )
    print(
        f"  batch-1 latency: torch {check['torch_b1_ms']:.1f} ms, onnxruntime "
        f"{check['onnxruntime_b1_ms']:.1f} ms"
    )
    return {"path": str(path), **check}
