"""ONNX export: the graph matches torch, predict gives the same results on either engine, and
``--engine auto`` exports once, caches the file safely and falls back to torch when it must."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from vision_tasks.cli import load_task_checkpoint, predict_main
from vision_tasks.data.coco import read_image
from vision_tasks.export import (
    OnnxRunner,
    export_main,
    flatten_outputs,
    max_abs_difference,
    unflatten_outputs,
)
from vision_tasks.tasks import TASKS

KEYPOINT_TOLERANCE_PX = 0.25
# Homography decoding: a windowed soft-argmax over the near-tied logits of a barely trained
# model, then six refinement passes. Measured (2026-12, 18 pairs of the tiny data): ONNX Runtime's
# logits differ from torch's by 9e-6 (of 10); 16 pairs then agree to 1e-4 px, one moved 0.09 px
# (a match flipped to the next cell), and the mean corner error moved 0.012 px of 15. Gaussian
# noise of 1e-6 in the logits moves a pair as far. Wiring errors move corners by pixels.
HOMOGRAPHY_PAIR_TOLERANCE_PX = 1.0
HOMOGRAPHY_MACE_TOLERANCE_PX = 0.1


def _assert_close(a, b, path: str = "results", abs_tol: float = 1e-3) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            # Keypoints of a barely trained model come from near-flat heatmaps (peak ~0.005),
            # where the sub-pixel fit turns 1e-9 output differences into hundredths of a pixel.
            tol = KEYPOINT_TOLERANCE_PX if key == "keypoints" else abs_tol
            _assert_close(a[key], b[key], f"{path}.{key}", tol)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]", abs_tol)
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-3, abs_tol=abs_tol), f"{path}: {a} != {b}"
    else:
        assert a == b, path


EXPORTABLE = [task for task, spec in TASKS.items() if getattr(spec.model, "exportable", True)]


@pytest.mark.parametrize("task", EXPORTABLE)
def test_onnx_matches_torch_and_predict_agrees(trained_runs, tiny_coco, task, tmp_path) -> None:
    checkpoint = trained_runs[task] / "checkpoints" / "last.ckpt"
    onnx_path = tmp_path / f"{task}.onnx"
    check = export_main(["--ckpt", str(checkpoint), "--output", str(onnx_path)])
    # Checked at batch 3 on a graph traced at batch 2: the batch dimension really is dynamic.
    assert check["batch_checked"] == 3
    assert check["max_abs_diff"] <= 1e-4 * max(1.0, check["max_abs_output"])
    # The check --engine auto relies on (a seeded random batch) accepts the export too.
    assert OnnxRunner(onnx_path).meta["check"]["passed"]
    images = [str(tiny_coco.val_images)]
    torch_run = ["--output", str(tmp_path / "torch"), "--engine", "torch"]
    predict_main([*images, "--ckpt", str(checkpoint), *torch_run])
    predict_main(
        [
            *images,
            "--ckpt",
            str(checkpoint),
            "--output",
            str(tmp_path / "onnx"),
            "--engine",
            "onnx",
            "--onnx",
            str(onnx_path),
        ]
    )
    by_torch = json.loads((tmp_path / "torch" / "results.json").read_text())
    by_onnx = json.loads((tmp_path / "onnx" / "results.json").read_text())
    assert by_torch, "no predictions to compare"
    if task in ("detect", "instance"):
        # An untrained detector scores every box ~0.01: 1e-7 differences reorder near-ties in
        # top-k / NMS, so compare what survives as a whole, not record by record (and flip
        # mask pixels whose logit is ~0: test_instance.py compares the masks by IoU).
        assert len(by_torch) == len(by_onnx)
        _assert_close(sorted(r["score"] for r in by_torch), sorted(r["score"] for r in by_onnx))
    elif task == "segment":
        # Arg-max of an untrained model's near-tied logits: float-rounding differences
        # (torch predicts in channels-last) may flip a few pixels, never more.
        assert [r["image_id"] for r in by_torch] == [r["image_id"] for r in by_onnx]
        for a, b in zip(by_torch, by_onnx):
            maps = np.array(a["label_map"]), np.array(b["label_map"])
            assert maps[0].shape == maps[1].shape and (maps[0] != maps[1]).mean() <= 1e-3
            # The classes covering more than a few pixels are the same (and so the segments).
            present = [
                {int(c) for c, n in zip(*np.unique(m, return_counts=True)) if n >= 50} for m in maps
            ]
            assert present[0] == present[1]
    elif task == "homography":
        _assert_network_matches_on_predict_inputs(checkpoint, onnx_path, tiny_coco.val_images)
        _assert_homographies_agree(by_torch, by_onnx)
    else:
        _assert_close(by_torch, by_onnx)


def _assert_network_matches_on_predict_inputs(checkpoint, onnx_path, folder) -> None:
    """What the export must preserve, tightly: the network's outputs on the inputs predict made."""
    model = load_task_checkpoint(checkpoint)
    images = torch.stack(
        [model.predict_sample(read_image(p))["image"] for p in sorted(folder.iterdir())]
    )
    with torch.inference_mode():
        reference = model(images)
        difference = max_abs_difference(reference, OnnxRunner(onnx_path)(images))
    scale = max(float(t.abs().max()) for t in flatten_outputs(reference)[0])
    assert difference <= 1e-4 * max(1.0, scale)


