"""Top-down keypoints: heatmap coding, crop geometry, flip pairs, OKS evaluation, learning."""

from __future__ import annotations

import json

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from vision_tasks import ops
from vision_tasks.data.coco import CocoDataError, CocoIndex
from vision_tasks.data.synthetic import KEYPOINT_NAMES
from vision_tasks.evaluation.coco_eval import COCO_PERSON_SIGMAS, KEYPOINT_STATS, coco_evaluate
from vision_tasks.tasks.keypoints import (
    KeypointData,
    KeypointDataset,
    KeypointTask,
    crop_to_image,
    decode_heatmaps,
    encode_heatmaps,
    flip_heatmaps,
    flip_pairs_from_names,
    flip_permutation,
    keypoint_sigmas,
)

STRIDE = 4


@pytest.fixture(scope="module")
def data(tiny_coco) -> KeypointData:
    """The tiny synthetic set seen through the keypoint data module (96x128 crops)."""
    return KeypointData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        image_size=128,
        num_workers=0,
    )


def _val_batch(data: KeypointData) -> dict:
    dataset = data.build_dataset(data.index("val"), train=False)
    return data.collate([dataset[i] for i in range(len(dataset))])


# ---- heatmaps -------------------------------------------------------------------------------


@pytest.mark.parametrize("refine, tolerance", [("dark", 0.05), ("quarter", 0.25)])
def test_encode_then_decode_returns_the_keypoints(refine: str, tolerance: float) -> None:
    generator = torch.Generator().manual_seed(0)
    h, w = 32, 24
    # Sub-cell positions at least 3 cells (1.5 sigma) from the border, in crop pixels.
    cells = torch.rand(2, 40, 2, generator=generator) * torch.tensor([w - 7.0, h - 7.0]) + 3
    crop = cells * STRIDE + (STRIDE - 1) / 2
    keypoints = torch.cat([crop, torch.ones(2, 40, 1)], dim=-1)
    heatmaps, weights = encode_heatmaps(keypoints, (h, w), sigma=2.0)
    assert heatmaps.shape == (2, 40, h, w) and bool(weights.all())
    assert torch.allclose(heatmaps.amax(dim=(2, 3)), torch.ones(2, 40), atol=0.1)
    decoded, scores = decode_heatmaps(heatmaps, sigma=2.0, refine=refine)
    error_cells = (decoded - crop).abs().max() / STRIDE
    assert error_cells <= tolerance
    none_error = (decode_heatmaps(heatmaps, refine="none")[0] - crop).abs().max() / STRIDE
    assert none_error > 0.3  # the arg-max alone is off by up to half a cell: refinement works


def test_unlabelled_or_outside_keypoints_get_zero_weight_and_no_peak() -> None:
    keypoints = torch.tensor([[[40.0, 50.0, 2], [40.0, 50.0, 0], [-30.0, 50.0, 2], [40, 200, 1]]])
    heatmaps, weights = encode_heatmaps(keypoints, (32, 24))
    assert weights.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert heatmaps[0, 0].max() > 0.9 and heatmaps[0, 1:].abs().max() == 0


def test_dark_stays_within_a_quarter_cell_near_the_border() -> None:
    # One cell in from the left edge, and a point whose arg-max cell is the bottom row.
    crop = torch.tensor([[[1.5 + 1.3 * STRIDE, 60.0], [60.0, 125.5 - 0.4 * STRIDE]]])
    heatmaps, _ = encode_heatmaps(torch.cat([crop, torch.ones(1, 2, 1)], -1), (32, 24))
    decoded, _ = decode_heatmaps(heatmaps, refine="dark")
    assert (decoded - crop).abs().max() / STRIDE <= 0.25
    # Anywhere on the map, corners included: a Gaussian cut by the border is still found.
    cells = torch.rand(1, 300, 2, generator=torch.Generator().manual_seed(1))
    cells = cells * torch.tensor([23.9, 31.9]) - 0.45
    crop = cells * STRIDE + (STRIDE - 1) / 2
    heatmaps, _ = encode_heatmaps(torch.cat([crop, torch.ones(1, 300, 1)], -1), (32, 24))
    assert (decode_heatmaps(heatmaps, refine="dark")[0] - crop).abs().max() / STRIDE < 0.01


