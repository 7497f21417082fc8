"""Homography task: 4-point geometry against OpenCV, pair generation, corner error, baselines."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from vision_tasks import ops
from vision_tasks.backbone import Backbone
from vision_tasks.data.coco import CocoIndex
from vision_tasks.data.transforms import homography_transforms
from vision_tasks.evaluation.metrics import CornerError
from vision_tasks.tasks.homography import (
    CorrelationHead,
    HomographyDataset,
    HomographyTask,
    correlation_loss,
    orb_ransac_corners,
    random_pair,
    true_matches,
    windowed_soft_argmax,
)


def _quads(rng: np.random.Generator, n: int, size: float = 128.0, rho: float = 32.0):
    jitter = torch.from_numpy(rng.uniform(-8, 8, (n, 4, 2)))
    src = ops.square_corners(int(size), torch.float64) + jitter
    dst = src + torch.from_numpy(rng.uniform(-rho, rho, (n, 4, 2)))
    # OpenCV takes float32 points: give both implementations exactly the same numbers.
    return src.float().double(), dst.float().double()


def _texture(rng: np.random.Generator, width: int = 320, height: int = 240) -> np.ndarray:
    """A grey image with blurred noise and lines: corners for ORB, smooth enough to sample."""
    image = cv2.GaussianBlur(rng.uniform(0, 255, (height, width)).astype(np.float32), (0, 0), 2)
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    for _ in range(25):
        p, q = (tuple(int(v) for v in rng.uniform(0, 1, 2) * (width, height)) for _ in range(2))
        cv2.line(image, p, q, int(rng.integers(0, 256)), int(rng.integers(1, 4)), cv2.LINE_AA)
    return image


# ---- geometry ----------------------------------------------------------------------------------


def test_four_point_to_homography_matches_opencv_batched() -> None:
    src, dst = _quads(np.random.default_rng(0), 32)
    ours = ops.four_point_to_homography(src, dst)
    assert ours.shape == (32, 3, 3) and ours.dtype == torch.float64
    for i in range(32):
        reference = cv2.getPerspectiveTransform(src[i].float().numpy(), dst[i].float().numpy())
        np.testing.assert_allclose(ours[i].numpy(), reference, atol=1e-4, rtol=0)
    # Any leading batch shape, and float32 in -> float32 out.
    nested = ops.four_point_to_homography(
        src.float().reshape(4, 8, 4, 2), dst.float().reshape(4, 8, 4, 2)
    )
    assert nested.dtype == torch.float32
    torch.testing.assert_close(nested.reshape(32, 3, 3).double(), ours, atol=1e-3, rtol=1e-4)


def test_four_point_to_homography_is_differentiable_and_checks_shapes() -> None:
    src, dst = _quads(np.random.default_rng(1), 2, size=8.0, rho=2.0)
    dst.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: ops.four_point_to_homography(src, d), (dst,))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 2\)"):
        ops.four_point_to_homography(torch.zeros(2, 3, 2), torch.zeros(2, 3, 2))


def test_warp_perspective_matches_opencv() -> None:
    rng = np.random.default_rng(2)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (60, 80)).astype(np.float32), (0, 0), 3)
    src, dst = _quads(rng, 3, size=40.0, rho=6.0)
    homographies = ops.four_point_to_homography(src, dst + 10)
    images = torch.from_numpy(image)[None, None].expand(3, 1, 60, 80)
    ours = ops.warp_perspective(images, homographies.float(), (50, 70))
    for i in range(3):
        reference = cv2.warpPerspective(
            image, homographies[i].numpy(), (70, 50), flags=cv2.INTER_LINEAR
        )
        inside = (
            cv2.warpPerspective(
                np.ones_like(image), homographies[i].numpy(), (70, 50), flags=cv2.INTER_NEAREST
            )
            > 0
        )
        inside = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        np.testing.assert_allclose(ours[i, 0].numpy()[inside], reference[inside], atol=0.05)


# ---- pairs --------------------------------------------------------------------------------------


def test_true_homography_lands_patch_corners_on_the_perturbed_corners() -> None:
    rng = np.random.default_rng(3)
    gray = _texture(rng)
    for _ in range(5):
        patch_a, patch_b, corners, origin = random_pair(gray, rng, 128, 32.0)
        assert np.abs(corners - ops.square_corners(128).numpy()).max() <= 32
        homography = ops.corners_to_homography(torch.from_numpy(corners)[None].double(), 128)[0]
        landed = ops.apply_homography(homography, ops.square_corners(128, torch.float64))
        torch.testing.assert_close(landed, torch.from_numpy(corners).double(), atol=1e-6, rtol=0)
        np.testing.assert_array_equal(patch_a, gray[int(origin[1]) :, int(origin[0]) :][:128, :128])
        # The recipe: warp the whole image by the inverse homography (global pixels),
        # cut the same window: that is patch B. Independent path: torch grid_sample.
        shift = torch.eye(3, dtype=torch.float64)
        shift[:2, 2] = torch.from_numpy(origin).double()
        global_h = shift @ homography @ torch.linalg.inv(shift)
        image = torch.from_numpy(gray).double()[None, None]
        warped = ops.warp_perspective(image, torch.linalg.inv(global_h)[None], gray.shape)[0, 0]
        x, y = (int(v) for v in origin)
        window = warped[y : y + 128, x : x + 128].numpy()
        assert np.abs(window - patch_b.astype(np.float64)).mean() < 1.0


def test_patch_b_shows_the_image_at_the_true_homography() -> None:
    # Dots drawn at H q in the image appear in patch B at q: the warp goes the documented way.
    probe = np.random.default_rng(5)
    _, _, corners, origin = random_pair(np.zeros((240, 320), np.uint8), probe, 128, 32.0)
    homography = ops.corners_to_homography(torch.from_numpy(corners)[None].double(), 128)[0]
    targets = torch.tensor(
        [[30.0, 30.0], [97.0, 30.0], [97.0, 97.0], [30.0, 97.0], [64, 64]], dtype=torch.float64
    )
    gray = np.zeros((240, 320), np.uint8)
    for point in ops.apply_homography(homography, targets).numpy() + origin:
        cv2.circle(gray, tuple(int(round(v)) for v in point), 2, 255, -1)
    _, patch_b, corners_again, _ = random_pair(gray, np.random.default_rng(5), 128, 32.0)
    np.testing.assert_array_equal(corners_again, corners)
    for x, y in targets.int().tolist():
        window = patch_b[y - 4 : y + 5, x - 4 : x + 5].astype(float)
        assert window.max() > 150, (x, y)
        ys, xs = np.mgrid[-4:5, -4:5]
        centre = (xs * window).sum() / window.sum(), (ys * window).sum() / window.sum()
        assert np.hypot(*centre) < 1.5


def test_same_seed_gives_the_same_validation_pairs(tiny_coco) -> None:
    def pairs(pair_seed: int, train: bool = False) -> list[dict]:
        index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
        # pairs_per_image applies to training only: evaluation keeps one fixed pair per image.
        dataset = HomographyDataset(
            index,
            64,
            train,
            patch_size=48,
            rho=12.0,
            resize=(96, 80),
            pair_seed=pair_seed,
            pairs_per_image=3,
        )
        assert len(dataset) == len(index.image_ids) * (3 if train else 1)
        return [dataset[i] for i in range(len(dataset))]

    first, again, other = pairs(0), pairs(0), pairs(1)
    assert first[0]["image"].shape == (2, 64, 64) and first[0]["patches"].shape == (2, 48, 48)
    for a, b, c in zip(first, again, other):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["corners"], b["corners"])
        assert not torch.equal(a["corners"], c["corners"])
    torch.manual_seed(0)
    train = pairs(0, train=True)
    assert not all(torch.equal(a["corners"], t["corners"]) for a, t in zip(first, train))
    # The 3 training pairs of an image come from the same image but differ.
    n = len(first)
    assert all(train[i]["image_id"] == train[i + n]["image_id"] for i in range(n))
    assert not any(torch.equal(train[i]["corners"], train[i + n]["corners"]) for i in range(n))


def test_refinement_pairs_carry_the_corners_of_what_the_network_sees(tiny_coco) -> None:
    index = CocoIndex(tiny_coco.train_json, tiny_coco.train_images)
    dataset = HomographyDataset(
        index,
        48,
        True,
        patch_size=48,
        rho=12.0,
        resize=(96, 80),
        refine_fraction=1.0,
        refine_jitter=6.0,
    )
    torch.manual_seed(0)
    samples = [dataset[i] for i in range(6)]
    images = torch.stack([s["image"] for s in samples])
    corners = torch.stack([s["corners"] for s in samples])
    # The residual is of the jitter's size (rho is 12), not zero, and it explains patch B.
    offsets = (corners - ops.square_corners(48)).abs()
    assert offsets.max() < 3 * 6.0 and offsets.mean() > 0.5
    inside = slice(12, 36)
    identity = ops.square_corners(48).expand_as(corners)
    gaps = [
        (ops.align_second_patch(images, c, 48)[:, 1] - images[:, 0])[:, inside, inside].abs().mean()
        for c in (corners, identity)
    ]
    assert gaps[0] < 0.6 * gaps[1], gaps


def test_resize_too_small_for_the_patch_is_refused(tiny_coco) -> None:
    index = CocoIndex(tiny_coco.val_json, tiny_coco.val_images)
    with pytest.raises(ValueError, match="data.patch_size"):
        HomographyDataset(index, 64, False, patch_size=128, rho=32.0, resize=(160, 120))


def test_aligning_patch_b_by_the_true_corners_recovers_patch_a() -> None:
    # Refinement input: network-sized patch B resampled through the estimate must show patch A.
    rng = np.random.default_rng(8)
    gray, transform = _texture(rng), homography_transforms(64)
    inside = slice(16, 48)  # patch pixels 32..96: inside every quad moved by at most rho = 32
    for _ in range(3):
        patch_a, patch_b, corners, _ = random_pair(gray, rng, 128, 32.0)
        images = transform(image=np.stack([patch_a, patch_b], axis=-1))["image"][None]
        truth = torch.from_numpy(corners)
        # The true corners, the same 1 px to the right, the identity.
        estimates = torch.stack([truth, truth + torch.tensor([1.0, 0.0]), ops.square_corners(128)])
        aligned = ops.align_second_patch(images.expand(3, -1, -1, -1), estimates, 128)
        assert torch.equal(aligned[:, 0], images.expand(3, -1, -1, -1)[:, 0])
        gap = (aligned[:, 1] - aligned[:, 0])[:, inside, inside].abs().mean(dim=(1, 2))
        # Normalised units (std 0.25): what is left at the truth is resampling at half size.
        assert gap[0] < 0.15 and gap[0] < 0.8 * gap[1] and gap[1] < 0.5 * gap[2], gap


# ---- metric and baselines ------------------------------------------------------------------


def test_corner_error_on_a_hand_made_case() -> None:
    target = ops.square_corners(128).expand(2, 4, 2).clone()
    predicted = target.clone()
    predicted[0] += torch.tensor([[3.0, 4.0], [0.0, 0.0], [-6.0, 8.0], [0.0, -2.0]])  # 5, 0, 10, 2
    predicted[1] += torch.tensor([1.0, 0.0])  # every corner 1 px off
    metric = CornerError()
    metric.update(predicted[:1], target[:1], failed=torch.tensor([True]))
    metric.update(predicted[1:], target[1:], failed=torch.tensor([False]))
    values = metric.compute()
    torch.testing.assert_close(values["errors"], torch.tensor([4.25, 1.0], dtype=torch.float64))
    assert float(values["mace"]) == pytest.approx((4.25 + 1.0) / 2)
    assert float(values["median"]) == pytest.approx((4.25 + 1.0) / 2)
    assert float(values["failure_rate"]) == pytest.approx(0.5)


def test_orb_ransac_recovers_a_textured_pair_and_fails_to_identity_on_a_flat_one() -> None:
    rng = np.random.default_rng(6)
    gray = _texture(rng)
    errors = []
    for _ in range(4):
        patch_a, patch_b, corners, _ = random_pair(gray, rng, 128, 32.0)
        estimate, ok = orb_ransac_corners(patch_a, patch_b)
        assert ok
        errors.append(np.linalg.norm(estimate - corners, axis=1).mean())
    identity_error = np.linalg.norm(corners - ops.square_corners(128).numpy(), axis=1).mean()
    assert np.median(errors) < 3.0 < identity_error
    flat = np.full((128, 128), 90, np.uint8)
    estimate, ok = orb_ransac_corners(flat, flat)
    assert not ok and np.array_equal(estimate, ops.square_corners(128).double().numpy())


# ---- model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> HomographyTask:
    torch.manual_seed(0)
    return HomographyTask(image_size=64, patch_size=48, rho=12.0, hidden=32).eval()


def test_head_starts_at_identity_and_trains_all_of_conv1(model: HomographyTask) -> None:
    images = torch.randn(2, 2, 64, 64)
    outputs = model(images)
    assert outputs.shape == (2, 8) and outputs.abs().max() < 0.05
    batch = {"corners": ops.square_corners(48).expand(2, 4, 2) + 6.0}
    model.train()
    loss = model.compute_loss(model(images), batch)["loss"]
    loss.backward()
    model.eval()
    grad = model.backbone.stem[0].weight.grad
    assert grad.shape[1] == 2 and grad[:, 1].abs().sum() > 0 and loss > 0
    model.zero_grad()


def test_head_cannot_collapse_to_a_constant_output() -> None:
    # Every hidden unit pushed far negative (what AdamW did to a ReLU head): the output must
    # still depend on the input and the backbone must still get a gradient.
    torch.manual_seed(0)
    model = HomographyTask(image_size=32, patch_size=48, rho=12.0, hidden=16)
    hidden_layer = model.head.mlp[1]
    with torch.no_grad():
        hidden_layer.bias.fill_(-1e3)
    images = torch.randn(4, 2, 32, 32)
    outputs = model(images)
    assert outputs.std(dim=0).min() > 0
    outputs.square().sum().backward()
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0


def test_refinement_composes_the_residual_after_the_first_estimate(monkeypatch) -> None:
    model = HomographyTask(image_size=32, patch_size=48, rho=12.0, hidden=8, refine_steps=1)
    first = torch.tensor([[0.5, -0.25, -1.0, 0.5, 0.25, 1.0, -0.5, 0.0]])
    second = torch.tensor([[0.0, 0.75, 0.5, 0.0, -0.5, -0.25, 1.0, 0.5]])
    monkeypatch.setattr(model, "forward", lambda images: second.expand(images.shape[0], 8))
    corners = model.estimate_corners(first, torch.zeros(1, 2, 32, 32))[0].double().numpy()
    # Oracle: OpenCV; patch B = A seen through H, and the aligned B through R = H H1^-1.
    square = ops.square_corners(48).numpy()
    h1, h2 = (
        cv2.getPerspectiveTransform(square, square + 12 * o.reshape(4, 2).numpy())
        for o in (first, second)
    )
    expected = cv2.perspectiveTransform(square[None].astype(np.float64), h2 @ h1)[0]
    np.testing.assert_allclose(corners, expected, atol=1e-3)
    assert np.abs(corners - (square + 12 * first.reshape(4, 2).numpy())).max() > 1


def test_decode_and_predict_write_consistent_corners(model: HomographyTask, tmp_path) -> None:
    image = cv2.cvtColor(_texture(np.random.default_rng(7), 160, 120), cv2.COLOR_GRAY2RGB)
    samples = [model.predict_sample(image), model.predict_sample(image)]
    assert torch.equal(samples[0]["corners"], samples[1]["corners"])  # seeded by the image
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "image_id": [1, 2],
        "corners": [s["corners"] for s in samples],
    }
    with torch.no_grad():
        assert model(batch["image"]).shape == (2, 8)  # predict_sample's input fits the network
    # decode alone, on outputs worked out by hand: offsets / rho, rho = 12, x0 y0 ... x3 y3.
    outputs = torch.tensor([[0.25, -0.5, 1.0, 0.0, -1.0, 0.75, 0.5, 0.25]]).expand(2, 8)
    predictions = model.decode(outputs, batch)
    corners = torch.tensor(predictions[0]["corners"], dtype=torch.float64)
    by_hand = torch.tensor(
        [[3.0, -6.0], [47 + 12.0, 0.0], [47 - 12.0, 47 + 9.0], [6.0, 47 + 3.0]], dtype=torch.float64
    )
    torch.testing.assert_close(corners, by_hand, atol=1e-6, rtol=0)
    assert predictions[0]["offsets"] == pytest.approx((outputs[0] * 12).tolist())
    mapped = ops.apply_homography(
        torch.tensor(predictions[0]["homography"], dtype=torch.float64),
        ops.square_corners(48, torch.float64),
    )
    torch.testing.assert_close(mapped, corners, atol=1e-6, rtol=0)
    truth = samples[0]["corners"].double()
    expected_error = float((corners - truth).norm(dim=1).mean())
    assert predictions[0]["corner_error"] == pytest.approx(expected_error)
    written = model.write_predictions(predictions[:1], [image], ["pic.jpg"], tmp_path)
    record = json.loads((tmp_path / "pic.homography.json").read_text())
    offset = np.array(record["true_corners_in_image"]) - np.array(record["true_corners"])
    np.testing.assert_allclose(offset, np.tile(record["patch_origin"], (4, 1)))
    assert cv2.imread(str(tmp_path / "pic.homography.png")) is not None and len(written) == 2


# ---- correlation architecture -------------------------------------------------------------------


def test_weighted_dlt_matches_opencv_on_exact_correspondences_and_ignores_zero_weights() -> None:
    rng = np.random.default_rng(3)
    src, dst = _quads(rng, 3)
    points = torch.from_numpy(rng.uniform(-10, 140, (3, 40, 2)))
    truth = ops.four_point_to_homography(src, dst)
    mapped = ops.apply_homography(truth, points)
    weights = torch.from_numpy(rng.uniform(0.2, 1.0, (3, 40)))
    estimate = ops.weighted_dlt(points, mapped, weights).numpy()
    for i in range(3):
        reference, _ = cv2.findHomography(points[i].numpy(), mapped[i].numpy(), 0)
        # OpenCV polishes its fit with Levenberg-Marquardt to ~1e-7 relative, not to 1e-12.
        np.testing.assert_allclose(estimate[i], reference, rtol=1e-5, atol=1e-8)
    # Gross outliers with weight 0 change nothing; with weight 1 they would.
    corrupted = mapped.clone()
    corrupted[:, :8] += 50.0
    weights[:, :8] = 0.0
    np.testing.assert_allclose(
        ops.weighted_dlt(points, corrupted, weights).numpy(), estimate, rtol=0, atol=1e-6
    )
    unweighted = ops.weighted_dlt(points, corrupted, torch.ones(3, 40)).numpy()
    assert np.abs(unweighted - estimate).max() > 1e-3


def test_true_matches_equal_opencv_perspective_transform_of_the_grid() -> None:
    rng = np.random.default_rng(4)
    moves = torch.from_numpy(rng.uniform(-32, 32, (2, 4, 2)))
    corners = ops.square_corners(128, torch.float64) + moves
    grid = ops.cell_grid(16, 16).double() * 8 + 3.5
    matches = true_matches(corners, grid, 128).numpy()
    square = ops.square_corners(128).numpy()
    for i in range(2):
        to_b = cv2.getPerspectiveTransform(corners[i].float().numpy(), square)
        expected = cv2.perspectiveTransform(grid.numpy()[None], to_b.astype(np.float64))[0]
        np.testing.assert_allclose(matches[i], expected, rtol=0, atol=1e-3)


def test_correlation_of_features_and_their_shifted_copy_peaks_at_the_shift() -> None:
    torch.manual_seed(0)
    head = CorrelationHead(in_channels=32, embed_channels=32)
    with torch.no_grad():
        head.log_scale.fill_(np.log(200.0))  # a sharp softmax: the window mean is the peak
    features_a = torch.randn(2, 32, 10, 10)
    shift = (2, -3)  # (dx, dy) in cells: B at (x + dx, y + dy) shows A at (x, y)
    features_b = torch.roll(features_a, shifts=(shift[1], shift[0]), dims=(2, 3))
    logits = head(features_a, features_b)["logits"]
    matches, confidence = windowed_soft_argmax(logits, window=1)
    grid = ops.cell_grid(10, 10)
    inside = ((grid + torch.tensor(shift) >= 0) & (grid + torch.tensor(shift) <= 9)).all(-1)
    expected = grid + torch.tensor(shift, dtype=torch.float32)
    torch.testing.assert_close(
        matches[:, inside], expected[inside].expand(2, -1, -1), atol=1e-3, rtol=0
    )
    assert confidence[:, inside].min() > 0.99 and logits.shape == (2, 100, 100)


def test_correlation_loss_prefers_the_true_match_and_skips_cells_that_left_patch_b() -> None:
    grid = ops.cell_grid(4, 4)
    target = (grid + 0.5)[None]  # every cell half a cell right and down
    flat = torch.zeros(1, 16, 16)
    # Logits that put all mass on the 4 cells round the target, in the bilinear proportions.
    split = (1 - (grid - target[..., None, :]).abs()).clamp_min(0).prod(-1)
    good = torch.where(split > 0, split.clamp_min(1e-9).log(), torch.full_like(split, -1e4))
    loss_good = correlation_loss(good, target.clone(), target, 4)
    loss_bad = correlation_loss(flat, grid[None].clone(), target, 4)
    assert loss_good < loss_bad
    # The bilinear target's mean is the true position (what the soft-argmax is fitted to).
    inside = (target[0] <= 3).all(-1)
    torch.testing.assert_close((split[0] @ grid)[inside], target[0][inside])
    # A cell whose match is outside B costs nothing, however wrong the prediction.
    far = target.clone()
    far[0, 0] = torch.tensor([-5.0, 2.0])
    wrong = target.clone()
    wrong[0, 0] = 100.0
    assert correlation_loss(good, wrong, far, 4) == pytest.approx(
        float(correlation_loss(good, target.clone(), far, 4)), abs=1e-5
    )


def _correlation_model(**kwargs) -> HomographyTask:
    torch.manual_seed(0)
    return HomographyTask(
        image_size=64,
        patch_size=64,
        rho=16.0,
        architecture="correlation",
        feature_level="c3",
        embed_channels=16,
        **kwargs,
    ).eval()


def test_correlation_model_is_siamese_truncated_and_trains_end_to_end() -> None:
    model = _correlation_model()
    assert model.backbone.stem[0].in_channels == 1 and len(model.backbone.stages) == 2
    assert set(model.backbone(torch.zeros(1, 1, 64, 64))) == {"stem", "c2", "c3"}
    images = torch.randn(2, 2, 64, 64)
    logits = model(images)["logits"]
    assert logits.shape == (2, 64, 64)
    # Swapping A and B transposes the correlation: the two patches are not pooled into one.
    torch.testing.assert_close(model(images.flip(1))["logits"], logits.transpose(1, 2))
    model.train()
    batch = {"corners": ops.square_corners(64).expand(2, 4, 2) + 5.0}
    loss = model.compute_loss(model(images), batch)["loss"]
    loss.backward()
    assert loss > 0 and model.backbone.stem[0].weight.grad.abs().sum() > 0
    assert model.head.log_scale.grad is not None
    model.eval()


def test_correlation_decoding_recovers_the_corners_from_matches_with_outliers() -> None:
    model = _correlation_model(robust_scale=2.0, robust_iterations=5)
    rng = np.random.default_rng(5)
    moves = torch.from_numpy(rng.uniform(-16, 16, (2, 4, 2)))
    corners = ops.square_corners(64, torch.float64) + moves
    points_a = model.cell_points(64).double()
    matches = model.patch_to_cells(true_matches(corners, points_a, 64))
    ones = torch.ones(2, 64, dtype=torch.float64)
    torch.testing.assert_close(
        model.corners_from_matches(matches, ones), corners, atol=1e-6, rtol=0
    )
    # A quarter of the matches 3 cells (24 px) off: the reweighted fit still lands within
    # 0.5 px, the first (unweighted) fit alone is pulled tens of pixels away.
    wrong = matches.clone()
    wrong[:, ::4] += 3.0
    assert (model.corners_from_matches(wrong, ones) - corners).norm(dim=-1).max() < 0.5
    plain = _correlation_model(robust_iterations=0).corners_from_matches(wrong, ones)
    assert (plain - corners).norm(dim=-1).max() > 5.0


def test_backbone_truncate_drops_the_later_stages() -> None:
    trunk = Backbone("resnet18", weights="none", in_channels=1)
    trunk.truncate("c3")
    assert set(trunk.out_channels) == {"stem", "c2", "c3"} and "c4" not in trunk.strides
    assert not any(k.startswith("stages.2") for k in trunk.state_dict())
