"""The real-data paths on tiny fixtures: a layout converted, then trained on as the real-data
benchmark (``benchmarks/real_data.py``) trains on BCCD and the MOT15 sequences."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from vision_tasks.cli import train_main
from vision_tasks.data.convert import convert

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--trainer.fast_dev_run",
    "true",
    "--data.num_workers",
    "0",
    "--trainer.enable_progress_bar",
    "false",
]


def _blobs(rng: np.random.Generator, width: int, height: int, boxes: list) -> np.ndarray:
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    for x0, y0, x1, y1, colour in boxes:
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, -1)
    return image


@pytest.fixture
def voc_cells(tmp_path: Path) -> Path:
    """Six 96x64 images, two classes of filled rectangles, the VOC layout with two splits."""
    root, rng = tmp_path / "cells", np.random.default_rng(0)
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for i in range(6):
        boxes = [(5 + i, 8, 30 + i, 40, (200, 40, 40)), (50, 10 + i, 80, 50, (40, 40, 200))]
        cv2.imwrite(str(root / "JPEGImages" / f"c{i}.jpg"), _blobs(rng, 96, 64, boxes))
        objects = "".join(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin>"
            f"<ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox></object>"
            for name, (x0, y0, x1, y1, _) in zip(("red", "blue"), boxes)
        )
        (root / "Annotations" / f"c{i}.xml").write_text(
            f"<annotation><filename>c{i}.jpg</filename><size><width>96</width>"
            f"<height>64</height><depth>3</depth></size>{objects}</annotation>"
        )
    (root / "ImageSets/Main/trainval.txt").write_text("c0\nc1\nc2\nc3\n")
    (root / "ImageSets/Main/test.txt").write_text("c4\nc5\n")
    return root


@pytest.mark.parametrize("task, extra", [("detect", []), ("classify", ["--data.mode", "crop"])])
def test_voc_converted_then_trained(voc_cells, tmp_path, monkeypatch, task, extra) -> None:
    monkeypatch.chdir(tmp_path)
    train = convert("voc", voc_cells, tmp_path / "train.json", {"split": "trainval"})
    test = convert("voc", voc_cells, tmp_path / "test.json", {"split": "test"})
    cli = train_main(
        [
            "--task",
            task,
            "--data.train_json",
            str(train),
            "--data.train_images",
            str(voc_cells),
            "--data.val_json",
            str(test),
            "--data.val_images",
            str(voc_cells),
            "--data.image_size",
            "64",
            "--data.batch_size",
            "2",
            *extra,
            *FAST,
        ]
    )
    assert [c["name"] for c in cli.model.categories] == ["blue", "red"]
    assert cli.trainer.state.finished
    assert np.isfinite(float(cli.trainer.callback_metrics["train/loss"]))


def _tud_like(folder: Path, name: str, people: int, frames: int) -> tuple[Path, Path]:
    """A video of ``people`` coloured walkers crossing the left edge, and its MOT15 gt file."""
    rng, lines = np.random.default_rng(people), []
    colours = [tuple(int(v) for v in rng.integers(60, 255, 3)) for _ in range(people)]
    video = folder / f"{name}.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    for frame in range(1, frames + 1):
        boxes = [(-6 + 3 * frame + 30 * k, 20 + 5 * k, 18, 40) for k in range(people)]
        writer.write(
            _blobs(
                rng,
                128,
                96,
                [(x, y, x + w, y + h, colours[k]) for k, (x, y, w, h) in enumerate(boxes)],
            )
        )
        lines += [
            f"{frame},{k + 1},{x},{y},{w},{h},1,-1,-1,-1" for k, (x, y, w, h) in enumerate(boxes)
        ]
    writer.release()
    gt = folder / f"{name}_gt.txt"
    gt.write_text("\n".join(lines) + "\n")
    return video, gt


def test_mot_converted_then_reid_trained_with_the_clip_policy(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = {}
    for name, people in (("campus", 3), ("stadtmitte", 4)):
        video, gt = _tud_like(tmp_path, name, people, frames=8)
        options = {"gt": gt, "frames": tmp_path / "frames", "chunks": 2}
        paths[name] = convert("mot", video, tmp_path / f"{name}.json", options)
    edge = [a for a in json.loads(paths["campus"].read_text())["annotations"] if a["bbox"][0] < 0]
    assert edge, "the fixture must have boxes over the left edge, as MOT15 has"
    common = [
        "--task",
        "reid",
        "--data.train_json",
        str(paths["campus"]),
        "--data.train_images",
        str(tmp_path / "frames"),
        "--data.val_json",
        str(paths["stadtmitte"]),
        "--data.val_images",
        str(tmp_path / "frames"),
        "--data.batch_size",
        "8",
        *FAST,
    ]
    with pytest.raises(SystemExit, match="--data.policy clip"):  # strict refuses, and says why
        train_main(common)
    cli = train_main([*common, "--data.policy", "clip"])
    index = cli.datamodule.index("train")
    assert index.clipped == {"box crossing the image edge": len(edge)} and not index.skipped
    assert cli.trainer.state.finished


def test_benchmark_table_replaces_only_its_own_section(tmp_path, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("real_data", ROOT / "benchmarks/real_data.py")
    real_data = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "real_data", real_data)  # dataclasses look their module up
    spec.loader.exec_module(real_data)
    doc = tmp_path / "real-data.md"
    doc.write_text(
        f"# Real data\n\nprose before\n\n{real_data.TABLE_START}\nold table\n"
        f"{real_data.TABLE_END}\n\nprose after\n"
    )
    monkeypatch.setattr(real_data, "DOC", doc)
    row = {
        "name": "bccd-detect",
        "task": "detect",
        "dataset": "BCCD",
        "metric": "AP",
        "value": 0.4567,
        "wall_s": 390.0,
        "epochs": 7,
        "peak_rss_mib": 2100,
        "peak_worker_rss_mib": 900,
        "notes": "",
    }
    failed = {
        "name": "coco-keypoints",
        "task": "keypoints",
        "dataset": "COCO-MINI",
        "error": "Traceback ...\nValueError: boom",
    }
    env = {"measured_at": "2026-12-06 20:00", "cpus": 2, "processor": "x86_64", "torch": "2.x"}
    real_data.write_doc([row, failed], env)
    text = doc.read_text()
    assert text.startswith("# Real data\n\nprose before\n") and text.endswith("\n\nprose after\n")
    assert "old table" not in text
    assert "| bccd-detect | detect | BCCD | AP | 0.457 | 6.5 min | 7 | 2100 / 900 MiB |  |" in text
    assert "| coco-keypoints | keypoints | COCO-MINI | | failed | | | | ValueError: boom |" in text
