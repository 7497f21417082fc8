"""Label maps out: logits back to the original image, the class map, COCO results records (RLE)
and the palette drawings.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor


def logits_to_original(logits: Tensor, input_hw: Any, original_hw: Any) -> Tensor:
    """(C, H, W) logits of one padded input -> (C, H0, W0) at the original image size.

    Keeps the top-left ``input_hw`` (the picture; the rest is padding) and resizes bilinearly.
    """
    h, w = (int(v) for v in input_hw)
    height, width = (int(v) for v in original_hw)
    valid = logits[None, :, :h, :w]
    if (h, w) != (height, width):
        valid = F.interpolate(valid, size=(height, width), mode="bilinear", align_corners=False)
    return valid[0]


def class_map(logits: Tensor, dim: int) -> Tensor:
    """The arg-max over the class dimension ``dim`` of per-pixel scores (first maximum on ties).

    ``Tensor.max(dim).indices`` rather than ``argmax``: on CPU, argmax over a leading dimension
    of (C, H, W) took 12.8 ms for a 320x240 image against 1.0 ms, a third of the per-epoch
    segmentation scoring (same result, ties included).
    """
    return logits.max(dim=dim).indices


def label_map_results(label: np.ndarray, image_id: int, categories: list[dict]) -> list[dict]:
    """One COCO results record (RLE) per category present in an (H, W) label map."""
    results = []
    for index in np.unique(label):
        if index == 0 or index > len(categories):
            continue
        rle = mask_utils.encode(np.asfortranarray(label == index, dtype=np.uint8))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": image_id,
                "category_id": categories[index - 1]["id"],
                "segmentation": rle,
                "score": 1.0,
            }
        )
    return results


def voc_palette(num_entries: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (num_entries, 3) uint8: 0 black, 255 (ignore) cream."""
    palette = np.zeros((num_entries, 3), np.uint8)
    for index in range(num_entries):
        value, shift = index, 7
        while value:  # the bits of the index spread over the high bits of R, G, B
            for channel in range(3):
                palette[index, channel] |= ((value >> channel) & 1) << shift
            value, shift = value >> 3, shift - 1
    return palette


PALETTE = voc_palette()


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colours of an (H, W) label map over an (H, W, 3) uint8 RGB image."""
    colours = PALETTE[label]
    blended = cv2.addWeighted(image, 1 - alpha, colours, alpha, 0.0)
    return np.where((label > 0)[..., None], blended, image)
