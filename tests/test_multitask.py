"""Joint multi-task model: one shared forward, masked losses, loss weighting, mixed files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from vision_tasks.tasks.multitask import MultiTaskData, MultiTaskTask, weighted_total

ALL_HEADS = ["classify", "detect", "segment", "keypoints", "reid"]
SIZE = 64


def make_data(tiny_coco, train_json=None, train_images=None, batch_size=4) -> MultiTaskData:
    data = MultiTaskData(
        train_json or str(tiny_coco.train_json),
        train_images or str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=SIZE,
        batch_size=batch_size,
        num_workers=0,
    )
    data.setup("fit")
    return data


def make_model(data: MultiTaskData, heads=ALL_HEADS, **kwargs) -> MultiTaskTask:
    torch.manual_seed(0)
    return MultiTaskTask(
        data.categories, SIZE, heads=heads, num_identities=len(data.identity_labels), **kwargs
    )


def batch_of(data: MultiTaskData, image_ids: list[int]) -> dict:
    dataset = data.datasets["val"]
    positions = [dataset.index.image_ids.index(i) for i in image_ids]
    return data.collate([dataset[p] for p in positions])


def images_with_people(data: MultiTaskData) -> list[int]:
    index = data.index("val")
    return [
        i
        for i in index.image_ids
        if any(a.get("num_keypoints", 0) > 0 for a in index.annotations(i))
    ]


@pytest.fixture
def data(tiny_coco) -> MultiTaskData:
    data = make_data(tiny_coco)
    data.setup("validate")
    return data


@pytest.mark.parametrize("reid_channels", [0, 48])  # the PAN pooled directly, or a tower first
def test_one_forward_gives_every_output_with_documented_shapes_and_one_backbone_call(
    data, reid_channels
):
    model = make_model(data, heads=[*ALL_HEADS, "instance"], reid_channels=reid_channels)
    embedding_width = reid_channels or 64  # the neck's width when no tower
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    data.datasets["train"].instance_masks = True
    batch = next(iter(data.train_dataloader()))
    outputs = model.forward_batch(batch)
    assert len(calls) == 1
    b, c = batch["image"].shape[0], len(data.categories)
    points = sum((SIZE // s) ** 2 for s in (8, 16, 32))
    assert outputs["cls_logits"].shape == (b, points, c)
    assert outputs["box_regression"].shape == (b, points, 4)
    assert outputs["mask_coeffs"].shape == (b, points, 32)
    assert outputs["protos"].shape == (b, 32, SIZE // 4, SIZE // 4)
    losses = model.compute_loss(outputs, batch)
    assert {"loss_detect", "loss_keypoints", "loss_instance"} <= set(losses)
    assert torch.isfinite(losses["loss_instance"]) and losses["loss_instance"] > 0
    assert outputs["segment"].shape == (b, c + 1, SIZE, SIZE)
    assert outputs["classify"].shape == (b, c)
    people = sum(int(r.sum()) for r in outputs["truth"]["keypoint_rows"])
    width, height = model.crop_size
    assert people > 0
    assert outputs["keypoints"]["heatmaps"].shape == (people, 17, height // 4, width // 4)
    identities = sum(int(r.sum()) for r in outputs["truth"]["reid_rows"])
    embedding = outputs["reid"]["embedding"]
    assert embedding.shape == (identities, embedding_width)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(identities), atol=1e-5)
    assert outputs["reid"]["logits"].shape == (identities, len(data.identity_labels))

    # Inference: the per-box heads read the detector's boxes, still from the one forward.
    model.eval()
    calls.clear()
    with torch.no_grad():
        found = model(batch["image"])["on_detections"]
    assert len(calls) == 1
    assert len(found["detections"]) == b
    kept = sum(len(boxes) for boxes, _, _ in found["detections"])
    if found["reid"] is not None:
        assert found["reid"]["embedding"].shape == (kept, embedding_width)


def test_sample_without_keypoint_labels_contributes_zero_keypoint_gradient(data):
    model = make_model(data, heads=["detect", "keypoints"])
    first, second = images_with_people(data)[:2]
    batch = batch_of(data, [first, second])
    batch["keypoints"][1][..., 2] = 0  # the second image's file has no keypoint labels
    # Eval mode: BatchNorm then uses running statistics, so samples do not mix through it.
    model.eval()
    images = batch["image"].clone().requires_grad_(True)
    batch["image"] = images
    outputs = model.forward_batch(batch)
    model.head_losses(outputs, batch)["keypoints"].backward()
    assert images.grad[0].abs().sum() > 0
    assert torch.equal(images.grad[1], torch.zeros_like(images.grad[1]))

    # A batch whose only sample lacks keypoints has no keypoint term: the head gets no gradient.
    model.train()
    only_unlabelled = batch_of(data, [second])
    only_unlabelled["keypoints"][0][..., 2] = 0
    model.zero_grad()
    losses = model.compute_loss(model.forward_batch(only_unlabelled), only_unlabelled)
    assert "loss_keypoints" not in losses
    losses["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.keypoint_head.parameters())
    model.zero_grad()
    labelled = batch_of(data, [first])
    model.compute_loss(model.forward_batch(labelled), labelled)["loss"].backward()
    assert any(p.grad is not None and p.grad.any() for p in model.keypoint_head.parameters())


def test_colour_shifted_images_train_no_identities(tiny_coco, data) -> None:
    """An identity is its colours: a colour-shifted image keeps its boxes, loses its re-ID rows."""
    for shift in (0.0, 1.0):
        shifted = MultiTaskData(
            str(tiny_coco.train_json),
            str(tiny_coco.train_images),
            image_size=SIZE,
            num_workers=0,
            colour_shift=shift,
        )
        shifted.setup("fit")
        dataset = shifted.datasets["train"]
        flags = {bool(dataset[i]["colour_shifted"]) for i in range(len(dataset))}
        assert flags == {shift > 0}
    model = make_model(data, heads=["detect", "reid"])
    batch = batch_of(data, images_with_people(data)[:2])
    plain = model.labelled_instances(batch)
    assert all(rows.any() for rows in plain["reid_rows"])
    batch["colour_shifted"] = torch.tensor([True, False])
    truth = model.labelled_instances(batch)
    assert not truth["reid_rows"][0].any()
    assert torch.equal(truth["reid_rows"][1], plain["reid_rows"][1])
    assert len(truth["identity"]) == int(plain["reid_rows"][1].sum())


@pytest.mark.parametrize("read_segment", [True, False])
def test_keypoint_head_reads_the_segmentation_decoder_at_stride_4(data, read_segment) -> None:
    model = make_model(
        data,
        heads=["segment", "keypoints"],
        keypoints_read_segment=read_segment,
        decoder_channels=(32, 24, 16, 8),
    )
    batch = batch_of(data, images_with_people(data)[:2])
    model.head_losses(model.forward_batch(batch), batch)["keypoints"].backward()
    blocks = model.segment_head.decoder.blocks  # strides 16, 8, 4, 2

    def has_grad(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and p.grad.any() for p in module.parameters())

    assert has_grad(blocks[2]) == read_segment  # the stride-4 block, and what feeds it
    assert has_grad(blocks[0]) == read_segment
    assert not has_grad(blocks[3])  # finer than what the keypoint head reads
    assert not has_grad(model.segment_head.classifier)


def test_jittered_keypoint_rois_train_on_copies_of_each_labelled_person(data) -> None:
    model = make_model(data, heads=["detect", "keypoints"], keypoint_rois=3, keypoint_jitter=0.2)
    batch = batch_of(data, images_with_people(data)[:2])
    truth = model.labelled_instances(batch)
    people = [int(r.sum()) for r in truth["keypoint_rows"]]
    assert [len(b) for b in truth["keypoint_boxes"]] == [3 * n for n in people]
    for image, n in enumerate(people):
        exact = batch["boxes_xyxy"][image][truth["keypoint_rows"][image]]
        copies = truth["keypoint_boxes"][image].reshape(n, 3, 4)
        assert torch.equal(copies[:, 0], exact)  # the box itself, then jittered versions
        size = (exact[:, 2:] - exact[:, :2]).repeat(1, 2)[:, None]
        moved = (copies[:, 1:] - exact[:, None]).abs()
        assert (moved > 0).all() and (moved <= 0.2 * size * 1.5 + 1e-4).all()
        points = truth["keypoints"][image].reshape(n, 3, -1, 3)
        assert torch.equal(points[:, 1], points[:, 0]) and torch.equal(points[:, 2], points[:, 0])
    model.eval()  # evaluation reads each person once, on its own box
    assert [len(b) for b in model.labelled_instances(batch)["keypoint_boxes"]] == people
    with pytest.raises(ValueError, match="keypoint_rois >= 1"):
        make_model(data, keypoint_rois=0)


def test_uncertainty_weighting_oracle() -> None:
    losses = {"detect": torch.tensor(2.0), "segment": torch.tensor(3.0)}
    log_vars = torch.nn.ParameterDict(
        {
            "detect": torch.nn.Parameter(torch.tensor(0.0)),
            "segment": torch.nn.Parameter(torch.tensor(math.log(2))),
        }
    )
    total, weights = weighted_total(losses, {}, log_vars)
    assert float(total) == pytest.approx(2.0 + 0.0 + 3.0 / 2 + math.log(2))
    assert float(weights["segment"]) == pytest.approx(0.5)
    total, weights = weighted_total(losses, {"detect": 0.5, "segment": 2.0}, None)
    assert float(total) == pytest.approx(0.5 * 2.0 + 2.0 * 3.0)


class _Fixed(torch.nn.Module):
    """A metric that computes to the values it was given."""

    def __init__(self, **values: float) -> None:
        super().__init__()
        self.values = values

    def compute(self) -> dict[str, float]:
        return self.values


def test_best_checkpoint_score_is_the_mean_of_the_heads_that_have_a_number() -> None:
    from vision_tasks.tasks.multitask.model import HeadMetrics

    heads = HeadMetrics(
        {
            "detect": _Fixed(AP=0.8, AP50=1.0),
            "segment": _Fixed(miou=0.5),
            "keypoints_gt": _Fixed(AP=-1.0),
            "reid": _Fixed(mAP=float("nan"), rank1=0.9),
        },
        ("detect/AP", "segment/miou", "keypoints_gt/AP", "reid/mAP"),
    )
    values = heads.compute()
    # COCO's -1 (no ground truth) and NaN leave the mean; AP50 and rank-1 are not scored.
    assert values["heads_mean"] == pytest.approx((0.8 + 0.5) / 2)
    assert values["detect/AP50"] == 1.0
    nothing = HeadMetrics({"keypoints_gt": _Fixed(AP=-1.0)}, ("keypoints_gt/AP",)).compute()
    assert math.isnan(nothing["heads_mean"])


def test_a_fit_keeps_the_checkpoint_with_the_best_mean_over_heads(trained_runs) -> None:
    import csv

    run = trained_runs["multitask"]
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/heads_mean")]
    assert rows, "val/heads_mean was not logged"
    scored = [
        float(rows[-1][f"val/{name}"])
        for name in ("detect/AP", "segment/miou", "keypoints_gt/AP", "reid/mAP")
    ]
    scored = [v for v in scored if math.isfinite(v) and v >= 0]
    assert float(rows[-1]["val/heads_mean"]) == pytest.approx(sum(scored) / len(scored))
    best = max(rows, key=lambda r: float(r["val/heads_mean"]))
    assert (run / "checkpoints" / f"best-{int(best['epoch']):03d}.ckpt").is_file()


@pytest.mark.parametrize("weighting", ["uncertainty", "fixed"])
def test_learned_loss_weights_move_and_fixed_weights_do_not(data, weighting: str) -> None:
    fixed = {"detect": 1.0, "segment": 0.5, "keypoints": 100.0, "reid": 0.25}
    model = make_model(
        data,
        heads=["detect", "segment", "keypoints", "reid"],
        loss_weighting=weighting,
        loss_weights=fixed,
    )
    batch = next(iter(data.train_dataloader()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    before = model.compute_loss(model.forward_batch(batch), batch)
    assert {f"loss_{h}" for h in fixed} <= set(before)
    before["loss"].backward()
    optimizer.step()
    after = model.compute_loss(model.forward_batch(batch), batch)
    if weighting == "uncertainty":
        for head in fixed:
            assert float(before[f"weight_{head}"]) == 1.0  # exp(-0): the learned start
            assert float(after[f"weight_{head}"]) != pytest.approx(1.0, abs=1e-4)
        assert all(float(s) != 0.0 for s in model.log_vars.values())
    else:
        assert model.log_vars is None
        assert not any("log_vars" in name for name, _ in model.named_parameters())
        for head, weight in fixed.items():
            assert float(before[f"weight_{head}"]) == float(after[f"weight_{head}"]) == weight
        expected = sum(weight * after[f"loss_{head}"] for head, weight in fixed.items())
        assert float(after["loss"]) == pytest.approx(float(expected), rel=1e-5)


def _split_by_annotation_type(tiny_coco, out: Path) -> tuple[list[str], list[str]]:
    """Two files over the training images: boxes only (every category), person keypoints only."""
    coco = json.loads(Path(tiny_coco.train_json).read_text())
    half = len(coco["images"]) // 2
    first = {i["id"] for i in coco["images"][:half]}
    boxes, keypoints = [], []
    for ann in coco["annotations"]:
        plain = {k: ann[k] for k in ("id", "image_id", "category_id", "bbox", "area", "iscrowd")}
        if ann["image_id"] in first:
            boxes.append(plain)
        elif ann.get("num_keypoints", 0) > 0:
            keypoints.append(
                {**plain, "keypoints": ann["keypoints"], "num_keypoints": ann["num_keypoints"]}
            )
    files = []
    for name, images, anns in (
        ("boxes", coco["images"][:half], boxes),
        ("keypoints", coco["images"][half:], keypoints),
    ):
        path = out / f"{name}.json"
        path.write_text(json.dumps({**coco, "images": images, "annotations": anns}))
        files.append(str(path))
    return files, [str(tiny_coco.train_images)] * 2


def test_two_coco_files_with_disjoint_annotation_types_train_together(tiny_coco, tmp_path):
    jsons, folders = _split_by_annotation_type(tiny_coco, tmp_path)
    data = make_data(tiny_coco, jsons, folders)
    boxes_only, keypoints_only = data.datasets["train"].datasets
    assert not boxes_only.has_masks and not keypoints_only.has_masks
    assert boxes_only.class_mask.all()
    assert keypoints_only.class_mask.tolist() == [c["name"] == "person" for c in data.categories]
    model = make_model(data, heads=["detect", "segment", "keypoints"])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    logged: list[dict] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    trainer = L.Trainer(
        max_steps=4,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[Record()],
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 4
    assert all(math.isfinite(step["train/loss_step"]) for step in logged)
    seen = {key for step in logged for key in step}
    assert {"train/loss_detect_step", "train/loss_keypoints_step"} <= seen
    assert "train/loss_segment_step" not in seen  # neither file has masks: masked, not zero-filled
    changed = [
        k
        for k, v in model.state_dict().items()
        if k.startswith("keypoint_head") and not torch.equal(v, start[k])
    ]
    assert changed


def test_progressive_resizing_trains_small_then_full_size_in_the_loader_workers(
    tiny_coco, tmp_path
) -> None:
    """The size is set before each epoch's workers copy the dataset, so they see the switch."""
    data = MultiTaskData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=SIZE,
        batch_size=4,
        num_workers=1,
        progressive_size=SIZE // 2,
        progressive_until=0.5,
    )
    model = make_model(data, heads=["detect", "keypoints"])
    sides: list[int] = []
    label_scales_match: list[bool] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            side = batch["image"].shape[-1]
            sides.append(side)
            # boxes, keypoints and masks are mapped with this letterbox scale
            letterboxed = batch["scale"] * batch["orig_size"].max(dim=1).values
            expected = torch.full_like(letterboxed, float(side))
            scaled = torch.allclose(letterboxed, expected, atol=1.0)
            label_scales_match.append(scaled and batch["mask"].shape[-1] == side)

    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[Record()],
    )
    trainer.fit(model, datamodule=data)
    # epochs 0 and 1 are under half of max_epochs = 3; epoch 2 is past it
    assert sides == [SIZE // 2, SIZE // 2, SIZE]
    assert all(label_scales_match)
    assert data.datasets["val"].image_size == SIZE


def test_progressive_resizing_follows_the_time_budget_when_there_is_one(
    tiny_coco, clock_at
) -> None:
    data = MultiTaskData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=SIZE,
        num_workers=0,
        progressive_size=32,
        progressive_until=0.6,
    )

    def size_at(time_spent: float, epoch: int) -> int:
        data.trainer = SimpleNamespace(
            callbacks=[clock_at(time_spent)], world_size=1, max_epochs=100, current_epoch=epoch
        )
        return data.train_image_size()

    assert size_at(0.59, epoch=3) == 32
    assert size_at(0.61, epoch=3) == SIZE  # the clock, though only 3 of 100 epochs are done
    assert size_at(0.1, epoch=60) == SIZE  # the epochs, on a fast machine
    data.trainer = None
    assert data.train_image_size() == SIZE  # outside a fit (benchmark, tests): the full size
    with pytest.raises(ValueError, match="progressive_size"):
        MultiTaskData(str(tiny_coco.train_json), str(tiny_coco.train_images), progressive_size=100)
    with pytest.raises(ValueError, match="progressive_until"):
        MultiTaskData(str(tiny_coco.train_json), str(tiny_coco.train_images), progressive_until=0)


