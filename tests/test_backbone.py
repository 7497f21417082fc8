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


CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def _save_task_checkpoint(model, path) -> None:
    # What Lightning writes: the module's state dict under "state_dict", beside other entries.
    torch.save({"state_dict": model.state_dict(), "epoch": 3, "vision_tasks": {"task": "x"}}, path)


def test_a_checkpoint_of_another_task_seeds_the_backbone(tmp_path, caplog) -> None:
    from vision_tasks.tasks.classify import ClassifyTask
    from vision_tasks.tasks.detect import DetectTask

    detector = DetectTask(categories=CATEGORIES, image_size=64)
    path = tmp_path / "detect.ckpt"
    _save_task_checkpoint(detector, path)
    with caplog.at_level("INFO", logger="vision_tasks"):
        classifier = ClassifyTask(categories=CATEGORIES, backbone_weights=str(path))
    source = detector.backbone.state_dict()
    for key, value in classifier.backbone.state_dict().items():
        torch.testing.assert_close(value, source[key], msg=key)
    expected = len(torchvision.models.resnet18().state_dict()) - 2  # all but fc.weight / bias
    assert f"loaded {expected} tensors from {path}" in caplog.text


def test_a_truncated_two_channel_homography_trunk_seeds_an_rgb_backbone(tmp_path) -> None:
    from vision_tasks.tasks.homography import HomographyTask

    homography = HomographyTask(architecture="correlation", feature_level="c3")
    homography_2ch = HomographyTask(architecture="regression")
    path, path_2ch = tmp_path / "siamese.ckpt", tmp_path / "regression.ckpt"
    _save_task_checkpoint(homography, path)
    _save_task_checkpoint(homography_2ch, path_2ch)
    # A 1-channel trunk up to c3: layer3 / layer4 keep their random init.
    trunk = Backbone("resnet18", weights=str(path))
    torch.testing.assert_close(
        trunk.stages[1][0].conv1.weight, homography.backbone.stages[1][0].conv1.weight
    )
    one = homography.backbone.stem[0].weight
    torch.testing.assert_close(trunk.stem[0].weight, (one / 3).repeat(1, 3, 1, 1))
    # 2 channels -> RGB: each RGB filter is the mean of the two, scaled as adapt_first_conv does.
    two = homography_2ch.backbone.stem[0].weight
    rgb = Backbone("resnet18", weights=str(path_2ch)).stem[0].weight
    torch.testing.assert_close(rgb, (two.mean(dim=1, keepdim=True) * 2 / 3).repeat(1, 3, 1, 1))
    # ... and into another 2-channel model its filters arrive unchanged.
    again = Backbone("resnet18", weights=str(path_2ch), in_channels=2).stem[0].weight
    torch.testing.assert_close(again, two)


def test_a_plain_state_dict_file_of_the_module_names_loads(tmp_path) -> None:
    source = Backbone("resnet18", weights="none")
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    trunk = Backbone("resnet18", weights=str(path))
    torch.testing.assert_close(trunk.stages[2][1].conv2.weight, source.stages[2][1].conv2.weight)


def test_a_file_that_is_no_trunk_is_one_clear_error(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"head.weight": torch.zeros(3)}}, path)
    with pytest.raises(
        BackboneWeightsError,
        match=r"other.pth is not a resnet18 checkpoint: "
        r"\d+ of its \d+ trunk tensors are missing \(first: conv1.weight\)",
    ):
        Backbone("resnet18", weights=str(path))
    # A trunk with a stage in the middle missing is not a truncated trunk either.
    state = {
        k: v
        for k, v in Backbone("resnet18", weights="none").state_dict().items()
        if not k.startswith("stages.1.")
    }
    torch.save(state, path)
    with pytest.raises(BackboneWeightsError, match=r"first: layer2\."):
        Backbone("resnet18", weights=str(path))


def test_cli_refuses_bad_backbone_weights_with_one_line(tmp_path, data_args, monkeypatch) -> None:
    from vision_tasks.cli import train_main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "other.pth"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(SystemExit) as stop:
        train_main(
            [
                "--task",
                "classify",
                *data_args,
                "--model.backbone_weights",
                str(path),
                "--trainer.fast_dev_run",
                "true",
            ]
        )
    message = str(stop.value.code)
    assert message.startswith("error: ") and "other.pth is not a resnet18 checkpoint" in message
    assert "\n" not in message


def test_a_reloaded_checkpoint_does_not_read_its_starting_weights_again(tmp_path) -> None:
    from vision_tasks.tasks.classify import ClassifyTask

    start = tmp_path / "start.pth"
    torch.save(torchvision.models.resnet18().state_dict(), start)
    model = ClassifyTask(categories=CATEGORIES, backbone_weights=str(start))
    trainer_like = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": "2.5.0",
    }
    torch.save(trainer_like, tmp_path / "m.ckpt")
    start.unlink()  # moved or deleted since: the checkpoint alone must be enough
    restored = ClassifyTask.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    torch.testing.assert_close(restored.backbone.stem[0].weight, model.backbone.stem[0].weight)