def test_dark_takes_no_step_where_the_fit_is_not_determined() -> None:
    """An untrained model's maps: the arg-max stands, however the noise falls (a step there is
    noise over noise, and moved ONNX Runtime's keypoints from torch's by 0.4 px)."""
    generator = torch.Generator().manual_seed(3)
    flat = 0.005 + 1e-6 * torch.randn(1, 50, 32, 24, generator=generator)
    unrefined = decode_heatmaps(flat, refine="none")[0]
    assert torch.equal(decode_heatmaps(flat, refine="dark")[0], unrefined)
    # Peaks on the border column with one positive column inside them: two columns of support,
    # so the fit's curvature across them is the regulariser's choice.
    centres = torch.rand(1, 50, 1, generator=generator) * 20 + 6
    column = torch.exp(-((torch.arange(32.0) - centres) ** 2) / 8)  # (1, 50, 32)
    ridge = torch.full((1, 50, 32, 24), -0.1)
    ridge[..., -1], ridge[..., -2] = column, 0.4 * column + 0.05
    assert torch.equal(
        decode_heatmaps(ridge, refine="dark")[0], decode_heatmaps(ridge, refine="none")[0]
    )
    # A broad but real peak (sigma 3 cells, 1.5 times the targets') is still refined.
    crop = torch.tensor([[[47.3, 61.8]]])
    peak, _ = encode_heatmaps(torch.cat([crop, torch.ones(1, 1, 1)], -1), (32, 24), sigma=3.0)
    assert (decode_heatmaps(peak, sigma=2.0, refine="dark")[0] - crop).abs().max() / STRIDE < 0.1


def test_dark_on_noisy_heatmaps_beats_the_quarter_rule() -> None:
    """Predicted heatmaps are lower and noisy: DARK still lands within a fraction of a cell."""
    generator = torch.Generator().manual_seed(2)
    cells = torch.rand(1, 400, 2, generator=generator) * torch.tensor([23.9, 31.9]) - 0.45
    crop = cells * STRIDE + (STRIDE - 1) / 2
    heatmaps, _ = encode_heatmaps(torch.cat([crop, torch.ones(1, 400, 1)], -1), (32, 24))
    noise = torch.randn(400, 1, 32, 24, generator=generator) * 0.06
    heatmaps = 0.7 * heatmaps + torch.nn.functional.avg_pool2d(noise, 3, 1, 1)[None, :, 0]
    errors = {
        refine: ((decode_heatmaps(heatmaps, refine=refine)[0] - crop).norm(dim=-1) / STRIDE)
        for refine in ("dark", "quarter")
    }
    assert errors["dark"].mean() < 0.15 and errors["dark"].mean() < 0.5 * errors["quarter"].mean()


# ---- crop geometry ----------------------------------------------------------------------------


def test_affine_crop_and_inverse_round_trip_points() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x1, y1 = rng.uniform(-50, 300, 2)
        box = [x1, y1, x1 + rng.uniform(5, 200), y1 + rng.uniform(5, 200)]
        matrix = ops.box_affine(box, (96, 128), margin=rng.uniform(0, 0.5))
        points = rng.uniform(-100, 400, (17, 2))
        back = ops.apply_affine(ops.apply_affine(points, matrix), ops.invert_affine(matrix))
        assert np.abs(back - points).max() < 1e-3


def test_crop_pixels_land_where_the_keypoints_are_mapped(data: KeypointData) -> None:
    """The warped image and the mapped keypoint agree: a blob drawn at a keypoint's COCO position
    has its centroid at the sample's crop keypoint, and crop_to_image maps it back exactly."""
    dataset = data.build_dataset(data.index("val"), train=False)
    record = dataset.samples[0]
    coco = np.asarray(record["keypoints"], np.float64).reshape(-1, 3)
    k = int(np.flatnonzero(coco[:, 2] > 0)[0])
    image = np.zeros((120, 160, 3), np.uint8)
    ys, xs = np.mgrid[:120, :160]
    # COCO puts pixel centres at +0.5: pixel (i, j) is at (j + 0.5, i + 0.5).
    blob = np.exp(-((xs + 0.5 - coco[k, 0]) ** 2 + (ys + 0.5 - coco[k, 1]) ** 2) / (2 * 3.0**2))
    image[..., 0] = np.round(250 * blob)
    dataset.index.load_image = lambda image_id: image  # the same crop, of our drawing
    sample = dataset[0]
    red = ops.denormalize(sample["image"][None])[0, 0].double()
    red = red * (red > 2)
    gy, gx = torch.meshgrid(torch.arange(red.shape[0]), torch.arange(red.shape[1]), indexing="ij")
    centroid = torch.stack([(red * gx).sum(), (red * gy).sum()]) / red.sum()
    assert torch.allclose(centroid, sample["keypoints"][k, :2].double(), atol=0.1)
    back = crop_to_image(sample["keypoints"][None, :, :2], sample["crop_to_image"][None])[0]
    visible = coco[:, 2] > 0
    assert np.abs(back.numpy()[visible] - coco[visible, :2]).max() < 1e-3


