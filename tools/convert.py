#!/usr/bin/env python
"""Convert a dataset layout to COCO JSON.

Example:
    python tools/convert.py market1501 Market-1501-v15.09.15 --split train --output train.json
    python tools/convert.py market1501 Market-1501-v15.09.15 --split test --output test.json
    (then --data.train_images / --data.val_images Market-1501-v15.09.15)
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from vision_tasks.data.coco import CocoDataError  # noqa: E402
from vision_tasks.data.convert import convert  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    """Parse ``LAYOUT SOURCE --output FILE [layout options]`` and convert."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    layouts = parser.add_subparsers(dest="layout", required=True)
    market = layouts.add_parser("market1501", help="Market-1501 person re-ID crops")
    market.add_argument("source", type=Path, help="the Market-1501 folder")
    splits = "train: bounding_box_train; test: query + bounding_box_test"
    market.add_argument("--split", choices=["train", "test"], default="train", help=splits)
    market.add_argument("--output", type=Path, required=True, help="COCO JSON file to write")
    args = parser.parse_args(argv)
    try:
        path = convert(args.layout, args.source, args.output, {"split": args.split})
    except CocoDataError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{args.layout} {args.source} -> {path}")
    return path


if __name__ == "__main__":
    main()
