"""int8 post-training quantization: close to the float graph when calibrated, far from it when the
calibration is broken, a quarter of its size, and run by predict through ``--onnx``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_tasks.cli import load_task_checkpoint, predict_main
from vision_tasks.data.coco import read_image
from vision_tasks.export import OnnxRunner, export_main, export_onnx, flatten_outputs

PERSON = [{"id": 1, "name": "person", "supercategory": "person"}]
# Output error of the int8 graph over how much the float outputs vary from image to image (what
# the network says about each image). Measured (2026-12-07, 64-px detector below, 6 val images):
# calibrated on the 12 training images 0.34 (scores and boxes); calibrated on all-zero inputs 1.27
# and 1.39. A trained detector (192 px, 6 epochs) gave 0.03-0.06 against 1.16-1.21.
INT8_ERROR_TOLERANCE = 0.6


@pytest.fixture(scope="module")
def detector(tiny_coco, tmp_path_factory) -> Path:
    """A 64-px detector, freshly initialised but with batch-norm statistics of the tiny training
    images: untrained, its outputs barely depend on the image, and neither would int8 errors."""
    import lightning as L

    from vision_tasks.tasks.detect import DetectTask

    torch.manual_seed(0)
    model = DetectTask(categories=PERSON, image_size=64)
    images = torch.stack(
        [model.predict_sample(read_image(p))["image"] for p in _files(tiny_coco.train_images)]
    )
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batch
    with torch.no_grad():
        model.train()(images)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model.eval())
    path = tmp_path_factory.mktemp("int8") / "detect.ckpt"
    trainer.save_checkpoint(path)
    return path


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".png" or p.suffix == ".jpg")


def _relative_error(model, float_path: Path, int8_path: Path, folder: Path) -> list[float]:
    """Per batched output: ||int8 - float|| / ||float - its mean over the images||."""
    images = torch.stack([model.predict_sample(read_image(p))["image"] for p in _files(folder)])
    floating = flatten_outputs(OnnxRunner(float_path)(images))[0]
    quantized = flatten_outputs(OnnxRunner(int8_path)(images))[0]
    return [
        float((q - f).norm() / (f - f.mean(0, keepdim=True)).norm())
        for f, q in zip(floating, quantized)
        if f.ndim and f.shape[0] == len(images)
    ]


def test_int8_is_close_to_float_and_a_quarter_of_its_size(detector, tiny_coco, tmp_path) -> None:
    float_path = export_onnx(load_task_checkpoint(detector), tmp_path / "float.onnx")
    calibration = ["--calibration", str(tiny_coco.train_json)]
    calibration += ["--calibration-root", str(tiny_coco.train_images)]
    done = export_main(["--ckpt", str(detector), "--int8", *calibration])
    int8_path = Path(done["path"])
    assert int8_path == detector.with_suffix(".int8.onnx")
    assert done["calibration"].startswith("12 of the 12 images of")
    errors = _relative_error(
        load_task_checkpoint(detector), float_path, int8_path, tiny_coco.val_images
    )
    assert len(errors) == 2 and max(errors) < INT8_ERROR_TOLERANCE, errors
    assert int8_path.stat().st_size < 0.3 * float_path.stat().st_size  # int8 weights: ~1/4


def test_broken_calibration_exceeds_the_tolerance(detector, tiny_coco, tmp_path, monkeypatch):
    from vision_tasks.export import quantize

    class AllZero(quantize.ImageCalibration):
        def _inputs(self):
            for load in self.images:
                image = self.model.predict_sample(load())["image"]
                yield {"image": np.zeros((1, *image.shape), dtype=np.float32)}

    monkeypatch.setattr(quantize, "ImageCalibration", AllZero)
    model = load_task_checkpoint(detector)
    images, _ = quantize.calibration_images({}, tiny_coco.train_images)
    int8_path = quantize.quantize_int8(model, tmp_path / "zero.onnx", images)
    float_path = export_onnx(model, tmp_path / "float.onnx")
    errors = _relative_error(model, float_path, int8_path, tiny_coco.val_images)
    assert min(errors) > INT8_ERROR_TOLERANCE, errors


def test_predict_runs_the_int8_file_it_is_given(detector, tiny_coco, tmp_path) -> None:
    int8_path = detector.with_suffix(".int8.onnx")
    if not int8_path.exists():
        export_main(
            ["--ckpt", str(detector), "--int8", "--calibration", str(tiny_coco.train_images)]
        )
    folder = str(tiny_coco.val_images)
    predict_main([folder, "--ckpt", str(detector), "--output", str(tmp_path / "float")])
    predict_main(
        [folder, "--ckpt", str(detector), "--output", str(tmp_path / "q"), "--onnx", str(int8_path)]
    )
    by_float = json.loads((tmp_path / "float" / "results.json").read_text())
    by_int8 = json.loads((tmp_path / "q" / "results.json").read_text())
    # What predict wrote is the int8 graph's output decoded, not the float graph's.
    model = load_task_checkpoint(detector)
    files = _files(tiny_coco.val_images)
    samples = [model.predict_sample(read_image(p)) for p in files]
    batch = {k: [s[k] for s in samples] for k in ("scale", "pad", "orig_size")}
    batch["image_id"] = torch.arange(1, len(files) + 1)
    with torch.inference_mode():
        decoded = model.decode(
            OnnxRunner(int8_path)(torch.stack([s["image"] for s in samples])), batch
        )
    expected = model.to_results(decoded)
    assert [r["score"] for r in by_int8] == pytest.approx([r["score"] for r in expected], abs=1e-6)
    assert [r["score"] for r in by_int8] != [r["score"] for r in by_float]


def test_calibration_images_are_spread_over_the_set(tiny_coco) -> None:
    from vision_tasks.export.quantize import _spread, calibration_images

    assert _spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert _spread(list(range(3)), 64) == [0, 1, 2]
    data = {"train_json": str(tiny_coco.train_json), "train_images": str(tiny_coco.train_images)}
    images, described = calibration_images(data, count=5)
    assert len(images) == 5 and described.startswith("5 of the 12 images of")
    assert images[0]().shape == read_image(_files(tiny_coco.train_images)[0]).shape
    with pytest.raises(SystemExit, match="training JSON .* is not here: give --calibration"):
        calibration_images({"train_json": "/nowhere/train.json", "val_json": "x"})
