"""``CocoIndex``: a COCO annotation file loaded once, validated, and indexed by image.

Example:
    >>> index = CocoIndex("annotations/instances_val2017.json", "val2017")
    >>> image = index.load_image(index.image_ids[0])  # (H, W, 3) uint8 RGB
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vision_tasks.data.coco.errors import CocoDataError, _error, _fatal
from vision_tasks.data.coco.images import read_image
from vision_tasks.data.coco.validate import (
    POLICIES,
    Policy,
    _apply_policy,
    _clip_annotations,
    _top_level_issues,
    _validate,
)

# The name users configure (and tests capture): the package's, not this module's.
logger = logging.getLogger("vision_tasks.data.coco")


def _load_json(path: Path) -> Any:
    """Parse a JSON file, turning OS / JSON errors into a one-problem CocoDataError."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        msg = "file not found"
    except json.JSONDecodeError as exc:
        msg = f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    except UnicodeDecodeError as exc:
        msg = f"not UTF-8 text (byte {exc.start}: {exc.reason})"
    except ValueError as exc:  # int() refuses more than sys.get_int_max_str_digits() digits
        limit = sys.get_int_max_str_digits()
        msg = f"unreadable JSON: a number has more than {limit} digits ({exc})".split(";")[0]
    except RecursionError:
        msg = "unreadable JSON: arrays or objects nested too deeply"
    except OSError as exc:
        msg = f"cannot read file ({exc.strerror})"
    raise _error(path, [_fatal(msg)])


def _complete(ann: dict, img: dict, cat: dict, keypoint_fields: bool, filled: Counter) -> None:
    """Fill the optional fields COCOeval reads: iscrowd, area, keypoints, num_keypoints."""
    if "iscrowd" not in ann:
        ann["iscrowd"] = 0
        filled["iscrowd"] += 1
    if "area" not in ann:
        seg, (h, w) = ann.get("segmentation"), (img["height"], img["width"])
        if isinstance(seg, list) and seg:
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and isinstance(seg["counts"], list):
            seg = mask_utils.frPyObjects(seg, h, w)
        area = mask_utils.area(seg) if seg else ann["bbox"][2] * ann["bbox"][3]
        ann["area"] = float(area)
        filled["area"] += 1
    if keypoint_fields and cat.get("keypoints"):
        if "keypoints" not in ann:  # unlabelled: COCOeval ignores num_keypoints == 0
            ann["keypoints"] = [0] * (3 * len(cat["keypoints"]))
            filled["keypoints (as unlabelled)"] += 1
        if "num_keypoints" not in ann:
            ann["num_keypoints"] = sum(1 for v in ann["keypoints"][2::3] if v > 0)
            filled["num_keypoints"] += 1


def _build_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