# ---- flip pairs --------------------------------------------------------------------------------


def test_flip_pairs_swap_left_and_right_channels() -> None:
    names = list(KEYPOINT_NAMES)
    pairs = {tuple(sorted((names[a], names[b]))) for a, b in flip_pairs_from_names(names)}
    assert ("left_eye", "right_eye") in pairs and ("left_ankle", "right_ankle") in pairs
    assert len(pairs) == 8 and all("nose" not in p for p in pairs)
    order = flip_permutation(17, flip_pairs_from_names(names))
    assert names[order[names.index("left_eye")]] == "right_eye" and order[0] == 0
    heatmaps = torch.rand(1, 17, 8, 6)
    flipped = flip_heatmaps(heatmaps, order)
    left, right = names.index("left_wrist"), names.index("right_wrist")
    assert torch.equal(flipped[0, left], heatmaps[0, right].flip(-1))
    assert torch.equal(flip_heatmaps(flipped, order), heatmaps)  # an involution
    with pytest.raises(ValueError, match="flip pair"):
        flip_permutation(17, [[1, 2], [2, 3]])


def test_flip_augmentation_swaps_left_and_right_keypoints(data: KeypointData) -> None:
    category = data.categories[0]
    plain = KeypointDataset(data.index("val"), category, 128, train=False)
    flipped = KeypointDataset(
        data.index("val"), category, 128, train=True, flip_pairs=category["flip_pairs"]
    )
    flipped.transform = A.Compose(
        [A.HorizontalFlip(p=1), A.Normalize(), ToTensorV2()],
        keypoint_params=A.KeypointParams("xy", remove_invisible=False),
        save_applied_params=True,
    )
    a, b = plain[0], flipped[0]
    width = a["image"].shape[-1]
    left, right = KEYPOINT_NAMES.index("left_eye"), KEYPOINT_NAMES.index("right_eye")
    assert torch.allclose(b["keypoints"][left, 0], width - 1 - a["keypoints"][right, 0])
    assert b["keypoints"][left, 2] == a["keypoints"][right, 2]
    assert torch.allclose(b["image"], a["image"].flip(-1), atol=1e-5)


# ---- evaluation ------------------------------------------------------------------------------


def test_ground_truth_as_predictions_gives_oks_ap_one(tiny_coco, data: KeypointData) -> None:
    index = data.index("val")
    truth = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for i in index.image_ids
        for a in index.annotations(i)
        if a.get("num_keypoints", 0) > 0
    ]
    result = coco_evaluate(index, truth, "keypoints", category_ids=[1])
    assert result.stats["AP"] == pytest.approx(1.0) and result.stats["AR"] == pytest.approx(1.0)
    # Through the model's own path: target heatmaps as outputs -> decode -> image -> COCOeval.
    model = KeypointTask(data.categories, image_size=128)
    batch = _val_batch(data)
    heatmaps, _ = encode_heatmaps(batch["keypoints"], (32, 24), model.hparams.heatmap_sigma)
    model.test_metric.index = index
    model.update_metric(model.test_metric, heatmaps, batch)
    values = model.test_metric.compute()
    assert values["instances"] == len(truth)
    assert values["AP"] == pytest.approx(1.0) and values["PCK"] == pytest.approx(1.0)
    # ... and predictions 3 px off are no longer perfect: the check can fail.
    shifted = [
        {**t, "keypoints": [v + 3 * (j % 3 == 0) for j, v in enumerate(t["keypoints"])]}
        for t in truth
    ]
    assert coco_evaluate(index, shifted, "keypoints", category_ids=[1]).stats["AP"] < 0.9


def test_metric_counts_padded_duplicates_once(data: KeypointData) -> None:
    model = KeypointTask(data.categories, image_size=128)
    batch = _val_batch(data)
    heatmaps, _ = encode_heatmaps(batch["keypoints"], (32, 24))
    first = {k: v[:1] if torch.is_tensor(v) else v for k, v in batch.items()}
    model.update_metric(model.val_metric, heatmaps, batch)
    model.update_metric(model.val_metric, heatmaps[:1], first)  # a DistributedSampler pad
    assert model.val_metric.compute()["instances"] == len(batch["image_id"])


