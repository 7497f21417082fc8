#!/usr/bin/env python
"""Evaluate a checkpoint: ``python tools/evaluate.py --task NAME --ckpt PATH``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from vision_tasks.cli import evaluate_main  # noqa: E402

if __name__ == "__main__":
    evaluate_main()
