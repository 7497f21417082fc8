"""Keypoint data: an affine crop per annotated instance (or per detected box, from a
detections file) and the data module.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vision_tasks import ops
from vision_tasks.data.coco import CocoDataError, CocoIndex, Policy, _load_json
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import keypoint_transforms
from vision_tasks.tasks.keypoints.metadata import (
    COCO_OFFSET,
    crop_size,
    flip_pairs_from_names,
    flip_permutation,
)


class KeypointDataset(Dataset):
    """One crop per instance: ``{"image", "keypoints", "crop_to_image", "boxes_xyxy",
    "box_score", "image_id", "sample_id"}``.

    ``keypoints`` (K, 3) are crop pixels + visibility; ``crop_to_image`` (2, 3) maps crop pixels
    back to the image (before augmentation); ``boxes_xyxy`` (4,) is the box in COCO pixels.
    Samples are the annotated instances of ``category`` (``num_keypoints > 0``), or the given
    ``detections`` (``image_id``, ``box`` xyxy, ``score``) with no ground truth.
    """

    def __init__(
        self,
        index: CocoIndex,
        category: dict[str, Any],
        image_size: int,
        train: bool,
        crop_margin: float = 0.25,
        flip_pairs: list[list[int]] | None = None,
        detections: list[dict[str, Any]] | None = None,
    ) -> None:
        self.index = index
        self.num_keypoints = len(category["keypoints"])
        self.size = crop_size(image_size)
        self.crop_margin = crop_margin
        self.permutation = flip_permutation(self.num_keypoints, flip_pairs or [])
        self.transform = keypoint_transforms(train)
        self.train = train
        self.samples = detections if detections is not None else self._instances(category["id"])

    def _instances(self, category_id: int) -> list[dict[str, Any]]:
        samples = []
        for image_id in self.index.image_ids:
            for ann in self.index.annotations(image_id, include_crowd=False):
                if ann["category_id"] == category_id and ann.get("num_keypoints", 0) > 0:
                    x, y, w, h = ann["bbox"]
                    samples.append(
                        {
                            "image_id": image_id,
                            "box": [x, y, x + w, y + h],
                            "score": 1.0,
                            "keypoints": ann["keypoints"],
                        }
                    )
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        image = self.index.load_image(sample["image_id"])
        box = np.asarray(sample["box"]) - COCO_OFFSET
        matrix = ops.box_affine(box, self.size, self.crop_margin)
        keypoints = np.zeros((self.num_keypoints, 3), np.float32)
        if sample.get("keypoints") is not None:
            coco = np.asarray(sample["keypoints"], np.float64).reshape(-1, 3)
            keypoints[:, :2] = ops.apply_affine(coco[:, :2] - COCO_OFFSET, matrix)
            keypoints[:, 2] = coco[:, 2]
        crop = ops.crop_affine(image, matrix, self.size)
        if not self.train:
            out = self.transform(image=crop)
        else:
            out = self.transform(image=crop, keypoints=keypoints[:, :2])
            keypoints[:, :2] = out["keypoints"]
        if any(name == "HorizontalFlip" for name, _ in out.get("applied_transforms", [])):
            keypoints = keypoints[self.permutation]  # the left wrist now shows as a right one
        return {
            "image": out["image"],
            "keypoints": torch.from_numpy(keypoints),
            "crop_to_image": torch.from_numpy(ops.invert_affine(matrix)),
            "boxes_xyxy": torch.tensor(sample["box"], dtype=torch.float64),
            "box_score": float(sample["score"]),
            "image_id": sample["image_id"],
            "sample_id": i,
        }


def read_detections(
    path: str | Path, index: CocoIndex, category_id: int, threshold: float
) -> list[dict[str, Any]]:
    """Boxes of ``category_id`` scoring ``>= threshold`` from a detection results JSON."""
    path = Path(path)
    records, problems, boxes = _load_json(path), [], []
    if not isinstance(records, list):
        raise CocoDataError(
            f"{path}: expected a list of detection results, got {type(records).__name__}"
        )
    for i, record in enumerate(records):
        problem = _detection_problem(record, index)
        if problem:
            problems.append(f"{path.name}: result #{i}: {problem}")
        elif record["category_id"] == category_id and record["score"] >= threshold:
            x, y, w, h = record["bbox"]
            boxes.append(
                {
                    "image_id": record["image_id"],
                    "box": [x, y, x + w, y + h],
                    "score": float(record["score"]),
                    "keypoints": None,
                }
            )
    if problems:
        raise CocoDataError("\n".join([f"{len(problems)} problem(s) in {path}:", *problems[:20]]))
    return boxes


def _detection_problem(record: Any, index: CocoIndex) -> str | None:
    if not isinstance(record, dict):
        return "expected an object with image_id, category_id, bbox, score"
    number = (int, float)
    if record.get("image_id") not in index.image_ids:
        return f"field 'image_id': {record.get('image_id')!r} is not in {index.json_path.name}"
    if not isinstance(record.get("category_id"), int):
        return f"field 'category_id': expected an integer, got {record.get('category_id')!r}"
    box = record.get("bbox")
    if not (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, number) for v in box)
        and all(map(math.isfinite, box))
        and box[2] > 0
        and box[3] > 0
    ):
        return f"field 'bbox': expected [x, y, width, height] with a positive size, got {box!r}"
    score = record.get("score")
    if not isinstance(score, number) or not math.isfinite(score):
        return f"field 'score': expected a number, got {score!r}"
    return None


class KeypointData(VisionDataModule):
    """Keypoint data: the shared splits plus the category, crop margin, flip pairs and boxes.

    Args (beyond :class:`VisionDataModule`, whose ``image_size`` is the crop height):
        category: name of the category whose keypoints are learnt (default: the only one).
        crop_margin: the box is enlarged by this fraction before cropping.
        flip_pairs: left / right keypoint index pairs (default: from ``left_*`` / ``right_*``).
        boxes_json: detection results JSON whose boxes replace the ground-truth ones for the
            validation / test crops.
        box_score_threshold: detections scoring lower are not used.
    """

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 128,
        batch_size: int = 32,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        category: str | None = None,
        crop_margin: float = 0.25,
        flip_pairs: list[list[int]] | None = None,
        boxes_json: str | None = None,
        box_score_threshold: float = 0.3,
    ) -> None:
        super().__init__(
            train_json=train_json,
            train_images=train_images,
            val_json=val_json,
            val_images=val_images,
            test_json=test_json,
            test_images=test_images,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            policy=policy,
            synthetic_seed=synthetic_seed,
            synthetic_train=synthetic_train,
            synthetic_val=synthetic_val,
        )
        crop_size(image_size)  # fail early on a size the backbone cannot take
        self.category = category
        self.crop_margin = crop_margin
        self.flip_pairs = flip_pairs
        self.boxes_json = boxes_json
        self.box_score_threshold = box_score_threshold

    @cached_property
    def categories(self) -> list[dict[str, Any]]:
        """The keypoint category alone, with its ``flip_pairs``: what the model learns."""
        everything = VisionDataModule.categories.func(self)
        source = self.splits["train"][0] if self.splits["train"] else self.splits["val"][0]
        named = [c for c in everything if c.get("keypoints")]
        if self.category is not None:
            named = [c for c in everything if c["name"] == self.category and c.get("keypoints")]
        if len(named) != 1:
            names = [c["name"] for c in everything if c.get("keypoints")]
            wanted = f"{self.category!r} " if self.category else ""
            raise CocoDataError(
                f"{source}: field 'categories': the category {wanted}to learn must "
                f"be one with 'keypoints'; those with keypoints: {names} (pick one "
                f"with --data.category NAME)"
            )
        category = named[0]
        pairs = self.flip_pairs
        if pairs is None:
            pairs = flip_pairs_from_names(category["keypoints"])
        try:
            flip_permutation(len(category["keypoints"]), pairs)
        except ValueError as error:
            raise CocoDataError(f"--data.flip_pairs for {category['name']!r}: {error}") from None
        return [{**category, "flip_pairs": [list(p) for p in pairs]}]

    def adopt_categories(self, categories: list[dict[str, Any]]) -> None:
        """Evaluate the checkpoint's keypoint category: the test split must define it alike."""
        index, category = self.index("test"), categories[0]
        theirs = next((c for c in index.categories if c["id"] == category["id"]), {})
        if [theirs.get(k) for k in ("name", "keypoints")] != [
            category["name"],
            category["keypoints"],
        ]:
            raise CocoDataError(
                f"{index.json_path}: no category id={category['id']} named "
                f"{category['name']!r} with the checkpoint's "
                f"{len(category['keypoints'])} keypoints"
            )
        self.categories = [dict(category)]

    def describe_samples(self) -> str:
        """Annotated instances of the keypoint category (or detections, to evaluate on)."""
        return (
            f"non-crowd annotations of category {self.categories[0]['name']!r} with "
            f"labelled keypoints (num_keypoints > 0; with --data.boxes_json: detections "
            f"scored --data.box_score_threshold or more)"
        )

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """Crops of annotated instances, or of detected boxes for evaluation with ``boxes_json``."""
        category = self.categories[0]
        detections = None
        if not train and self.boxes_json is not None:
            detections = read_detections(
                self.boxes_json, index, category["id"], self.box_score_threshold
            )
        return KeypointDataset(
            index,
            category,
            self.image_size,
            train,
            self.crop_margin,
            category["flip_pairs"],
            detections,
        )
