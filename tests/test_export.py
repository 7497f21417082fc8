"""ONNX export: the graph matches torch, and predict gives the same results on either engine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vision_tasks.cli import load_task_checkpoint, predict_main
from vision_tasks.data.coco import read_image
from vision_tasks.export import OnnxRunner, export_main, flatten_outputs, max_abs_difference
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
    images = [str(tiny_coco.val_images)]
    predict_main([*images, "--ckpt", str(checkpoint), "--output", str(tmp_path / "torch")])
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


def test_onnx_engine_without_an_exported_file_says_what_to_run(trained_runs, tiny_coco) -> None:
    checkpoint = trained_runs["classify"] / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit, match="run tools/export.py --ckpt"):
        predict_main([str(tiny_coco.val_images), "--ckpt", str(checkpoint), "--engine", "onnx"])
