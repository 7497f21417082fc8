"""Mask geometry: crop to a box, combine prototypes, paste back through the letterbox, and the
prototype-grid targets. Pure functions on tensors; pixel ``j`` has its centre at ``j + 0.5``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def box_pixels(boxes_xyxy: Tensor, height: int, width: int) -> Tensor:
    """(K, 4) boxes in pixel units -> (K, H, W) bool: pixels whose centre lies in the box
    (``x1 <= x + 0.5 < x2``, the same for y)."""
    xs = torch.arange(width, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype) + 0.5
    ys = torch.arange(height, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype) + 0.5
    inside_x = (xs >= boxes_xyxy[:, 0:1]) & (xs < boxes_xyxy[:, 2:3])
    inside_y = (ys >= boxes_xyxy[:, 1:2]) & (ys < boxes_xyxy[:, 3:4])
    return inside_y.unsqueeze(2) & inside_x.unsqueeze(1)


def crop_mask(masks: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """(K, H, W) masks zeroed outside their (K, 4) boxes (see :func:`box_pixels`)."""
    return masks * box_pixels(boxes_xyxy, *masks.shape[-2:]).to(masks.dtype)


def mask_logits(coeffs: Tensor, protos: Tensor) -> Tensor:
    """(K, k) coefficients and (k, h, w) prototypes of one image -> (K, h, w) mask logits."""
    return (coeffs @ protos.flatten(1)).view(-1, *protos.shape[-2:])


def bilinear_weights(positions: Tensor, size: int) -> Tensor:
    """(n,) sample positions in pixel units (pixel ``j``'s centre at ``j``) -> (n, size) linear
    interpolation weights; beyond the outer centres the edge pixel's value holds (as a resize)."""
    low = positions.floor()
    fraction = (positions - low).float()
    low = low.long()
    rows = torch.arange(len(positions))
    weights = torch.zeros(len(positions), size)
    weights.index_put_((rows, low.clamp(0, size - 1)), 1 - fraction, accumulate=True)
    weights.index_put_((rows, (low + 1).clamp(0, size - 1)), fraction, accumulate=True)
    return weights


def paste_masks(
    logits: Tensor,
    boxes_xyxy: Tensor,
    scale: float,
    pad: tuple[float, float],
    size_hw: tuple[int, int],
    stride: int,
) -> Tensor:
    """Mask logits of a letterboxed input -> (K, H0, W0) bool masks in the original image.

    Args:
        logits: (K, h, w) mask logits; prototype pixel ``j`` covers network pixels
            ``[j * stride, (j + 1) * stride)``.
        boxes_xyxy: (K, 4) boxes in original pixels; each mask is cropped to its box.
        scale: letterbox scale (original pixel ``p`` is network pixel ``p * scale + pad``).
        pad: letterbox padding (x, y) in network pixels.
        size_hw: the original image's (H0, W0).
        stride: network pixels per prototype pixel.

    Each original pixel whose centre lies in the box (as :func:`box_pixels`) samples the logits
    bilinearly at that centre; it is in the mask when the logit there is positive (sigmoid >
    0.5). Only the box's pixels are sampled: a mask is zero outside its box anyway.
    """
    height, width = size_hw
    masks = torch.zeros(len(logits), height, width, dtype=torch.bool)
    if len(logits) == 0:
        return masks
    h, w = logits.shape[-2:]
    # Network coordinates of the original pixel centres, then prototype pixel units.
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) * scale + pad[0]
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) * scale + pad[1]
    across, down = bilinear_weights(xs / stride - 0.5, w), bilinear_weights(ys / stride - 0.5, h)
    # Pixel x is in [x1, x2) when its centre is: x >= ceil(x1 - 0.5) and x < ceil(x2 - 0.5).
    boxes = boxes_xyxy.detach().double().cpu()
    first = (boxes - 0.5).ceil().long()
    first[:, 0::2] = first[:, 0::2].clamp(0, width)
    first[:, 1::2] = first[:, 1::2].clamp(0, height)
    values = logits.detach().float().cpu()
    for k, (x0, y0, x1, y1) in enumerate(first.tolist()):
        if x1 > x0 and y1 > y0:
            region = down[y0:y1] @ values[k] @ across[x0:x1].T
            masks[k, y0:y1, x0:x1] = region > 0
    return masks.to(logits.device)


def prototype_grid_masks(masks: Tensor, h: int, w: int, stride: int) -> Tensor:
    """(M, S, S) uint8 coverage masks (0..255) -> (M, h, w) float fractions on the prototype grid
    (each prototype pixel the mean of the ``stride x stride`` network pixels it covers)."""
    masks = masks.float() / 255
    pad_h, pad_w = h * stride - masks.shape[-2], w * stride - masks.shape[-1]
    if pad_h or pad_w:
        masks = F.pad(masks, (0, pad_w, 0, pad_h))
    return F.avg_pool2d(masks.unsqueeze(0), stride).squeeze(0) if len(masks) else masks[:, :h, :w]