def test_bad_configuration_fails_clearly(data, tiny_coco) -> None:
    with pytest.raises(ValueError, match="heads"):
        make_model(data, heads=["detect", "depth"])
    with pytest.raises(ValueError, match="not attached"):
        make_model(data, heads=["detect"], loss_weights={"segment": 1.0})
    with pytest.raises(ValueError, match="instance needs detect"):
        make_model(data, heads=["segment", "instance"])
    with pytest.raises(ValueError, match="train_images"):
        MultiTaskData(
            [str(tiny_coco.train_json)] * 2,
            [str(tiny_coco.train_images)],
            str(tiny_coco.val_json),
            str(tiny_coco.val_images),
        )


def test_coco_backend_reaches_the_box_keypoint_and_mask_metrics(data) -> None:
    model = make_model(data, heads=["detect", "keypoints", "instance"], coco_backend="faster")
    for metrics in (model.val_metric, model.test_metric):
        for name in ("detect", "keypoints_gt", "keypoints_detected", "instance"):
            assert metrics[name].backend == "faster"
    assert make_model(data, heads=["detect"]).val_metric["detect"].backend == "pycocotools"


def test_identity_count_comes_from_the_training_data_and_is_saved(trained_runs, tiny_coco):
    from vision_tasks.checkpoint import load_task_checkpoint

    path = trained_runs["multitask"] / "checkpoints" / "last.ckpt"
    train = json.loads(tiny_coco.train_json.read_text())["annotations"]
    identities = {
        a["track_id"] for a in train if isinstance(a.get("track_id"), int) and a["track_id"] >= 0
    }
    saved = torch.load(path, weights_only=True)
    assert saved["hyper_parameters"]["num_identities"] == len(identities) > 1
    model = load_task_checkpoint(path)  # the checkpoint alone, no data module
    assert model.identity_classifier.out_features == len(identities)


