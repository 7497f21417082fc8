"""Instance segmentation: mask geometry, the mask loss, RLE results, COCOeval segm, bad input,
the command line end to end and ONNX parity."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vision_tasks import ops
from vision_tasks.cli import load_task_checkpoint, predict_main, train_main
from vision_tasks.data.coco import CocoIndex, read_image, rle_string_counts, write_results_json
from vision_tasks.evaluation.coco_eval import BOX_STATS
from vision_tasks.tasks.detect import assign_points, grid_points, pad_targets
from vision_tasks.tasks.instance import InstanceData, InstanceDataset, InstanceTask
from vision_tasks.tasks.instance.evaluation import CocoMaskMetric, encode_masks
from vision_tasks.tasks.instance.masks import (
    box_pixels,
    crop_mask,
    paste_masks,
    prototype_grid_masks,
)
from vision_tasks.tasks.instance.model import mask_loss


def _bce(z: float, t: float) -> float:
    return math.log1p(math.exp(z)) - t * z


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# ---- geometry and loss on hand-sized tensors ------------------------------------------------


def test_crop_mask_keeps_exactly_the_pixels_whose_centre_lies_in_the_box() -> None:
    masks = torch.full((2, 4, 5), 2.0)
    # Centres x = 0.5 .. 4.5, y = 0.5 .. 3.5; [1.0, 3.0) holds x 1.5, 2.5; [0.5, 2.6) y 0.5 .. 2.5.
    boxes = torch.tensor([[1.0, 0.5, 3.0, 2.6], [0.0, 0.0, 0.5, 4.0]])
    expected_first = torch.zeros(4, 5)
    expected_first[0:3, 1:3] = 2.0
    cropped = crop_mask(masks, boxes)
    assert torch.equal(cropped[0], expected_first)
    assert torch.equal(cropped[1], torch.zeros(4, 5))  # 0.5 is not < 0.5: no centre inside
    assert box_pixels(boxes, 4, 5).sum().item() == 6


def _two_pixel_square_case() -> dict:
    protos = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]).unsqueeze(0)
    coeffs = torch.tensor([[[2.0, -1.0], [5.0, 5.0]]])  # point 0: logits [[2, 0], [0, -1]]
    return {
        "mask_coeffs": coeffs,
        "protos": protos,
        "foreground": torch.tensor([[True, False]]),  # point 1 is background: no mask loss
        "object_index": torch.tensor([[0, 0]]),
        "masks": torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]),
        "boxes": torch.tensor([[[0.0, 0.0, 2.0, 2.0]]]),
        "has_mask": torch.tensor([[True]]),
    }


def test_mask_loss_is_the_box_mean_bce_and_dice_of_a_hand_computed_mask() -> None:
    case = _two_pixel_square_case()
    losses = mask_loss(**case)
    logits, target = [2.0, 0.0, 0.0, -1.0], [1.0, 0.0, 0.0, 0.0]
    bce = sum(_bce(z, t) for z, t in zip(logits, target)) / 4
    probs = [_sigmoid(z) for z in logits]
    dice = 1 - (2 * probs[0] + 1) / (sum(probs) + 1 + 1)
    assert losses["bce"].item() == pytest.approx(bce, abs=1e-6)
    assert losses["dice"].item() == pytest.approx(dice, abs=1e-6)
    assert losses["positives"].item() == 1
    # Cropped to the left column: only pixels (0, 0) and (1, 0) count.
    case["boxes"] = torch.tensor([[[0.0, 0.0, 1.0, 2.0]]])
    left = mask_loss(**case)
    assert left["bce"].item() == pytest.approx((_bce(2.0, 1.0) + _bce(0.0, 0.0)) / 2, abs=1e-6)


def test_mask_loss_skips_objects_without_a_mask_and_stays_in_the_graph() -> None:
    case = _two_pixel_square_case()
    case["has_mask"] = torch.tensor([[False]])
    case["mask_coeffs"].requires_grad_(True)
    losses = mask_loss(**case)
    assert losses["bce"].item() == 0.0 and losses["positives"].item() == 0
    losses["bce"].backward()  # a batch without masks still back-propagates (zero gradients)
    assert torch.equal(case["mask_coeffs"].grad, torch.zeros_like(case["mask_coeffs"]))


def test_positives_get_the_object_the_assigner_gave_them() -> None:
    points, strides = grid_points([(4, 4)], [8])
    # Two objects listed bottom-right first: an index that followed position would be wrong.
    boxes = [torch.tensor([[16.0, 16.0, 32.0, 32.0], [0.0, 0.0, 16.0, 16.0]])]
    targets = pad_targets(boxes, [torch.tensor([0, 1])], [torch.tensor([False, False])])
    regression = torch.zeros(1, 16, 4)
    logits = torch.zeros(1, 16, 2)
    foreground, _, _, objects = assign_points(logits, regression, points, strides, targets, 4)
    # Each object's four inner points (zero regression: every box is the same size, so the
    # alignment ties and the four points strictly inside each object are its positives).
    assert foreground.sum() == 8
    for n in foreground[0].nonzero().flatten().tolist():
        x, y = points[n].tolist()
        assert objects[0, n].item() == (1 if x < 16 and y < 16 else 0)


def test_paste_masks_maps_logits_back_through_the_letterbox() -> None:
    # A 16x8 (W x H) image in an 8-px square: scale 0.5, pad (0, 2); prototypes at stride 2,
    # their centres at network pixels 1, 3, 5, 7. One mask is +5 on prototype column 1 and -5
    # elsewhere, the other so on row 1: bilinear sampling crosses zero half-way between
    # centres, at network 2 and 4, which is original x 4 and 8, and original y 0 and 4.
    logits = torch.full((2, 4, 4), -5.0)
    logits[0, :, 1] = 5.0
    logits[1, 1, :] = 5.0
    boxes = torch.tensor([[0.0, 0.0, 16.0, 8.0], [0.0, 0.0, 6.0, 8.0]])
    masks = paste_masks(logits, boxes, 0.5, (0, 2), (8, 16), stride=2)
    column = torch.zeros(8, 16, dtype=torch.bool)
    column[:, 4:8] = True
    row = torch.zeros(8, 16, dtype=torch.bool)
    row[0:4, 0:6] = True  # the second box ends at x = 6
    assert masks.shape == (2, 8, 16)
    assert torch.equal(masks[0], column) and torch.equal(masks[1], row)
    assert paste_masks(logits[:0], boxes[:0], 0.5, (0, 2), (8, 16), 2).shape == (0, 8, 16)


# ---- data: polygons and RLE, crowds -------------------------------------------------------------


def _rle_copy(tiny_coco, tmp_path, crowd_first: bool = False) -> str:
    """The tiny validation split with every polygon turned into compressed RLE (and the first
    annotation made a crowd region in uncompressed RLE)."""
    data = json.loads(tiny_coco.val_json.read_text())
    coco = COCO(str(tiny_coco.val_json))
    for ann in data["annotations"]:
        rle = coco.annToRLE(ann)
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    if crowd_first:  # uncompressed RLE, as COCO writes crowd regions
        ann = data["annotations"][0]
        ann["segmentation"]["counts"] = rle_string_counts(ann["segmentation"]["counts"])
        ann["iscrowd"] = 1
    path = tmp_path / "rle.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_rle_annotations_give_the_masks_their_polygons_give(tiny_coco, tmp_path) -> None:
    polygons = InstanceDataset(CocoIndex(tiny_coco.val_json, tiny_coco.val_images), 96, False)
    rles = InstanceDataset(
        CocoIndex(_rle_copy(tiny_coco, tmp_path), tiny_coco.val_images), 96, False
    )
    for i in range(len(polygons)):
        a, b = polygons[i], rles[i]
        assert torch.equal(a["masks"], b["masks"]) and a["has_mask"].all()
        # Each mask lies on its box: coverage above half only inside it (1 px of resampling).
        for mask, box in zip(a["masks"], a["boxes_xyxy"]):
            ys, xs = torch.nonzero(mask > 127, as_tuple=True)
            assert xs.min() >= box[0] - 1 and xs.max() + 1 <= box[2] + 1
            assert ys.min() >= box[1] - 1 and ys.max() + 1 <= box[3] + 1


def test_crowd_regions_get_no_mask_target(tiny_coco, tmp_path) -> None:
    path = _rle_copy(tiny_coco, tmp_path, crowd_first=True)
    sample = InstanceDataset(CocoIndex(path, tiny_coco.val_images), 96, False)[0]
    assert sample["crowd"].tolist()[0] and not sample["has_mask"][0]
    assert sample["has_mask"][1:].all()
    # Crowd boxes are never positives, so the mask loss cannot reach them.
    targets = pad_targets([sample["boxes_xyxy"]], [sample["label"]], [sample["crowd"]])
    assert not targets["valid"][0, 0] and targets["valid"][0, 1:].all()


def test_augmented_masks_follow_their_boxes(tiny_coco) -> None:
    dataset = InstanceDataset(
        CocoIndex(tiny_coco.train_json, tiny_coco.train_images), 96, True, 0.5
    )
    dataset.transform.set_random_seed(3)
    for i in range(4):
        sample = dataset[i]
        assert len(sample["masks"]) == len(sample["boxes_xyxy"]) == len(sample["label"])
        for mask, box in zip(sample["masks"], sample["boxes_xyxy"]):
            ys, xs = torch.nonzero(mask > 127, as_tuple=True)
            if len(xs):
                assert xs.min() >= box[0] - 1.5 and xs.max() + 1 <= box[2] + 1.5
                assert ys.min() >= box[1] - 1.5 and ys.max() + 1 <= box[3] + 1.5


def test_masks_fitted_to_the_training_targets_paste_back_onto_the_objects(tiny_coco) -> None:
    """The training targets (letterbox, prototype grid, box crop) and the decoding (paste back
    through the letterbox) agree: logits fitted to the targets by the mask loss land on the
    annotated objects, and one prototype pixel of misalignment would show."""
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    dataset = InstanceDataset(index, 160, False)  # 160x120 images: scale 1, 40x40 prototypes
    aligned, shifted = [], []
    for i in range(3):
        sample = dataset[i]
        count = len(sample["masks"])
        target = prototype_grid_masks(sample["masks"], 40, 40, 4)[None]
        logits = torch.zeros(1, count, 40, 40, requires_grad=True)
        everything = torch.ones(1, count, dtype=torch.bool)
        optimizer = torch.optim.Adam([logits], lr=0.5)
        for _ in range(100):
            loss = mask_loss(
                torch.eye(count)[None],  # coefficients picking each object's own "prototype"
                logits,
                everything,
                torch.arange(count)[None],
                target,
                sample["boxes_xyxy"][None] / 4,
                everything,
            )["bce"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        anns = index.annotations(sample["image_id"])
        truth = torch.from_numpy(np.stack([index.coco.annToMask(a) for a in anns])).bool()
        boxes = ops.xywh_to_xyxy(torch.tensor([a["bbox"] for a in anns]))
        for ious, offset in ((aligned, 0), (shifted, 4)):
            pad = (sample["pad"][0] + offset, sample["pad"][1])
            pasted = paste_masks(logits[0].detach(), boxes, sample["scale"], pad, (120, 160), 4)
            ious += (
                (pasted & truth).flatten(1).sum(1) / (pasted | truth).flatten(1).sum(1)
            ).tolist()
    # Measured 0.85 (persons' limbs lowest, 0.63) against 0.59 one prototype pixel off.
    assert np.mean(aligned) >= 0.8 and np.mean(shifted) <= np.mean(aligned) - 0.15
    assert all(a > s for a, s in zip(aligned, shifted)), (aligned, shifted)


def test_the_mask_loss_reaches_prototypes_and_coefficients(tiny_coco) -> None:
    torch.manual_seed(0)
    data = InstanceData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=64,
        num_workers=0,
    )
    dataset = data.build_dataset(data.index("val"), train=False)
    batch = data.collate([dataset[i] for i in range(2)])
    model = InstanceTask(categories=data.categories, image_size=64, neck_width=16)
    model.hparams.box_loss_weight = model.hparams.cls_loss_weight = 0.0  # the mask terms only
    losses = model.compute_loss(model(batch["image"]), batch)
    losses["loss"].backward()
    assert losses["mask"] > 0 and losses["dice"] > 0
    assert model.prototypes.out.weight.grad.abs().sum() > 0
    assert all(b[-1].weight.grad.abs().sum() > 0 for b in model.coefficients.branches[:1])
    assert model.head.cls_branches[0][-1].weight.grad.abs().sum() == 0  # detection untouched


# ---- results and COCOeval segm ---------------------------------------------------------------


def test_rle_results_round_trip_through_coco_loadres(tiny_coco, tmp_path) -> None:
    info = json.loads(tiny_coco.val_json.read_text())["images"][0]
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((3, info["height"], info["width"])) > 0.7)
    records = [
        {"image_id": info["id"], "category_id": 3, "score": 0.9, "segmentation": rle}
        for rle in encode_masks(masks)
    ]
    path = write_results_json(records, tmp_path / "results.json")
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(tiny_coco.val_json)).loadRes(str(path))
    for k, ann in enumerate(loaded.dataset["annotations"]):
        assert np.array_equal(loaded.annToMask(ann), masks[k].numpy())
        assert ann["area"] == float(masks[k].sum())


def _ground_truth_predictions(index: CocoIndex, shrink: bool = False) -> list[dict]:
    predictions = []
    for image_id in index.image_ids:
        anns = index.annotations(image_id, include_crowd=False)
        masks = np.stack([index.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, 1, 1))
        if shrink:  # keep a quarter of each mask: same box, mask IoU about 0.25
            for mask, ann in zip(masks, anns):
                x, y, w, h = ann["bbox"]
                mask[:, : int(x + w / 2)] = 0
                mask[: int(y + h / 2)] = 0
        predictions.append(
            {
                "image_id": image_id,
                "bbox": torch.tensor([a["bbox"] for a in anns]).reshape(-1, 4),
                "score": torch.ones(len(anns)),
                "category_id": torch.tensor([a["category_id"] for a in anns], dtype=torch.long),
                "segmentation": encode_masks(torch.from_numpy(masks).bool()) if anns else [],
            }
        )
    return predictions


def test_ground_truth_masks_score_one_and_match_pycocotools(tiny_coco, tmp_path) -> None:
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    metric = CocoMaskMetric(index.num_classes)
    metric.index = index
    metric.update(_ground_truth_predictions(index), torch.tensor(index.image_ids))
    values = metric.compute()
    assert values["mask_AP"] == pytest.approx(1.0) and values["box_AP"] == pytest.approx(1.0)
    assert values["semantic_miou"] == pytest.approx(1.0)
    present = [row for row in values["segm"].per_category if row["instances"]]
    assert present and all(row["AP"] == pytest.approx(1.0) for row in present)

    metric.reset()
    metric.index = index
    metric.update(_ground_truth_predictions(index, shrink=True), torch.tensor(index.image_ids))
    shrunk = metric.compute()
    assert shrunk["box_AP"] == pytest.approx(1.0) and shrunk["mask_AP50"] == 0.0
    # The oracle: pycocotools on the same records from a fresh file.
    path = write_results_json(metric.records(), tmp_path / "results.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tiny_coco.val_json))
        evaluator = COCOeval(gt, gt.loadRes(str(path)), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    mine = [shrunk[f"mask_{name}"] for name in BOX_STATS]
    assert mine == pytest.approx(list(evaluator.stats), abs=1e-12)


def test_coco_backend_option_reaches_both_mask_metrics(
    tiny_coco, tmp_path, monkeypatch, capsys
) -> None:
    import yaml

    categories = json.loads(tiny_coco.val_json.read_text())["categories"]
    model = InstanceTask(categories=categories, image_size=64, coco_backend="faster")
    assert model.val_metric.backend == model.test_metric.backend == "faster"
    assert model.hparams.coco_backend == "faster"  # a checkpoint evaluates as it validated
    assert InstanceTask(categories=categories, image_size=64).val_metric.backend == "pycocotools"
    # Both backends score the same records alike: every other image's masks cut to a quarter.
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    pairs = zip(_ground_truth_predictions(index), _ground_truth_predictions(index, shrink=True))
    mixed = [whole if k % 2 else quarter for k, (whole, quarter) in enumerate(pairs)]
    stats = []
    for backend in ("pycocotools", "faster"):
        metric = CocoMaskMetric(index.num_classes, backend=backend)
        metric.index = index
        metric.update(mixed, torch.tensor(index.image_ids))
        values = metric.compute()
        stats.append([values[f"{kind}_{name}"] for kind in ("mask", "box") for name in BOX_STATS])
    assert 0.1 < stats[0][0] < 0.9  # mask AP: neither all found nor none
    assert stats[0] == pytest.approx(stats[1], abs=1e-12)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        train_main(["--task", "instance", "--model.coco_backend", "faster", "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["coco_backend"] == "faster"
    with pytest.raises(SystemExit):
        train_main(["--task", "instance", "--model.coco_backend", "fast", "--print_config"])
    assert "coco_backend" in capsys.readouterr().err


# ---- bad input: one line naming file, record and field ------------------------------------------


def _broken_split(tiny_coco, tmp_path, segmentation) -> list[str]:
    data = json.loads(tiny_coco.train_json.read_text())
    data["annotations"][0]["segmentation"] = segmentation
    data["annotations"][0].pop("area")
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(data))
    images = str(tiny_coco.train_images)
    split = ["--data.train_json", str(path), "--data.train_images", images]
    return [*split, "--data.val_json", str(path), "--data.val_images", images]


@pytest.mark.parametrize(
    "segmentation, message",
    [
        ([[10.0, 10.0, 20.0, 20.0]], "polygon 0 has 2 point(s); at least 3 are needed"),
        (
            {"size": [10, 10], "counts": [0, 100]},
            "RLE size [10, 10] differs from the image's [height, width] [120, 160]",
        ),
        ([[3e9, 3e9, 3e9 + 9, 3e9, 3e9, 3e9 + 9]], "reaches outside the 160x120 image"),
    ],
)
def test_bad_masks_stop_the_instance_task_with_one_line(
    tiny_coco, tmp_path, segmentation, message
) -> None:
    args = ["--task", "instance", *_broken_split(tiny_coco, tmp_path, segmentation)]
    with pytest.raises(SystemExit) as stop:
        train_main([*args, "--trainer.fast_dev_run", "true", "--data.num_workers", "0"])
    text = str(stop.value)
    assert "Traceback" not in text
    line = next(line for line in text.splitlines() if message in line)
    assert line.startswith("instances_train.json: annotation id=1: field 'segmentation'")


# ---- end to end ------------------------------------------------------------------------------


def test_fit_reports_mask_and_box_ap_and_predict_writes_rle(trained_runs, tiny_coco, tmp_path):
    run = trained_runs["instance"]
    report = json.loads((run / "report" / "report.json").read_text())
    for key in ("mask_AP", "mask_AP50", "mask_AP75", "box_AP", "semantic_miou"):
        assert 0.0 <= report["headline"][key] <= 1.0
    for key in ("mask_APs", "mask_APm", "mask_APl", "box_AR100"):
        assert key in report["metrics"]
    categories = {c["name"] for c in json.loads(tiny_coco.val_json.read_text())["categories"]}
    assert {row["category"] for row in report["tables"]["per_category_mask_AP"]} == categories
    assert {"pr_curves_mask", "predictions"} <= set(report["figures"])

    checkpoint = run / "checkpoints" / "last.ckpt"
    folder = str(tiny_coco.val_images)
    predict_main([folder, "--ckpt", str(checkpoint), "--output", str(tmp_path)])
    records = json.loads((tmp_path / "results.json").read_text())
    files = json.loads((tmp_path / "files.json").read_text())
    assert records and all(set(r["segmentation"]) == {"size", "counts"} for r in records)
    first = read_image(files["1"])
    assert records[0]["segmentation"]["size"] == list(first.shape[:2])
    drawn = read_image(tmp_path / f"{files['1'].rsplit('/', 1)[-1].rsplit('.', 1)[0]}.jpg")
    assert drawn.shape == first.shape


def test_onnx_gives_the_same_masks(trained_runs, tiny_coco, tmp_path) -> None:
    from vision_tasks.export import OnnxRunner, export_onnx
    from vision_tasks.tasks.instance.masks import mask_logits

    model = load_task_checkpoint(trained_runs["instance"] / "checkpoints" / "last.ckpt")
    # Two training steps leave most masks empty. Random final layers, the prototypes centred on
    # these images, give masks of every size with many edges: a harder comparison.
    torch.manual_seed(0)
    for layer in [b[-1] for b in model.coefficients.branches] + [model.prototypes.out]:
        torch.nn.init.normal_(layer.weight, std=1.0)
        torch.nn.init.zeros_(layer.bias)
    paths = sorted(tiny_coco.val_images.iterdir())
    samples = [model.predict_sample(read_image(p)) for p in paths]
    images = torch.stack([s["image"] for s in samples])
    with torch.inference_mode():
        model.prototypes.out.bias -= model(images)["protos"].mean((0, 2, 3))
    runner = OnnxRunner(export_onnx(model, tmp_path / "instance.onnx"))
    with torch.inference_mode():
        by_torch, by_onnx = model(images), runner(images)
    detections = model._detections(by_torch, score_threshold=0.0, max_detections=30)
    ious, empty = [], 0
    for i, (boxes, _, _, point) in enumerate(detections):
        size = samples[i]["orig_size"]
        pasted = [
            paste_masks(
                mask_logits(out["mask_coeffs"][i, point], out["protos"][i]),
                (boxes - torch.tensor([*samples[i]["pad"]] * 2)) / samples[i]["scale"],
                samples[i]["scale"],
                samples[i]["pad"],
                size,
                model.mask_stride,
            )
            for out in (by_torch, by_onnx)
        ]
        union = (pasted[0] | pasted[1]).flatten(1).sum(1)
        overlap = (pasted[0] & pasted[1]).flatten(1).sum(1)
        ious += (overlap / union.clamp_min(1))[union > 0].tolist()
        empty += int((union == 0).sum())
    assert len(ious) >= empty and min(ious) >= 0.99, (empty, sorted(ious)[:5])


def test_panoptic_view_counts_every_object_once(tiny_coco) -> None:
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    objects = sum(len(index.annotations(i, include_crowd=False)) for i in index.image_ids)
    metric = CocoMaskMetric(index.num_classes)
    metric.index = index
    metric.update(_ground_truth_predictions(index), torch.tensor(index.image_ids))
    exact = metric.compute()["panoptic"]
    # The fixture's objects do not overlap: each truth mask is matched by itself, IoU 1.
    assert sum(c["tp"] for c in exact["per_category"].values()) == objects
    assert exact["pq"] == pytest.approx(1.0) and exact["things"]["pq"] == pytest.approx(1.0)
    metric.reset()
    metric.index = index
    metric.update(_ground_truth_predictions(index, shrink=True), torch.tensor(index.image_ids))
    shrunk = metric.compute()["panoptic"]
    # A quarter of each mask (IoU 0.25) matches nothing: one FP and one FN per object, and
    # the FP is counted, not ignored, since it lies on its object rather than on void.
    counts = shrunk["per_category"].values()
    assert sum(c["tp"] for c in counts) == 0 and shrunk["pq"] == 0.0
    assert sum(c["fp"] for c in counts) == sum(c["fn"] for c in counts) == objects
