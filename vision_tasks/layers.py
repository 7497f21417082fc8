"""Small building blocks shared by the task heads: conv-BN-activation, necks, decoders.

Heads are ``nn.Module``s over feature maps (not images), so the single-task models and the
joint multi-task model feed them the same way.
"""

from __future__ import annotations

from torch import Tensor, nn


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation (SiLU by default)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.SiLU,
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            act(inplace=True) if act is not None else nn.Identity(),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Sequential's forward
        return super().forward(x)
