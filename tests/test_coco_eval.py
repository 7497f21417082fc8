"""coco_evaluate: faster-coco-eval gives pycocotools' numbers; the caller's data stays intact.

The oracle is the ``pycocotools`` backend, itself checked against a plain pycocotools run in
tests/test_detect.py. The cases are shaped like real COCO files: crowd regions as uncompressed
RLE, a non-crowd RLE object, multi-part polygons, objects of every area range, an image without
objects, a category nobody detects and one nobody annotated, more than 100 detections on one
image, keypoints labelled 0 / 1 / 2 and a person without labelled keypoints.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vision_tasks.data.coco import CocoDataError, CocoIndex
from vision_tasks.evaluation.coco_eval import (
    BACKENDS,
    BOX_STATS,
    KEYPOINT_STATS,
    CocoBoxMetric,
    coco_evaluate,
)

COCOMINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "cocomini"
KEYPOINT_NAMES = ["head", "left_hand", "right_hand", "left_foot", "right_foot"]
SIGMAS = np.array([0.26, 0.62, 0.62, 0.89, 0.89]) / 10
IMAGES = [(10, 200, 150), (11, 320, 240), (13, 120, 90), (20, 200, 150), (21, 64, 48)]
EMPTY_IMAGE = 21
PERSON, CAR, SIGN, KITE = 1, 3, 7, 9  # nobody detects a sign; nobody annotated a kite
CROWDED_IMAGE = 11  # 130 detections: maxDets 100 cuts some
CROWD_BOX = [180, 150, 120, 80]


def _polygon(rng: np.random.Generator, box: list[float], points: int = 8) -> list[float]:
    """A star-shaped polygon inside ``box`` (x, y, w, h)."""
    x, y, w, h = box
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = rng.uniform(0.6, 1.0, points)
    xs = x + w / 2 + radii * np.cos(angles) * w / 2
    ys = y + h / 2 + radii * np.sin(angles) * h / 2
    return np.stack([xs, ys], 1).ravel().round(2).tolist()


def _rle(polygons: list[list[float]], height: int, width: int) -> dict:
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


def _dataset(seed: int = 0) -> dict:
    """Ground truth: 2-4 objects per image of sizes small to large, plus crowds and oddities."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": w, "height": h} for i, w, h in IMAGES]
    categories = [
        {"id": PERSON, "name": "person", "keypoints": KEYPOINT_NAMES, "skeleton": [[1, 2], [1, 3]]},
        {"id": CAR, "name": "car"},
        {"id": SIGN, "name": "sign"},
        {"id": KITE, "name": "kite"},
    ]
    annotations = []

    def add(image: dict, category: int, box: list[float], **fields) -> dict:
        if "segmentation" not in fields:
            parts = [_polygon(rng, box)]
            if rng.uniform() < 0.3:  # occluded objects come in several parts
                parts.append(_polygon(rng, [box[0], box[1], box[2] / 3, box[3] / 3], 5))
            fields["segmentation"] = parts
        seg = fields["segmentation"]
        rle = seg if isinstance(seg, dict) else _rle(seg, image["height"], image["width"])
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        ann = {
            "id": len(annotations) + 1,
            "image_id": image["id"],
            "category_id": category,
            "bbox": [round(float(v), 2) for v in box],
            "area": float(mask_utils.area(rle)),
            "iscrowd": 0,
            **fields,
        }
        annotations.append(ann)
        return ann

    for image in images:
        if image["id"] == EMPTY_IMAGE:
            continue
        width, height = image["width"], image["height"]
        for _ in range(int(rng.integers(2, 5))):
            side = rng.choice([12.0, 50.0, 110.0]) * rng.uniform(0.8, 1.2)  # small, medium, large
            w, h = min(side, width - 2), min(side * rng.uniform(0.6, 1.2), height - 2)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            category = int(rng.choice([PERSON, CAR, SIGN]))
            fields = {}
            if category == PERSON:
                visibility = rng.choice([0, 1, 2], len(KEYPOINT_NAMES), p=[0.2, 0.3, 0.5])
                points = [
                    v
                    for k in range(len(KEYPOINT_NAMES))
                    for v in (
                        round(box[0] + rng.uniform(0, w), 1) if visibility[k] else 0,
                        round(box[1] + rng.uniform(0, h), 1) if visibility[k] else 0,
                        int(visibility[k]),
                    )
                ]
                fields = {"keypoints": points, "num_keypoints": int((visibility > 0).sum())}
            add(image, category, box, **fields)
    big = images[1]
    # A crowd as COCO stores it (uncompressed RLE); detections inside it are ignored, not wrong.
    crowd = np.zeros((big["height"], big["width"]), np.uint8)
    crowd[150:230, 180:300] = 1
    rle = {"size": [big["height"], big["width"]], "counts": _uncompressed_counts(crowd)}
    add(big, PERSON, CROWD_BOX, iscrowd=1, segmentation=rle, keypoints=[0] * 15, num_keypoints=0)
    # A non-crowd object stored as compressed RLE, and a person without labelled keypoints.
    car = _rle([_polygon(rng, [20, 160, 60, 40])], big["height"], big["width"])
    add(big, CAR, [20, 160, 60, 40], segmentation={**car, "counts": car["counts"].decode()})
    add(images[0], PERSON, [60, 40, 50, 90], keypoints=[0] * 15, num_keypoints=0)
    return {"images": images, "categories": categories, "annotations": annotations}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _results(dataset: dict, iou_type: str, seed: int = 1, false_positives: int = 4) -> list:
    """1-2 noisy copies of each object (3 of a crowd), random false positives on every image,
    130 detections on ``CROWDED_IMAGE``; scores uniform, so maxDets cuts true positives too."""
    rng = np.random.default_rng(seed)
    images = {image["id"]: image for image in dataset["images"]}
    keypoint_categories = {c["id"] for c in dataset["categories"] if c.get("keypoints")}
    wanted = (
        keypoint_categories if iou_type == "keypoints" else {c["id"] for c in dataset["categories"]}
    )
    points = max((len(c.get("keypoints", [])) for c in dataset["categories"]), default=0)
    results = []
    for ann in dataset["annotations"]:
        if ann["category_id"] == SIGN or ann["category_id"] not in wanted:
            continue
        for _ in range(3 if ann["iscrowd"] else int(rng.integers(1, 3))):
            x, y, w, h = ann["bbox"]
            dx, dy, dw, dh = rng.normal(0, 0.08, 4)
            box = [x + dx * w, y + dy * h, w * (1 + dw), h * (1 + dh)]
            results.append(_result(ann, iou_type, box, images[ann["image_id"]], rng, points))
    for image in images.values():
        count = 130 if image["id"] == CROWDED_IMAGE else false_positives
        for _ in range(count):
            w, h = rng.uniform(4, image["width"] / 2), rng.uniform(4, image["height"] / 2)
            box = [rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h), w, h]
            category = int(rng.choice(sorted(wanted - {SIGN})))
            fake = {"image_id": image["id"], "category_id": category}
            results.append(_result(fake, iou_type, box, image, rng, points))
    return results


