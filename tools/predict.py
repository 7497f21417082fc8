#!/usr/bin/env python
"""Predict on image files: ``python tools/predict.py --ckpt PATH IMAGES... [--output DIR]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from vision_tasks.cli import predict_main  # noqa: E402

if __name__ == "__main__":
    predict_main()
