#!/usr/bin/env python
"""Speed, memory and learning quality: ``python tools/benchmark.py --task all [--quality]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from vision_tasks.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
