"""int8 post-training static quantization of a checkpoint's ONNX graph (ONNX Runtime).

The steps ONNX Runtime's quantization guide recommends for a CNN: the float graph
(:func:`~vision_tasks.export.graph.export_bytes`), then ``quant_pre_process`` (shape inference
and graph optimisation before quantization, not during it), then ``quantize_static`` in QDQ
format with signed int8 activations and weights (S8S8, the guide's first choice on CPU) and one
weight scale per output channel. Activation ranges are calibrated (MinMax) on N training images
fed through the model's own ``predict_sample``, exactly as predict feeds the network. The result
keeps the float graph's metadata (output structure, checkpoint source) plus ``precision`` and
``calibration``, so :class:`~vision_tasks.export.graph.OnnxRunner` and the task's ``decode`` read
it unchanged: ``tools/predict.py --ckpt CKPT --onnx CKPT.int8.onnx``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from vision_tasks.export.graph import export_bytes, read_metadata, write_metadata
from vision_tasks.tasks.base import BaseTask
from vision_tasks.utils import atomic_write_bytes

DEFAULT_CALIBRATION_IMAGES = 64
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
ImageLoader = Callable[[], np.ndarray]  # returns one (H, W, 3) uint8 RGB image


class ImageCalibration(CalibrationDataReader):
    """Network inputs for calibration: each image through ``model.predict_sample``, batch 1.

    Args:
        model: the task whose preprocessing (resize / letterbox, normalisation) is used.
        images: loaders of the calibration images, read one at a time.
    """

    def __init__(self, model: BaseTask, images: list[ImageLoader]) -> None:
        self.model, self.images = model, images
        self._next: Iterator[dict[str, np.ndarray]] = self._inputs()

    def _inputs(self) -> Iterator[dict[str, np.ndarray]]:
        for load in self.images:
            image = self.model.predict_sample(load())["image"]
            yield {"image": image.unsqueeze(0).numpy()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next input feed, ``None`` when all images were given."""
        return next(self._next, None)

    def rewind(self) -> None:
        """Start again from the first image."""
        self._next = self._inputs()


def calibration_images(
    checkpoint_data: dict[str, Any],
    source: Path | None = None,
    root: Path | None = None,
    count: int = DEFAULT_CALIBRATION_IMAGES,
) -> tuple[list[ImageLoader], str]:
    """``count`` images spread evenly over a set, and words naming the set.

    Args:
        checkpoint_data: the checkpoint's ``datamodule_hyper_parameters`` (its training split
            is the default set; the synthetic default when it trained on that).
        source: a folder of images, or a COCO JSON.
        root: the folder a COCO JSON's ``file_name``s are relative to (default: its folder).
        count: how many images.
    """
    from vision_tasks.data.coco import CocoIndex, read_image

    if source is not None and source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        loaders = [lambda p=p: read_image(p) for p in _spread(files, count)]
        if not loaders:
            raise SystemExit(f"--calibration {source}: no image files in this folder")
        return loaders, f"{len(loaders)} of the {len(files)} images in {source}"
    if source is not None:
        if not source.is_file():
            raise SystemExit(f"--calibration {source}: no such folder or COCO JSON")
        index = CocoIndex(source, root or source.parent)
    else:
        index = CocoIndex(*_training_split(checkpoint_data))
    ids = _spread(list(index.image_ids), count)
    if not ids:
        raise SystemExit(f"{index.json_path}: no images to calibrate with")
    loaders = [lambda i=i: index.load_image(i) for i in ids]
    return loaders, f"{len(loaders)} of the {len(index.image_ids)} images of {index.json_path}"


def _training_split(data: dict[str, Any]) -> tuple[Path, Path]:
    if data.get("train_json") is None and data.get("val_json") is None:
        from vision_tasks.data.synthetic import synthetic_dataset

        paths = synthetic_dataset(
            data.get("synthetic_seed", 0),
            data.get("synthetic_train", 600),
            data.get("synthetic_val", 120),
        )
        return paths.train_json, paths.train_images
    json_path, images = data.get("train_json"), data.get("train_images")
    if json_path is None or not Path(json_path).is_file():
        raise SystemExit(
            f"the checkpoint's training JSON ({json_path}) is not here: give --calibration "
            f"IMAGES_DIR or a COCO JSON"
        )
    return Path(json_path), Path(images) if images else Path(json_path).parent


def _spread(items: list, count: int) -> list:
    """Up to ``count`` items spread evenly over ``items`` (first and last included)."""
    if not items or count <= 0:
        return []
    picks = np.unique(np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int))
    return [items[i] for i in picks]


def quantize_int8(
    model: BaseTask,
    output: str | Path,
    images: list[ImageLoader],
    opset: int = 17,
    source: dict[str, Any] | None = None,
    calibration: str = "",
) -> Path:
    """Write the int8 (QDQ, per-channel, calibrated) graph of ``model`` to ``output``.

    Args:
        model: the task model.
        output: the ``.onnx`` file, written atomically.
        images: calibration images (:func:`calibration_images`).
        opset: ONNX opset of the float graph.
        source: the checkpoint's fingerprint, kept in the metadata.
        calibration: words naming the calibration set, kept in the metadata.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="vision_tasks_int8_") as work:
        floating, prepared, quantized = (Path(work) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        floating.write_bytes(export_bytes(model, opset, source))
        quant_pre_process(str(floating), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            ImageCalibration(model, images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        meta = read_metadata(onnx.load(str(floating)))
        graph = onnx.load(str(quantized))
    meta.pop("check", None)  # it described the float graph
    meta.update(precision="int8", calibration=calibration or f"{len(images)} images")
    write_metadata(graph, meta)
    return atomic_write_bytes(output, graph.SerializeToString())
