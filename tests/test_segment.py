"""Semantic segmentation: rasterisation, metrics and loss against oracles, shapes, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from vision_tasks.backbone import Backbone
from vision_tasks.cli import collate_predict
from vision_tasks.data.coco import CocoIndex
from vision_tasks.data.transforms import segment_transforms
from vision_tasks.evaluation.metrics import SegmentationMetric
from vision_tasks.layers import UNetDecoder
from vision_tasks.tasks.segment import (
    IGNORE_INDEX,
    SegmentData,
    SegmentDataset,
    SegmentTask,
    class_map,
    hard_label_map,
    one_hot_label_map,
    segmentation_loss,
)

CATEGORIES = [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]
H, W = 30, 40


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    counts, current, run = [], 0, 0  # COCO's uncompressed RLE: column-major runs, zeros first
    for value in mask.astype(np.uint8).ravel(order="F").tolist():
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    return {"size": list(mask.shape), "counts": [*counts, run]}


def _write_coco(tmp_path, annotations: list[dict]) -> tuple[CocoIndex, COCO]:
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "img.png")
    data = {
        "images": [{"id": 1, "file_name": "img.png", "height": H, "width": W}],
        "categories": CATEGORIES,
        "annotations": annotations,
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return CocoIndex(path, tmp_path), COCO(str(path))


def _ann(ann_id: int, cat: int, seg, bbox, crowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": 1,
        "category_id": cat,
        "segmentation": seg,
        "bbox": bbox,
        "iscrowd": crowd,
    }


def _blob(rng: np.random.Generator, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7  # ragged, many runs
    return mask


def test_label_map_equals_ann_to_mask_for_polygons_and_rle_with_crowd_ignored(tmp_path) -> None:
    rng = np.random.default_rng(0)
    compressed, uncompressed = _blob(rng, 2, 12, 22, 38), _blob(rng, 15, 28, 2, 12)
    crowd = _blob(rng, 16, 29, 25, 39)
    annotations = [
        _ann(1, 3, [[2.5, 2.0, 18.0, 3.5, 9.0, 13.0]], [2.5, 2.0, 15.5, 11.0]),  # polygon
        _ann(2, 5, _rle(compressed, True), [22, 2, 16, 10]),
        _ann(3, 9, _rle(uncompressed, False), [2, 15, 10, 13]),
        _ann(4, 3, _rle(crowd, True), [25, 16, 14, 13], crowd=1),
    ]
    index, coco = _write_coco(tmp_path, annotations)
    label = SegmentDataset(index, 40, 32, train=False).label_map(1)
    expected = np.zeros((H, W), np.uint8)
    for ann, value in zip(coco.loadAnns([1, 2, 3, 4]), [1, 2, 3, IGNORE_INDEX]):
        expected[coco.annToMask(ann) > 0] = value
    assert (coco.annToMask(coco.loadAnns(1)[0]) > 0).sum() > 20  # the oracle is not empty
    np.testing.assert_array_equal(label, expected)
    assert set(np.unique(label)) == {0, 1, 2, 3, IGNORE_INDEX}


@pytest.mark.parametrize("small_first", [True, False])
def test_smaller_instance_wins_overlaps_and_crowd_wins_everything(tmp_path, small_first) -> None:
    big = [[0.0, 0.0, 30.0, 0.0, 30.0, 25.0, 0.0, 25.0]]
    small = [[10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0]]
    crowd = [[15.0, 5.0, 35.0, 5.0, 35.0, 15.0, 15.0, 15.0]]
    anns = [_ann(1, 3, big, [0, 0, 30, 25]), _ann(2, 5, small, [10, 10, 10, 10])]
    if small_first:  # annotation order must not matter
        anns = [dict(anns[1], id=1), dict(anns[0], id=2)]
    anns.append(_ann(3, 9, crowd, [15, 5, 20, 10], crowd=1))
    index, coco = _write_coco(tmp_path, anns)
    label = SegmentDataset(index, 40, 32, train=False).label_map(1)
    masks = {a["category_id"]: coco.annToMask(a) > 0 for a in coco.loadAnns([1, 2, 3])}
    assert (label[masks[9]] == IGNORE_INDEX).all()
    assert (label[masks[5] & ~masks[9]] == 2).all() and (masks[5] & ~masks[9]).any()
    assert (label[masks[3] & ~masks[5] & ~masks[9]] == 1).all()
    assert (label[~(masks[3] | masks[5] | masks[9])] == 0).all()


def test_annotation_without_segmentation_is_ignored_over_its_box(tmp_path) -> None:
    index, _ = _write_coco(tmp_path, [_ann(1, 5, [], [4.2, 3.0, 10.0, 6.5])])
    label = SegmentDataset(index, 40, 32, train=False).label_map(1)
    expected = np.zeros((H, W), np.uint8)
    expected[3:10, 4:15] = IGNORE_INDEX
    np.testing.assert_array_equal(label, expected)


def test_metric_equals_torchmetrics_jaccard_with_ignore_index() -> None:
    num_classes, generator = 5, torch.Generator().manual_seed(0)
    metric = SegmentationMetric(num_classes)
    jaccard = MulticlassJaccardIndex(num_classes, ignore_index=IGNORE_INDEX, average="macro")
    per_class = MulticlassJaccardIndex(num_classes, ignore_index=IGNORE_INDEX, average="none")
    accuracy = MulticlassAccuracy(num_classes, ignore_index=IGNORE_INDEX, average="micro")
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for _ in range(3):
        target = torch.randint(0, num_classes - 1, (2, 17, 23), generator=generator)  # no class 4
        target[torch.rand(target.shape, generator=generator) < 0.2] = IGNORE_INDEX
        preds = torch.randint(0, num_classes - 1, (2, 17, 23), generator=generator)
        preds[target == 1] = 1  # class 1 scores better than the rest
        for m in (metric, jaccard, per_class, accuracy):
            m.update(preds, target)
        known = target != IGNORE_INDEX
        np.add.at(confusion, (target[known].numpy(), preds[known].numpy()), 1)
    values = metric.compute()
    assert float(values["miou"]) == pytest.approx(float(jaccard.compute()), abs=1e-6)
    assert values["iou"][:4].float() == pytest.approx(per_class.compute()[:4], abs=1e-6)
    assert torch.isnan(values["iou"][4])  # absent everywhere: undefined and left out of the mean
    assert float(values["pixel_accuracy"]) == pytest.approx(float(accuracy.compute()), abs=1e-6)
    hits = np.diag(confusion)[:4]
    iou = hits / ((confusion.sum(0) + confusion.sum(1))[:4] - hits)
    frequency = confusion.sum(1)[:4] / confusion.sum()
    assert float(values["fw_iou"]) == pytest.approx(float((frequency * iou).sum()), abs=1e-9)
    np.testing.assert_array_equal(values["confusion"].numpy(), confusion)
    assert values["iou"][1] > values["iou"][2]


@pytest.mark.parametrize(("channels", "stride"), [((64, 32, 16, 16, 8), 1), ((64, 32, 16), 4)])
def test_unet_decoder_output_stride_and_width(channels, stride) -> None:
    trunk = Backbone("resnet18", weights="none")
    decoder = UNetDecoder(trunk.out_channels, channels)
    out = decoder(trunk(torch.zeros(2, 3, 64, 96)))
    assert (decoder.out_stride, decoder.out_channels) == (stride, channels[-1])
    assert out.shape == (2, channels[-1], 64 // stride, 96 // stride)


@pytest.mark.parametrize("channels", [(32, 16, 16, 8, 8), (32, 16, 16, 8)])
def test_odd_input_sizes_come_back_at_exactly_that_size(channels) -> None:
    model = SegmentTask(categories=CATEGORIES, decoder_channels=channels).eval()
    for shape in [(1, 3, 97, 131), (2, 3, 64, 33)]:
        images = torch.randn(shape)
        logits = model(images)
        assert logits.shape == (shape[0], 4, *shape[2:])


def test_flip_test_averages_the_mirror_image_in_evaluation_only() -> None:
    torch.manual_seed(0)
    model = SegmentTask(categories=CATEGORIES, decoder_channels=(16, 16, 8, 8), flip_test=True)
    images = torch.randn(2, 3, 64, 96)
    model.eval()
    with torch.no_grad():
        logits = model(images)
        single = model._logits(images)
        mirrored = model._logits(images.flip(-1)).flip(-1)
    assert torch.allclose(logits, (single + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(single, mirrored, atol=1e-3)  # the average does change something
    with torch.no_grad():  # a mirrored input gives the mirrored answer
        assert torch.allclose(model(images.flip(-1)), logits.flip(-1), atol=1e-5)
    model.train()
    assert model.backbone_passes == 2


def test_loss_ignores_unknown_pixels_and_matches_weighted_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, 7, generator=generator)
    target = torch.randint(0, 4, (2, 6, 7), generator=generator)
    target[:, :2] = IGNORE_INDEX
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0])
    loss = segmentation_loss(logits, target, weights)["loss"]
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE_INDEX)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    changed = logits.clone()
    changed[:, :, :2] = 100 * torch.randn(2, 4, 2, 7, generator=generator)
    for dice in (0.0, 1.0):
        a, b = (
            segmentation_loss(logits, target, None, dice),
            segmentation_loss(changed, target, None, dice),
        )
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)
    nothing_known = segmentation_loss(logits, torch.full_like(target, IGNORE_INDEX), None, 1.0)
    assert torch.isfinite(nothing_known["loss"]) and float(nothing_known["ce"]) == 0.0
    perfect = F.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float() * 50
    assert float(segmentation_loss(perfect, target, None, 1.0)["dice"]) < 1e-3


def test_soft_targets_weigh_each_class_by_its_fraction_of_the_pixel() -> None:
    logits = torch.randn(1, 3, 1, 2, generator=torch.Generator().manual_seed(4))
    # Pixel 0: 30% class 0, 70% class 2. Pixel 1: half unknown, the known half class 1.
    fractions = torch.tensor([[0.3, 0.0], [0.0, 0.5], [0.7, 0.0]]).reshape(1, 3, 1, 2)
    log_p = logits.log_softmax(dim=1)[0, :, 0]
    expected = -(0.3 * log_p[0, 0] + 0.7 * log_p[2, 0] + 0.5 * log_p[1, 1]) / 1.5
    target = hard_label_map(fractions[0])[None]
    assert target.tolist() == [[[2, 1]]]  # the larger share; known at exactly half
    losses = segmentation_loss(logits, target, None, 1.0, fractions)
    assert float(losses["ce"]) == pytest.approx(float(expected), rel=1e-6)
    # One-hot fractions are the hard targets: the same loss as the label map.
    label = np.array([[0, 2, IGNORE_INDEX], [1, 1, 0]], np.uint8)
    one_hot = torch.from_numpy(one_hot_label_map(label, 3)).permute(2, 0, 1)[None]
    assert one_hot.sum(dim=1).tolist() == [[[1, 1, 0], [1, 1, 1]]]
    logits = torch.randn(1, 3, 2, 3, generator=torch.Generator().manual_seed(5))
    hard = torch.from_numpy(label).long()[None]
    for dice in (0.0, 1.0):
        a = segmentation_loss(logits, hard, None, dice)["loss"]
        b = segmentation_loss(logits, hard, None, dice, one_hot)["loss"]
        assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_soft_training_samples_carry_the_class_fractions_of_the_resized_pixels(tiny_coco) -> None:
    data = SegmentData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=48,
        crop_size=64,
        num_workers=0,
        soft_targets=True,
    )
    data.setup("fit")
    dataset = data.datasets["train"]
    sample = dataset[0]
    fractions, known = sample["mask_soft"], sample["mask_soft"].sum(dim=0)
    assert fractions.shape == (len(data.categories) + 1, 64, 64)
    assert torch.allclose(known[known > 0.01], torch.ones(()), atol=1e-4)  # padding: all zero
    assert (known < 1e-6).any()  # a 48-pixel picture in a 64-pixel crop: padded
    assert ((fractions > 0.05) & (fractions < 0.95)).any()  # edges are shared
    assert torch.equal(sample["mask"], hard_label_map(fractions))
    evaluation = data.build_dataset(data.index("val"), train=False)[0]
    assert "mask_soft" not in evaluation  # scores stay on the label map


def test_auxiliary_loss_trains_only_and_is_the_c4_cross_entropy() -> None:
    model = SegmentTask(categories=CATEGORIES, decoder_channels=(16, 16, 8, 8, 8), aux_weight=0.4)
    images = torch.randn(2, 3, 45, 70, generator=torch.Generator().manual_seed(2))
    target = torch.randint(0, 4, (2, 45, 70), generator=torch.Generator().manual_seed(3))
    target[:, :5] = IGNORE_INDEX
    model.train()
    losses = model.compute_loss(model(images), {"mask": target})
    padded = F.pad(images, (0, 26, 0, 19))  # to the stride: 64 x 96
    aux_logits = model.aux_head(model.backbone(padded)["c4"])
    aux_logits = F.interpolate(aux_logits, size=(64, 96), mode="bilinear")[..., :45, :70]
    expected = F.cross_entropy(aux_logits, target, ignore_index=IGNORE_INDEX)
    assert float(losses["aux"]) == pytest.approx(float(expected), rel=1e-4)
    total = losses["ce"] + 0.4 * losses["aux"]
    assert float(losses["loss"]) == pytest.approx(float(total), rel=1e-6)
    model.eval()
    with torch.no_grad():
        evaluated = model.compute_loss(model(images), {"mask": target})
    assert "aux" not in evaluated and float(evaluated["loss"]) == float(evaluated["ce"])


def test_masks_are_never_interpolated_and_padding_is_ignored() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (61, 83, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 1, 2, 7, IGNORE_INDEX], np.uint8), size=(61, 83))
    train = segment_transforms(50, 48, train=True, scale_range=(0.5, 1.7))
    for _ in range(8):
        out = train(image=image, mask=label)
        assert out["mask"].shape == (48, 48) and out["image"].shape == (3, 48, 48)
        assert set(np.unique(out["mask"].numpy())) <= {0, 1, 2, 7, IGNORE_INDEX}
    halves = np.where(np.arange(83) < 40, 1, 2).astype(np.uint8)[None].repeat(61, axis=0)
    out = segment_transforms(50, 48, train=False)(image=image, mask=halves)
    mask = out["mask"].numpy()
    assert mask.shape == (64, 64)  # 50 rounded up to the stride, picture top-left (37 x 50)
    assert (mask[37:] == IGNORE_INDEX).all() and (mask[:, 50:] == IGNORE_INDEX).all()
    assert (mask[:37, :23] == 1).all() and (mask[:37, 26:50] == 2).all()  # edge at 40*50/83


def test_evaluation_pads_to_the_stride_and_collate_pads_a_batch_with_ignore(tiny_coco) -> None:
    image = np.random.default_rng(0).integers(0, 255, (40, 83, 3), dtype=np.uint8)
    label = np.ones((40, 83), np.uint8)
    square = segment_transforms(50, 48, train=False)(image=image, mask=label)["mask"]
    strided = segment_transforms(50, 48, train=False, square=False)(image=image, mask=label)
    assert square.shape == (64, 64) and strided["mask"].shape == (32, 64)  # picture 24 x 50
    assert (strided["mask"][:24, :50] == 1).all() and (strided["mask"][24:] == IGNORE_INDEX).all()
    data = SegmentData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        num_workers=0,
    )
    samples = [
        {
            "image": torch.ones(3, h, w),
            "mask": torch.full((h, w), 2),
            "image_id": i,
            "input_hw": torch.tensor([h, w]),
            "original_hw": torch.tensor([h + 1, w + 1]),
            "mask_original": torch.full((h + 1, w + 1), 3),
        }
        for i, (h, w) in enumerate([(32, 64), (64, 32)])
    ]
    batch = data.collate(samples)
    assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 64, 64)
    assert batch["mask_original"].shape == (2, 65, 65)
    assert (batch["image"][0, :, 32:] == 0).all() and (batch["image"][0, :, :32] == 1).all()
    assert (batch["mask"][1, :, 32:] == IGNORE_INDEX).all()
    assert (batch["mask"][1, :, :32] == 2).all()
    assert (batch["mask_original"][0, 33:] == IGNORE_INDEX).all()
    assert (batch["mask_original"][0, :33, :65] == 3).all()


def test_metric_is_scored_at_the_original_resolution() -> None:
    model = SegmentTask(categories=CATEGORIES)
    logits = torch.zeros(1, 4, 32, 32)
    logits[0, 2, :10, :20] = 5.0  # the picture: class 2 everywhere; the padding: class 0
    original = torch.full((1, 25, 50), 2)
    original[0, 0, :5] = IGNORE_INDEX
    batch = {
        "input_hw": torch.tensor([[10, 20]]),
        "original_hw": torch.tensor([[25, 50]]),
        "mask_original": original,
        "image_id": torch.tensor([7]),
    }
    model.update_metric(model.test_metric, logits, batch)
    confusion = model.test_metric.compute()["confusion"]
    assert int(confusion.sum()) == 25 * 50 - 5 and int(confusion[2, 2]) == 25 * 50 - 5
    prediction = model.decode(logits, batch)[0]
    assert prediction["label_map"].shape == (25, 50) and (prediction["label_map"] == 2).all()
    assert [s["category_id"] for s in prediction["segments"]] == [5]


def test_few_steps_on_one_tiny_batch_halve_the_loss(tiny_coco) -> None:
    torch.manual_seed(0)
    data = SegmentData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=48,
        num_workers=0,
    )
    dataset = SegmentDataset(data.index("val"), image_size=48, crop_size=48, train=False)
    batch = data.collate([dataset[i] for i in range(2)])
    model = SegmentTask(
        categories=data.categories, image_size=48, decoder_channels=(32, 32, 16, 16, 16)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(12):
        loss = model.compute_loss(model(batch["image"]), batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_predict_writes_palette_label_png_and_overlay(tmp_path) -> None:
    model = SegmentTask(categories=CATEGORIES, image_size=48, decoder_channels=(16, 16, 8, 8, 8))
    model.eval()
    images = [
        np.random.default_rng(i).integers(0, 255, (37 + 20 * i, 61, 3), np.uint8) for i in range(2)
    ]
    samples = [model.predict_sample(image) for image in images]
    for i, sample in enumerate(samples):
        sample["image_id"] = i + 1
    batch = collate_predict(samples)
    with torch.inference_mode():
        assert model(batch["image"]).shape == (2, 4, 64, 64)  # 48 padded to the stride
    logits = torch.zeros(2, 4, 64, 64)
    logits[:, 3, :, :24], logits[:, 1, :, 24:] = 5.0, 5.0  # class 3 (id 9) on the left half
    predictions = model.decode(logits, batch)
    written = model.write_predictions(predictions, images, ["a.jpg", "b.png"], tmp_path)
    assert [p.name for p in written] == [
        "a_label.png",
        "a_overlay.png",
        "b_label.png",
        "b_overlay.png",
    ]
    for prediction, image, name in zip(predictions, images, ["a", "b"]):
        png = Image.open(tmp_path / f"{name}_label.png")
        assert png.mode == "P" and png.size == (image.shape[1], image.shape[0])
        np.testing.assert_array_equal(np.array(png), prediction["label_map"])
        assert (prediction["label_map"][:, :20] == 3).all()
        overlay = np.array(Image.open(tmp_path / f"{name}_overlay.png"))
        assert overlay.shape == image.shape
        for segment in prediction["segments"]:
            index = [c["id"] for c in CATEGORIES].index(segment["category_id"]) + 1
            decoded = mask_utils.decode(segment["segmentation"])
            np.testing.assert_array_equal(decoded, prediction["label_map"] == index)


def test_class_weights_of_the_wrong_length_fail_clearly() -> None:
    with pytest.raises(ValueError, match="class_weights needs 4 values"):
        SegmentTask(categories=CATEGORIES, class_weights=(1.0, 2.0))


def test_class_map_is_the_argmax_ties_included() -> None:
    generator = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 3, (5, 31, 43), generator=generator).float()  # many exact ties
    assert torch.equal(class_map(scores, 0), scores.argmax(dim=0))
    batch = scores[None].repeat(2, 1, 1, 1)
    assert torch.equal(class_map(batch, 1), batch.argmax(dim=1))
