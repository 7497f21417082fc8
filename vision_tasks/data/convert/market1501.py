"""Market-1501 person re-ID crops -> COCO (identity in ``track_id``, camera, split)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from vision_tasks.data.coco import CocoDataError
from vision_tasks.data.convert.common import (
    _image_size,
)

# 0002_c1s1_000451_03.jpg: identity 0002, camera 1, sequence 1, frame 451, box 3 of the frame.
MARKET1501_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d+)_(\d+)\.jpg$")
MARKET1501_FOLDERS = {"train": ("bounding_box_train",), "test": ("query", "bounding_box_test")}
_SPLIT_OF_FOLDER = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}


def market1501_to_coco(root: str | Path, split: Literal["train", "test"] = "train") -> dict:
    """Market-1501 (Zheng et al. 2015) crops -> COCO: one image and one full-image box per crop.

    The identity goes to the annotation's ``track_id``, the camera to the image's ``camera_id``,
    the folder to the image's ``split`` (``train``, or ``query`` / ``gallery`` for ``test``).
    Identities as Market-1501 defines them: ``-1`` (junk) stays -1, which the re-ID task reads as
    "no identity" and leaves out, just as the protocol drops junk from the ranking; ``0000``
    (distractors) stays 0, a gallery-only identity that no query matches.

    Args:
        root: the Market-1501 folder (holding ``bounding_box_train``, ``query``, ...).
        split: ``train`` (bounding_box_train) or ``test`` (query + bounding_box_test).

    Raises:
        CocoDataError: a folder is missing or empty, or a file name breaks the naming scheme.
    """
    root = Path(root)
    images, annotations, bad = [], [], []
    for folder in MARKET1501_FOLDERS[split]:
        if not (root / folder).is_dir():
            raise CocoDataError(f"{root}: no folder '{folder}' (is this the Market-1501 root?)")
        for path in sorted((root / folder).glob("*.jpg")):
            match = MARKET1501_NAME.match(path.name)
            if match is None:
                bad.append(f"{folder}/{path.name}")
                continue
            identity, camera = int(match[1]), int(match[2])
            width, height = _image_size(path)
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{folder}/{path.name}",
                    "width": width,
                    "height": height,
                    "camera_id": camera,
                    "split": _SPLIT_OF_FOLDER[folder],
                }
            )
            annotations.append(
                {
                    "id": image_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [0, 0, width, height],
                    "area": float(width * height),
                    "iscrowd": 0,
                    "track_id": identity,
                }
            )
    if bad:
        listed = ", ".join(bad[:5]) + (f" ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise CocoDataError(f"{root}: file names not of the form 0002_c1s1_000451_03.jpg: {listed}")
    if not images:
        raise CocoDataError(f"{root}: no .jpg files in {', '.join(MARKET1501_FOLDERS[split])}")
    return {
        "info": {"description": f"Market-1501 {split} split, converted by vision_tasks"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
