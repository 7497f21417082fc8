"""Instance data: detection's letterboxed view of a COCO split, plus one mask per object.

Masks are rasterised by pycocotools (``COCO.annToMask``, as the semantic segmentation task
does), so polygons, compressed and uncompressed RLE are all read. They are letterboxed like the
image (area resampling, so a target pixel holds the fraction of it the object covers, 0..255)
and follow the image through detection's augmentation. Crowd regions and objects without a
``segmentation`` get no mask target (``has_mask`` False): crowds are ignored by detection's
loss, and an object with only a box says nothing about its pixels.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from vision_tasks import ops
from vision_tasks.data.coco import CocoIndex
from vision_tasks.data.transforms import detect_transforms
from vision_tasks.tasks.detect import DetectData, collate_detection


def instance_masks(coco: COCO, anns: list[dict], height: int, width: int) -> np.ndarray:
    """(n, H, W) uint8 0/1 masks of ``anns`` (all zeros where an annotation has none)."""
    masks = np.zeros((len(anns), height, width), np.uint8)
    for k, ann in enumerate(anns):
        if ann.get("segmentation"):
            masks[k] = coco.annToMask(ann)
    return masks


def letterbox_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(n, H, W) 0/1 masks -> (n, size, size) uint8 coverage 0..255, letterboxed like
    :func:`vision_tasks.ops.letterbox_image` (padding is 0: no object there)."""
    height, width = masks.shape[1:]
    scale, pad_x, pad_y = ops.letterbox_params(height, width, size)
    new_w, new_h = ops.letterbox_size(height, width, scale)
    out = np.zeros((len(masks), size, size), np.uint8)
    # INTER_AREA averages the covered source pixels when shrinking: coverage, not a coin flip.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    for k, mask in enumerate(masks):  # one at a time: INTER_AREA takes at most 4 channels
        resized = cv2.resize(mask * np.uint8(255), (new_w, new_h), interpolation=interpolation)
        out[k, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out


class InstanceDataset(Dataset):
    """Detection samples (see :class:`~vision_tasks.tasks.detect.DetectDataset`) with ``masks``
    (n, S, S) uint8 coverage 0..255 in network pixels and ``has_mask`` (n,) bool, one per box."""

    def __init__(
        self, index: CocoIndex, image_size: int, train: bool, colour_shift: float = 0.0
    ) -> None:
        self.index, self.image_size, self.train = index, image_size, train
        self.transform = detect_transforms(train, colour_shift)

    def __len__(self) -> int:
        return len(self.index.image_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.index.image_ids[i]
        image = self.index.load_image(image_id)
        anns = self.index.annotations(image_id)
        height, width = image.shape[:2]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        square, scale, pad_x, pad_y = ops.letterbox_image(image, self.image_size)
        boxes = np.clip(boxes * scale + [pad_x, pad_y, pad_x, pad_y], 0, self.image_size)
        labels = np.array([self.index.cat_to_index[a["category_id"]] for a in anns], np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        has_mask = np.array([bool(a.get("segmentation")) for a in anns], bool) & ~crowd
        masks = letterbox_masks(instance_masks(self.index.coco, anns, height, width), len(square))
        if self.train:
            tensor, boxes, kept, masks = self._augment(square, boxes, crowd, masks)
            labels, crowd, has_mask = labels[kept], crowd[kept], has_mask[kept]
        else:
            tensor = self.transform(image=square)["image"]
        return {
            "image": tensor,
            "boxes_xyxy": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "label": torch.as_tensor(labels),
            "crowd": torch.as_tensor(crowd),
            "masks": torch.as_tensor(masks).reshape(-1, *tensor.shape[-2:]),
            "has_mask": torch.as_tensor(has_mask),
            "image_id": image_id,
            "scale": scale,
            "pad": (pad_x, pad_y),
            "orig_size": (height, width),
        }

    def _augment(
        self, square: np.ndarray, boxes: np.ndarray, crowd: np.ndarray, masks: np.ndarray
    ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        """Detection's augmentation with the masks carried along; returns the image, the boxes
        that survive it, their positions in the input lists and their masks."""
        keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        # The label field carries each box's position: albumentations drops the boxes that
        # leave the image, and the positions say which masks (never dropped) go with the rest.
        targets = {"bboxes": boxes[keep], "label": keep, "crowd": crowd[keep]}
        if len(keep):
            targets["masks"] = masks[keep]
        out = self.transform(image=square, **targets)
        kept = np.asarray(out["label"], dtype=np.int64)
        side = out["image"].shape[-1]
        moved = np.asarray(out["masks"]) if len(keep) else np.zeros((0, side, side), np.uint8)
        order = {int(position): k for k, position in enumerate(keep)}
        masks = moved[[order[int(p)] for p in kept]].reshape(-1, side, side)
        return out["image"], np.asarray(out["bboxes"]).reshape(-1, 4), kept, masks


def collate_instances(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Detection's collate (see :func:`collate_detection`) plus per-image ``masks`` and
    ``has_mask`` lists."""
    batch = collate_detection(samples)
    batch["masks"] = [s["masks"] for s in samples]
    batch["has_mask"] = [s["has_mask"] for s in samples]
    return batch


class InstanceData(DetectData):
    """Instance segmentation data: detection's splits and options, with masks."""

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """Every image of the split (images without objects are negatives)."""
        return InstanceDataset(index, self.image_size, train, self.colour_shift)

    collate = staticmethod(collate_instances)
