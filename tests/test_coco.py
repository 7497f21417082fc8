"""Tests for vision_tasks.data.coco: validation messages, skip policy, image reading, results."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from vision_tasks.data.coco import (
    CocoDataError,
    CocoIndex,
    load_results,
    read_image,
    write_results_json,
)

JSON_NAME = "instances_test.json"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "cocomini"


def _base() -> dict:
    """A valid dataset: two images, categories 1/3/7 (1 with keypoints), three annotations."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "sub/b.png", "width": 20, "height": 10},
        ],
        "categories": [
            {"id": 7, "name": "dog"},
            {"id": 1, "name": "person", "keypoints": ["nose", "eye"], "skeleton": [[1, 2]]},
            {"id": 3, "name": "cat"},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 10, 10],
                "iscrowd": 0,
                "area": 50.0,
                "segmentation": [[0, 0, 10, 0, 10, 10]],
                "keypoints": [1, 1, 2, 2, 2, 1],
                "num_keypoints": 2,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 3,
                "bbox": [5, 5, 35, 25],
                "iscrowd": 1,
                "segmentation": {"size": [30, 40], "counts": [100, 50, 1050]},
            },
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 5]},
        ],
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Image folder holding a.png (40x30) and sub/b.png (20x10)."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    cv2.imwrite(str(images / "a.png"), np.full((30, 40, 3), 100, np.uint8))
    cv2.imwrite(str(images / "sub" / "b.png"), np.full((10, 20, 3), 200, np.uint8))
    return images


def _write(root: Path, data: object) -> Path:
    path = root.parent / JSON_NAME
    path.write_text(json.dumps(data))
    return path


def _load(root: Path, data: object, **kwargs: object) -> CocoIndex:
    return CocoIndex(_write(root, data), root, **kwargs)


def _assert_line(message: str, *fragments: str) -> None:
    """Some line of ``message`` starts with the JSON file name and holds every fragment."""
    lines = [line for line in message.splitlines() if line.startswith(JSON_NAME)]
    assert any(all(f in line for f in fragments) for line in lines), message


def _ann(d: dict, ann_id: int) -> dict:
    return next(a for a in d["annotations"] if a["id"] == ann_id)


