"""Backbone contract: shapes/strides per depth, freezing, conv1 adaptation, weight loading."""

from __future__ import annotations

import pickle
import urllib.error

import pytest
import torch
import torchvision

from vision_tasks.backbone import (
    Backbone,
    BackboneWeightsError,
    adapt_first_conv,
    imagenet_weights_file,
)

WIDTHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_feature_shapes_and_strides(name: str) -> None:
    trunk = Backbone(name, weights="none").eval()
    with torch.no_grad():
        features = trunk(torch.zeros(2, 3, 64, 96))
    assert list(features) == ["stem", "c2", "c3", "c4", "c5"]
    for level, feature in features.items():
        stride = trunk.strides[level]
        assert feature.shape == (2, trunk.out_channels[level], 64 // stride, 96 // stride)
    assert trunk.out_channels["c5"] == WIDTHS[name]


def test_freeze_at_stops_gradients_and_keeps_frozen_bn_in_eval() -> None:
    trunk = Backbone("resnet18", weights="none", freeze_at=2)
    trunk.train()
    assert not any(p.requires_grad for p in trunk.stem.parameters())
    assert not any(p.requires_grad for p in trunk.stages[0].parameters())
    assert all(p.requires_grad for p in trunk.stages[1].parameters())
    assert not trunk.stem[1].training and trunk.stages[1][0].bn1.training
    trunk(torch.randn(2, 3, 32, 32))["c5"].sum().backward()
    assert trunk.stem[0].weight.grad is None
    assert trunk.stages[1][0].conv1.weight.grad is not None


def test_norm_eval_keeps_every_batchnorm_frozen() -> None:
    trunk = Backbone("resnet18", weights="none", norm_eval=True).train()
    norms = [m for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)


def test_conv1_adaptation_preserves_response_to_grey_input() -> None:
    rgb = torch.nn.Conv2d(3, 8, 3, bias=False)
    grey = torch.rand(1, 1, 9, 9)
    one = adapt_first_conv(rgb, 1)
    torch.testing.assert_close(one(grey), rgb(grey.expand(1, 3, 9, 9)))
    # Two stacked grey patches: the same response as one grey image seen in RGB.
    two = adapt_first_conv(rgb, 2)
    torch.testing.assert_close(two(grey.expand(1, 2, 9, 9)), rgb(grey.expand(1, 3, 9, 9)))
    assert two.weight.shape == (8, 2, 3, 3)


def test_in_channels_two_runs_end_to_end() -> None:
    trunk = Backbone("resnet18", weights="none", in_channels=2).eval()
    assert trunk(torch.zeros(1, 2, 64, 64))["c5"].shape == (1, 512, 2, 2)


def test_loads_torchvision_state_dict_from_path(tmp_path) -> None:
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    trunk = Backbone("resnet18", weights=str(path))
    torch.testing.assert_close(trunk.stem[0].weight, reference.conv1.weight)
    torch.testing.assert_close(
        trunk.stages[3][1].bn2.running_var, reference.layer4[1].bn2.running_var
    )


def test_wrong_architecture_checkpoint_is_refused(tmp_path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(BackboneWeightsError, match="does not fit resnet18|not a resnet18"):
        Backbone("resnet18", weights=str(path))


def test_pickle_payload_is_refused(tmp_path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("payload executed",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.weight": Payload()}, handle)
    with pytest.raises(BackboneWeightsError, match="weights_only=True"):
        Backbone("resnet18", weights=str(path))


def test_offline_imagenet_names_file_and_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = imagenet_weights_file("resnet18")
    assert expected.parent == tmp_path / "hub" / "checkpoints"
    with pytest.raises(BackboneWeightsError) as error:
        Backbone("resnet18", weights="imagenet")
    message = str(error.value)
    assert expected.name in message and str(expected.parent) in message


def test_imagenet_weights_read_from_torch_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    path = imagenet_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    trunk = Backbone("resnet18", weights="imagenet")
    torch.testing.assert_close(trunk.stages[0][0].conv1.weight, reference.layer1[0].conv1.weight)


def test_last_stride_one_keeps_c5_at_stride_16() -> None:
    trunk = Backbone("resnet18", weights="none", last_stride=1).eval()
    assert trunk(torch.zeros(1, 3, 64, 64))["c5"].shape[-1] == 4
    assert trunk.strides["c5"] == 16
