"""Detection: assigner, letterbox geometry, post-processing, COCO evaluation oracle, learning."""

from __future__ import annotations

import contextlib
import io
import json

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vision_tasks import ops
from vision_tasks.data.coco import CocoIndex
from vision_tasks.evaluation.coco_eval import BOX_STATS, coco_evaluate
from vision_tasks.tasks.detect import (
    DetectData,
    DetectDataset,
    DetectTask,
    decode_boxes,
    detection_loss,
    grid_points,
    pad_targets,
    postprocess,
    task_aligned_assign,
)

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "circle"}]


def _targets(boxes, labels, crowd=None):
    boxes = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
    labels = [torch.tensor(x, dtype=torch.long) for x in labels]
    crowd = crowd or [[False] * len(b) for b in boxes]
    return pad_targets(boxes, labels, [torch.tensor(c, dtype=torch.bool) for c in crowd])


def test_assigner_picks_best_aligned_points_inside_the_box() -> None:
    # A 4x4 grid at stride 8: centres at 4, 12, 20, 28.
    points, _ = grid_points([(4, 4)], [8])
    gt = [[0.0, 0.0, 16.0, 16.0]]  # contains the four centres (4|12, 4|12)
    pred = torch.tensor([[100.0, 100, 110, 110]]).repeat(16, 1)
    pred[0] = torch.tensor(gt[0])  # point (4, 4) predicts the box exactly
    pred[5] = torch.tensor([2.0, 2, 16, 16])  # point (12, 12) nearly
    scores = torch.full((1, 16, 2), 0.5)
    fg, boxes, target_scores, _ = task_aligned_assign(
        scores, pred[None], points, _targets([gt], [[1]]), top_k=2
    )
    assert fg[0].nonzero().flatten().tolist() == [0, 5]
    torch.testing.assert_close(boxes[0, 0], torch.tensor(gt[0]))
    # Class 1 only; the best point's target equals its IoU (1.0), the other is scaled below it.
    assert target_scores[0, 0].tolist() == pytest.approx([0.0, 1.0])
    assert 0 < target_scores[0, 5, 1] < 1 and target_scores[0, 5, 0] == 0
    assert target_scores[0, [1, 2, 3, 4]].sum() == 0


def test_point_claimed_by_two_objects_goes_to_the_one_it_overlaps_most() -> None:
    points = torch.tensor([[10.0, 10.0]])
    gt = [[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 40.0, 40.0]]
    pred = torch.tensor([[[5.0, 5.0, 38.0, 38.0]]])
    scores = torch.full((1, 1, 2), 0.5)
    fg, boxes, target_scores, _ = task_aligned_assign(
        scores, pred, points, _targets([gt], [[0, 1]])
    )
    assert fg.item() and boxes[0, 0].tolist() == gt[1] and target_scores[0, 0, 1] > 0


def test_crowd_boxes_are_never_positive_and_ignored_by_class_loss() -> None:
    points, strides = grid_points([(4, 4)], [8])
    targets = _targets([[[0.0, 0.0, 32.0, 32.0]]], [[0]], crowd=[[True]])
    regression = torch.zeros(1, 16, 4)
    scores = torch.full((1, 16, 2), 0.9)
    fg, _, _, _ = task_aligned_assign(
        scores, decode_boxes(points, strides, regression), points, targets
    )
    assert not fg.any()
    logits = torch.full((1, 16, 2), 3.0, requires_grad=True)
    loss = detection_loss(logits, regression, points, strides, targets)
    assert loss["cls"].item() == 0.0  # every point lies in the crowd region: nothing to learn


def test_postprocess_is_class_aware_and_caps_detections() -> None:
    points = torch.tensor([[50.0, 50.0], [51.0, 50.0]])
    strides = torch.ones(2, 1)
    regression = torch.full((1, 2, 4), 2.0)  # two nearly identical boxes
    logits = torch.tensor([[[4.0, -9.0], [-9.0, 3.0]]])  # point 0 -> class 0, point 1 -> class 1
    boxes, scores, labels = postprocess(logits, regression, points, strides, 0.01)[0]
    assert sorted(labels.tolist()) == [0, 1]  # overlapping boxes of different classes both stay
    many = torch.randn(1, 500, 2) + 3
    spread = torch.rand(500, 2) * 1000
    kept = postprocess(many, torch.zeros(1, 500, 4), spread, torch.ones(500, 1), 0.001)[0]
    assert len(kept[0]) == 100