# (case id, mutation, expected fragments of one line: record, field, message)
ANNOTATION_CASES: list[tuple[str, Callable[[dict], object], tuple[str, ...]]] = [
    ("missing id", lambda d: _ann(d, 3).pop("id"), ("annotation #2", "field 'id'", "missing")),
    (
        "missing image_id",
        lambda d: _ann(d, 3).pop("image_id"),
        ("annotation id=3", "field 'image_id'", "missing"),
    ),
    (
        "missing category_id",
        lambda d: _ann(d, 3).pop("category_id"),
        ("annotation id=3", "field 'category_id'", "missing"),
    ),
    (
        "missing bbox",
        lambda d: _ann(d, 3).pop("bbox"),
        ("annotation id=3", "field 'bbox'", "missing"),
    ),
    (
        "id not int",
        lambda d: _ann(d, 3).update(id="3"),
        ("annotation #2", "field 'id'", "expected an integer"),
    ),
    (
        "image_id not int",
        lambda d: _ann(d, 3).update(image_id=2.0),
        ("annotation id=3", "field 'image_id'", "expected an integer"),
    ),
    (
        "not an object",
        lambda d: d["annotations"].append([1, 2]),
        ("annotation #3", "expected an object"),
    ),
    (
        "duplicate id",
        lambda d: _ann(d, 3).update(id=2),
        ("annotation id=2", "field 'id'", "already used"),
    ),
    (
        "unknown image",
        lambda d: _ann(d, 3).update(image_id=99),
        ("annotation id=3", "field 'image_id'", "no image with id=99"),
    ),
    (
        "unknown category",
        lambda d: _ann(d, 3).update(category_id=5),
        ("annotation id=3", "field 'category_id'", "no category with id=5"),
    ),
    (
        "bbox length",
        lambda d: _ann(d, 3).update(bbox=[1, 2, 3]),
        ("annotation id=3", "field 'bbox'", "expected [x, y, width, height]"),
    ),
    (
        "bbox nan",
        lambda d: _ann(d, 3).update(bbox=[1, 1, float("nan"), 2]),
        ("annotation id=3", "field 'bbox'", "nan is not a finite number"),
    ),
    (
        "bbox str",
        lambda d: _ann(d, 3).update(bbox=[1, "1", 2, 2]),
        ("annotation id=3", "field 'bbox'", "'1' is not a finite number"),
    ),
    (
        "bbox zero width",
        lambda d: _ann(d, 3).update(bbox=[1, 1, 0, 2]),
        ("annotation id=3", "field 'bbox'", "width 0 is not positive"),
    ),
    (
        "bbox negative height",
        lambda d: _ann(d, 3).update(bbox=[1, 1, 2, -2.5]),
        ("annotation id=3", "field 'bbox'", "height -2.5 is not positive"),
    ),
    (
        "bbox outside",
        lambda d: _ann(d, 3).update(bbox=[15, 1, 8, 2]),
        ("annotation id=3", "field 'bbox'", "outside the 20x10 image"),
    ),
    (
        "bbox negative x",
        lambda d: _ann(d, 3).update(bbox=[-2, 1, 8, 2]),
        ("annotation id=3", "field 'bbox'", "outside"),
    ),
    (
        "iscrowd",
        lambda d: _ann(d, 3).update(iscrowd=2),
        ("annotation id=3", "field 'iscrowd'", "expected 0 or 1"),
    ),
    (
        "area",
        lambda d: _ann(d, 3).update(area=-1),
        ("annotation id=3", "field 'area'", "non-negative"),
    ),
    (
        "polygon 2 points",
        lambda d: _ann(d, 1).update(segmentation=[[0, 0, 1, 1]]),
        ("annotation id=1", "field 'segmentation'", "polygon 0 has 2 point(s)"),
    ),
    (
        "polygon odd",
        lambda d: _ann(d, 1).update(segmentation=[[0, 0, 9, 0, 9, 9, 4]]),
        ("annotation id=1", "field 'segmentation'", "odd number of coordinates (7)"),
    ),
    (
        "polygon values",
        lambda d: _ann(d, 1).update(segmentation=[[0, 0, 9, 0, 9, None]]),
        ("annotation id=1", "field 'segmentation'", "not a list of finite numbers"),
    ),
    (
        "segmentation type",
        lambda d: _ann(d, 1).update(segmentation="abc"),
        ("annotation id=1", "field 'segmentation'", "list of polygons or an RLE"),
    ),
    (
        "rle size",
        lambda d: _ann(d, 2)["segmentation"].update(size=[40, 30]),
        ("annotation id=2", "field 'segmentation'", "RLE size [40, 30] differs", "[30, 40]"),
    ),
    (
        "rle counts",
        lambda d: _ann(d, 2)["segmentation"].update(counts=[100, 5]),
        ("annotation id=2", "field 'segmentation'", "sum to 105, expected height*width = 1200"),
    ),
    (
        "keypoints length",
        lambda d: _ann(d, 1).update(keypoints=[1, 1, 2]),
        ("annotation id=1", "field 'keypoints'", "has 3 values, expected 6", "of 'person'"),
    ),
    (
        "keypoints visibility",
        lambda d: _ann(d, 1).update(keypoints=[1, 1, 2, 2, 2, 3]),
        ("annotation id=1", "field 'keypoints'", "visibility flag 3"),
    ),
    (
        "num_keypoints",
        lambda d: _ann(d, 1).update(num_keypoints=-1),
        ("annotation id=1", "field 'num_keypoints'", "non-negative integer"),
    ),
]


@pytest.mark.parametrize(
    "mutate, fragments", [c[1:] for c in ANNOTATION_CASES], ids=[c[0] for c in ANNOTATION_CASES]
)
def test_annotation_problem_is_named(root: Path, mutate: Callable, fragments: tuple) -> None:
    data = _base()
    mutate(data)
    with pytest.raises(CocoDataError) as err:
        _load(root, data)
    message = str(err.value)
    assert message.startswith(f"1 problem in {root.parent / JSON_NAME}:")
    _assert_line(message, *fragments)
    assert "--data.policy skip" in message
    _load(root, data, policy="skip")  # skippable: loads


