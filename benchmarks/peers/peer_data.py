"""Data for ``benchmarks/peers.py``: one dataset in the formats both sides read, and the scoring
both sides share. Runs in the toolkit's environment (it uses the project's converters, label
maps and metrics); the peers only ever read the files written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT.parent / "shared" / "data" / "real"
MODEL_KEYS = ("lr", "weight_decay", "warmup_epochs", "min_lr_ratio")  # the optimiser recipe


@dataclass
class Data:
    """One dataset in both formats: COCO JSON (toolkit, scoring) and YOLO (Ultralytics)."""

    name: str
    train_json: Path
    train_images: Path
    val_json: Path
    val_images: Path
    image_size: int
    toolkit_args: list[str]
    yolo_yaml: Path | None = None
    commands: list[str] = field(default_factory=list)


def prepare(name: str, work: Path) -> Data:
    """The part's dataset as COCO JSON (and YOLO labels for detection) under ``work``."""
    from vision_tasks.data.convert import convert
    from vision_tasks.data.synthetic import synthetic_dataset

    if name == "bccd":
        bccd = REAL / "bccd" / "BCCD"
        if not bccd.is_dir():
            raise SystemExit(f"no BCCD at {bccd}: detect-bccd needs ../shared/data/real/bccd")
        splits = {
            s: convert("voc", bccd, work / f"bccd_{s}.json", {"split": s})
            for s in ("trainval", "test")
        }
        data = Data(
            name,
            splits["trainval"],
            bccd,
            splits["test"],
            bccd,
            320,
            ["--data.image_size", "320", "--data.colour_shift", "0"],  # as benchmarks/real_data.py
        )
        data.commands += [
            f"python tools/convert.py voc {bccd} --split {s} --output {work / f'bccd_{s}.json'}"
            for s in ("trainval", "test")
        ]
    else:
        paths = synthetic_dataset()  # the toolkit's default data, from its cache
        data = Data(
            name,
            paths.train_json,
            paths.train_images,
            paths.val_json,
            paths.val_images,
            320,  # the images' own 320x240
            ["--data.image_size", "320"],
        )
        data.commands.append("python tools/make_synthetic.py")
    return data


def to_yolo(data: Data, folder: Path) -> None:
    """Add YOLO labels and ``data.yaml`` (train / val splits) with the project's converter."""
    from vision_tasks.data.convert import coco_to_yolo

    for split, json_path, images in (
        ("train", data.train_json, data.train_images),
        ("val", data.val_json, data.val_images),
    ):
        coco_to_yolo(json_path, images, folder, split=split)
        data.commands.append(
            f"python tools/convert.py coco2yolo {json_path} --images {images} --split {split} "
            f"--output {folder}"
        )
    data.yolo_yaml = folder / "data.yaml"


def write_label_maps(json_path: Path, images: Path, folder: Path) -> list[list[str]]:
    """Each image's label map as a PNG (the toolkit's rasterisation): [[image, png], ...]."""
    import cv2

    from vision_tasks.data.coco import CocoIndex

    index = CocoIndex(json_path, images)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for image_id in index.image_ids:
        png = folder / f"{image_id}.png"
        cv2.imwrite(str(png), ground_truth(index, image_id))  # rewritten: never a stale map
        pairs.append([str(index.image_path(image_id)), str(png)])
    return pairs


def ground_truth(index: Any, image_id: int) -> Any:
    """The (H, W) uint8 label map of one image: 0 background, k + 1 category k, 255 unknown."""
    from vision_tasks.tasks.segment import semantic_label_map

    info = index.image_info(image_id)
    anns = index.annotations(image_id, include_crowd=True)
    return semantic_label_map(index.coco, anns, index.cat_to_index, info["height"], info["width"])


def score_boxes(data: Data, results: Path) -> dict[str, float]:
    """COCO box stats of a results file on the part's val JSON (pycocotools, both sides)."""
    from vision_tasks.data.coco import CocoIndex
    from vision_tasks.evaluation.coco_eval import coco_evaluate

    index = CocoIndex(data.val_json, data.val_images)
    return coco_evaluate(index, json.loads(results.read_text()), "bbox").stats


def score_label_maps(data: Data, folder: Path) -> dict[str, Any]:
    """mIoU and pixel accuracy of ``<stem>_label.png`` predictions (the toolkit's metric)."""
    import numpy as np
    import torch
    from PIL import Image

    from vision_tasks.data.coco import CocoIndex
    from vision_tasks.evaluation.metrics import SegmentationMetric

    index = CocoIndex(data.val_json, data.val_images)
    metric = SegmentationMetric(index.num_classes + 1)
    for image_id in index.image_ids:
        truth = torch.from_numpy(ground_truth(index, image_id)).long()
        png = folder / f"{index.image_path(image_id).stem}_label.png"
        predicted = torch.from_numpy(np.array(Image.open(png))).long()
        metric.update(predicted[None], truth[None])
    scores = metric.compute()
    return {
        "miou": float(scores["miou"]),
        "pixel_accuracy": float(scores["pixel_accuracy"]),
        "iou_per_class": [round(float(v), 4) for v in scores["iou"]],
    }


def segment_config() -> dict[str, Any]:
    """The toolkit's committed segment settings the U-Net loop copies (batch, LR, precision)."""
    import inspect

    import yaml

    from vision_tasks.configs import CONFIG_DIR
    from vision_tasks.tasks.segment import SegmentTask

    config = yaml.safe_load((CONFIG_DIR / "segment.yaml").read_text())
    shared = yaml.safe_load((CONFIG_DIR / "trainer.yaml").read_text())
    trainer = {**shared.get("trainer", {}), **config.get("trainer", {})}
    defaults = inspect.signature(SegmentTask.__init__).parameters
    model = {name: config["model"].get(name, defaults[name].default) for name in MODEL_KEYS}
    return {
        **model,
        "batch": config["data"]["batch_size"],
        "precision": str(trainer.get("precision", "32-true")),
    }
