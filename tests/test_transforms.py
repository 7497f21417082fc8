"""Training pipelines place an image and its labels exactly where inference places them."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from vision_tasks import ops
from vision_tasks.data.transforms import Letterbox, classify_transforms

# Odd sides, 1-px sides (the >= 1 px rounding), up- and downscaling, both orientations.
SHAPES = [(1, 37), (53, 1), (1, 1), (7, 5), (31, 64), (100, 33), (3, 200)]


def _pipeline(size: int) -> A.Compose:
    return A.Compose(
        [Letterbox(size, fill=114, fill_mask=255)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["label"]),
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
    )


@pytest.mark.parametrize("height, width", SHAPES)
@pytest.mark.parametrize("size", [32, 33])
def test_training_letterbox_places_image_and_boxes_as_inference(height, width, size) -> None:
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (height, width), dtype=np.uint8)
    boxes = np.array([[0, 0, width, height], [0.25 * width, 0, 0.75 * width, 0.5 * height]])
    points = np.array([[0.0, 0.0], [width - 0.5, height - 0.5]])
    out = _pipeline(size)(image=image, mask=mask, bboxes=boxes, label=[0, 1], keypoints=points)

    square, scale, pad_x, pad_y = ops.letterbox_image(image, size)
    assert out["image"].shape == (size, size, 3) and np.array_equal(out["image"], square)
    assert np.array_equal(out["mask"], ops.letterbox_label_map(mask, size, 255))
    offset = np.array([pad_x, pad_y, pad_x, pad_y])
    np.testing.assert_allclose(out["bboxes"], boxes * scale + offset, atol=1e-6)
    np.testing.assert_allclose(out["keypoints"], points * scale + offset[:2], atol=1e-6)
    # and inference's way back lands on the original boxes
    back = ops.unletterbox_boxes(torch.as_tensor(out["bboxes"]), scale, pad_x, pad_y)
    np.testing.assert_allclose(back.numpy(), boxes, atol=1e-4)


def test_letterbox_of_a_one_pixel_row_by_hand() -> None:
    # 1x37 into 32: scale 32/37, 32 columns, max(1, round(0.86)) = 1 row, centred at row 15.
    image = np.full((1, 37, 3), 200, np.uint8)
    out = _pipeline(32)(image=image, bboxes=[[0, 0, 37, 1]], label=[0], keypoints=[[37, 1]])
    rows = np.flatnonzero((out["image"] == 200).all(axis=(1, 2)))
    assert rows.tolist() == [15] and (out["image"][15] == 200).all()
    np.testing.assert_allclose(out["bboxes"], [[0, 15, 32, 15 + 32 / 37]], atol=1e-6)
    np.testing.assert_allclose(out["keypoints"], [[32, 15 + 32 / 37]], atol=1e-6)


@pytest.mark.parametrize("height, width", [(40, 90), (90, 40), (45, 45)])
def test_a_painted_box_lands_where_its_mapped_box_says(height, width) -> None:
    image = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = width // 4, height // 3, width // 4 + 20, height // 3 + 12
    image[y0:y1, x0:x1] = 255
    out = _pipeline(64)(image=image, bboxes=[[x0, y0, x1, y1]], label=[0], keypoints=[])
    ys, xs = np.nonzero(out["image"][..., 0] > 127)
    painted = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # pixel edges, like the box
    np.testing.assert_allclose(out["bboxes"][0], painted, atol=1.0)


@pytest.mark.parametrize("height, width", [(1, 37), (53, 1), (31, 64)])
def test_classify_evaluation_letterboxes_as_predict(height, width) -> None:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    tensor = classify_transforms(32, train=False, already_cropped=False)(image=image)["image"]
    expected = ops.letterbox_image(image, 32)[0]
    restored = ops.denormalize(tensor[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(restored.astype(int) - expected).max() <= 1  # normalise -> uint8 rounding