FATAL_CASES: list[tuple[str, Callable[[dict], object], tuple[str, ...]]] = [
    ("missing images", lambda d: d.pop("images"), ("missing top-level key 'images'",)),
    (
        "annotations not list",
        lambda d: d.update(annotations={}),
        ("top-level 'annotations' is a dict",),
    ),
    ("no images", lambda d: d.update(images=[], annotations=[]), ("no images",)),
    (
        "duplicate image id",
        lambda d: d["images"][1].update(id=1),
        ("image id=1", "field 'id'", "duplicate image id 1"),
    ),
    (
        "image id str",
        lambda d: d["images"][1].update(id="2"),
        ("image #1 (no valid id)", "field 'id'", "expected an integer, got '2'"),
    ),
    (
        "file_name type",
        lambda d: d["images"][1].update(file_name=5),
        ("image id=2", "field 'file_name'", "non-empty string"),
    ),
    (
        "width zero",
        lambda d: d["images"][1].update(width=0),
        ("image id=2", "field 'width'", "positive integer, got 0"),
    ),
    (
        "height float",
        lambda d: d["images"][1].update(height=10.0),
        ("image id=2", "field 'height'", "positive integer, got 10.0"),
    ),
    (
        "absolute file_name",
        lambda d: d["images"][1].update(file_name="/etc/passwd"),
        ("image id=2", "field 'file_name'", "outside the image root"),
    ),
    (
        "dotdot file_name",
        lambda d: d["images"][1].update(file_name="sub/../../b.png"),
        ("image id=2", "field 'file_name'", "outside the image root"),
    ),
    (
        "duplicate category id",
        lambda d: d["categories"][2].update(id=7),
        ("category id=7", "field 'id'", "duplicate category id 7"),
    ),
    (
        "category name",
        lambda d: d["categories"][2].pop("name"),
        ("category id=3", "field 'name'", "non-empty string"),
    ),
    (
        "category id",
        lambda d: d["categories"][2].update(id=None),
        ("category #2 (no valid id)", "field 'id'", "expected an integer"),
    ),
    (
        "skeleton",
        lambda d: d["categories"][1].update(skeleton=[[1, 3]]),
        ("category id=1", "field 'skeleton'", "1..2"),
    ),
]


@pytest.mark.parametrize("policy", ["strict", "skip"])
@pytest.mark.parametrize(
    "mutate, fragments", [c[1:] for c in FATAL_CASES], ids=[c[0] for c in FATAL_CASES]
)
def test_fatal_problem_even_when_skipping(
    root: Path, mutate: Callable, fragments: tuple, policy: str
) -> None:
    data = _base()
    mutate(data)
    with pytest.raises(CocoDataError) as err:
        _load(root, data, policy=policy)
    _assert_line(str(err.value), *fragments)
    assert "--data.policy skip" not in str(err.value)


def test_missing_malformed_or_non_object_json(root: Path) -> None:
    with pytest.raises(CocoDataError, match=f"{JSON_NAME}: file not found"):
        CocoIndex(root.parent / JSON_NAME, root)
    (root.parent / JSON_NAME).write_text('{"images": [\n  {"id": 1,,}]}')
    with pytest.raises(CocoDataError, match=f"{JSON_NAME}: malformed JSON at line 2, column 12"):
        CocoIndex(root.parent / JSON_NAME, root)
    with pytest.raises(CocoDataError, match=f"{JSON_NAME}: top level is a list"):
        _load(root, [_base()], policy="skip")


def test_missing_image_root(root: Path) -> None:
    with pytest.raises(CocoDataError, match="image root .* is not a directory"):
        CocoIndex(_write(root, _base()), root / "nope")


