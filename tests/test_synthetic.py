"""Tests of the synthetic COCO dataset: determinism, exact annotations, identities, caching."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from vision_tasks.data.synthetic import (
    SYNTHETIC_VERSION,
    SyntheticPaths,
    default_cache_dir,
    files,
    generate,
    identities,
    synthetic_dataset,
)

TINY = {"num_train": 6, "num_val": 3, "width": 96, "height": 72}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPaths:
    """A set big enough for the statistics (~70 persons, every train identity 3+ times)."""
    out = tmp_path_factory.mktemp("synthetic")
    return generate(out, seed=0, num_train=48, num_val=12, width=128, height=96)


def _load(path: Path) -> COCO:
    """Return the annotation file as a pycocotools COCO object."""
    return COCO(str(path))


def _files(root: Path) -> dict[str, bytes]:
    """Return every file under ``root`` by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", seed=3, **TINY).root)
    b = _files(generate(tmp_path / "b", seed=3, **TINY).root)
    assert len(a) == 2 + 6 + 3
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []


def test_other_seed_gives_other_data(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", seed=3, **TINY).root)
    c = _files(generate(tmp_path / "c", seed=4, **TINY).root)
    assert sorted(a) == sorted(c)
    assert [name for name in a if a[name] == c[name]] == []


def test_smaller_set_is_a_prefix_of_a_larger_one(tmp_path: Path) -> None:
    small = generate(tmp_path / "small", seed=5, **TINY)
    large = generate(tmp_path / "large", seed=5, **{**TINY, "num_train": 9})
    for name in ("000001.jpg", "000006.jpg"):
        assert (small.train_images / name).read_bytes() == (large.train_images / name).read_bytes()
    small_anns = json.loads(small.train_json.read_text())["annotations"]
    assert json.loads(large.train_json.read_text())["annotations"][: len(small_anns)] == small_anns


def test_layout_and_categories(dataset: SyntheticPaths) -> None:
    assert dataset.train_json == dataset.root / "annotations" / "instances_train.json"
    assert dataset.val_images == dataset.root / "val"
    for json_path, folder in (
        (dataset.train_json, dataset.train_images),
        (dataset.val_json, dataset.val_images),
    ):
        coco = json.loads(json_path.read_text())
        assert list(coco) == ["info", "licenses", "images", "annotations", "categories"]
        assert [c["id"] for c in coco["categories"]] == [1, 3, 5, 7]
        person = coco["categories"][0]
        assert len(person["keypoints"]) == 17 and len(person["skeleton"]) == 19
        assert [i["id"] for i in coco["images"]] == list(range(1, len(coco["images"]) + 1))
        assert [a["id"] for a in coco["annotations"]] == list(
            range(1, len(coco["annotations"]) + 1)
        )
        for info in coco["images"]:
            assert info["camera_id"] in (1, 2, 3, 4)
            image = cv2.imread(str(folder / info["file_name"]))
            assert image.shape == (info["height"], info["width"], 3) == (96, 128, 3)


def test_masks_match_area_and_box(dataset: SyntheticPaths) -> None:
    coco = _load(dataset.train_json)
    assert len(coco.dataset["annotations"]) > 150
    for ann in coco.dataset["annotations"]:
        assert ann["iscrowd"] == 0 and all(len(poly) >= 6 for poly in ann["segmentation"])
        mask = coco.annToMask(ann)
        assert abs(int(mask.sum()) - ann["area"]) <= 1, ann["id"]
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        # A polygon's sharp tip can hold no pixel centre for just over a pixel.
        assert np.allclose(
            [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x, y, x + w, y + h], atol=1.5
        ), ann["id"]


def test_objects_are_painted_where_their_masks_are(dataset: SyntheticPaths) -> None:
    """A solid-filled shape is flat inside its mask and stands out from the ring around it."""
    coco = _load(dataset.train_json)
    kernel = np.ones((5, 5), np.uint8)
    contrasts = []
    for ann in coco.dataset["annotations"]:
        if ann["category_id"] == 1 or ann["area"] < 300:
            continue
        image = cv2.imread(str(dataset.train_images / coco.imgs[ann["image_id"]]["file_name"]))
        mask = coco.annToMask(ann)
        inside = image[cv2.erode(mask, kernel).astype(bool)].astype(float)
        ring = image[(cv2.dilate(mask, kernel) - mask).astype(bool)].astype(float)
        if inside.std(axis=0).max() < 12:  # solid fill; stripes and checks vary on purpose
            contrasts.append(np.abs(inside.mean(axis=0) - ring.mean(axis=0)).max())
    assert len(contrasts) >= 10
    assert np.mean(np.array(contrasts) > 15) >= 0.9


def test_keypoints(dataset: SyntheticPaths) -> None:
    coco = _load(dataset.train_json)
    persons = [a for a in coco.dataset["annotations"] if a["category_id"] == 1]
    assert len(persons) >= 50
    seen = set()
    for ann in persons:
        image = coco.imgs[ann["image_id"]]
        keypoints = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
        x, y, v = keypoints.T
        assert len(ann["keypoints"]) == 51 and set(v) <= {0, 1, 2}
        assert ann["num_keypoints"] == int((v > 0).sum())
        assert np.all((x[v == 0] == 0) & (y[v == 0] == 0))
        shown = v > 0
        assert np.all((x[shown] >= 0) & (x[shown] < image["width"]))
        assert np.all((y[shown] >= 0) & (y[shown] < image["height"]))
        bx, by, bw, bh = ann["bbox"]
        assert np.all((x[shown] >= bx - 1) & (x[shown] <= bx + bw + 1)), ann["id"]
        assert np.all((y[shown] >= by - 1) & (y[shown] <= by + bh + 1)), ann["id"]
        seen |= set(v.tolist())
    assert seen == {0, 1, 2}  # occluded face points and persons cut by the border both occur


def test_identities_and_cameras(dataset: SyntheticPaths) -> None:
    splits = [json.loads(p.read_text()) for p in (dataset.train_json, dataset.val_json)]
    ids = []
    for coco in splits:
        camera = {i["id"]: i["camera_id"] for i in coco["images"]}
        cameras, categories = defaultdict(set), defaultdict(set)
        for ann in coco["annotations"]:
            cameras[ann["track_id"]].add(camera[ann["image_id"]])
            categories[ann["track_id"]].add(ann["category_id"])
        assert all(len(c) == 1 for c in categories.values())  # an identity is one kind of thing
        ids.append(cameras)
    train, val = ids
    assert len(train) == sum(identities._TRAIN_POOL.values())  # every train identity appears
    assert not set(train) & set(val)
    assert min(len(c) for c in train.values()) >= 2


def test_cache_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting_generate(*args: object, **kwargs: object) -> SyntheticPaths:
        calls.append(args)
        return generate(*args, **kwargs)

    monkeypatch.setattr(files, "generate", counting_generate)
    first = synthetic_dataset(seed=1, cache_dir=tmp_path, **TINY)
    second = synthetic_dataset(seed=1, cache_dir=tmp_path, **TINY)
    assert first == second and len(calls) == 1
    assert first.root == tmp_path / f"synthetic-v{SYNTHETIC_VERSION}-seed1-96x72-6-3"
    assert [p.name for p in tmp_path.iterdir()] == [first.root.name]  # no temporary left behind
    assert len(_load(first.val_json).imgs) == 3


def test_cache_loses_a_race_gracefully(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / f"synthetic-v{SYNTHETIC_VERSION}-seed2-96x72-6-3"

    def racing_generate(out_dir: Path, *args: object) -> SyntheticPaths:
        generate(final, *args)  # another process finishes first
        return generate(out_dir, *args)

    monkeypatch.setattr(files, "generate", racing_generate)
    assert synthetic_dataset(seed=2, cache_dir=tmp_path, **TINY).root == final
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_cache_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_generate(out_dir: Path, *args: object) -> SyntheticPaths:
        (Path(out_dir) / "train").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "generate", failing_generate)
    with pytest.raises(KeyboardInterrupt):
        synthetic_dataset(cache_dir=tmp_path, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VISION_TASKS_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("VISION_TASKS_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "vision_tasks"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "vision_tasks"
