"""Segmentation head and losses: U-Net decoder + per-pixel classifier; cross-entropy over the
known pixels plus Dice.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vision_tasks.layers import UNetDecoder
from vision_tasks.tasks.segment.data import IGNORE_INDEX


class SegmentHead(nn.Module):
    """U-Net decoder over the backbone dict -> 1x1 classifier.

    ``forward(features)`` -> (B, num_classes, H / s, W / s) logits, s = ``decoder.out_stride``
    (1 with the default five decoder blocks).
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        num_classes: int,
        channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        self.decoder = UNetDecoder(in_channels, channels)
        self.classifier = nn.Conv2d(self.decoder.out_channels, num_classes, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Class logits at the decoder's output stride."""
        return self.classifier(self.decoder(features))

    def forward_blocks(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The logits and every decoder block's output (another head may read them)."""
        blocks = self.decoder.block_outputs(features)
        return self.classifier(blocks[-1]), blocks


def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | None = None,
    dice_weight: float = 0.0,
    fractions: Tensor | None = None,
) -> dict[str, Tensor]:
    """Cross-entropy (ignore index honoured) plus optional soft Dice.

    Args:
        logits: (B, C, H, W) raw scores.
        target: (B, H, W) class indices, ``IGNORE_INDEX`` where unknown.
        class_weights: optional (C,) cross-entropy weights.
        dice_weight: weight of the Dice term (0: off).
        fractions: optional (B, C, H, W) class fractions of each pixel (all zeros where
            unknown), trained on instead of ``target``: the cross-entropy against a
            distribution, each pixel weighted by its known fraction.

    Returns:
        ``{"loss", "ce"[, "dice"]}``; the cross-entropy is a (weighted) mean over the known
        pixels and 0, not NaN, when a batch has none.
    """
    if fractions is None:
        known = (target != IGNORE_INDEX).unsqueeze(1)
        fractions = F.one_hot(target.masked_fill(~known[:, 0], 0), logits.shape[1])
        fractions = fractions.permute(0, 3, 1, 2).float() * known
    weights = fractions if class_weights is None else fractions * class_weights[:, None, None]
    ce = -(weights * logits.log_softmax(dim=1)).sum() / weights.sum().clamp(min=1e-6)
    losses = {"ce": ce, "loss": ce}
    if dice_weight > 0:
        losses["dice"] = dice_loss(logits, fractions)
        losses["loss"] = ce + dice_weight * losses["dice"]
    return losses


def dice_loss(logits: Tensor, fractions: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice averaged over classes, on the known pixels of (B, C, H, W) logits against
    (B, C, H, W) class fractions (one-hot where a pixel's class is known, all zeros where not)."""
    known = fractions.sum(dim=1, keepdim=True)
    probs = logits.softmax(dim=1) * known
    intersection = (probs * fractions).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + fractions.sum(dim=(0, 2, 3))
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()