IMAGE_FILE_CASES: list[tuple[str, Callable[[Path], object], tuple[str, ...]]] = [
    (
        "missing",
        lambda r: (r / "sub" / "b.png").unlink(),
        ("image id=2", "field 'file_name'", "file not found", "b.png"),
    ),
    (
        "empty",
        lambda r: (r / "sub" / "b.png").write_bytes(b""),
        ("image id=2", "field 'file_name'", "empty (0 bytes)"),
    ),
    (
        "garbage",
        lambda r: (r / "sub" / "b.png").write_bytes(b"not an image at all"),
        ("image id=2", "field 'file_name'", "cannot read image header", "b.png"),
    ),
    (
        "size",
        lambda r: cv2.imwrite(str(r / "sub" / "b.png"), np.zeros((11, 20), np.uint8)),
        ("image id=2", "field 'width/height'", "is 20x11 (WxH) but the record says 20x10"),
    ),
]


@pytest.mark.parametrize(
    "break_file, fragments", [c[1:] for c in IMAGE_FILE_CASES], ids=[c[0] for c in IMAGE_FILE_CASES]
)
def test_image_file_problems(
    root: Path, break_file: Callable, fragments: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    break_file(root)
    with pytest.raises(CocoDataError) as err:
        _load(root, _base())
    _assert_line(str(err.value), *fragments)
    with caplog.at_level(logging.WARNING, logger="vision_tasks.data.coco"):
        index = _load(root, _base(), policy="skip")
    assert index.image_ids == [1]
    assert sum(index.skipped.values()) == 2 and index.skipped["annotation of skipped image"] == 1
    assert "dropped 2 record(s)" in caplog.text
    assert len(_load(root, _base(), check_images=False)) == 2  # headers not read


def test_all_problems_listed_then_truncated(root: Path) -> None:
    data = _base()
    _ann(data, 3).update(bbox=[0, 0, 0, 1])
    data["images"][0]["width"] = -1  # fatal: listed along with the annotation problems
    with pytest.raises(CocoDataError) as err:
        _load(root, data)
    assert str(err.value).startswith("2 problems in")
    data = _base()
    data["annotations"] += [dict(_ann(data, 3), id=100 + i, category_id=42) for i in range(25)]
    with pytest.raises(CocoDataError) as err:
        _load(root, data)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("25 problems in") and "... and 5 more" in lines
    assert len(lines) == 1 + 20 + 2  # header, 20 problems, "... and", hint


def test_skip_drops_exactly_the_bad_annotations(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _base()
    good = _load(root, copy.deepcopy(data))
    data["annotations"] += [
        dict(_ann(data, 3), id=10, bbox=[1, 1, 0, 2]),
        dict(_ann(data, 3), id=11, category_id=5),
        dict(_ann(data, 3), id=12, bbox=[1, 1, 2, 50]),
    ]
    with caplog.at_level(logging.WARNING, logger="vision_tasks.data.coco"):
        index = _load(root, data, policy="skip")
    assert index.skipped == {"invalid bbox": 1, "unknown category_id": 1, "bbox outside image": 1}
    assert "dropped 3 record(s)" in caplog.text and "invalid bbox=1" in caplog.text
    for image_id in good.image_ids:
        assert index.annotations(image_id) == good.annotations(image_id)
    assert good.skipped == {}


def test_maps_with_non_contiguous_ids(root: Path) -> None:
    index = _load(root, _base())
    assert index.category_ids == [1, 3, 7] and index.index_to_cat == [1, 3, 7]
    assert index.cat_to_index == {1: 0, 3: 1, 7: 2} and index.num_classes == 3
    assert index.category_names == ["person", "cat", "dog"]
    assert index.categories[0]["skeleton"] == [[1, 2]]
    assert index.image_ids == [1, 2] and len(index) == 2
    assert index.image_path(2) == root / "sub" / "b.png"
    assert index.image_info(2)["width"] == 20
    assert [a["id"] for a in index.annotations(1)] == [1, 2]
    assert [a["id"] for a in index.annotations(1, include_crowd=False)] == [1]
    assert index.coco.getAnnIds() == [1, 2, 3] and index.coco.getCatIds() == [1, 3, 7]
    with pytest.raises(KeyError, match="image id=9"):
        index.image_info(9)
    with pytest.raises(ValueError, match="policy"):
        _load(root, _base(), policy="lenient")  # type: ignore[arg-type]


def test_defaults_filled_and_box_tolerance(root: Path) -> None:
    data = _base()
    _ann(data, 3).update(bbox=[14.5, 4.6, 6.0, 6.0])  # 0.5 / 0.6 px past the border: allowed
    data["annotations"].append({"id": 4, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4]})
    mask = np.zeros((30, 40), np.uint8, order="F")
    mask[2:5, 3:10] = 1
    rle = mask_utils.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")  # compressed RLE as stored in JSON
    data["annotations"].append(
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [3, 2, 7, 3], "segmentation": rle}
    )
    index = _load(root, data)
    ann3, ann4 = index.annotations(2)
    assert ann3["iscrowd"] == 0 and ann3["area"] == 36.0
    assert ann4["keypoints"] == [0] * 6 and ann4["num_keypoints"] == 0
    assert index.annotations(1)[1]["area"] == 50.0  # from the uncompressed RLE
    assert index.annotations(1)[2]["area"] == 21.0  # from the compressed RLE
    assert _load(root, data, keypoint_fields=False).annotations(2)[1].get("keypoints") is None
    _ann(data, 1).update(keypoints=[1])  # ignored without keypoint_fields
    _load(root, data, keypoint_fields=False)


