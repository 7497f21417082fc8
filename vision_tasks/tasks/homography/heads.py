"""Homography heads and their losses: DeTone's pooled regression and the correlation matcher."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from vision_tasks import ops

# ---- regression (HomographyNet) -----------------------------------------------------------------


class HomographyHead(nn.Module):
    """1x1 reduce -> adaptive pool to ``pool_size`` (keeps where things are) -> MLP -> 8 offsets.

    (B, C, h, w) features -> (B, 8) corner offsets divided by rho, ordered x0, y0, ..., x3, y3.
    """

    def __init__(
        self,
        in_channels: int,
        reduce_channels: int = 128,
        pool_size: int = 2,
        hidden: int = 512,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.reduce = Conv2dNormActivation(in_channels, reduce_channels, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(reduce_channels * pool_size**2, hidden),
            # Not ReLU: with AdamW every hidden unit died in the first epoch of a benchmark run
            # (constant output, no gradient left for the backbone); leaky units cannot die.
            nn.LeakyReLU(0.1, inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 8),
        )
        # Start near zero offsets (the identity baseline, not a random homography); a weight of
        # exactly zero would also zero the gradient reaching every layer before it.
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, 8)."""
        return self.mlp(self.pool(self.reduce(features)))


def homography_loss(
    outputs: Tensor, target: Tensor, kind: Literal["smooth_l1", "l2"] = "smooth_l1"
) -> Tensor:
    """Regression loss between (B, 8) predicted and true offsets (both divided by rho)."""
    if kind == "l2":
        return F.mse_loss(outputs, target)
    return F.smooth_l1_loss(outputs, target, beta=0.1)


# ---- correlation ----------------------------------------------------------------------------


class CorrelationHead(nn.Module):
    """Global correlation of A's feature map with B's.

    (B, C, h, w) features of A and of B -> ``{"logits": (B, N, N)}``, the scaled cosine
    similarity of each A cell (rows, N = h w, row-major) with each B cell. The matches are
    taken from it in decoding (:func:`windowed_soft_argmax`): its arg-max jumps a cell on a
    1e-7 difference between near-equal logits, so it stays out of the exported graph, whose
    outputs ONNX Runtime must reproduce to 1e-4.
    """

    def __init__(self, in_channels: int, embed_channels: int = 64) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, embed_channels, kernel_size=1)
        # Cosine similarity needs a temperature to make a peaked softmax; learned, from 1/0.1.
        self.log_scale = nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))

    def forward(self, features_a: Tensor, features_b: Tensor) -> dict[str, Tensor]:
        """(B, C, h, w) twice -> ``{"logits": (B, N, N)}``."""
        a = F.normalize(self.project(features_a).flatten(2), dim=1)  # (B, E, N)
        b = F.normalize(self.project(features_b).flatten(2), dim=1)
        return {"logits": self.log_scale.exp() * (a.transpose(1, 2) @ b)}


def windowed_soft_argmax(logits: Tensor, window: int = 1) -> tuple[Tensor, Tensor]:
    """Where each A cell lies in B: the soft-argmax over the ``window``-cell neighbourhood of its
    best match (sub-cell precision without the pull of distant, ambiguous peaks).

    Args:
        logits: (B, N, N) correlation of each A cell with each cell of B's square grid.

    Returns:
        ``(matches, confidence)``: (B, N, 2) positions in B in feature cells (x, y) and (B, N)
        the softmax mass inside the neighbourhood.
    """
    side = round(logits.shape[-1] ** 0.5)
    grid = ops.cell_grid(side, side).to(logits)  # (N, 2)
    peak = grid[logits.argmax(-1)]  # (B, N, 2)
    near = ((grid - peak[..., None, :]).abs() <= window).all(-1)  # (B, N, N)
    mass = logits.softmax(-1) * near
    confidence = mass.sum(-1)
    return (mass / confidence[..., None]) @ grid, confidence


def true_matches(corners: Tensor, points_a: Tensor, patch_size: int) -> Tensor:
    """Where (B, N, 2) points of patch A lie in patch B, given the (B, 4, 2) true corners.

    Patch B at ``q`` shows A at ``H q`` (H: square -> corners), so A's point ``p`` is at
    ``H^-1 p`` in B. Returns (B, N, 2) in patch pixels (float64).
    """
    homography = ops.corners_to_homography(corners.double(), patch_size)
    return ops.apply_homography(torch.linalg.inv(homography), points_a.double())


def correlation_loss(logits: Tensor, matches: Tensor, target: Tensor, size: int) -> Tensor:
    """Dense matching loss of one pair batch, all in feature cells.

    Args:
        logits: (B, N, N) correlation of each A cell with each B cell.
        matches: (B, N, 2) predicted positions in B.
        target: (B, N, 2) true positions in B; those outside the ``size`` x ``size`` grid of B
            (no match to find) are left out.

    Returns:
        Cross-entropy against the bilinear split of the true position over its 4 neighbouring
        cells (a target whose mean is the true position) + smooth L1 of the soft-argmax.
    """
    inside = ((target >= 0) & (target <= size - 1)).all(-1)  # (B, N)
    if not inside.any():
        return logits.sum() * 0.0
    grid = ops.cell_grid(size, size).to(logits)
    split = (1 - (grid - target[..., None, :].to(logits)).abs()).clamp_min(0).prod(-1)
    cross_entropy = -(split * logits.log_softmax(-1)).sum(-1)
    position = F.smooth_l1_loss(matches, target.to(matches), beta=0.25, reduction="none").sum(-1)
    return (cross_entropy + position)[inside].mean()