def _result(
    ann: dict, iou_type: str, box: list, image: dict, rng: np.random.Generator, points: int
) -> dict:
    """One result near ``ann`` (a real object, or a fake one with only image and category)."""
    result = {"image_id": ann["image_id"], "category_id": ann["category_id"]}
    result["score"] = round(float(rng.uniform()), 4)
    x, y, w, h = box
    if iou_type == "bbox":
        result["bbox"] = [round(v, 2) for v in box]
    elif iou_type == "segm":
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            parts = [
                (np.asarray(p) + rng.normal(0, 0.05 * max(w, h), len(p))).tolist() for p in seg
            ]
        else:
            parts = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        rle = _rle(parts, image["height"], image["width"])
        # pycocotools.mask.encode gives bytes, results read from JSON give str: take both.
        result["segmentation"] = (
            rle if rng.uniform() < 0.3 else {**rle, "counts": rle["counts"].decode()}
        )
    else:
        xy = np.stack([rng.uniform(x, x + w, points), rng.uniform(y, y + h, points)], 1)
        if "keypoints" in ann:  # labelled keypoints near the truth, the others anywhere
            truth = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            near = truth[:, :2] + rng.normal(0, 0.02 * max(w, h), (points, 2))
            xy = np.where(truth[:, 2:] > 0, near, xy)
        result["keypoints"] = np.concatenate([xy, np.ones((points, 1))], 1).ravel().tolist()
    return result


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> CocoIndex:
    root = tmp_path_factory.mktemp("coco_eval")
    (root / "instances.json").write_text(json.dumps(_dataset()))
    return CocoIndex(root / "instances.json", root, check_images=False)


