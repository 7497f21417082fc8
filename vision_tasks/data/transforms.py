"""albumentations pipelines per task, train vs eval; every one ends normalised, as a tensor."""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from vision_tasks.ops import IMAGENET_MEAN, IMAGENET_STD


def _finish() -> list[A.BasicTransform]:
    return [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]


def letterbox(size: int) -> list[A.BasicTransform]:
    """Resize the long side to ``size`` and pad centred to a square (aspect ratio kept)."""
    return [
        A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR),
        A.PadIfNeeded(size, size, position="center", border_mode=cv2.BORDER_CONSTANT, fill=114),
    ]


def photometric() -> list[A.BasicTransform]:
    """Colour jitter that keeps labels valid for every task."""
    return [
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
    ]


def classify_transforms(size: int, train: bool, already_cropped: bool) -> A.Compose:
    """Classification: crops arrive at ``size`` already; whole images are letterboxed."""
    geometry = [] if already_cropped else letterbox(size)
    if train:
        augment = [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-15, 15), p=0.7),
            *photometric(),
        ]
        return A.Compose([*geometry, *augment, *_finish()])
    return A.Compose([*geometry, *_finish()])
