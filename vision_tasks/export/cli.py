"""``tools/export.py`` / ``vision-tasks export``: write a checkpoint's ONNX graph and check it.

    tools/export.py --ckpt CKPT                    # CKPT.onnx, float32, checked against torch
    tools/export.py --ckpt CKPT --int8             # CKPT.int8.onnx, calibrated on 64 training
        [--calibration IMAGES_DIR_OR_COCO_JSON [--calibration-root DIR]]   # images (or these)
        [--calibration-images N]

Predict and track run the int8 model with ``--onnx CKPT.int8.onnx``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from vision_tasks.checkpoint import load_task_checkpoint, read_checkpoint
from vision_tasks.console import user_errors
from vision_tasks.export.engine import DEFAULT_OPSET, checkpoint_source
from vision_tasks.export.graph import (
    OnnxRunner,
    compare,
    export_onnx,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/export.py``."""
    from vision_tasks.export.quantize import DEFAULT_CALIBRATION_IMAGES  # needs onnxruntime

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument(
        "--output", type=Path, help="default: the checkpoint with .onnx (.int8.onnx with --int8)"
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    int8 = parser.add_argument_group("int8 (post-training static quantization)")
    int8.add_argument("--int8", action="store_true", help="write the int8 graph instead")
    int8.add_argument(
        "--calibration",
        type=Path,
        help="a folder of images or a COCO JSON (default: the checkpoint's training images)",
    )
    int8.add_argument(
        "--calibration-root", type=Path, help="folder a --calibration JSON's file_names are in"
    )
    int8.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"how many, spread over the set (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    return parser


def export_main(argv: list[str] | None = None) -> dict[str, Any]:
    """``tools/export.py`` entry point (see the module docstring); returns what it measured."""
    args = build_parser().parse_args(argv)
    model = load_task_checkpoint(args.ckpt)
    if not getattr(model, "exportable", True):
        raise SystemExit(
            f"{model.task_name}: ONNX export is not supported (its inference "
            f"forward runs NMS and per-box heads on a data-dependent number of "
            f"boxes); predict with --engine torch"
        )
    source = checkpoint_source(args.ckpt, model, args.opset)
    if args.int8:
        with user_errors():
            return _export_int8(args, model, source)
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


def _export_int8(args: argparse.Namespace, model: Any, source: dict) -> dict[str, Any]:
    from vision_tasks.export.quantize import calibration_images, quantize_int8

    data = read_checkpoint(args.ckpt, mmap=True).get("datamodule_hyper_parameters", {})
    images, described = calibration_images(
        data, args.calibration, args.calibration_root, args.calibration_images
    )
    output = args.output or args.ckpt.with_suffix(".int8.onnx")
    path = quantize_int8(model, output, images, args.opset, source, described)
    print(f"{model.task_name} -> {path} (int8, calibrated on {described})")
    return {"path": str(path), "calibration": described}
