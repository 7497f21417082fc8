#!/usr/bin/env python
"""Convert a dataset to COCO JSON: ``python tools/convert.py voc BCCD --output bccd.json``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from vision_tasks.data.convert.cli import convert_main  # noqa: E402

if __name__ == "__main__":
    convert_main()
