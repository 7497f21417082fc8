"""Malformed input as a new user gives it, by kind, through the real entry points.

Each case ends one of two ways: one ``CocoDataError`` / ``SystemExit`` message naming the file,
the record and the field (under the strict policy), or the bad record dropped and counted
(under skip). Never a traceback, a crash, or a silently wrong result.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import lightning
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vision_tasks import ops
from vision_tasks.cli import evaluate_main, load_task_checkpoint, predict_main, train_main
from vision_tasks.data.coco import CocoDataError, CocoIndex, rle_string_counts
from vision_tasks.data.synthetic import SyntheticPaths
from vision_tasks.tasks import TASKS
from vision_tasks.utils import remove_stale_temporaries

# Small inputs for every task's data module (the defaults are sized for real training).
SMALL: dict[str, dict] = {
    "classify": {"image_size": 64},
    "detect": {"image_size": 64},
    "segment": {"image_size": 64, "crop_size": 64},
    "keypoints": {"image_size": 64},
    "reid": {"image_size": 64},
    "homography": {
        "image_size": 64,
        "patch_size": 64,
        "rho": 16,
        "resize_width": 128,
        "resize_height": 96,
    },
    "multitask": {"image_size": 64},
}


class Case:
    """A copy of the tiny synthetic training split to break: its JSON and its image folder."""

    def __init__(self, tiny_coco: SyntheticPaths, tmp_path: Path) -> None:
        self.images = tmp_path / "train"
        shutil.copytree(tiny_coco.train_images, self.images)
        self.data = json.loads(tiny_coco.train_json.read_text())
        self.json = tmp_path / "instances_train.json"

    def write(self, text: str | None = None) -> Path:
        self.json.write_text(json.dumps(self.data) if text is None else text)
        return self.json

    def index(self, policy: str = "strict") -> CocoIndex:
        return CocoIndex(self.write(), self.images, policy=policy)

    def data_module(self, task: str, workers: int = 0):
        """``task``'s data module on this split (as training and validation split)."""
        path, images = str(self.write()), str(self.images)
        return TASKS[task].data(
            train_json=path,
            train_images=images,
            val_json=path,
            val_images=images,
            batch_size=2,
            num_workers=workers,
            **SMALL[task],
        )

    def image_path(self, i: int = 0) -> Path:
        return self.images / self.data["images"][i]["file_name"]

    def replace_image(self, i: int, content: bytes, suffix: str) -> None:
        self.image_path(i).unlink()
        record = self.data["images"][i]
        record["file_name"] = Path(record["file_name"]).stem + suffix
        self.image_path(i).write_bytes(content)

    def person(self) -> dict:
        return next(a for a in self.data["annotations"] if a.get("num_keypoints"))


@pytest.fixture
def case(tiny_coco: SyntheticPaths, tmp_path: Path) -> Case:
    """A fresh, breakable copy of the tiny training split."""
    return Case(tiny_coco, tmp_path)


def _encode(pixels: np.ndarray, suffix: str) -> bytes:
    ok, data = cv2.imencode(suffix, pixels)
    assert ok
    return data.tobytes()


def damage_scan(jpeg: bytes) -> bytes:
    """Overwrite bytes inside the entropy-coded scan, markers kept: libjpeg warns and decodes."""
    raw = bytearray(jpeg)
    sos = raw.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(raw[sos + 2 : sos + 4], "big") + 40
    raw[start : start + 60] = bytes(0xFF if k % 7 == 0 else 0 for k in range(60))
    raw[start + 30 : start + 32] = b"\xff\xd5"  # a restart marker out of order
    return bytes(raw)


def _one_message(text: str, *fragments: str) -> None:
    assert "Traceback" not in text and "DataLoader worker" not in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"


# ---- records and files that validation refuses (strict) or drops and counts (skip) ---------------


def _polygon(value: float) -> Callable[[Case], None]:
    def mutate(case: Case) -> None:
        case.data["annotations"][0]["segmentation"] = [
            [value, value, value + 9, value, value + 9, value + 9]
        ]

    return mutate