def test_empty_category_warns(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _base()
    data["categories"].append({"id": 9, "name": "bird"})
    with caplog.at_level(logging.WARNING, logger="vision_tasks.data.coco"):
        _load(root, data)
    assert "'bird' (id=9)" in caplog.text


def test_read_image_conversions(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    assert (read_image(tmp_path / "g.png") == gray[..., None].repeat(3, 2)).all()
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, 7  # B=10, R=200, alpha=7
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    rgb = read_image(tmp_path / "rgba.png")
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [200, 0, 10]
    Image.fromarray(np.stack([gray, gray], -1), "LA").save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == gray[..., None].repeat(3, 2)).all()
    deep = np.array([[0, 257 * 100, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255]
    cv2.imwrite(str(tmp_path / "d3.png"), np.stack([deep * 0, deep * 0, deep], -1))
    assert read_image(tmp_path / "d3.png")[0, :, 0].tolist() == [0, 100, 255]  # BGR -> RGB


def test_read_image_errors(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "ok.jpg"), image)
    cv2.imwrite(str(tmp_path / "ok.png"), image)
    jpg, png = (tmp_path / "ok.jpg").read_bytes(), (tmp_path / "ok.png").read_bytes()
    assert read_image(tmp_path / "ok.jpg").shape == (32, 32, 3)
    cases = {
        "missing.png": None,
        "empty.jpg": b"",
        "junk.jpg": b"hello",
        "cut.jpg": jpg[: len(jpg) // 2],
        "no_eoi.jpg": jpg[:-2],
        "cut.png": png[:-30],
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CocoDataError, match=name):
            read_image(tmp_path / name)


def test_load_image_checks_size(root: Path) -> None:
    index = _load(root, _base())
    assert index.load_image(2).shape == (10, 20, 3) and index.load_image(2)[0, 0, 0] == 200
    cv2.imwrite(str(root / "sub" / "b.png"), np.zeros((12, 20, 3), np.uint8))
    with pytest.raises(CocoDataError, match=r"image id=2: field 'width/height'.*20x12"):
        index.load_image(2)


@pytest.mark.parametrize(
    "name", ["instances_val2017.json", "person_keypoints_val2017.json", "instances_train2017.json"]
)
def test_real_cocomini_is_clean(name: str) -> None:
    if not (REAL / "annotations" / name).is_file():
        pytest.skip("shared cocomini data not present")
    split = "train2017" if "train" in name else "val2017"
    index = CocoIndex(REAL / "annotations" / name, REAL / split)
    assert index.skipped == {} and len(index) == len(index.coco.dataset["images"])
    assert index.load_image(index.image_ids[0]).ndim == 3


def test_results_round_trip(root: Path, tmp_path: Path) -> None:
    index = _load(root, _base())
    rle = mask_utils.encode(np.asfortranarray(np.ones((30, 40), np.uint8)))
    results = [
        {
            "image_id": np.int64(1),
            "category_id": 3,
            "bbox": np.array([1.0, 2, 3, 4]),
            "score": np.float32(0.5),
        },
        {"image_id": 2, "category_id": 7, "bbox": [1, 1, 2, 2], "score": 0.25},
    ]
    path = write_results_json(results, tmp_path / "out" / "res.json")
    written = json.loads(path.read_text())
    assert [r["id"] for r in written] == [1, 2] and written[0]["bbox"] == [1.0, 2.0, 3.0, 4.0]
    for source in (path, written):
        dets = load_results(index, source)
        assert sorted(dets.getAnnIds()) == [1, 2] and dets.anns[1]["area"] == 12.0
    segm = json.loads(
        write_results_json(
            [{"image_id": 1, "category_id": 1, "score": 1.0, "segmentation": rle}],
            tmp_path / "s.json",
        ).read_text()
    )
    assert isinstance(segm[0]["segmentation"]["counts"], str)
    assert load_results(index, segm).anns[1]["area"] == 1200
    empty = load_results(index, write_results_json([], tmp_path / "empty.json"))
    assert empty.getAnnIds() == [] and sorted(empty.getImgIds()) == [1, 2]
    assert load_results(index, []).getCatIds() == [1, 3, 7]
    with pytest.raises(CocoDataError, match=r"result #0: field 'image_id': image id 99"):
        load_results(index, [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1]}])


# --- the clip policy ---------------------------------------------------------------------------


def _edge_cases() -> dict:
    """_base() plus: a box over the left edge (MOT style), one wholly outside, one over the edge
    with an unknown category, and a person whose second keypoint lies below the image."""
    data = _base()
    data["annotations"] += [
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [-4, 10, 14, 30], "area": 420.0},
        {"id": 5, "image_id": 1, "category_id": 7, "bbox": [50, 5, 5, 5]},
        {"id": 6, "image_id": 2, "category_id": 99, "bbox": [15, 2, 10, 5]},
        {
            "id": 7,
            "image_id": 1,
            "category_id": 1,
            "bbox": [2, 2, 8, 8],
            "keypoints": [3, 3, 2, 5, 36.5, 1],
            "num_keypoints": 2,
        },
    ]
    return data


