"""Small building blocks shared by the task heads: conv-BN-activation, necks, decoders.

Heads are ``nn.Module``s over feature maps (not images), so the single-task models and the
joint multi-task model feed them the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation


class ConvBNAct(Conv2dNormActivation):
    """torchvision's Conv2d (no bias) -> BatchNorm2d -> activation, with SiLU as the default
    activation (YOLO's) instead of ReLU; ``act=None`` leaves the activation out.

    A subclass only for that default: the children are still ``0`` (conv), ``1`` (norm) and
    ``2`` (activation), so checkpoints of the earlier hand-written block load unchanged.
    """

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
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel_size,
            stride=stride,
            groups=groups,
            activation_layer=act,
        )


class PANNeck(nn.Module):
    """FPN top-down + PAN bottom-up fusion of backbone levels into maps of one width.

    Args:
        in_channels: channels of each input level, finest first (e.g. c3, c4, c5).
        width: channels of every output level.

    Shapes:
        ``forward([c3, c4, c5])`` with ``c_i`` (B, in_channels[i], H_i, W_i), each level half the
        previous, returns ``[p3, p4, p5]`` with ``p_i`` (B, width, H_i, W_i).
    """

    def __init__(self, in_channels: list[int], width: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(c, width, 1) for c in in_channels)
        self.top_down = nn.ModuleList(ConvBNAct(width, width) for _ in in_channels[:-1])
        self.down = nn.ModuleList(ConvBNAct(width, width, stride=2) for _ in in_channels[:-1])
        self.bottom_up = nn.ModuleList(ConvBNAct(width, width) for _ in in_channels[:-1])

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Fuse the levels (see the class docstring for shapes)."""
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        # Top-down: coarse semantics flow to the fine levels.
        fused = [laterals[-1]]
        for i in range(len(laterals) - 2, -1, -1):
            upsampled = F.interpolate(fused[0], size=laterals[i].shape[-2:], mode="nearest")
            fused.insert(0, self.top_down[i](laterals[i] + upsampled))
        # Bottom-up: precise localisation flows back to the coarse levels.
        outputs = [fused[0]]
        for i in range(1, len(fused)):
            outputs.append(self.bottom_up[i - 1](fused[i] + self.down[i - 1](outputs[-1])))
        return outputs


class UNetDecoder(nn.Module):
    """U-Net decoder: c5 -> c4 -> c3 -> c2 -> stem -> input resolution, with skip connections.

    Each block upsamples (nearest) to the next finer level, concatenates that level's backbone
    map and applies two 3x3 ConvBNAct; the last block has no skip and doubles the stem's
    resolution, so with a stride-2 stem the output is at the input's full resolution.

    Args:
        in_channels: backbone channels per level, ``{"stem", "c2", "c3", "c4", "c5"}``
            (``Backbone.out_channels``).
        channels: output width of each block, coarse to fine: (c4, c3, c2, stem, full).
            A shorter tuple stops early: 3 blocks end at c2 (stride 4), e.g. for heatmaps.

    Shapes:
        ``forward(features)`` with ``features[level]`` (B, in_channels[level], H/s, W/s) for the
        level's stride s (2, 4, 8, 16, 32) returns (B, channels[-1], H / out_stride,
        W / out_stride). Skips are matched by size, so odd sizes work; padding the input to a
        multiple of 32 makes every level exactly half the next.

    Example:
        >>> trunk = Backbone("resnet18", weights="none")
        >>> decoder = UNetDecoder(trunk.out_channels)
        >>> decoder(trunk(torch.zeros(1, 3, 64, 96))).shape
        torch.Size([1, 16, 64, 96])
    """

    skip_levels = ("c4", "c3", "c2", "stem", None)

    def __init__(
        self,
        in_channels: dict[str, int],
        channels: tuple[int, ...] | list[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        if not 1 <= len(channels) <= len(self.skip_levels):
            raise ValueError(f"channels needs 1 to 5 block widths, got {list(channels)}")
        self.levels = self.skip_levels[: len(channels)]
        self.out_channels = int(channels[-1])
        self.out_stride = {"c4": 16, "c3": 8, "c2": 4, "stem": 2, None: 1}[self.levels[-1]]
        blocks, previous = [], in_channels["c5"]
        for level, width in zip(self.levels, channels):
            skip = in_channels[level] if level is not None else 0
            blocks.append(nn.Sequential(ConvBNAct(previous + skip, width), ConvBNAct(width, width)))
            previous = width
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Decode the feature dict (see the class docstring for shapes)."""
        return self.block_outputs(features)[-1]

    def block_outputs(self, features: dict[str, Tensor]) -> list[Tensor]:
        """Every block's output, coarse to fine: block ``i`` has ``channels[i]`` channels at its
        level's resolution (the last one is what ``forward`` returns)."""
        x, outputs = features["c5"], []
        for level, block in zip(self.levels, self.blocks):
            if level is None:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            else:
                skip = features[level]
                x = torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1)
            x = block(x)
            outputs.append(x)
        return outputs


class GeneralizedMeanPool(nn.Module):
    """GeM pooling (Radenovic et al. 2018): (B, C, h, w) -> (B, C), ``(mean x^p)^(1/p)``.

    ``p = 1`` is average pooling and ``p -> inf`` max pooling; ``p`` is learnt by default.
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features (B, C)."""
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class HeatmapHead(nn.Module):
    """Keypoint heatmaps: U-Net decoder c5 -> c4 -> c3 -> c2 (stride 4) -> 1x1 conv, one map each.

    Shapes: ``forward(features)`` with the backbone's dict -> (B, K, H / 4, W / 4).
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        num_keypoints: int,
        channels: tuple[int, int, int] = (128, 64, 64),
    ) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"head_channels needs 3 widths (c4, c3, c2), got {list(channels)}")
        self.decoder = UNetDecoder(in_channels, tuple(channels))
        self.out = nn.Conv2d(channels[-1], num_keypoints, 1)
        # Near-zero start: the first steps learn where peaks are, not to undo random noise.
        nn.init.normal_(self.out.weight, std=0.001)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Heatmaps (B, K, H / 4, W / 4)."""
        return self.out(self.decoder(features))