def _rle(counts) -> Callable[[Case], None]:
    def mutate(case: Case) -> None:
        case.data["annotations"][0]["segmentation"] = {"size": [120, 160], "counts": counts}
        case.data["annotations"][0].pop("area")  # detect would fill it from the counts

    return mutate


def _set(where: str, key: str, value) -> Callable[[Case], None]:
    def mutate(case: Case) -> None:
        record = {
            "image": case.data["images"][0],
            "annotation": case.data["annotations"][0],
            "category": case.data["categories"][1],
        }[where]
        if key == "id" and where != "annotation":  # keep the references pointing at it
            ref = "image_id" if where == "image" else "category_id"
            for ann in case.data["annotations"]:
                if ann[ref] == record["id"]:
                    ann[ref] = value
        record[key] = value

    return mutate


def _bbox_width(value) -> Callable[[Case], None]:
    return lambda case: case.data["annotations"][0]["bbox"].__setitem__(2, value)


def _keypoint_x(value) -> Callable[[Case], None]:
    return lambda case: case.person()["keypoints"].__setitem__(0, value)


def _num_keypoints(case: Case) -> None:
    case.person()["num_keypoints"] = 3  # 17 are labelled


def _duplicate_name(case: Case) -> None:
    case.data["categories"][2]["name"] = case.data["categories"][1]["name"]