def test_strict_refuses_edge_boxes_and_outside_keypoints_and_names_the_clip_policy(root) -> None:
    with pytest.raises(CocoDataError) as error:
        CocoIndex(_write(root, _edge_cases()), root)
    message = str(error.value)
    assert "annotation id=4: field 'bbox': box [-4, 10, 14, 30] extends outside the 40x30" in (
        message
    )
    assert (
        "annotation id=7: field 'keypoints': 1 labelled keypoint(s) outside the 40x30 image "
        "(first: keypoint 1 at (5, 36.5))"
    ) in message
    assert "--data.policy clip" in message


def test_clip_policy_clips_boxes_unlabels_outside_keypoints_and_counts_both(root, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        index = CocoIndex(_write(root, _edge_cases()), root, policy="clip")
    anns = {a["id"]: a for i in index.image_ids for a in index.annotations(i)}
    # Hand-clipped: x from -4 to 0, the right edge x + w = 10 and the height unchanged.
    assert anns[4]["bbox"] == [0, 10, 10, 20] and anns[4]["area"] == 200.0
    assert anns[7]["keypoints"] == [3, 3, 2, 0, 0, 0] and anns[7]["num_keypoints"] == 1
    assert 5 not in anns and 6 not in anns  # nothing left to clip; unknown category
    assert index.clipped == {"box crossing the image edge": 1, "keypoints outside the image": 1}
    assert index.skipped == {"bbox outside image": 1, "unknown category_id": 1}
    assert "policy='clip' clipped to the image: box crossing the image edge=1" in caplog.text
    assert "policy='clip' dropped 2 record(s)" in caplog.text
    # COCOeval reads the clipped records: the index's COCO object holds the same boxes.
    assert index.coco.anns[4]["bbox"] == [0, 10, 10, 20]


def test_skip_policy_drops_what_clip_would_repair(root) -> None:
    index = CocoIndex(_write(root, _edge_cases()), root, policy="skip")
    kept = {a["id"] for i in index.image_ids for a in index.annotations(i)}
    assert kept == {1, 2, 3} and index.clipped == {}
    assert index.skipped["bbox outside image"] == 2
    assert index.skipped["keypoints outside image"] == 1