def test_letterbox_round_trip_within_one_pixel(tiny_coco) -> None:
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    dataset = DetectDataset(index, image_size=128, train=False)
    for i in range(len(dataset)):
        sample = dataset[i]
        anns = index.annotations(sample["image_id"])
        original = ops.xywh_to_xyxy(torch.tensor([a["bbox"] for a in anns]).reshape(-1, 4))
        back = ops.unletterbox_boxes(sample["boxes_xyxy"].double(), sample["scale"], *sample["pad"])
        assert torch.allclose(back, original.double(), atol=1.0)


def test_flipped_training_sample_keeps_each_box_with_its_label(tmp_path) -> None:
    """Letterbox, then a flip that always happens: boxes as worked out by hand, labels in step."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 80, 3), np.uint8))
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 10], "area": 200},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 20, 20, 15], "area": 300},
    ]
    image = {"id": 1, "file_name": "a.png", "width": 80, "height": 40}
    data = {"images": [image], "categories": CATEGORIES, "annotations": annotations}
    (tmp_path / "a.json").write_text(json.dumps(data))
    dataset = DetectDataset(CocoIndex(tmp_path / "a.json", tmp_path), image_size=160, train=True)
    for transform in dataset.transform.transforms:  # the geometry made certain; colour stays
        if isinstance(transform, A.Affine):
            transform.p = 0.0
        if isinstance(transform, A.HorizontalFlip):
            transform.p = 1.0
    sample = dataset[0]
    # 80x40 -> scale 2, 160x80 centred in 160x160 (pad_y 40); the flip maps x to 160 - x.
    # circle [10, 5, 30, 15] -> [20, 50, 60, 70] -> [100, 50, 140, 70]
    # person [60, 20, 80, 35] -> [120, 80, 160, 110] (on the right edge) -> [0, 80, 40, 110]
    expected = torch.tensor([[100.0, 50.0, 140.0, 70.0], [0.0, 80.0, 40.0, 110.0]])
    torch.testing.assert_close(sample["boxes_xyxy"], expected, atol=1e-3, rtol=0)
    assert sample["label"].tolist() == [1, 0]  # category 3 is class 1, category 1 class 0
    assert sample["crowd"].tolist() == [False, False]


def _write(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def _pycocotools_stats(gt_json: str, results_json: str) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        evaluator = COCOeval(gt, gt.loadRes(results_json), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats)


def test_ground_truth_as_predictions_gives_ap_one(tiny_coco) -> None:
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in index.coco.dataset["annotations"]
    ]
    stats = coco_evaluate(index, results, "bbox").stats
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)


def test_perturbed_predictions_match_pycocotools_exactly(tiny_coco, tmp_path) -> None:
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    rng = np.random.default_rng(0)
    results = []
    for a in index.coco.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [x + jitter[0], y + jitter[1], w + abs(jitter[2]), h + abs(jitter[3])],
                "score": float(rng.uniform(0.1, 1.0)),
            }
        )
    results.append(
        {"image_id": index.image_ids[0], "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.99}
    )  # a confident false positive
    ours = coco_evaluate(index, results, "bbox").stats
    reference = _pycocotools_stats(str(tiny_coco.val_json), _write(tmp_path / "r.json", results))
    assert [ours[name] for name in BOX_STATS] == reference
    assert 0 < ours["AP"] < 1


def test_decode_maps_to_original_pixels_and_category_ids() -> None:
    model = DetectTask(categories=CATEGORIES, image_size=64).eval()
    points = torch.tensor([[32.0, 32.0]])
    outputs = {
        "cls_logits": torch.tensor([[[-9.0, 5.0]]]),
        "box_regression": torch.zeros(1, 1, 4),
        "points": points,
        "strides": torch.full((1, 1), 8.0),
    }
    # Original 200x100 (W x H) image letterboxed into 64: scale 0.32, pad_y 16.
    scale, pad_x, pad_y = ops.letterbox_params(100, 200, 64)
    batch = {
        "image_id": torch.tensor([7]),
        "scale": torch.tensor([scale]),
        "pad": torch.tensor([[pad_x, pad_y]]),
        "orig_size": torch.tensor([[100, 200]]),
    }
    prediction = model.decode(outputs, batch)[0]
    distance = float(torch.nn.functional.softplus(torch.tensor(0.0))) * 8
    expected = torch.tensor(
        [
            (32 - distance - pad_x) / scale,
            (32 - distance - pad_y) / scale,
            2 * distance / scale,
            2 * distance / scale,
        ]
    )
    torch.testing.assert_close(prediction["bbox"][0], expected, atol=1e-3, rtol=0)
    assert prediction["category_id"].tolist() == [3] and prediction["image_id"] == 7


@pytest.mark.parametrize(
    "levels, strides, trunk_levels",
    [
        (["c3", "c4"], [8, 16], ["stem", "c2", "c3", "c4"]),
        (["c2", "c3"], [4, 8], ["stem", "c2", "c3"]),
    ],
)
def test_fewer_levels_predict_on_their_grid_and_keep_the_stages_they_read(
    levels, strides, trunk_levels
) -> None:
    torch.manual_seed(0)
    full = DetectTask(categories=CATEGORIES, image_size=64).eval()
    light = DetectTask(categories=CATEGORIES, image_size=64, levels=levels).eval()
    assert light.strides == strides
    outputs = light(torch.zeros(2, 3, 64, 96))
    cells = sum((64 // s) * (96 // s) for s in strides)
    assert outputs["cls_logits"].shape == (2, cells, 2) and outputs["points"].shape == (cells, 2)
    assert sorted(set(outputs["strides"].flatten().tolist())) == strides
    # The kept stages are the full trunk's: the same weights give the same features.
    light.backbone.load_state_dict(full.backbone.state_dict(), strict=False)
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours, reference = light.backbone(image), full.backbone(image)
    assert list(ours) == trunk_levels  # stages past the last level read are gone
    for level in ours:
        torch.testing.assert_close(ours[level], reference[level])


@pytest.mark.parametrize("levels", [[], ["c3", "c5"], ["c4", "c3"], ["p3", "p4"], ["c3", "c3"]])
def test_levels_that_cannot_form_a_pyramid_are_one_clear_error(levels) -> None:
    with pytest.raises(ValueError, match=r"consecutive backbone levels.*got \["):
        DetectTask(categories=CATEGORIES, image_size=64, levels=levels)


def test_levels_error_from_train_is_one_line_and_leaves_no_run(tmp_path, monkeypatch) -> None:
    from vision_tasks.cli import train_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        train_main(["--task", "detect", "--model.levels", "[c3, c5]", "--trainer.max_epochs", "1"])
    assert str(exit_.value).startswith("error: --model.levels must be consecutive")
    assert "\n" not in str(exit_.value) and not (tmp_path / "runs").exists()


def test_coco_backend_option_reaches_both_box_metrics(tmp_path, monkeypatch, capsys) -> None:
    from vision_tasks.cli import train_main

    model = DetectTask(categories=CATEGORIES, image_size=64, coco_backend="faster")
    assert model.val_metric.backend == model.test_metric.backend == "faster"
    assert model.hparams.coco_backend == "faster"  # a checkpoint evaluates as it validated
    assert DetectTask(categories=CATEGORIES, image_size=64).val_metric.backend == "pycocotools"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        train_main(["--task", "detect", "--model.coco_backend", "faster", "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["coco_backend"] == "faster"
    with pytest.raises(SystemExit):
        train_main(["--task", "detect", "--model.coco_backend", "fast", "--print_config"])
    assert "coco_backend" in capsys.readouterr().err


def test_few_steps_on_one_batch_halve_the_loss(tiny_coco) -> None:
    torch.manual_seed(0)
    data = DetectData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=96,
        num_workers=0,
    )
    dataset = data.build_dataset(data.index("val"), train=False)
    batch = data.collate([dataset[i] for i in range(4)])
    model = DetectTask(categories=data.categories, image_size=96, neck_width=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss = model.compute_loss(model(batch["image"]), batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("stride, act", [(1, torch.nn.SiLU), (2, None)])
def test_conv_bn_act_is_the_hand_written_block_with_its_checkpoint_keys(stride, act) -> None:
    from vision_tasks.layers import ConvBNAct

    torch.manual_seed(0)
    # The block as it was written before torchvision's Conv2dNormActivation replaced it.
    old = torch.nn.Sequential(
        torch.nn.Conv2d(4, 6, 3, stride, 1, bias=False),
        torch.nn.BatchNorm2d(6),
        act(inplace=True) if act is not None else torch.nn.Identity(),
    )
    old.train()(torch.randn(2, 4, 9, 9))  # running statistics away from their defaults
    new = ConvBNAct(4, 6, stride=stride, act=act)
    assert list(new.state_dict()) == list(old.state_dict())
    new.load_state_dict(old.state_dict())  # strict: an old checkpoint loads as it is
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(new.eval()(x), old.eval()(x))
