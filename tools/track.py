#!/usr/bin/env python
"""Track objects: ``python tools/track.py --ckpt CKPT --source VIDEO|FOLDER --output DIR``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from vision_tasks.tracking.cli import track_main  # noqa: E402

if __name__ == "__main__":
    track_main()
