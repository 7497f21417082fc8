"""Segmentation data: annotations rasterised into label maps (see the package docstring), the
dataset view with its label fractions, padding to the network stride and the data module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from vision_tasks.data.coco import CocoDataError, CocoIndex, Policy
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import segment_transforms

IGNORE_INDEX = 255
NETWORK_STRIDE = 32  # c5's stride: inputs are padded to a multiple of it


def semantic_label_map(
    coco: COCO, anns: list[dict], cat_to_index: dict[int, int], height: int, width: int
) -> np.ndarray:
    """Rasterise one image's annotations into an (H, W) uint8 label map (see the package doc).

    Args:
        coco: the pycocotools index the annotations belong to (sizes come from its images).
        anns: the image's annotations, crowd ones included.
        cat_to_index: COCO category id -> contiguous index (label = index + 1).
        height: image height.
        width: image width.
    """
    label = np.zeros((height, width), np.uint8)
    things = sorted((a for a in anns if not a.get("iscrowd")), key=lambda a: (-a["area"], a["id"]))
    unknown = [a for a in anns if a.get("iscrowd") or not a.get("segmentation")]
    for ann in things:
        if ann.get("segmentation"):
            label[coco.annToMask(ann) > 0] = cat_to_index[ann["category_id"]] + 1
    for ann in unknown:
        if ann.get("segmentation"):
            label[coco.annToMask(ann) > 0] = IGNORE_INDEX
        else:
            x, y, w, h = ann["bbox"]
            x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
            label[y0 : int(np.ceil(y + h)), x0 : int(np.ceil(x + w))] = IGNORE_INDEX
    return label


class SegmentDataset(Dataset):
    """COCO split as ``{"image", "mask", "image_id", "input_hw", "original_hw"}`` samples.

    Evaluation samples also carry ``mask_original``: the label map at the original size.
    ``input_hw`` is the part of ``image`` that holds the picture (the rest is padding).
    With ``soft_targets``, training samples also carry ``mask_soft``, (C, H, W) class
    fractions: the one-hot label map at the original size, resampled by area (see
    :func:`soft_label_map`); ``mask`` is then its hard version.
    """

    def __init__(
        self,
        index: CocoIndex,
        image_size: int,
        crop_size: int,
        train: bool,
        scale_range: tuple[float, float] = (0.75, 1.25),
        colour_shift: float = 0.0,
        soft_targets: bool = False,
    ) -> None:
        if index.num_classes + 1 > IGNORE_INDEX:
            raise CocoDataError(
                f"{index.json_path.name}: {index.num_classes} categories; "
                f"segmentation supports at most {IGNORE_INDEX - 1}"
            )
        self.index = index
        self.image_size = image_size
        self.train = train
        self.soft = soft_targets and train
        # Evaluation pads each image only to the network stride: no compute spent on a square.
        self.transform = segment_transforms(
            image_size,
            crop_size,
            train,
            scale_range,
            IGNORE_INDEX,
            square=False,
            colour_shift=colour_shift,
            soft_masks=self.soft,
        )
        self.image_ids = list(index.image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def label_map(self, image_id: int) -> np.ndarray:
        """The (H, W) uint8 label map of ``image_id`` at its original size."""
        info = self.index.image_info(image_id)
        anns = self.index.annotations(image_id, include_crowd=True)
        return semantic_label_map(
            self.index.coco, anns, self.index.cat_to_index, info["height"], info["width"]
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.image_ids[i]
        image, label = self.index.load_image(image_id), self.label_map(image_id)
        if self.soft:
            one_hot = one_hot_label_map(label, self.index.num_classes + 1)
            out = self.transform(image=image, mask=one_hot)
            fractions = out["mask"].permute(2, 0, 1).float()
            out["mask"] = hard_label_map(fractions)
        else:
            out = self.transform(image=image, mask=label)
        sample = {
            "image": out["image"],
            "mask": out["mask"].long(),
            "image_id": image_id,
            "input_hw": torch.tensor(input_size(image.shape[:2], self.image_size)),
            "original_hw": torch.tensor(image.shape[:2]),
        }
        if self.train:
            sample["input_hw"] = torch.tensor(out["image"].shape[-2:])  # a crop: all of it
            if self.soft:
                sample["mask_soft"] = fractions
        else:
            sample["mask_original"] = torch.from_numpy(label).long()
        return sample


def one_hot_label_map(label: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) label map -> (H, W, num_classes) float32 one-hot; all zeros where ignored."""
    known = label != IGNORE_INDEX
    return np.eye(num_classes, dtype=np.float32)[np.where(known, label, 0)] * known[..., None]


def hard_label_map(fractions: Tensor) -> Tensor:
    """(C, H, W) class fractions -> (H, W) labels: the largest, ``IGNORE_INDEX`` where less than
    half of the pixel is known."""
    known = fractions.sum(dim=0) >= 0.5
    return torch.where(known, fractions.argmax(dim=0), IGNORE_INDEX)


def input_size(original_hw: tuple[int, int], image_size: int) -> tuple[int, int]:
    """(h, w) of an (H, W) image once its long side is resized to ``image_size`` (albumentations'
    LongestMaxSize rounding)."""
    scale = image_size / max(original_hw)
    return tuple(max(1, round(side * scale)) for side in original_hw)


def pad_stack(tensors: list[Tensor], value: float) -> Tensor:
    """Stack (..., H_i, W_i) tensors into (B, ..., H, W), padding bottom/right with ``value``."""
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    return torch.stack(
        [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value) for t in tensors]
    )


def collate_segmentation(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack; evaluation images (sizes may differ) are padded bottom/right with 0 (the
    normalised mean colour), their masks with ignore."""
    if "mask_original" not in samples[0]:
        return default_collate(samples)
    padded = {"image": 0.0, "mask": IGNORE_INDEX, "mask_original": IGNORE_INDEX}
    batch = default_collate([{k: v for k, v in s.items() if k not in padded} for s in samples])
    for key, value in padded.items():
        batch[key] = pad_stack([s[key] for s in samples], value)
    return batch


class SegmentData(VisionDataModule):
    """Segmentation data: the shared splits plus the training crop and scale range.

    ``image_size`` is the long side images are resized to; ``crop_size`` the side of the square
    training crops cut after a random rescale by a factor in [``scale_min``, ``scale_max``];
    ``colour_shift`` as in :func:`vision_tasks.data.transforms.photometric`; ``soft_targets``:
    train on the class fractions of each resized pixel rather than the class at its centre, so
    the model learns where an edge lies inside a pixel (scores are taken at the original size,
    where a pixel of a 0.6x input is 1.7 pixels wide).
    """

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 320,
        batch_size: int = 8,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        crop_size: int = 256,
        scale_min: float = 0.75,
        scale_max: float = 1.25,
        colour_shift: float = 0.0,
        soft_targets: bool = False,
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
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        self.crop_size = crop_size
        self.scale_range = (scale_min, scale_max)
        self.colour_shift = colour_shift
        self.soft_targets = soft_targets

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """One sample per image: augmented crops for training, whole images otherwise."""
        return SegmentDataset(
            index,
            self.image_size,
            self.crop_size,
            train,
            self.scale_range,
            self.colour_shift,
            self.soft_targets,
        )

    collate = staticmethod(collate_segmentation)
