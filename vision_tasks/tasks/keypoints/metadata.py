"""Keypoint metadata: the crop size, flip pairs and permutation from the keypoint names, and the
OKS sigmas.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vision_tasks.data.coco import CocoDataError
from vision_tasks.evaluation.coco_eval import COCO_PERSON_SIGMAS

CROP_ASPECT = 0.75  # width / height, as COCO top-down models (192 x 256)
COCO_OFFSET = 0.5  # COCO pixel centres are at +0.5 in our (OpenCV) convention


def crop_size(image_size: int) -> tuple[int, int]:
    """Crop ``(width, height)``: ``image_size`` high, about 3:4, both multiples of 32."""
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size (the crop height) must be a multiple of 32, got {image_size}")
    return max(32, round(image_size * CROP_ASPECT / 32) * 32), image_size


def flip_pairs_from_names(names: list[str]) -> list[list[int]]:
    """Index pairs of keypoints whose names differ only by ``left`` / ``right``."""
    position = {name: i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        partner = name.replace("left", "right").replace("Left", "Right")
        if partner != name and partner in position:
            pairs.append([i, position[partner]])
    return pairs


def flip_permutation(num_keypoints: int, pairs: list[list[int]]) -> list[int]:
    """Channel order after a horizontal flip: entry ``i`` is the partner of keypoint ``i``."""
    order = list(range(num_keypoints))
    used: set[int] = set()
    for pair in pairs:
        if len(pair) != 2 or not all(0 <= i < num_keypoints for i in pair) or used & set(pair):
            raise ValueError(
                f"flip pair {pair}: expected two distinct, unpaired keypoint indices "
                f"in 0..{num_keypoints - 1}"
            )
        used |= set(pair)
        order[pair[0]], order[pair[1]] = pair[1], pair[0]
    return order


def keypoint_sigmas(category: dict[str, Any], sigmas: list[float] | None) -> np.ndarray:
    """OKS sigmas (K,) of a category: ``sigmas`` if given, else COCO's for 17 keypoints."""
    count = len(category["keypoints"])
    if sigmas is not None and len(sigmas) != count:
        raise CocoDataError(
            f"--model.oks_sigmas has {len(sigmas)} values but category "
            f"{category['name']!r} has {count} keypoints"
        )
    if sigmas is None and count != len(COCO_PERSON_SIGMAS):
        raise CocoDataError(
            f"category {category['name']!r} has {count} keypoints, not COCO's "
            f"17: give their OKS sigmas with --model.oks_sigmas (a list of "
            f"{count})"
        )
    return np.asarray(COCO_PERSON_SIGMAS if sigmas is None else sigmas, dtype=np.float64)
