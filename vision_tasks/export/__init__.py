"""ONNX: export a task's network (``graph``), choose the engine predict and track run with a
cached, checked export (``engine``), and the ``tools/export.py`` command line (``cli``)."""

from vision_tasks.export.cli import export_main
from vision_tasks.export.engine import ENGINES, OnnxUnavailable, cached_onnx, inference_network
from vision_tasks.export.graph import (
    OnnxRunner,
    check_against_torch,
    compare,
    example_input,
    export_bytes,
    export_onnx,
    flatten_outputs,
    max_abs_difference,
    unflatten_outputs,
)

__all__ = [
    "ENGINES",
    "OnnxRunner",
    "OnnxUnavailable",
    "cached_onnx",
    "check_against_torch",
    "compare",
    "example_input",
    "export_bytes",
    "export_main",
    "export_onnx",
    "flatten_outputs",
    "inference_network",
    "max_abs_difference",
    "unflatten_outputs",
]