def test_coco_backend_reaches_the_metric_and_both_backends_give_the_same_ap(
    data: KeypointData,
) -> None:
    batch = _val_batch(data)
    # Keypoints a few crop pixels off, more for some people than others: an AP strictly
    # between 0 and 1, where a wrong OKS or matching would show.
    generator = torch.Generator().manual_seed(0)
    spread = torch.linspace(0.5, 6.0, len(batch["image_id"]))[:, None, None]
    noisy = batch["keypoints"].clone()
    noisy[..., :2] += spread * torch.randn(noisy[..., :2].shape, generator=generator)
    heatmaps, _ = encode_heatmaps(noisy, (32, 24))
    values = {}
    for backend in ("pycocotools", "faster"):
        model = KeypointTask(data.categories, image_size=128, coco_backend=backend)
        assert model.val_metric.backend == model.test_metric.backend == backend
        model.test_metric.index = data.index("val")
        model.update_metric(model.test_metric, heatmaps, batch)
        values[backend] = model.test_metric.compute()
    names = list(KEYPOINT_STATS)
    reference, faster = ([values[b][n] for n in names] for b in ("pycocotools", "faster"))
    np.testing.assert_allclose(faster, reference, rtol=0, atol=1e-12)
    assert 0.05 < values["faster"]["AP"] < 0.95
    with pytest.raises(ValueError, match="must be one of pycocotools, faster, got 'fast'"):
        KeypointTask(data.categories, image_size=128, coco_backend="fast")


def test_detected_boxes_replace_ground_truth_for_evaluation(tiny_coco, tmp_path) -> None:
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    people = [
        a
        for i in index.image_ids
        for a in index.annotations(i)
        if a["category_id"] == 1 and a.get("num_keypoints", 0) > 0
    ]
    detections = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
        for a in people
    ]
    detections.append({**detections[0], "score": 0.1})  # under the threshold: dropped
    detections.append({**detections[0], "category_id": 3})  # a circle: not a person
    path = tmp_path / "det.json"
    path.write_text(json.dumps(detections))
    data = KeypointData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        num_workers=0,
        boxes_json=str(path),
        box_score_threshold=0.3,
    )
    data.setup("test")
    dataset = data.datasets["test"]
    assert len(dataset) == len(people)
    sample = dataset[0]
    assert sample["box_score"] == pytest.approx(0.9) and sample["keypoints"][:, 2].sum() == 0
    assert torch.equal(sample["image"], _val_batch(data)["image"][0])  # same box, same crop
    path.write_text(json.dumps([{**detections[0], "bbox": [1, 2, 3]}]))
    with pytest.raises(CocoDataError, match=r"det.json: result #0: field 'bbox'"):
        data.build_dataset(data.index("test"), train=False)


def test_bad_keypoint_configuration_fails_clearly(tiny_coco, data: KeypointData) -> None:
    with pytest.raises(CocoDataError, match="--data.category"):
        _ = KeypointData(
            str(tiny_coco.train_json),
            str(tiny_coco.train_images),
            str(tiny_coco.val_json),
            str(tiny_coco.val_images),
            category="circle",
        ).categories
    with pytest.raises(CocoDataError, match="--data.flip_pairs"):
        _ = KeypointData(
            str(tiny_coco.train_json),
            str(tiny_coco.train_images),
            str(tiny_coco.val_json),
            str(tiny_coco.val_images),
            flip_pairs=[[1, 17]],
        ).categories
    dog = {"id": 9, "name": "dog", "keypoints": ["nose", "tail"]}
    with pytest.raises(CocoDataError, match="--model.oks_sigmas"):
        keypoint_sigmas(dog, None)
    assert keypoint_sigmas(dog, [0.1, 0.2]).tolist() == [0.1, 0.2]
    assert np.array_equal(keypoint_sigmas(data.categories[0], None), COCO_PERSON_SIGMAS)


# ---- learning ---------------------------------------------------------------------------------


def test_a_few_steps_on_one_batch_halve_the_loss(data: KeypointData) -> None:
    torch.manual_seed(0)
    model = KeypointTask(data.categories, image_size=64, head_channels=(32, 16, 16))
    dataset = data.build_dataset(data.index("train"), train=False)
    dataset.size = (64, 64)  # small crops: a quick test
    batch = data.collate([dataset[i] for i in range(4)])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(20):
        loss = model.compute_loss(model(batch["image"]), batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