def _assert_homographies_agree(by_torch: list[dict], by_onnx: list[dict]) -> None:
    """The iterated decoding, within what float noise in its input measurably does to it."""
    assert [r.keys() for r in by_torch] == [r.keys() for r in by_onnx]
    assert [r["image_id"] for r in by_torch] == [r["image_id"] for r in by_onnx]
    assert [r["true_corners"] for r in by_torch] == [r["true_corners"] for r in by_onnx]
    for a, b in zip(by_torch, by_onnx):
        distance = np.linalg.norm(np.subtract(a["corners"], b["corners"]), axis=-1).mean()
        assert distance <= HOMOGRAPHY_PAIR_TOLERANCE_PX, (a["image_id"], distance)
    mace = [np.mean([r["corner_error"] for r in records]) for records in (by_torch, by_onnx)]
    assert abs(mace[0] - mace[1]) <= HOMOGRAPHY_MACE_TOLERANCE_PX, mace


def test_export_of_the_joint_model_is_refused_clearly(trained_runs) -> None:
    checkpoint = trained_runs["multitask"] / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit, match="multitask: ONNX export is not supported"):
        export_main(["--ckpt", str(checkpoint)])


def test_a_named_onnx_file_that_is_missing_says_what_to_run(trained_runs, tiny_coco) -> None:
    checkpoint = trained_runs["classify"] / "checkpoints" / "last.ckpt"
    missing = str(checkpoint.with_name("missing.onnx"))
    with pytest.raises(SystemExit, match="missing.onnx not found: run tools/export.py --ckpt"):
        predict_main([str(tiny_coco.val_images), "--ckpt", str(checkpoint), "--onnx", missing])


# ---- --engine auto: the export cached beside the checkpoint --------------------------------------

PERSON = [{"id": 1, "name": "person", "supercategory": "person"}]
SCORE_TOLERANCE, BOX_TOLERANCE_PX = 1e-4, 1e-2  # float32 reordering moves both by ~1e-6


def _save_detector(path: Path, seed: int, **options: Any) -> Path:
    """A freshly initialised 64-px detector, saved as the trainer saves checkpoints."""
    import lightning as L

    from vision_tasks.tasks.detect import DetectTask

    torch.manual_seed(seed)
    model = DetectTask(categories=PERSON, image_size=64, **options)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def detector(tmp_path) -> tuple[Path, Path]:
    """(checkpoint, folder with two frames) in a fresh folder."""
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(frames / name), rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    return _save_detector(tmp_path / "ckpt" / "detect.ckpt", seed=0), frames


