"""ResNet trunk shared by every task: torchvision ResNets returning multi-scale feature maps."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

log = logging.getLogger(__name__)

ARCHITECTURES = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
}
LEVELS = ("stem", "c2", "c3", "c4", "c5")
STRIDES = {"stem": 2, "c2": 4, "c3": 8, "c4": 16, "c5": 32}
# Prefixes under which a trunk's weights appear in checkpoints people commonly have on disk.
_STRIP_PREFIXES = ("module.", "model.", "backbone.body.", "backbone.trunk.", "backbone.", "body.")


class BackboneWeightsError(RuntimeError):
    """Backbone weights could not be found or do not fit the architecture."""


class Backbone(nn.Module):
    """A torchvision ResNet that returns ``{"stem", "c2", "c3", "c4", "c5"}`` feature maps.

    Args:
        name: ``resnet18``, ``resnet34`` or ``resnet50``.
        weights: ``imagenet`` (torchvision's weights, from its cache folder), ``none`` (random
            init) or a path to a file holding the trunk's weights: a torchvision state dict,
            a ``{"state_dict": ...}`` file, or a checkpoint of any vision_tasks task.
        in_channels: input channels; when not 3, conv1 is adapted from the RGB filters.
        freeze_at: 0 freezes nothing, 1 the stem, k >= 2 the stem and stages c2..c<k>.
        norm_eval: keep BatchNorm layers in eval mode (frozen statistics) while training.
        last_stride: 1 keeps c5 at stride 16 (common in re-identification), else 2.

    Example:
        >>> trunk = Backbone("resnet18", weights="none")
        >>> {k: v.shape[1] for k, v in trunk(torch.zeros(1, 3, 64, 64)).items()}["c5"]
        512
    """

    def __init__(
        self,
        name: str = "resnet18",
        weights: str = "imagenet",
        in_channels: int = 3,
        freeze_at: int = 0,
        norm_eval: bool = False,
        last_stride: int = 2,
    ) -> None:
        super().__init__()
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(ARCHITECTURES)}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        build, _ = ARCHITECTURES[name]
        resnet = build(weights=None)
        if weights != "none":
            trunk = load_trunk_state_dict(name, weights)
            first = trunk.pop("conv1.weight")
            resnet.load_state_dict(trunk, strict=False)
            if first.shape[1] != 3:  # a homography trunk (stacked grey patches)
                resnet.conv1 = nn.Conv2d(first.shape[1], 64, 7, 2, 3, bias=False)
            with torch.no_grad():
                resnet.conv1.weight.copy_(first)
        if in_channels != resnet.conv1.in_channels:
            resnet.conv1 = adapt_first_conv(resnet.conv1, in_channels)
        if last_stride == 1:
            _set_last_stride_one(resnet.layer4)
        self.name = name
        self.norm_eval = norm_eval
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.maxpool = resnet.maxpool
        self.stages = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        expansion = 4 if name == "resnet50" else 1
        widths = (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)
        self.out_channels: dict[str, int] = dict(zip(LEVELS, widths))
        self.strides: dict[str, int] = dict(STRIDES)
        if last_stride == 1:
            self.strides["c5"] = 16
        self.freeze(freeze_at)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Map (B, C, H, W) images to feature maps keyed by level (see ``strides``)."""
        features = {"stem": self.stem(x)}
        out = self.maxpool(features["stem"])
        for level, stage in zip(LEVELS[1:], self.stages):
            out = stage(out)
            features[level] = out
        return features

    def truncate(self, last_level: str) -> None:
        """Drop the stages after ``last_level`` (e.g. ``c3``): a head that reads only early levels
        then neither computes nor stores the rest."""
        keep = LEVELS.index(last_level)
        self.stages = self.stages[:keep]
        self.out_channels = {k: v for k, v in self.out_channels.items() if LEVELS.index(k) <= keep}
        self.strides = {k: v for k, v in self.strides.items() if LEVELS.index(k) <= keep}

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients to the stem (``freeze_at >= 1``) and stages c2..c<freeze_at>."""
        self.freeze_at = freeze_at
        modules = [self.stem, *self.stages][:freeze_at]
        for module in modules:
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> Backbone:
        """Set train mode, keeping frozen parts and (with ``norm_eval``) all BatchNorms in eval."""
        super().train(mode)
        if mode:
            for module in [self.stem, *self.stages][: self.freeze_at]:
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self


def imagenet_weights_file(name: str) -> Path:
    """Where torchvision's cache keeps the ImageNet weights of ``name``."""
    _, weights = ARCHITECTURES[name]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_trunk_state_dict(name: str, weights: str) -> dict[str, Tensor]:
    """Read trunk weights (``imagenet`` or a file path) as a torchvision ResNet state dict.

    A file may hold a torchvision state dict, a ``{"state_dict" | "model": ...}`` container
    (a Lightning checkpoint of any vision_tasks task among them) with the usual prefixes, or a
    truncated trunk (homography's, up to c3 / c4): stages it lacks keep their random init.
    """
    if weights == "imagenet":
        path = imagenet_weights_file(name)
        if not path.is_file():
            _download_imagenet_weights(name, path)
    else:
        path = Path(weights)
        if not path.is_file():
            raise BackboneWeightsError(f"backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to a user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BackboneWeightsError(
            f"cannot read backbone weights {path} as a plain state dict "
            f"(loaded with weights_only=True): {reason}"
        ) from None
    trunk, absent = _trunk_keys(name, path, state)
    stages = f"; not in the file, left at random init: {', '.join(absent)}" if absent else ""
    log.info("backbone %s: loaded %d tensors from %s%s", name, len(trunk), path, stages)
    return trunk


