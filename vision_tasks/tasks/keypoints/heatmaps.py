"""Heatmaps as pure functions: Gaussian targets, DARK sub-pixel decoding, flips, the crop ->
image map, instance scores and the weighted MSE loss.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vision_tasks.tasks.keypoints.metadata import COCO_OFFSET

HEATMAP_STRIDE = 4


def encode_heatmaps(
    keypoints: Tensor,
    heatmap_size: tuple[int, int],
    sigma: float = 2.0,
    stride: int = HEATMAP_STRIDE,
) -> tuple[Tensor, Tensor]:
    """Gaussian target heatmaps and per-keypoint weights.

    Args:
        keypoints: (B, K, 3) x, y in crop pixels and COCO visibility (0 = not labelled).
        heatmap_size: ``(h, w)`` cells.
        sigma: the Gaussian's standard deviation in cells.
        stride: crop pixels per cell.

    Returns:
        (B, K, h, w) heatmaps with peak 1 at each keypoint, and (B, K) weights: 1 for a labelled
        keypoint whose centre falls on the heatmap, else 0 (its heatmap is all zero).
    """
    h, w = heatmap_size
    cells = (keypoints[..., :2] - (stride - 1) / 2) / stride
    inside = (cells >= -0.5).all(dim=-1) & (cells[..., 0] < w - 0.5) & (cells[..., 1] < h - 0.5)
    weights = ((keypoints[..., 2] > 0) & inside).to(keypoints.dtype)
    xs = torch.arange(w, dtype=keypoints.dtype, device=keypoints.device)
    ys = torch.arange(h, dtype=keypoints.dtype, device=keypoints.device)
    gx = torch.exp(-((xs - cells[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, K, w)
    gy = torch.exp(-((ys - cells[..., 1:2]) ** 2) / (2 * sigma**2))  # (B, K, h)
    return gy[..., :, None] * gx[..., None, :] * weights[..., None, None], weights


def decode_heatmaps(
    heatmaps: Tensor,
    sigma: float = 2.0,
    refine: Literal["dark", "quarter", "none"] = "dark",
    stride: int = HEATMAP_STRIDE,
) -> tuple[Tensor, Tensor]:
    """Keypoints from heatmaps: arg-max, sub-cell refinement, cells -> crop pixels.

    Args:
        heatmaps: (B, K, h, w).
        sigma: the targets' sigma in cells (sets DARK's fitting window).
        refine: ``dark`` (the peak of a Gaussian fitted to the log heatmap, after Zhang et al.
            2020; see :func:`_dark_offsets`), ``quarter`` (a quarter cell towards the higher
            neighbour, Newell et al. 2016) or ``none``.
        stride: crop pixels per cell.

    Returns:
        (B, K, 2) x, y in crop pixels and (B, K) scores (the heatmap maxima).
    """
    w = heatmaps.shape[-1]
    scores, flat = heatmaps.flatten(2).max(dim=2)
    x, y = flat % w, flat // w
    if refine == "dark":
        offsets = _dark_offsets(heatmaps, x, y, sigma)
    elif refine == "quarter":
        patch = _patches(heatmaps, x, y)
        dx, dy = patch[..., 1, 2] - patch[..., 1, 0], patch[..., 2, 1] - patch[..., 0, 1]
        offsets = 0.25 * torch.stack([dx.sign(), dy.sign()], dim=-1)
    elif refine == "none":
        offsets = heatmaps.new_zeros(*x.shape, 2)
    else:
        raise ValueError(f"refine must be 'dark', 'quarter' or 'none', got {refine!r}")
    cells = torch.stack([x, y], dim=-1).to(heatmaps.dtype) + offsets
    return cells * stride + (stride - 1) / 2, scores


def _patches(
    maps: Tensor, x: Tensor, y: Tensor, radius: int = 1, mode: str = "replicate"
) -> Tensor:
    """Neighbourhoods (B, K, n, n), n = 2 * radius + 1, of (B, K, h, w) maps around cells (x, y).

    Outside the map: the edge replicated (``mode="replicate"``) or zeros (``"constant"``).
    """
    b, k, h, w = maps.shape
    n = 2 * radius + 1
    padded = F.pad(maps.reshape(b * k, 1, h, w), (radius,) * 4, mode=mode).reshape(b, k, -1)
    steps = torch.arange(n, device=maps.device)
    index = (y[..., None, None] + steps[:, None]) * (w + 2 * radius) + x[..., None, None] + steps
    return padded.gather(2, index.flatten(2)).reshape(b, k, n, n)


def _dark_offsets(heatmaps: Tensor, x: Tensor, y: Tensor, sigma: float) -> Tensor:
    """DARK: the maximum of a quadratic fitted to the log heatmap around the arg-max (B, K, 2).

    DARK (Zhang et al. 2020) takes a Newton step on the log of a blurred heatmap; its zero-padded
    blur pulls a peak within ~3 sigma of the border by up to half a cell, and the step needs both
    neighbours. Fitting ``log h ~ a + b.u + u' C u / 2`` by least squares over the cells within
    1.5 sigma, weighted by ``h**2`` (Guo 2011: the weights undo the log's noise amplification),
    is exact for a Gaussian peak wherever the border cuts it, and smooths noise as DARK's blur.
    """
    radius = max(1, math.ceil(1.5 * sigma))
    n = 2 * radius + 1
    window = _patches(heatmaps, x, y, radius, mode="constant")  # outside the map: weight 0
    peak = window[..., radius, radius].clamp(min=1e-12)
    values = (window / peak[..., None, None]).clamp(min=0).flatten(2)  # (B, K, n * n)
    steps = torch.arange(-radius, radius + 1, dtype=heatmaps.dtype, device=heatmaps.device)
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    u, v = u.flatten(), v.flatten()
    design = torch.stack([torch.ones_like(u), u, v, u * u / 2, v * v / 2, u * v], dim=-1)
    weights = values**2
    normal = torch.einsum("ni,bkn,nj->bkij", design, weights, design)
    normal = normal + 1e-6 * torch.eye(6, dtype=normal.dtype, device=normal.device)
    rhs = torch.einsum("ni,bkn->bki", design, weights * values.clamp(min=1e-6).log())
    coef, info = torch.linalg.solve_ex(normal, rhs)
    gx, gy, hxx, hyy, hxy = coef.unbind(-1)[1:]
    det = hxx * hyy - hxy**2
    # A step needs a determined fit, a quadratic along each axis through three columns and
    # three rows of positive heatmap, and a maximum: a negative definite curvature, the fitted
    # Gaussian no wider than twice the window. Elsewhere (an untrained model's near-flat or
    # one-column maps) the step is a ratio of noise to noise, and the arg-max stands.
    positive = (values > 0).unflatten(-1, (n, n))
    supported = (positive.any(dim=-2).sum(-1) >= 3) & (positive.any(dim=-1).sum(-1) >= 3)
    flattest = (hxx + hyy) / 2 + (((hxx - hyy) / 2) ** 2 + hxy**2).sqrt()
    ok = (info == 0) & supported & (flattest < -1.0 / (2 * radius) ** 2) & (det > 1e-12)
    safe = torch.where(ok, det, 1.0)
    dx = torch.where(ok, -(hyy * gx - hxy * gy) / safe, 0.0)
    dy = torch.where(ok, -(hxx * gy - hxy * gx) / safe, 0.0)
    return torch.stack([dx, dy], dim=-1).clamp(-1, 1)


def flip_heatmaps(heatmaps: Tensor, permutation: list[int]) -> Tensor:
    """(B, K, h, w) heatmaps of mirrored crops -> of the crops: mirror and swap left / right."""
    return heatmaps.flip(-1)[:, permutation]


def crop_to_image(points: Tensor, matrices: Tensor) -> Tensor:
    """(B, K, 2) crop pixels through (B, 2, 3) crop-to-image affines -> COCO image pixels."""
    matrices = matrices.to(points.device, torch.float64)
    mapped = points.double() @ matrices[:, :, :2].transpose(1, 2) + matrices[:, None, :, 2]
    return mapped + COCO_OFFSET


def instance_scores(keypoint_scores: Tensor, box_scores: Tensor, threshold: float = 0.2) -> Tensor:
    """(B,) box score times the mean of the (B, K) keypoint scores above ``threshold``."""
    confident = keypoint_scores > threshold
    mean = (keypoint_scores * confident).sum(dim=1) / confident.sum(dim=1).clamp(min=1)
    return box_scores.to(mean) * mean


def heatmap_loss(heatmaps: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """MSE of (B, K, h, w) heatmaps, averaged over the keypoints whose (B, K) weight is 1."""
    per_keypoint = (heatmaps - targets).pow(2).mean(dim=(2, 3))
    return (per_keypoint * weights).sum() / weights.sum().clamp(min=1)
