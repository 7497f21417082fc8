"""Write the synthetic COCO dataset (the toolkit's embedded default) and print where it is.

Example:
    python tools/make_synthetic.py                       # into the cache, unless already there
    python tools/make_synthetic.py --out /tmp/synthetic  # into a folder of your choice
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vision_tasks.data.synthetic import generate, synthetic_dataset


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, generate the dataset (or find it cached) and print its paths."""
    parser = argparse.ArgumentParser(description="Write the synthetic COCO dataset.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=120)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--out", type=Path, help="write here (overwriting), not into the cache")
    parser.add_argument("--cache-dir", type=Path, help="default: vision_tasks' cache folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = {"seed": args.seed, "num_train": args.num_train, "num_val": args.num_val}
    sizes |= {"width": args.width, "height": args.height}
    if args.out is not None:
        paths = generate(args.out, **sizes)
    else:
        paths = synthetic_dataset(**sizes, cache_dir=args.cache_dir)
    for name in ("root", "train_json", "train_images", "val_json", "val_images"):
        print(f"{name}: {getattr(paths, name)}")


if __name__ == "__main__":
    main()
