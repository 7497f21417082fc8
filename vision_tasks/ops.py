"""Pure geometry shared by the tasks: box formats, letterbox and affine crop maps.

Every format conversion in the package lives here, so a box never changes meaning silently
between the data layer, a head and the results writer.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_convert

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO ``[x, y, w, h]`` (N, 4) -> corner form ``[x1, y1, x2, y2]`` (N, 4)."""
    return box_convert(boxes, "xywh", "xyxy")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Corner form ``[x1, y1, x2, y2]`` (N, 4) -> COCO ``[x, y, w, h]`` (N, 4)."""
    return box_convert(boxes, "xyxy", "xywh")


def letterbox_params(height: int, width: int, size: int) -> tuple[float, int, int]:
    """Scale and top-left padding that fit an (H, W) image into a ``size`` square, aspect kept.

    Returns:
        ``(scale, pad_x, pad_y)``: input pixel ``p`` maps to ``p * scale + pad``.
    """
    scale = min(size / height, size / width)
    new_w, new_h = round(width * scale), round(height * scale)
    return scale, (size - new_w) // 2, (size - new_h) // 2


def unletterbox_boxes(boxes_xyxy: Tensor, scale: float, pad_x: int, pad_y: int) -> Tensor:
    """Map (N, 4) xyxy boxes from letterboxed network pixels back to original image pixels."""
    offset = boxes_xyxy.new_tensor([pad_x, pad_y, pad_x, pad_y])
    return (boxes_xyxy - offset) / scale


def box_affine(
    box_xyxy: np.ndarray | list[float],
    output_size: tuple[int, int],
    margin: float = 0.25,
) -> np.ndarray:
    """2x3 affine that maps a box, enlarged by ``margin`` and grown to the output's aspect ratio,
    onto an output of ``(width, height)`` pixels.

    The box is centred and never distorted: the shorter side is extended, as top-down keypoint
    and re-ID crops expect.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    out_w, out_h = output_size
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w = max(x2 - x1, 1.0) * (1 + margin)
    h = max(y2 - y1, 1.0) * (1 + margin)
    aspect = out_w / out_h
    if w / h > aspect:
        h = w / aspect
    else:
        w = h * aspect
    scale = out_w / w
    return np.array(
        [[scale, 0.0, out_w / 2 - scale * cx], [0.0, scale, out_h / 2 - scale * cy]],
        dtype=np.float64,
    )


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_affine(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` with a 2x3 affine to ``(width, height)``; outside pixels are black."""
    return cv2.warpAffine(
        image,
        matrix,
        output_size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def denormalize(images: Tensor, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD) -> Tensor:
    """(B, 3, H, W) normalised float -> (B, 3, H, W) uint8, for drawing."""
    mean_t = images.new_tensor(mean).view(1, -1, 1, 1)
    std_t = images.new_tensor(std).view(1, -1, 1, 1)
    return ((images * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)
