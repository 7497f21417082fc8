"""Benchmark helpers: Conv+BN folding keeps the outputs, results files merge by task, sizes."""

from __future__ import annotations

import json
from functools import partial

import torch

from vision_tasks import benchmark
from vision_tasks.backbone import Backbone
from vision_tasks.benchmark import fuse_conv_bn, measure, merge_results


def test_folding_batchnorm_keeps_the_backbone_outputs() -> None:
    torch.manual_seed(0)
    model = Backbone("resnet18", weights="none").eval()
    for module in model.modules():  # non-trivial statistics, or folding would be a no-op
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    fused = fuse_conv_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected, got = model(images), fused(images)
    for level in expected:
        torch.testing.assert_close(got[level], expected[level], rtol=1e-4, atol=1e-4)


def test_results_of_other_tasks_survive_a_new_run(tmp_path) -> None:
    path = tmp_path / "results.json"
    first = merge_results(path, {"run": 1}, [{"task": "detect", "options": {"fuse": False}}], [])
    path.write_text(json.dumps(first))
    second = merge_results(
        path,
        {"run": 2},
        [{"task": "detect", "options": {"fuse": True}}, {"task": "segment", "options": {}}],
        [{"task": "detect", "headline": {"AP": 0.5}}],
    )
    runs = {(e["task"], json.dumps(e["options"])): e["environment"]["run"] for e in second["speed"]}
    assert runs == {
        ("detect", '{"fuse": false}'): 1,
        ("detect", '{"fuse": true}'): 2,
        ("segment", "{}"): 2,
    }
    assert [q["headline"] for q in second["quality"]] == [{"AP": 0.5}]


def test_image_size_is_the_network_input_in_training_too() -> None:
    # Segmentation trains on crop_size crops: --image-size 96 must time 96x96 inputs, not crops.
    model, batch = benchmark.build("segment", 96, batch_size=2)
    assert batch["image"].shape[-2:] == (96, 96)
    assert model.hparams.image_size == 96


def test_siamese_homography_backbone_is_timed_on_single_patches(monkeypatch) -> None:
    # The correlation model feeds its trunk one grey patch at a time: the bare-backbone timing
    # must do the same (it crashed on the stacked 2-channel pairs). Compared by the inputs the
    # trunk receives, not by one-shot timings, which swing on a busy CI machine.
    monkeypatch.setattr(measure, "loader_speed", lambda *args, **kwargs: {})
    model, batch = benchmark.build("homography", 64, batch_size=2)
    seen: list[tuple[int, ...]] = []
    hook = model.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    with torch.inference_mode():
        model.eval()(batch["image"])
    hook.remove()
    assert seen == [(4, 1, 64, 64)]  # two pairs -> four grey patches, one trunk pass
    assert tuple(model.backbone_input(batch["image"]).shape) == seen[0]

    result = benchmark.speed("homography", image_size=64, repeats=1, warmup=0)
    for part in ("train", "latency_b1", "throughput_b16"):
        assert 0 < result[part]["backbone_median_ms"] < float("inf")
        assert 0 < result[part]["median_ms"] < float("inf")


def test_joint_training_step_runs_every_head_and_each_heads_cost_is_timed() -> None:
    # The joint model's per-box heads read the batch's boxes: a step on images alone would leave
    # keypoints and re-ID (and the identity loss, sized at fit) out of the timing.
    model, batch = benchmark.build("multitask", 64, batch_size=4)
    # Colour-shifted images carry no identities: without any, re-ID would rightly sit out.
    batch["colour_shifted"] = torch.zeros(4, dtype=torch.bool)
    assert sum(len(boxes) for boxes in model.labelled_instances(batch)["reid_boxes"]) >= 2
    assert model.identity_classifier is not None
    calls: list[str] = []
    for name in ("keypoint_head", "reid_head", "identity_classifier"):
        getattr(model, name).register_forward_hook(lambda *_, name=name: calls.append(name))
    no_autocast = partial(torch.autocast, "cpu", enabled=False)
    measure._train_step(model.train(), batch, no_autocast)()
    assert sorted(calls) == ["identity_classifier", "keypoint_head", "reid_head"]

    costs = measure._train_without_each_head(
        model, batch, 64, no_autocast, torch.contiguous_format, 1, 0
    )
    assert set(costs) == set(model.heads)
    for cost in costs.values():
        assert cost["median_ms"] > 0 and cost["saved_share"] < 1


def test_functions_timed_in_turns_are_each_called_once_per_round() -> None:
    calls: list[str] = []
    times = benchmark.timed_in_turns(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert set(times) == {"a", "b"} and all(t["min_ms"] <= t["median_ms"] for t in times.values())