def _assert_same(ours, reference, names) -> None:
    """Stats, per-category AP and PR curves of two CocoEvalResults agree to 1e-12."""
    assert list(ours.stats) == list(names)
    np.testing.assert_allclose(
        [ours.stats[n] for n in names], [reference.stats[n] for n in names], rtol=0, atol=1e-12
    )
    for a, b in zip(ours.per_category, reference.per_category, strict=True):
        assert a["id"] == b["id"] and a["instances"] == b["instances"]
        np.testing.assert_allclose(
            [a[k] for k in ("AP", "AP50", "AP75")],
            [b[k] for k in ("AP", "AP50", "AP75")],
            rtol=0,
            atol=1e-12,
        )
    assert [c["label"] for c in ours.pr_curves] == [c["label"] for c in reference.pr_curves]
    for a, b in zip(ours.pr_curves, reference.pr_curves):
        np.testing.assert_allclose(a["y"], b["y"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_faster_backend_gives_pycocotools_numbers(index: CocoIndex, iou_type: str) -> None:
    results = _results(index.coco.dataset, iou_type)
    assert sum(r["image_id"] == CROWDED_IMAGE for r in results) > 100  # maxDets 100 bites
    kwargs = (
        {"category_ids": [PERSON], "keypoint_sigmas": SIGMAS} if iou_type == "keypoints" else {}
    )
    reference = coco_evaluate(index, results, iou_type, **kwargs)
    faster = coco_evaluate(index, results, iou_type, backend="faster", **kwargs)
    names = KEYPOINT_STATS if iou_type == "keypoints" else BOX_STATS
    _assert_same(faster, reference, names)
    assert 0.05 < reference.stats["AP"] < 0.95  # neither trivial case, where everything agrees
    if iou_type != "keypoints":
        per_category = {row["id"]: row["AP"] for row in faster.per_category}
        assert per_category[SIGN] == 0.0  # annotated, never detected
        assert per_category[KITE] == -1.0  # detected, never annotated
        assert faster.stats["AR1"] < faster.stats["AR10"] <= faster.stats["AR100"]


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_backends_agree_on_cocomini(iou_type: str) -> None:
    name = "person_keypoints_val2017.json" if iou_type == "keypoints" else "instances_val2017.json"
    if not (COCOMINI / "annotations" / name).is_file():
        pytest.skip(f"COCO-MINI is not at {COCOMINI} (shared data of the project machines)")
    index = CocoIndex(COCOMINI / "annotations" / name, COCOMINI / "val2017", check_images=False)
    results = _results(index.coco.dataset, iou_type, false_positives=10)
    kwargs = {"category_ids": [PERSON]} if iou_type == "keypoints" else {}
    reference = coco_evaluate(index, results, iou_type, **kwargs)
    faster = coco_evaluate(index, results, iou_type, backend="faster", **kwargs)
    _assert_same(faster, reference, KEYPOINT_STATS if iou_type == "keypoints" else BOX_STATS)
    assert 0.05 < reference.stats["AP"] < 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_leaves_the_index_and_the_results_unchanged(
    index: CocoIndex, backend: str
) -> None:
    dataset = copy.deepcopy(index.coco.dataset)
    polygon_ids = [a["id"] for a in dataset["annotations"] if isinstance(a["segmentation"], list)]
    for iou_type in ("segm", "bbox", "keypoints"):
        results = _results(index.coco.dataset, iou_type)
        given = copy.deepcopy(results)
        kwargs = (
            {"category_ids": [PERSON], "keypoint_sigmas": SIGMAS} if iou_type == "keypoints" else {}
        )
        coco_evaluate(index, results, iou_type, backend=backend, **kwargs)
        assert results == given
    # pycocotools used to turn the index's polygons into RLE with bytes in place.
    assert all(isinstance(index.coco.anns[i]["segmentation"], list) for i in polygon_ids)
    assert index.coco.dataset == dataset
    json.dumps(index.coco.dataset)


@pytest.mark.parametrize(
    ("segmentation", "expected"),
    [
        ([[10, 10, 60, 10, 60, 60]], "got a polygon list"),
        ({"size": [150, 200], "counts": [0, 30000]}, "got uncompressed RLE (counts a list)"),
        (
            {"size": [240, 320], "counts": "PPYo1"},
            "size [240, 320] differs from the image's [height, width] [150, 200]",
        ),
        ("PPYo1", "got str 'PPYo1'"),
        (None, "missing"),
    ],
)
def test_unreadable_segm_results_get_one_clear_line(
    index: CocoIndex, segmentation: object, expected: str
) -> None:
    results = _results(index.coco.dataset, "segm")[:3]
    bad = {"image_id": 10, "category_id": CAR, "score": 0.5}
    if segmentation is not None:
        bad["segmentation"] = segmentation
    with pytest.raises(CocoDataError) as error:
        coco_evaluate(index, [*results, bad, bad], "segm")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("<results>: result #3: field 'segmentation': " + expected)
    assert "{'size': [height, width], 'counts': str}" in message
    assert message.endswith("(and 1 more results like it)")


def test_box_metric_runs_the_chosen_backend(index: CocoIndex) -> None:
    results = _results(index.coco.dataset, "bbox")
    values = {}
    for backend in BACKENDS:
        metric = CocoBoxMetric(backend=backend)
        metric.index = index
        for image_id in index.image_ids:
            mine = [r for r in results if r["image_id"] == image_id]
            prediction = {
                "image_id": image_id,
                "bbox": torch.tensor([r["bbox"] for r in mine]).reshape(-1, 4),
                "score": torch.tensor([r["score"] for r in mine]),
                "category_id": torch.tensor([r["category_id"] for r in mine], dtype=torch.long),
            }
            metric.update([prediction], torch.tensor([image_id]))
        values[backend] = metric.compute()
    _assert_same(values["faster"]["result"], values["pycocotools"]["result"], BOX_STATS)
    assert values["faster"]["detections"] == len(results)
    with pytest.raises(ValueError, match="must be one of pycocotools, faster, got 'fast'"):
        CocoBoxMetric(backend="fast")


def test_missing_faster_coco_eval_is_named(monkeypatch, index: CocoIndex) -> None:
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import raises ImportError
    with pytest.raises(ImportError, match="pip install 'faster-coco-eval"):
        coco_evaluate(index, [], "bbox", backend="faster")
