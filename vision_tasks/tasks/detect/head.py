"""Detection head: decoupled class / box branches per pyramid level, the grid points they
predict at and the box decoding (softplus distances in stride units).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision_tasks import ops
from vision_tasks.layers import ConvBNAct

LEVELS = ("c3", "c4", "c5")
# Backbone levels a detector may read (``DetectTask(levels=...)``): a run of consecutive ones,
# since the neck fuses each level with its neighbour at half or double the resolution.
LEVEL_CHOICES = ("c2", "c3", "c4", "c5")


def check_levels(levels: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Return ``levels`` as a tuple if they are consecutive :data:`LEVEL_CHOICES`, finest first.

    A ``ValueError`` from a constructor is one ``error:`` line from ``tools/train.py``
    (``VisionCLI.instantiate_classes``)."""
    levels = tuple(levels)
    chosen = [LEVEL_CHOICES.index(level) for level in levels if level in LEVEL_CHOICES]
    if not levels or len(chosen) != len(levels) or chosen != list(range(chosen[0], chosen[-1] + 1)):
        raise ValueError(
            f"--model.levels must be consecutive backbone levels, finest first, out of "
            f"{', '.join(LEVEL_CHOICES)} (e.g. [c3, c4]); got {list(levels)}"
        )
    return levels


class DetectHead(nn.Module):
    """Decoupled class / box branches per pyramid level.

    ``forward([p3, p4, p5])`` with ``p_i`` (B, width, H_i, W_i) returns ``cls_logits``
    (B, N, num_classes) and ``box_regression`` (B, N, 4), N = sum of H_i * W_i over levels,
    points ordered level by level, row-major (see :func:`grid_points`).
    """

    def __init__(self, width: int, num_classes: int, num_levels: int = 3) -> None:
        super().__init__()
        self.cls_branches = nn.ModuleList(
            self._branch(width, num_classes) for _ in range(num_levels)
        )
        self.box_branches = nn.ModuleList(self._branch(width, 4) for _ in range(num_levels))
        prior = 0.01  # start every class score near 1% so the many negatives do not swamp early
        for branch in self.cls_branches:
            nn.init.constant_(branch[-1].bias, -math.log((1 - prior) / prior))

    @staticmethod
    def _branch(width: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(
            ConvBNAct(width, width), ConvBNAct(width, width), nn.Conv2d(width, out_channels, 1)
        )

    def forward(self, pyramid: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Raw class logits (B, N, C) and box regression (B, N, 4)."""
        cls = [b(p).flatten(2) for b, p in zip(self.cls_branches, pyramid)]
        box = [b(p).flatten(2) for b, p in zip(self.box_branches, pyramid)]
        return torch.cat(cls, dim=2).transpose(1, 2), torch.cat(box, dim=2).transpose(1, 2)


def grid_points(
    shapes: list[tuple[int, int]], strides: list[int], device=None
) -> tuple[Tensor, Tensor]:
    """Centres (N, 2) in input pixels and strides (N, 1) of every grid cell of every level."""
    points, point_strides = [], []
    for (height, width), stride in zip(shapes, strides):
        points.append((ops.cell_grid(height, width, device=device) + 0.5) * stride)
        point_strides.append(torch.full((height * width, 1), float(stride), device=device))
    return torch.cat(points), torch.cat(point_strides)


def decode_boxes(points: Tensor, strides: Tensor, box_regression: Tensor) -> Tensor:
    """Box regression (B, N, 4) -> xyxy boxes (B, N, 4): softplus distances in stride units."""
    distances = F.softplus(box_regression) * strides
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