def _truncated_png(case: Case) -> None:
    png = _encode(cv2.imread(str(case.image_path())), ".png")
    case.replace_image(0, png[: len(png) // 2], ".png")


def _truncated_jpeg(case: Case) -> None:
    jpeg = case.image_path().read_bytes()
    case.replace_image(0, jpeg[: len(jpeg) * 2 // 3], ".jpg")


def _damaged_jpeg(case: Case) -> None:
    case.replace_image(0, damage_scan(case.image_path().read_bytes()), ".jpg")


def _float_tiff(case: Case) -> None:
    pixels = cv2.imread(str(case.image_path())).astype(np.float32) / 255
    case.replace_image(0, _encode(pixels, ".tiff"), ".tiff")


OTHER_SIZE_RLE = mask_utils.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))["counts"]

# (id, mutate, fragments of the strict message, reason counted under skip; None: always fatal)
RECORD_CASES = [
    (
        "polygon 3e9 px",
        _polygon(3e9),
        ("annotation id=1", "field 'segmentation'", "outside the 160x120 image"),
        "segmentation outside image",
    ),
    (
        "polygon -3e9 px",
        _polygon(-3e9),
        ("field 'segmentation'", "outside"),
        "segmentation outside image",
    ),
    (
        "polygon 1e7 px",
        _polygon(1e7),
        ("field 'segmentation'", "outside"),
        "segmentation outside image",
    ),
    (
        "polygon int beyond float",
        _polygon(10**400),
        ("field 'segmentation'", "finite numbers"),
        "invalid segmentation",
    ),
    (
        "RLE string garbage",
        _rle("!!garbage~~"),
        ("field 'segmentation'", "not COCO's compressed RLE"),
        "invalid segmentation",
    ),
    (
        "RLE string of another size",
        _rle(OTHER_SIZE_RLE.decode()),
        ("field 'segmentation'", "RLE counts sum to 100, expected height*width = 19200"),
        "invalid segmentation",
    ),
    ("RLE string empty", _rle(""), ("field 'segmentation'", "sum to 0"), "invalid segmentation"),
    (
        "RLE counts beyond int64",
        _rle([2**70, 5]),
        ("field 'segmentation'",),
        "invalid segmentation",
    ),
    (
        "area beyond float",
        _set("annotation", "area", 10**400),
        ("field 'area'", "1329 bits (beyond 64)"),
        "invalid area",
    ),
    ("bbox beyond float", _bbox_width(10**400), ("field 'bbox'", "beyond 64"), "invalid bbox"),
    ("bbox beyond int64", _bbox_width(2**70), ("field 'bbox'", "beyond 64"), "invalid bbox"),
    (
        "keypoint beyond float",
        _keypoint_x(10**400),
        ("field 'keypoints'", "finite numbers"),
        "invalid keypoints",
    ),
    (
        "annotation id beyond int64",
        _set("annotation", "id", 2**64),
        ("annotation #0", "field 'id'", "65 bits (beyond 64)"),
        "wrong type",
    ),
    (
        "num_keypoints beyond int64",
        _set("annotation", "num_keypoints", 2**70),
        ("field 'num_keypoints'", "beyond 64"),
        "invalid keypoints",
    ),
    (
        "num_keypoints not the labelled count",
        _num_keypoints,
        ("field 'num_keypoints'", "is 3, but 17 keypoint(s) are labelled"),
        "invalid keypoints",
    ),
    ("image id beyond int64", _set("image", "id", 2**70), ("image #0", "field 'id'"), None),
    (
        "category id beyond int64",
        _set("category", "id", 2**63),
        ("category #1", "field 'id'"),
        None,
    ),
    ("width beyond float", _set("image", "width", 10**400), ("field 'width'", "beyond 64"), None),
    (
        "duplicate category name",
        _duplicate_name,
        ("category id=5", "field 'name'", "'circle' is already used by category id=3"),
        None,
    ),
    (
        "truncated PNG",
        _truncated_png,
        ("image id=1", "field 'file_name'", "000001.png: cannot decode image"),
        "image undecodable",
    ),
    (
        "truncated JPEG",
        _truncated_jpeg,
        ("image id=1", "000001.jpg: JPEG file is truncated"),
        "image undecodable",
    ),
    (
        "damaged JPEG scan data",
        _damaged_jpeg,
        ("image id=1", "000001.jpg: JPEG data is damaged (libjpeg: Corrupt JPEG data"),
        "image undecodable",
    ),
    (
        "float32 TIFF",
        _float_tiff,
        ("image id=1", "field 'file_name'", "000001.tiff"),
        "image unreadable",
    ),
]


@pytest.mark.parametrize(
    "mutate, fragments, reason", [c[1:] for c in RECORD_CASES], ids=[c[0] for c in RECORD_CASES]
)
def test_bad_record_is_one_message_when_strict_and_counted_when_skipping(
    case: Case, mutate: Callable, fragments: tuple, reason: str | None
) -> None:
    mutate(case)
    with pytest.raises(CocoDataError) as error:
        case.index()
    _one_message(str(error.value), "instances_train.json", *fragments)
    if reason is None:  # a broken image or category record: fatal under every policy
        with pytest.raises(CocoDataError):
            case.index("skip")
        return
    index = case.index("skip")
    assert index.skipped.get(reason, 0) >= 1, index.skipped


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"images": [], "x": ' + "9" * 5000 + "}", "more than 4300 digits"),
        ('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
    ids=["5000-digit integer", "100000 nested arrays"],
)
def test_json_the_parser_refuses_late_is_one_message(case: Case, text, fragment) -> None:
    with pytest.raises(CocoDataError) as error:
        CocoIndex(case.write(text), case.images)
    _one_message(str(error.value), "instances_train.json", "unreadable JSON", fragment)


def test_rle_string_decoder_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = np.asfortranarray(rng.random(rng.integers(1, 30, 2)) < rng.random(), np.uint8)
        rle = mask_utils.encode(mask)
        runs = rle_string_counts(rle["counts"].decode())
        assert sum(runs) == mask.size
        assert float(mask_utils.area(rle)) == sum(runs[1::2])
        flat = mask.flatten(order="F")
        assert list(np.repeat(np.arange(len(runs)) % 2, runs)) == flat.tolist()
    assert rle_string_counts("!!garbage~~") is None
    assert rle_string_counts("P") is None  # stops inside a number (pycocotools reads on)


# ---- errors found in a DataLoader worker: the message, once, without the worker's traceback ------


# One task per kind of dataset (whole images, crops of instances, crops of identities, joint);
# each case costs 5 s: torch waits that long for a worker whose batch failed to shut down.
@pytest.mark.parametrize("task", ["detect", "keypoints", "reid", "multitask"])
def test_damage_found_in_a_loader_worker_reads_as_its_own_message(case: Case, task: str) -> None:
    data = case.data_module(task, workers=1)
    data.setup("fit")  # validated while the files were whole ...
    for path in case.images.iterdir():  # ... then cut short under it
        path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(CocoDataError) as error:
        for _ in data.train_dataloader():
            pass
    text = str(error.value)
    _one_message(text, "JPEG file is truncated (no end-of-image marker)")
    assert len(text.splitlines()) == 1 and text.startswith(str(case.images))


def test_worker_message_unwrapping_keeps_other_messages_and_survives_pickling() -> None:
    wrapped = (
        "Caught CocoDataError in DataLoader worker process 3.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1, in f\nvision_tasks.data.coco.CocoDataError: 2 '
        "problems in a.json:\nline 1\nline 2\n"
    )
    assert str(CocoDataError(wrapped)) == "2 problems in a.json:\nline 1\nline 2"
    assert str(pickle.loads(pickle.dumps(CocoDataError(wrapped)))) == str(CocoDataError(wrapped))
    assert str(CocoDataError("Caught CocoDataError somewhere else")) == (
        "Caught CocoDataError somewhere else"
    )


def test_worker_error_through_train_is_one_line(case: Case, tmp_path: Path, monkeypatch) -> None:
    path = case.write()
    monkeypatch.chdir(tmp_path)
    real = CocoIndex.load_image

    def cut_on_read(self, image_id):  # the file is damaged after validation read it whole
        self.image_path(image_id).write_bytes(self.image_path(image_id).read_bytes()[:400])
        return real(self, image_id)

    monkeypatch.setattr(CocoIndex, "load_image", cut_on_read)
    # The patch lives in this process: the worker must be its fork to see it (a fork server's
    # workers import the module afresh).
    monkeypatch.setenv("VISION_TASKS_WORKER_START", "fork")
    with pytest.raises(SystemExit) as error:
        train_main(
            [
                "--task",
                "segment",
                "--data.train_json",
                str(path),
                "--data.train_images",
                str(case.images),
                "--data.val_json",
                str(path),
                "--data.val_images",
                str(case.images),
                "--data.num_workers",
                "1",
                "--data.batch_size",
                "2",
                "--data.image_size",
                "64",
                "--data.crop_size",
                "64",
                "--trainer.fast_dev_run",
                "true",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.enable_model_summary",
                "false",
            ]
        )
    text = str(error.value.code)
    _one_message(text, "error: ", "JPEG file is truncated")
    assert len(text.splitlines()) == 1


# ---- degenerate image shapes ---------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(1, 2000), (2000, 1), (1, 1)])
def test_letterbox_keeps_at_least_one_pixel(height: int, width: int) -> None:
    image = np.full((height, width, 3), 7, np.uint8)
    square, scale, pad_x, pad_y = ops.letterbox_image(image, 64)
    assert square.shape == (64, 64, 3)
    new_w, new_h = ops.letterbox_size(height, width, scale)
    assert (
        min(new_w, new_h) >= 1 and (square[pad_y : pad_y + new_h, pad_x : pad_x + new_w] == 7).all()
    )
    assert ops.letterbox_label_map(image[..., 0], 64, 255).shape == (64, 64)
    maps = torch.zeros(2, 64, 64)
    assert ops.unletterbox_map(maps, scale, pad_x, pad_y, (height, width)).shape == (
        2,
        height,
        width,
    )


@pytest.mark.parametrize("task", ["detect", "multitask", "segment", "classify"])
def test_a_2000x1_image_trains(case: Case, task: str) -> None:
    image = case.data["images"][0]
    pixels = np.random.default_rng(0).integers(0, 255, (1, 2000, 3), dtype=np.uint8)
    case.replace_image(0, _encode(pixels, ".png"), ".png")
    image.update(width=2000, height=1)
    case.data["annotations"] = [a for a in case.data["annotations"] if a["image_id"] != image["id"]]
    case.data["annotations"].append(
        {"id": 9999, "image_id": image["id"], "category_id": 3, "bbox": [10, 0, 40, 1]}
    )
    data = case.data_module(task)
    data.setup("fit")
    dataset = data.datasets["train"]
    samples = [dataset[i] for i in range(len(dataset))]
    line = [i for i, sample in enumerate(samples) if sample["image_id"] == image["id"]]
    # Augmentation is random (segment's rescale shrank the line to 0 rows half of the time).
    samples += [dataset[i] for i in line for _ in range(12)]
    assert line and all(torch.isfinite(s["image"]).all() for s in samples)


# ---- empty or degenerate datasets --------------------------------------------------------------


@pytest.mark.parametrize("task", ["classify", "detect", "segment", "keypoints", "multitask"])
def test_no_categories_at_all(case: Case, task: str) -> None:
    case.data["categories"], case.data["annotations"] = [], []
    with pytest.raises(CocoDataError) as error:
        case.data_module(task).setup("fit")
    _one_message(str(error.value), "instances_train.json", "field 'categories'", "empty")


def test_keypoint_data_with_no_labelled_keypoint(case: Case) -> None:
    for ann in case.data["annotations"]:
        if "keypoints" in ann:
            ann["keypoints"], ann["num_keypoints"] = [0] * len(ann["keypoints"]), 0
    with pytest.raises(CocoDataError) as error:
        case.data_module("keypoints").setup("fit")
    _one_message(
        str(error.value),
        "instances_train.json",
        "train split has no samples",
        "'person' with labelled keypoints (num_keypoints > 0",
    )


def test_reid_data_with_no_identity(case: Case) -> None:
    for ann in case.data["annotations"]:
        ann.pop("track_id", None)
    with pytest.raises(CocoDataError) as error:
        case.data_module("reid").setup("fit")
    _one_message(
        str(error.value), "instances_train.json", "field 'track_id'", "--data.identity_field"
    )


def test_reid_data_with_identities_too_few_for_pk_batches(case: Case) -> None:
    for i, ann in enumerate(case.data["annotations"]):
        if "track_id" in ann:
            ann["track_id"] = i  # every identity seen once
    data = case.data_module("reid")
    data.setup("fit")
    with pytest.raises(CocoDataError) as error:
        data.train_dataloader()
    _one_message(str(error.value), "instances_train.json", "field 'track_id'", "P x K")


def test_reid_identity_beyond_int64(case: Case) -> None:
    next(a for a in case.data["annotations"] if "track_id" in a)["track_id"] = 2**70
    with pytest.raises(CocoDataError) as error:
        case.data_module("reid").setup("fit")
    _one_message(str(error.value), "field 'track_id'", "expected an integer identity")


# ---- checkpoints --------------------------------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (print, ("a pickle payload ran",))


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _save_task(task: str, path: Path, **hparams) -> Path:
    """A checkpoint as training writes it, of an untrained model (no Trainer needed)."""
    model = TASKS[task].model(**hparams)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
            "vision_tasks": {"task": task, "format": 1},
        },
        path,
    )
    return path


