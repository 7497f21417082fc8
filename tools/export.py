#!/usr/bin/env python
"""Export a checkpoint's network to ONNX and check it: ``python tools/export.py --ckpt PATH``;
its int8 graph, calibrated on training images: ``... --ckpt PATH --int8`` (``--help``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from vision_tasks.export import export_main  # noqa: E402

if __name__ == "__main__":
    export_main()