@pytest.fixture
def exports(monkeypatch) -> list[Path]:
    """Records the checkpoint of every export the engine makes (export_bytes calls)."""
    from vision_tasks.export import engine

    made: list[Path] = []
    original = engine.export_bytes

    def counted(model, opset=17, source=None):
        made.append(source)
        return original(model, opset, source)

    monkeypatch.setattr(engine, "export_bytes", counted)
    return made


def _predict(checkpoint: Path, frames: Path, out: Path, *options: str) -> list[dict]:
    predict_main([str(frames), "--ckpt", str(checkpoint), "--output", str(out), *options])
    return json.loads((out / "results.json").read_text())


def _assert_same_detections(by_torch: list[dict], by_onnx: list[dict]) -> None:
    """Each torch detection has an ONNX twin: same image and class, score and box within
    float noise (near-tied scores may come out in another order, so matched, not zipped)."""
    assert by_torch and len(by_torch) == len(by_onnx)
    for record in by_torch:
        twins = [
            r
            for r in by_onnx
            if (r["image_id"], r["category_id"]) == (record["image_id"], record["category_id"])
            and abs(r["score"] - record["score"]) <= SCORE_TOLERANCE
            and np.abs(np.subtract(r["bbox"], record["bbox"])).max() <= BOX_TOLERANCE_PX
        ]
        assert twins, record


def test_auto_exports_once_reuses_the_cache_and_matches_torch(detector, exports, tmp_path) -> None:
    checkpoint, frames = detector
    by_torch = _predict(checkpoint, frames, tmp_path / "torch", "--engine", "torch")
    assert exports == [] and not checkpoint.with_suffix(".onnx").exists()
    by_auto = _predict(checkpoint, frames, tmp_path / "auto")
    assert len(exports) == 1 and checkpoint.with_suffix(".onnx").is_file()
    by_onnx = _predict(checkpoint, frames, tmp_path / "onnx", "--engine", "onnx")
    assert len(exports) == 1  # the cached file served the second run
    _assert_same_detections(by_torch, by_auto)
    _assert_same_detections(by_torch, by_onnx)
    # A copy of the checkpoint (a new modification time, the same bytes) keeps the cache.
    os.utime(checkpoint, ns=(1, 1))
    _predict(checkpoint, frames, tmp_path / "touched")
    assert len(exports) == 1


def test_a_detector_on_two_levels_reloads_and_its_export_predicts_as_torch(detector, tmp_path):
    _, frames = detector
    checkpoint = _save_detector(tmp_path / "c3c4" / "detect.ckpt", seed=1, levels=["c3", "c4"])
    model = load_task_checkpoint(checkpoint)
    assert model.levels == ("c3", "c4") and model.strides == [8, 16]
    assert len(model.backbone.stages) == 3  # c5's stage is not in the checkpoint or the graph
    by_torch = _predict(checkpoint, frames, tmp_path / "torch", "--engine", "torch")
    by_onnx = _predict(checkpoint, frames, tmp_path / "onnx", "--engine", "onnx")
    _assert_same_detections(by_torch, by_onnx)


def test_a_changed_checkpoint_is_exported_again(detector, exports, tmp_path) -> None:
    checkpoint, frames = detector
    first = _predict(checkpoint, frames, tmp_path / "first")
    _save_detector(checkpoint, seed=1)  # new weights, same size
    second = _predict(checkpoint, frames, tmp_path / "second")
    assert len(exports) == 2
    assert exports[0]["checkpoint_sha256"] != exports[1]["checkpoint_sha256"]
    by_torch = _predict(checkpoint, frames, tmp_path / "torch", "--engine", "torch")
    _assert_same_detections(by_torch, second)
    assert sorted(r["score"] for r in first) != sorted(r["score"] for r in second)