def test_evaluate_writes_every_heads_metrics_and_the_single_task_comparison(
    trained_runs, tmp_path, monkeypatch
) -> None:
    from vision_tasks.cli import evaluate_main
    from vision_tasks.tasks.multitask import compare

    # Which passes each timing made, read from the model as it runs: on tiny test images a
    # flip test's second pass is too cheap for timings alone to tell one pass from two.
    timed_passes: list[tuple[str, int]] = []
    real_timed = compare._timed

    def recording_timed(network, inputs, repeats):
        timed_passes.append((type(network).__name__, network.backbone_passes))
        return real_timed(network, inputs, repeats)

    monkeypatch.setattr(compare, "_timed", recording_timed)

    joint = trained_runs["multitask"] / "checkpoints" / "last.ckpt"
    single = trained_runs["detect"] / "checkpoints" / "last.ckpt"
    segmenter = trained_runs["segment"] / "checkpoints" / "last.ckpt"
    headline = evaluate_main(
        [
            "--task",
            "multitask",
            "--ckpt",
            str(joint),
            "--output",
            str(tmp_path),
            "--compare",
            f"detect={single}",
            "--compare",
            f"segment={segmenter}",
            "--timing-images",
            "2",
        ]
    )
    assert {"detect/AP", "segment/miou", "keypoints_gt/AP", "reid/rank1", "reid/mAP"} <= set(
        headline
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["task"] == "multitask"
    assert "keypoints_detected/AP" in report["headline"]  # 0 when the detector finds nobody
    rows = report["tables"]["single_task_comparison"]
    assert [(r["head"], r["metric"]) for r in rows] == [
        ("detect", "AP"),
        ("detect", "AP50"),
        ("segment", "miou"),
    ]
    single_report = json.loads((tmp_path / "single_detect" / "report.json").read_text())
    assert rows[0]["single_task"] == pytest.approx(single_report["headline"]["AP"])
    assert rows[0]["joint"] == pytest.approx(headline["detect/AP"])
    times = {r["model"]: r["value"] for r in report["tables"]["inference_time"]}
    assert times["joint"] > 0 and times["detect"] > 0 and times["speedup"] > 0
    # The segment config's flip test makes two passes: it is timed as configured, then in one.
    assert times["segment_single_pass"] > 0 and times["speedup_single_pass"] > 0
    segment_passes = [passes for name, passes in timed_passes if name == "SegmentTask"]
    assert segment_passes and set(segment_passes[0::2]) == {2} and set(segment_passes[1::2]) == {1}
    assert {passes for name, passes in timed_passes if name == "DetectTask"} == {1}
    assert "## Single task comparison" in (tmp_path / "report.md").read_text()


def test_predict_writes_one_results_file_per_head_and_one_drawing_per_image(
    trained_runs, tiny_coco, tmp_path
) -> None:
    from vision_tasks.cli import load_task_checkpoint, predict_main
    from vision_tasks.data.coco import CocoIndex, load_results

    checkpoint = trained_runs["multitask"] / "checkpoints" / "last.ckpt"
    predict_main(
        [
            "--coco",
            str(tiny_coco.val_json),
            "--images",
            str(tiny_coco.val_images),
            "--ckpt",
            str(checkpoint),
            "--output",
            str(tmp_path),
        ]
    )
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    for head in ("detect", "segment", "keypoints"):
        records = json.loads((tmp_path / f"results_{head}.json").read_text())
        load_results(index, records)  # COCO.loadRes accepts it (an empty list is handled)
    assert json.loads((tmp_path / "results_detect.json").read_text())  # 0.001 threshold: some
    reid = json.loads((tmp_path / "results_reid.json").read_text())
    width = load_task_checkpoint(checkpoint).reid_head.out_channels
    assert reid and all(len(r["embedding"]) == width and "identity" in r for r in reid)
    drawings = sorted(p.stem for p in tmp_path.glob("*.jpg"))
    assert drawings == sorted(Path(i["file_name"]).stem for i in index.coco.dataset["images"])


def test_a_batch_without_detections_counts_for_keypoints_on_detected_boxes(data) -> None:
    import warnings

    model = make_model(data, heads=["detect", "keypoints"])
    metric = model.val_metric["keypoints_detected"]
    batch = batch_of(data, images_with_people(data)[:1])
    model._update_keypoints_detected(metric, {"on_detections": {}}, batch)
    with warnings.catch_warnings():
        # torchmetrics warns when compute() comes before any update(): nobody found is a result.
        warnings.simplefilter("error")
        values = metric.compute()
    assert values["instances"] == 0 and values["records"] == []


def test_crop_regions_are_what_the_single_task_crop_shows() -> None:
    import numpy as np

    from vision_tasks import ops

    boxes = torch.tensor([[10.0, 20.0, 40.0, 100.0], [5.0, 5.0, 85.0, 25.0]])
    size, margin = (64, 96), 0.25
    regions = ops.crop_regions(boxes, size, margin)
    for box, region in zip(boxes, regions):
        matrix = ops.box_affine(box.numpy(), size, margin)
        corners = ops.apply_affine(region.view(2, 2).double().numpy(), matrix)
        np.testing.assert_allclose(corners, [[0, 0], list(size)], atol=1e-4)
    points = torch.rand(2, 5, 2) * 100
    crop = ops.to_region_pixels(points, regions, size)
    assert torch.allclose(ops.from_region_pixels(crop, regions, size), points, atol=1e-4)
    # A point at a region's top-left corner is crop pixel -0.5: pixel centres on integers.
    corner = ops.to_region_pixels(regions[:, None, :2], regions, size)
    assert torch.allclose(corner, torch.full_like(corner, -0.5))


# ---- the instance head ----------------------------------------------------------------------


def test_instance_masks_are_the_instance_tasks_masks_with_the_fill_kept_empty(tiny_coco) -> None:
    from vision_tasks.tasks.instance import InstanceDataset

    data = make_data(tiny_coco)
    index = data.index("val")
    joint = data.build_dataset(index, train=False)
    assert "instance_masks" not in joint[0]  # off by default: the other heads do not pay for it
    joint.instance_masks = True
    single = InstanceDataset(index, SIZE, train=False)
    for i in range(3):
        sample, expected = joint[i], single[i]
        assert torch.equal(sample["instance_masks"], expected["masks"])
        assert torch.equal(sample["instance_has_mask"], expected["has_mask"])
    # Augmented: each mask stays inside its (moved) box; the affine's fill is no object.
    train = data.datasets["train"]
    train.instance_masks = True
    train.transform.set_random_seed(1)
    for i in range(6):
        sample = train[i]
        assert len(sample["instance_masks"]) == len(sample["boxes_xyxy"])
        for mask, box in zip(sample["instance_masks"], sample["boxes_xyxy"]):
            ys, xs = torch.nonzero(mask > 127, as_tuple=True)
            if len(xs):
                assert xs.min() >= box[0] - 1.5 and xs.max() + 1 <= box[2] + 1.5
                assert ys.min() >= box[1] - 1.5 and ys.max() + 1 <= box[3] + 1.5


def _hand_outputs(n: int, classes: int, chosen: int) -> dict:
    """One detection by hand: grid point ``chosen`` (centre (24, 24), stride 16) with class 0,
    box (0, 16, 64, 48), and the mask logit +1 on prototype columns 0..7, -1 on 8..15."""
    from vision_tasks.tasks.detect import grid_points

    points, strides = grid_points([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    assert points[chosen].tolist() == [24.0, 24.0] and strides[chosen].item() == 16
    cls_logits = torch.full((1, n, classes), -20.0)
    cls_logits[0, chosen, 0] = 5.0
    box_regression = torch.zeros(1, n, 4)
    distances = torch.tensor([24.0, 8.0, 40.0, 24.0]) / 16  # left, top, right, bottom
    box_regression[0, chosen] = torch.log(torch.expm1(distances))  # softplus inverted
    protos = torch.zeros(1, 2, 16, 16)
    protos[0, 0, :, :8], protos[0, 0, :, 8:] = 1.0, -1.0
    mask_coeffs = torch.zeros(1, n, 2)
    mask_coeffs[0, chosen, 0] = 1.0
    return {
        "cls_logits": cls_logits,
        "box_regression": box_regression,
        "points": points,
        "strides": strides,
        "mask_coeffs": mask_coeffs,
        "protos": protos,
    }


def test_instance_head_masks_are_the_instance_tasks_paste_back_of_the_same_logits(data) -> None:
    from vision_tasks.tasks.instance import InstanceTask
    from vision_tasks.tasks.instance.evaluation import decode_rle

    joint = make_model(data, heads=["detect", "instance"], num_prototypes=2).eval()
    single = InstanceTask(categories=data.categories, image_size=SIZE, num_prototypes=2).eval()
    n, classes = 64 + 16 + 4, len(data.categories)
    # A 32x16 image letterboxed to 64: scale 2, pad (0, 16); the box is the whole image. Pixel
    # x's centre is network x 2x + 1, prototype column (2x + 1) / 4 - 0.5, where the logit
    # crosses 0 at 7.5: x <= 15 is inside.
    batch = {
        "image_id": torch.tensor([7]),
        "scale": torch.tensor([2.0], dtype=torch.float64),
        "pad": torch.tensor([[0.0, 16.0]], dtype=torch.float64),
        "orig_size": torch.tensor([[16, 32]]),
    }
    [result] = joint.decode(_hand_outputs(n, classes, chosen=64 + 4 + 1), batch)
    [record] = result["instance"]
    assert record["bbox"] == pytest.approx([0.0, 0.0, 32.0, 16.0], abs=1e-3)
    expected = torch.zeros(16, 32, dtype=torch.bool)
    expected[:, :16] = True
    assert torch.equal(decode_rle([record["segmentation"]], (16, 32))[0], expected)

    # Many overlapping detections of random logits: the same RLEs as --task instance's decode.
    torch.manual_seed(0)
    outputs = {
        **_hand_outputs(n, classes, chosen=64 + 4 + 1),
        "cls_logits": torch.randn(1, n, classes),
        "box_regression": torch.randn(1, n, 4),
        "mask_coeffs": torch.randn(1, n, 2),
        "protos": torch.randn(1, 2, 16, 16),
    }
    [ours], [theirs] = joint.decode(outputs, batch), single.decode(outputs, batch)
    assert len(ours["instance"]) == len(theirs["segmentation"]) > 20
    assert [r["segmentation"] for r in ours["instance"]] == theirs["segmentation"]
    assert torch.equal(ours["detect"]["bbox"], theirs["bbox"])


def test_instance_loss_reads_only_images_whose_objects_have_masks(tiny_coco) -> None:
    data = make_data(tiny_coco)
    data.instance_masks = True
    data.setup("validate")
    data.datasets["val"].instance_masks = True
    model = make_model(data, heads=["detect", "instance"])
    batch = batch_of(data, data.index("val").image_ids[:2])
    assert all(flags.any() for flags in batch["instance_has_mask"])
    batch["instance_has_mask"][1][:] = False  # the second image's file has boxes only
    model.eval()  # running BatchNorm statistics: the two images do not mix
    images = batch["image"].clone().requires_grad_(True)
    batch["image"] = images
    model.head_losses(model.forward_batch(batch), batch)["instance"].backward()
    assert images.grad[0].abs().sum() > 0
    assert torch.equal(images.grad[1], torch.zeros_like(images.grad[1]))
    batch["instance_has_mask"][0][:] = False
    assert "instance" not in model.head_losses(model.forward_batch(batch), batch)
    for key in ("instance_masks", "instance_has_mask"):
        del batch[key]
    with pytest.raises(ValueError, match="instance_masks=True"):
        model.head_losses(model.forward_batch(batch), batch)


def test_joint_instance_head_fits_reports_mask_ap_and_predicts_rle(
    tiny_coco, data_args, tmp_path, monkeypatch
) -> None:
    import csv

    from vision_tasks.cli import predict_main, train_main
    from vision_tasks.data.coco import CocoIndex, load_results

    monkeypatch.chdir(tmp_path)
    options = [
        "--model.heads",
        "[detect, instance]",
        "--model.loss_weights",
        "{detect: 1.0, instance: 1.0}",
        *("--data.image_size", "64", "--data.progressive_size", "0", "--data.batch_size", "4"),
        *("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"),
        *("--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1"),
        *("--trainer.enable_progress_bar", "false"),
    ]
    cli = train_main(["--task", "multitask", *data_args, *options])
    assert cli.datamodule.instance_masks  # --model.heads alone turns the masks on
    run = tmp_path / cli.trainer.log_dir
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert sum(bool(r.get("train/loss_instance_step")) for r in rows) == 2
    assert any(r.get("val/instance/mask_AP") for r in rows)
    report = json.loads((run / "report" / "report.json").read_text())
    for key in ("instance/mask_AP", "instance/mask_AP50", "detect/AP"):
        assert 0.0 <= report["headline"][key] <= 1.0
    metrics = report["metrics"]
    assert {"instance/mask_AP75", "instance/mask_APs", "instance/box_AP"} <= set(metrics)
    scored = [metrics["detect/AP"], metrics["instance/mask_AP"]]
    assert metrics["heads_mean"] == pytest.approx(sum(scored) / 2)
    assert "instance_per_category_mask_AP" in report["tables"]

    out = tmp_path / "predicted"
    checkpoint = run / "checkpoints" / "last.ckpt"
    coco = ["--coco", str(tiny_coco.val_json), "--images", str(tiny_coco.val_images)]
    predict_main([*coco, "--ckpt", str(checkpoint), "--output", str(out)])
    records = json.loads((out / "results_instance.json").read_text())
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    load_results(index, records)  # COCO.loadRes reads the RLEs
    boxes = json.loads((out / "results_detect.json").read_text())
    assert records and [r["bbox"] for r in records] == [r["bbox"] for r in boxes]
    assert all(r["segmentation"]["size"] == [120, 160] for r in records)


def test_instance_checkpoint_compares_by_mask_ap() -> None:
    from vision_tasks.tasks.multitask.compare import comparison_rows

    joint = {"instance/mask_AP": 0.5, "instance/mask_AP50": 0.9, "detect/AP": 0.7}
    rows = comparison_rows(joint, {"instance": {"mask_AP": 0.4, "mask_AP50": 0.9, "AP": 0.6}})
    assert [(r["metric"], r["joint"], r["single_task"]) for r in rows] == [
        ("mask_AP", 0.5, 0.4),
        ("mask_AP50", 0.9, 0.9),
    ]
    assert rows[0]["relative"] == pytest.approx(0.25) and rows[1]["relative"] == 0.0