def _download_imagenet_weights(name: str, path: Path) -> None:
    _, weights = ARCHITECTURES[name]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(path), progress=True)
    except Exception:  # noqa: BLE001 - offline, proxy, disk: the remedy is the same
        raise BackboneWeightsError(
            f"ImageNet weights for {name} are not cached and could not be downloaded. "
            f"Put the file {path.name} (from {weights.url}) into the folder {path.parent}/ "
            f"(set $TORCH_HOME to use another cache), pass a local file with "
            f"--model.backbone_weights PATH, or train from scratch with "
            f"--model.backbone_weights none."
        ) from None


def _own_name(key: str) -> str:
    """Map this module's parameter names (``stem.0``, ``stages.2``) to torchvision's."""
    if key.startswith("stem.0."):
        return "conv1." + key[len("stem.0.") :]
    if key.startswith("stem.1."):
        return "bn1." + key[len("stem.1.") :]
    if key.startswith("stages.") and key[len("stages.")].isdigit():
        stage, rest = key[len("stages.") :].split(".", 1)
        return f"layer{int(stage) + 1}.{rest}"
    return key


def _trunk_keys(name: str, path: Path, state: object) -> tuple[dict[str, Tensor], list[str]]:
    """Unwrap common checkpoint containers and prefixes; drop the classifier.

    Returns the trunk's tensors under torchvision's names and the trailing stages the file
    lacks (a truncated trunk). ``conv1.weight`` may take any number of input channels.
    """
    if isinstance(state, dict):
        for container in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(container), dict):
                state = state[container]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path} does not hold a state dict of tensors")
    reference = ARCHITECTURES[name][0](weights=None).state_dict()
    trunk = {}
    for key, value in state.items():
        for prefix in ("", *_STRIP_PREFIXES):
            candidate = _own_name(key[len(prefix) :]) if key.startswith(prefix) else ""
            if candidate in reference and not candidate.startswith("fc."):
                trunk.setdefault(candidate, value)
                break
    wanted = [k for k in reference if not k.startswith("fc.")]
    missing = [k for k in wanted if k not in trunk]
    absent = sorted({k.split(".")[0] for k in missing if k.startswith("layer")})
    # Only whole trailing stages may be absent (a truncated trunk); anything else is not a trunk.
    trailing = [f"layer{i}" for i in range(5 - len(absent), 5)]
    partial = [k for k in missing if k.split(".")[0] not in absent]
    if "conv1.weight" not in trunk or partial or absent != trailing or len(absent) > 3:
        first = (partial or missing)[0]
        raise BackboneWeightsError(
            f"{path} is not a {name} checkpoint: {len(missing)} of its {len(wanted)} trunk "
            f"tensors are missing (first: {first}); found {len(trunk)}"
        )
    for key, value in trunk.items():
        expected = reference[key].shape
        channels_only = key == "conv1.weight" and value.shape[:1] + value.shape[2:] == (
            expected[:1] + expected[2:]
        )
        if value.shape != expected and not channels_only:
            raise BackboneWeightsError(
                f"{path} does not fit {name}: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected)}"
            )
    return trunk, absent


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Return a copy of ``conv`` taking ``in_channels`` inputs, its filters built from the RGB ones.

    Every new channel gets the mean RGB filter scaled by ``3 / in_channels``: a grey image (or a
    stack of grey patches) then produces exactly the activations the RGB network gave, so the
    pretrained statistics of every later layer still hold. One channel = the summed filter.
    """
    weight = conv.weight.detach()
    mean_filter = weight.mean(dim=1, keepdim=True) * (weight.shape[1] / in_channels)
    new_weight = mean_filter.repeat(1, in_channels, 1, 1)
    adapted = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        adapted.weight.copy_(new_weight)
    return adapted


def _set_last_stride_one(stage: nn.Sequential) -> None:
    first = stage[0]
    first.conv1.stride = (1, 1) if first.conv1.stride == (2, 2) else first.conv1.stride
    if hasattr(first, "conv2") and first.conv2.stride == (2, 2):
        first.conv2.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