CATEGORIES = {"categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "image_size": 32}
DAMAGED_CHECKPOINTS = [
    (
        "pickle payload",
        lambda: _torch_bytes({"state_dict": {}, "x": _Payload()}),
        "not a vision_tasks checkpoint (it holds Python objects",
    ),
    ("empty file", lambda: b"", "empty file (0 bytes), not a checkpoint"),
    ("text file", lambda: b"not a checkpoint\n", "not a vision_tasks checkpoint (not a PyTorch"),
    ("plain pickle", lambda: pickle.dumps({"a": 1}), "not a vision_tasks checkpoint"),
    (
        "weights of something else",
        lambda: _torch_bytes({"w": torch.zeros(3)}),
        "not a vision_tasks checkpoint (no task recorded",
    ),
    ("a tensor", lambda: _torch_bytes(torch.zeros(3)), "not a vision_tasks checkpoint"),
    (
        "truncated",
        lambda: _torch_bytes({"w": torch.zeros(10_000)})[:20_000],
        "checkpoint is truncated or damaged",
    ),
]


@pytest.mark.parametrize(
    "content, fragment",
    [c[1:] for c in DAMAGED_CHECKPOINTS],
    ids=[c[0] for c in DAMAGED_CHECKPOINTS],
)
def test_damaged_or_foreign_checkpoint_is_one_line(tmp_path, content, fragment) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    path.write_bytes(content())
    with pytest.raises(SystemExit) as error:
        load_task_checkpoint(path)
    _one_message(str(error.value.code), str(path), fragment)
    with pytest.raises(SystemExit) as error:  # resuming from it: refused before any setup
        train_main(["--task", "classify", "--ckpt_path", str(path)])
    _one_message(str(error.value.code), str(path), fragment)


def test_checkpoint_of_another_task_says_which_task_it_is(tmp_path) -> None:
    path = tmp_path / "segment.ckpt"
    path.write_bytes(_torch_bytes({"vision_tasks": {"task": "segment"}, "state_dict": {}}))
    expected = f"{path}: this is a segment checkpoint; use --task segment"
    for call in (
        lambda: load_task_checkpoint(path, "detect"),
        lambda: evaluate_main(["--task", "detect", "--ckpt", str(path)]),
        lambda: train_main(["--task", "detect", "--ckpt_path", str(path)]),
    ):
        with pytest.raises(SystemExit) as error:
            call()
        assert str(error.value.code) == expected


def test_predict_reports_bad_images_and_handles_a_2000x1_one(tmp_path) -> None:
    checkpoint = _save_task("detect", tmp_path / "detect.ckpt", **CATEGORIES)
    assert load_task_checkpoint(checkpoint).task_name == "detect"
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    jpeg = _encode(pixels, ".jpg")
    bad = {
        "damaged.jpg": damage_scan(jpeg),
        "cut.jpg": jpeg[: len(jpeg) // 2],
        "float.tiff": _encode(pixels.astype(np.float32), ".tiff"),
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SystemExit) as error:
            predict_main(
                [str(tmp_path / name), "--ckpt", str(checkpoint), "--output", str(tmp_path / "out")]
            )
        _one_message(str(error.value.code), f"error: {tmp_path / name}: ")
    (tmp_path / "line.png").write_bytes(_encode(pixels[:1].repeat(40, axis=1), ".png"))
    predict_main(
        [str(tmp_path / "line.png"), "--ckpt", str(checkpoint), "--output", str(tmp_path / "out")]
    )
    assert (tmp_path / "out" / "results.json").is_file()


# ---- what killed saves leave --------------------------------------------------------------------


def test_stale_temporaries_of_checkpoint_saves_are_removed_and_nothing_else(tmp_path) -> None:
    import tempfile

    _, stale = tempfile.mkstemp(prefix=".last.ckpt.", suffix=".tmp", dir=tmp_path)
    _, best = tempfile.mkstemp(prefix=".best-003.ckpt.", suffix=".tmp", dir=tmp_path)
    _, csv = tempfile.mkstemp(prefix=".metrics.csv.", suffix=".tmp", dir=tmp_path)
    kept = [Path(csv), tmp_path / "last.ckpt", tmp_path / "notes.tmp", tmp_path / ".x.ckpt.tmp"]
    for path in kept[1:]:
        path.write_text("keep me")
    removed = remove_stale_temporaries(tmp_path, suffix=".ckpt")
    assert sorted(removed) == sorted([Path(stale), Path(best)])
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temporaries(tmp_path / "not-there") == []
