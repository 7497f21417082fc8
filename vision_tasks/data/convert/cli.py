"""Convert a dataset layout to COCO JSON (or COCO back to YOLO).

``vision-tasks convert`` and ``python tools/convert.py`` (same options) run
:func:`convert_main`; the converters are the sibling modules (:mod:`vision_tasks.data.convert`).

Examples:
    vision-tasks convert market1501 Market-1501-v15.09.15 --split train --output train.json
    vision-tasks convert voc BCCD --split trainval --output bccd_trainval.json
    vision-tasks convert yolo coco8 --split train --names coco8/data.yaml --output train.json
    vision-tasks convert imagefolder flowers/train --output flowers_train.json
    vision-tasks convert mot MOT17-02 --chunks 3 --output mot17_02.json
    vision-tasks convert mot TUD-Campus.mp4 --gt TUD-Campus_gt.txt --output campus.json
    vision-tasks convert coco2yolo train.json --images train --split train --output yolo
    vision-tasks convert coco2yolo val.json --images val --split val --output yolo
Each prints one summary line (what was converted, marked and dropped) and the folder to pass as
--data.*_images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vision_tasks.data.coco import CocoDataError
from vision_tasks.data.convert import (
    coco_to_yolo,
    convert_dataset,
    default_frames_dir,
    describe_data_yaml,
    summarise,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    layouts = parser.add_subparsers(dest="layout", required=True)

    def layout(name: str, help: str, source: str) -> argparse.ArgumentParser:
        sub = layouts.add_parser(name, help=help)
        sub.add_argument("source", type=Path, help=source)
        sub.add_argument("--output", type=Path, required=True, help="COCO JSON file to write")
        return sub

    market = layout("market1501", "Market-1501 person re-ID crops", "the Market-1501 folder")
    splits = "train: bounding_box_train; test: query + bounding_box_test"
    market.add_argument("--split", choices=["train", "test"], default="train", help=splits)
    voc = layout("voc", "Pascal VOC XML boxes", "the VOC folder (Annotations/, JPEGImages/)")
    voc.add_argument("--split", help="read ImageSets/Main/SPLIT.txt (default: every XML)")
    voc.add_argument("--classes", help="class names in id order, comma-separated (default: sorted)")
    voc.add_argument(
        "--difficult",
        choices=["keep", "ignore", "drop"],
        default="keep",
        help="keep (difficult: 1), ignore (iscrowd: 1) or drop difficult objects",
    )
    yolo = layout("yolo", "YOLO / Ultralytics labels", "the folder holding images/ and labels/")
    yolo.add_argument("--names", type=Path, required=True, help="data.yaml or one name per line")
    yolo.add_argument("--split", help="read images/SPLIT and labels/SPLIT")
    layout("imagefolder", "ImageFolder classification", "the folder of class folders")
    mot = layout("mot", "MOTChallenge ground truth", "a sequence folder or a video file")
    mot.add_argument("--gt", type=Path, help="gt file (default: SOURCE/gt/gt.txt)")
    mot.add_argument("--frames", type=Path, help="frames folder (video default: OUTPUT_frames/)")
    mot.add_argument("--chunks", type=int, default=1, help="time segments, one camera_id each")
    mot.add_argument(
        "--min-visibility",
        type=float,
        default=0.0,
        help="pedestrians less visible than this become iscrowd 1",
    )
    back = layouts.add_parser("coco2yolo", help="COCO JSON -> YOLO labels, images, data.yaml")
    back.add_argument("source", type=Path, help="the COCO JSON file")
    back.add_argument("--images", type=Path, required=True, help="its image folder")
    back.add_argument("--output", type=Path, required=True, help="YOLO folder to write")
    back.add_argument("--segments", action="store_true", help="write polygons instead of boxes")
    back.add_argument("--copy-images", action="store_true", help="copy images (default: links)")
    back.add_argument(
        "--split",
        help="the split this file is (train, val, ...): images/SPLIT, labels/SPLIT and its "
        "data.yaml entry, other splits already there kept (default: a flat folder that "
        "data.yaml names as both train and val)",
    )
    back.add_argument(
        "--policy",
        choices=["strict", "skip"],
        default="strict",
        help="bad COCO records: refuse (strict) or drop them (skip)",
    )
    return parser


def _options(args: argparse.Namespace) -> dict:
    """The converter's keyword arguments from the parsed layout options."""
    options = {k: v for k, v in vars(args).items() if k not in ("layout", "source", "output")}
    if options.get("classes") is not None:
        options["classes"] = [name.strip() for name in options["classes"].split(",")]
    if args.layout == "mot" and args.frames is None and args.source.is_file():
        options["frames"] = default_frames_dir(args.output)
    return options


def convert_main(argv: list[str] | None = None) -> Path:
    """Parse ``LAYOUT SOURCE --output FILE [layout options]``, convert, print the summary."""
    args = _parser().parse_args(argv)
    options = {} if args.layout == "coco2yolo" else _options(args)
    try:
        if args.layout == "coco2yolo":
            summary = coco_to_yolo(
                args.source,
                args.images,
                args.output,
                args.segments,
                args.copy_images,
                args.policy,
                args.split,
            )
            print(f"{summary}\nwrote {args.output}: data.yaml, labels/, images/")
            print(describe_data_yaml(args.output))
            return args.output
        dataset = convert_dataset(args.layout, args.source, args.output, options)
    except CocoDataError as error:
        raise SystemExit(f"error: {error}") from None
    print(summarise(args.layout, dataset))
    print(f"wrote {args.output}; pass --data.*_images {options.get('frames') or args.source}")
    return args.output
