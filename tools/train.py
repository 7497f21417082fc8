#!/usr/bin/env python
"""Train a task: ``python tools/train.py --task detect [--data.train_json ...]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from vision_tasks.cli import train_main  # noqa: E402

if __name__ == "__main__":
    train_main()