def test_a_damaged_cache_file_is_exported_again_not_loaded(detector, exports, tmp_path) -> None:
    checkpoint, frames = detector
    _predict(checkpoint, frames, tmp_path / "first")
    cached = checkpoint.with_suffix(".onnx")
    whole = cached.read_bytes()
    cached.write_bytes(whole[: len(whole) // 2])  # what a killed, non-atomic write would leave
    by_auto = _predict(checkpoint, frames, tmp_path / "again")
    assert len(exports) == 2 and cached.stat().st_size == len(whole)
    _assert_same_detections(
        _predict(checkpoint, frames, tmp_path / "t", "--engine", "torch"), by_auto
    )


def test_auto_runs_torch_without_onnxruntime(detector, exports, monkeypatch, caplog) -> None:
    from vision_tasks.export import inference_network

    checkpoint, _ = detector
    model = load_task_checkpoint(checkpoint)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    with caplog.at_level(logging.INFO, logger="vision_tasks"):
        network, engine = inference_network(model, checkpoint, "auto")
    assert network is model and engine == "torch" and exports == []
    assert "running in torch: onnxruntime is not installed" in caplog.text
    with pytest.raises(SystemExit, match="onnxruntime is not installed; use --engine torch"):
        inference_network(model, checkpoint, "onnx")


def test_an_export_that_differs_from_torch_is_refused_once(detector, exports, monkeypatch, caplog):
    from vision_tasks.export import OnnxRunner, inference_network

    checkpoint, _ = detector
    model = load_task_checkpoint(checkpoint)
    original = OnnxRunner.__call__

    def shifted(self, images):  # a wrong graph: every output 0.01 off (tolerance: ~1e-4 of it)
        tensors, spec = flatten_outputs(original(self, images))
        return unflatten_outputs([t + 0.01 for t in tensors], spec)

    monkeypatch.setattr(OnnxRunner, "__call__", shifted)
    for _ in range(2):
        with caplog.at_level(logging.WARNING, logger="vision_tasks"):
            network, engine = inference_network(model, checkpoint, "auto")
        assert network is model and engine == "torch"
    assert len(exports) == 1  # refused and remembered: not exported on every run
    assert "differs from torch by 0.01" in caplog.text
    with pytest.raises(SystemExit, match="differs from torch"):
        inference_network(model, checkpoint, "onnx")


def test_a_read_only_checkpoint_folder_caches_in_the_user_cache(
    detector, exports, monkeypatch, caplog, tmp_path
) -> None:
    from vision_tasks.export import engine, inference_network

    checkpoint, _ = detector
    model = load_task_checkpoint(checkpoint)
    write = engine.atomic_write_bytes
    readonly = {checkpoint.parent}

    def guarded(path, data):  # root ignores chmod, so the refusal is simulated
        if Path(path).parent in readonly:
            raise PermissionError(13, "Permission denied")
        return write(path, data)

    monkeypatch.setattr(engine, "atomic_write_bytes", guarded)
    runner, name = inference_network(model, checkpoint, "auto")
    cache = Path(os.environ["VISION_TASKS_CACHE"]) / "onnx"
    assert not checkpoint.with_suffix(".onnx").exists()
    assert [p.parent for p in cache.glob("detect-*.onnx")] == [cache] and str(cache) in name
    inference_network(model, checkpoint, "auto")
    assert len(exports) == 1
    # Nowhere to write: torch, with one line naming both folders.
    readonly.add(cache)
    _save_detector(checkpoint, seed=2)
    model = load_task_checkpoint(checkpoint)
    with caplog.at_level(logging.WARNING, logger="vision_tasks"):
        network, engine_name = inference_network(model, checkpoint, "auto")
    assert network is model and engine_name == "torch"
    assert "nowhere to cache its ONNX export" in caplog.text and str(cache) in caplog.text


def test_auto_runs_the_joint_model_in_torch_and_onnx_refuses_it(trained_runs, caplog) -> None:
    from vision_tasks.export import inference_network

    checkpoint = trained_runs["multitask"] / "checkpoints" / "last.ckpt"
    model = load_task_checkpoint(checkpoint)
    with caplog.at_level(logging.INFO, logger="vision_tasks"):
        assert inference_network(model, checkpoint, "auto") == (model, "torch")
    assert "a multitask model has no ONNX export" in caplog.text
    assert not checkpoint.with_suffix(".onnx").exists()
    with pytest.raises(SystemExit, match="no ONNX export"):
        inference_network(model, checkpoint, "onnx")