class CocoIndex:
    """A validated COCO annotation file plus its image folder.

    Args:
        json_path: COCO annotation JSON.
        image_root: folder that the images' ``file_name`` entries are relative to.
        policy: ``"strict"`` raises on any bad record; ``"skip"`` drops bad annotations and
            images (counted in ``skipped``, logged); ``"clip"`` clips boxes that cross the image
            edge to it and unlabels keypoints outside it (counted in ``clipped``, logged), and
            drops the rest as ``skip`` does. Structural problems are always fatal.
        check_images: check each image file exists, its header matches width/height and it
            decodes (damaged JPEG data included: about 1.3 ms per 640x480 JPEG, once).
        keypoint_fields: check (and complete) keypoints of categories that define
            ``keypoints``; False ignores keypoint fields (e.g. boxes from a keypoint file).

    Raises:
        CocoDataError: one message listing every problem (file, record, field).
    """

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path,
        policy: Policy = "strict",
        check_images: bool = True,
        keypoint_fields: bool = True,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.json_path, self.image_root, self.policy = Path(json_path), Path(image_root), policy
        data = _load_json(self.json_path)
        problems = [_fatal(msg) for msg in _top_level_issues(data)]
        if problems:
            raise _error(self.json_path, problems)
        report = _validate(data, self.image_root, check_images, keypoint_fields)
        self.clipped: dict[str, int] = {}
        if policy == "clip":
            data, self.clipped = _clip_annotations(data, report)
        fatal = [p for p in report.problems if p.fatal]
        if fatal and policy != "strict":
            raise _error(self.json_path, fatal)
        if report.problems and policy == "strict":
            raise _error(self.json_path, report.problems, hint=not fatal)
        dataset, self.skipped = _apply_policy(data, report)
        if not dataset["images"]:
            msg = f"no usable images remain after skipping ({self.skipped})"
            raise _error(self.json_path, [_fatal(msg, field="images")])
        self._index(dataset, keypoint_fields)
        self.coco = _build_coco(dataset)
        self._log_summary()

    def _index(self, dataset: dict, keypoint_fields: bool) -> None:
        self.categories: list[dict] = dataset["categories"]
        self.category_ids: list[int] = [c["id"] for c in self.categories]
        self.category_names: list[str] = [c["name"] for c in self.categories]
        self.cat_to_index: dict[int, int] = {c: i for i, c in enumerate(self.category_ids)}
        self.index_to_cat: list[int] = list(self.category_ids)
        self._images = {img["id"]: img for img in dataset["images"]}
        self.image_ids: list[int] = sorted(self._images)
        self._anns: dict[int, list[dict]] = {i: [] for i in self.image_ids}
        cats, filled = {c["id"]: c for c in self.categories}, Counter()
        for ann in sorted(dataset["annotations"], key=lambda a: a["id"]):
            img = self._images[ann["image_id"]]
            _complete(ann, img, cats[ann["category_id"]], keypoint_fields, filled)
            self._anns[ann["image_id"]].append(ann)
        if filled:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(filled.items()))
            logger.info("%s: filled missing optional fields: %s", self.json_path.name, counts)

    def _log_summary(self) -> None:
        name = self.json_path.name
        if self.clipped:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.clipped.items()))
            logger.warning("%s: policy='clip' clipped to the image: %s", name, counts)
        if self.skipped:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
            total = sum(self.skipped.values())
            logger.warning(
                "%s: policy=%r dropped %d record(s): %s", name, self.policy, total, counts
            )
        used = {a["category_id"] for anns in self._anns.values() for a in anns}
        empty = [f"{c['name']!r} (id={c['id']})" for c in self.categories if c["id"] not in used]
        if empty:
            listed = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
            logger.warning("%s: %d category(ies) without annotations: %s", name, len(empty), listed)

    @property
    def num_classes(self) -> int:
        """Number of categories (contiguous indices 0..C-1)."""
        return len(self.categories)

    def __len__(self) -> int:
        """Number of usable images."""
        return len(self.image_ids)

    def __repr__(self) -> str:
        """Summary: file, images, classes, policy."""
        return (
            f"CocoIndex({str(self.json_path)!r}, images={len(self)}, "
            f"classes={self.num_classes}, policy={self.policy!r})"
        )

    def image_info(self, image_id: int) -> dict:
        """The image record (id, file_name, width, height, ...) of ``image_id``."""
        if image_id not in self._images:
            raise KeyError(f"image id={image_id} is not a usable image of {self.json_path.name}")
        return self._images[image_id]

    def annotations(self, image_id: int, include_crowd: bool = True) -> list[dict]:
        """Valid annotations of ``image_id`` sorted by annotation id (crowd ones optional)."""
        self.image_info(image_id)
        anns = self._anns[image_id]
        return list(anns) if include_crowd else [a for a in anns if not a["iscrowd"]]

    def image_path(self, image_id: int) -> Path:
        """Path of the image file of ``image_id``."""
        return self.image_root / self.image_info(image_id)["file_name"]

    def load_image(self, image_id: int) -> np.ndarray:
        """Read the image of ``image_id`` as RGB uint8 (H, W, 3), checking its size."""
        info, path = self.image_info(image_id), self.image_path(image_id)
        image = read_image(path)
        if image.shape[:2] != (info["height"], info["width"]):
            size = f"{image.shape[1]}x{image.shape[0]}"
            raise CocoDataError(
                f"{self.json_path.name}: image id={image_id}: field 'width/height': file {path} "
                f"decodes to {size} (WxH) but the record says {info['width']}x{info['height']}"
            )
        return image
