"""ONNX export: the graph matches torch, and predict gives the same results on either engine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vision_tasks.cli import predict_main
from vision_tasks.export import export_main
from vision_tasks.tasks import TASKS

pytest.importorskip("onnxruntime")

KEYPOINT_TOLERANCE_PX = 0.25


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
    predict_main([*images, "--ckpt", str(checkpoint), "--output", str(tmp_path / "onnx"),
                  "--engine", "onnx", "--onnx", str(onnx_path)])  # fmt: skip
    by_torch = json.loads((tmp_path / "torch" / "results.json").read_text())
    by_onnx = json.loads((tmp_path / "onnx" / "results.json").read_text())
    assert by_torch, "no predictions to compare"
    if task == "detect":
        # An untrained detector scores every box ~0.01: 1e-7 differences reorder near-ties in
        # top-k / NMS, so compare what survives as a whole, not record by record.
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
            present = [{int(c) for c, n in zip(*np.unique(m, return_counts=True)) if n >= 50}
                       for m in maps]  # fmt: skip
            assert present[0] == present[1]
    else:
        _assert_close(by_torch, by_onnx)


def test_export_of_the_joint_model_is_refused_clearly(trained_runs) -> None:
    checkpoint = trained_runs["multitask"] / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit, match="multitask: ONNX export is not supported"):
        export_main(["--ckpt", str(checkpoint)])


def test_onnx_engine_without_an_exported_file_says_what_to_run(trained_runs, tiny_coco) -> None:
    checkpoint = trained_runs["classify"] / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit, match="run tools/export.py --ckpt"):
        predict_main([str(tiny_coco.val_images), "--ckpt", str(checkpoint), "--engine", "onnx"])
