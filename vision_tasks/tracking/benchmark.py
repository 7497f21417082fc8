"""``tools/benchmark.py --task track``: tracking speed per frame, split into decode, model and
association, for a detector alone, a detector plus a separate re-ID model, and the joint model.

- decode: reading one 640x480 frame of an MP4 (written here with OpenCV) and converting it to RGB.
- model: one frame through each configuration, torch and (detector, re-ID) ONNX Runtime,
  with every configuration capped at ``boxes`` boxes a frame so all embed the same number:
  the crop-based re-ID model runs once on a batch of ``boxes`` crops, the joint model pools
  ``boxes`` embeddings from its one pass.
- association: :meth:`Tracker.update` with ``objects`` synthetic objects a frame (each bouncing
  in its own cell of the frame, with noisy boxes and embeddings), with and without appearance.

Models come from checkpoints (``--ckpt``, ``--reid``, ``--joint``) or, by default, are built
untrained at the configs' sizes: speed does not depend on the weights once the box count is
fixed. Every figure is a median over ``repeats`` after ``warmup`` untimed calls.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from vision_tasks.tracking.io import open_source
from vision_tasks.tracking.models import CropEmbedder, Detector, JointModel
from vision_tasks.tracking.tracker import Detections, Tracker

FRAME_SIZE = (640, 480)  # width, height
PERSON = [{"id": 1, "name": "person", "supercategory": "person"}]


def synthetic_scene(
    objects: int = 30, frames: int = 100, seed: int = 0, dim: int = 128
) -> Iterator[tuple[Detections, np.ndarray]]:
    """Detections of ``objects`` boxes bouncing each in its own grid cell of a 640x480 frame.

    Yields ``(detections, identities)`` per frame: boxes with 1-px noise, scores in [0.6, 1],
    unit embeddings (one direction per object plus noise), rows shuffled; ``identities`` gives
    each row's object.
    """
    rng = np.random.default_rng(seed)
    columns = int(np.ceil(np.sqrt(objects * FRAME_SIZE[0] / FRAME_SIZE[1])))
    rows = int(np.ceil(objects / columns))
    cell = np.array([FRAME_SIZE[0] / columns, FRAME_SIZE[1] / rows])
    size = cell * 0.45
    origin = np.array([(i % columns, i // columns) for i in range(objects)]) * cell
    position = rng.uniform(0, cell - size, (objects, 2))
    velocity = rng.uniform(-3, 3, (objects, 2))
    looks = rng.normal(size=(objects, dim))
    for _ in range(frames):
        position += velocity
        outside = (position < 0) | (position > cell - size)
        velocity[outside] *= -1
        position = np.clip(position, 0, cell - size)
        corner = origin + position + rng.normal(scale=1.0, size=(objects, 2))
        boxes = np.hstack([corner, corner + size])
        embeddings = looks + rng.normal(scale=0.3, size=looks.shape)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        order = rng.permutation(objects)
        scores = rng.uniform(0.6, 1.0, objects)
        yield Detections(boxes[order], scores[order], embeddings=embeddings[order]), order


def _median_ms(fn, repeats: int, warmup: int) -> float:
    from vision_tasks.benchmark import timed

    return timed(fn, repeats, warmup)["median_ms"]


def association_ms(objects: int, frames: int = 200, appearance: bool = True) -> dict[str, float]:
    """Median and 95th-percentile time of one ``Tracker.update`` over a synthetic scene."""
    import time

    tracker = Tracker(appearance_weight=0.5 if appearance else 0.0)
    times = []
    for detections, _ in synthetic_scene(objects, frames):
        start = time.perf_counter()
        tracker.update(detections)
        times.append((time.perf_counter() - start) * 1000)
    steady = times[10:]  # the first frames only start tracks
    return {"median_ms": float(np.median(steady)), "p95_ms": float(np.percentile(steady, 95))}


def decode_ms(frames: int = 60) -> float:
    """Per-frame time to read and convert a 640x480 MP4 frame (a synthetic video)."""
    import time

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frames.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, FRAME_SIZE)
        base = rng.integers(0, 255, (FRAME_SIZE[1], FRAME_SIZE[0], 3), dtype=np.uint8)
        for shift in range(frames):
            writer.write(np.roll(base, 4 * shift, axis=1))
        writer.release()
        start = time.perf_counter()
        count = sum(1 for _ in open_source(path))
        return (time.perf_counter() - start) * 1000 / max(count, 1)


def _boxes(count: int, seed: int = 0) -> np.ndarray:
    """``count`` person-shaped boxes spread over a 640x480 frame."""
    detections, _ = next(synthetic_scene(count, 1, seed))
    return detections.boxes_xyxy


def build_models(args: argparse.Namespace) -> dict[str, Any]:
    """Detect, re-ID and joint models: from the checkpoints given, else untrained."""
    from vision_tasks.checkpoint import load_task_checkpoint
    from vision_tasks.tasks.detect import DetectTask
    from vision_tasks.tasks.multitask import MultiTaskTask
    from vision_tasks.tasks.reid import ReidTask

    torch.manual_seed(0)
    size = args.image_size
    models = {
        "detect": load_task_checkpoint(args.ckpt, "detect")
        if args.ckpt
        else DetectTask(categories=PERSON, image_size=size),
        "reid": load_task_checkpoint(args.reid, "reid")
        if args.reid
        else ReidTask(categories=PERSON, image_size=128, crop_aspect_ratio=0.5, last_stride=2),
        "joint": load_task_checkpoint(args.joint, "multitask")
        if args.joint
        else MultiTaskTask(
            categories=PERSON, image_size=size, heads=["detect", "reid"], reid_channels=128
        ),
    }
    for model in models.values():
        model.eval()
        if "max_detections" in model.hparams:
            model.hparams.max_detections = args.boxes  # every configuration: the same box count
    return models


def model_ms(args: argparse.Namespace, models: dict[str, Any], tmp: Path) -> dict[str, float]:
    """Per-frame model time of each configuration, torch and ONNX Runtime."""
    from vision_tasks.export import OnnxRunner, export_onnx

    frame = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    boxes = _boxes(args.boxes)
    threads = torch.get_num_threads()
    runners = {
        name: OnnxRunner(export_onnx(models[name], tmp / f"{name}.onnx"), threads=threads)
        for name in ("detect", "reid")
    }
    detect = {
        "torch": Detector(models["detect"], min_score=0.0),
        "onnx": Detector(models["detect"], runners["detect"], min_score=0.0),
    }
    embed = {
        "torch": CropEmbedder(models["reid"]),
        "onnx": CropEmbedder(models["reid"], runners["reid"]),
    }
    joint = JointModel(models["joint"], min_score=0.0, embed_score=0.0)
    timings = {}
    for engine in ("torch", "onnx"):
        timings[f"detect_{engine}"] = _median_ms(partial(detect[engine], frame), args.repeats, 2)
        timings[f"reid_{engine}"] = _median_ms(
            partial(embed[engine], frame, boxes), args.repeats, 2
        )
    timings["joint_torch"] = _median_ms(partial(joint, frame), args.repeats, 2)
    return timings


def configurations(timing: dict[str, float]) -> list[dict[str, Any]]:
    """End-to-end rows: decode + model + association (with appearance where embeddings exist)."""
    decode = timing["decode_ms"]
    rows = []
    for name, model, association in (
        ("detect (torch)", timing["detect_torch"], timing["association_iou_ms"]),
        ("detect (onnx)", timing["detect_onnx"], timing["association_iou_ms"]),
        (
            "detect + reid (torch)",
            timing["detect_torch"] + timing["reid_torch"],
            timing["association_ms"],
        ),
        (
            "detect + reid (onnx)",
            timing["detect_onnx"] + timing["reid_onnx"],
            timing["association_ms"],
        ),
        ("joint multitask (torch)", timing["joint_torch"], timing["association_ms"]),
    ):
        total = decode + model + association
        rows.append(
            {
                "configuration": name,
                "decode_ms": decode,
                "model_ms": model,
                "association_ms": association,
                "fps": 1000 / total,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], timing: dict[str, float], options: dict) -> str:
    """The table the benchmark prints."""
    lines = [
        f"640x480 frames, {options['boxes']} boxes a frame for the models, "
        f"{options['objects']} objects for association, {options['threads']} threads",
        "",
        "| configuration | decode ms | model ms | association ms | frames/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['configuration']} | {r['decode_ms']:.1f} | {r['model_ms']:.1f} | "
            f"{r['association_ms']:.2f} | {r['fps']:.1f} |"
        )
    lines.append(
        f"\nassociation, {options['objects']} objects: {timing['association_ms']:.2f} ms "
        f"(p95 {timing['association_p95_ms']:.2f}) with appearance, "
        f"{timing['association_iou_ms']:.2f} ms IoU only"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> dict[str, Any]:
    """Measure, print the table, merge the entry into the benchmark JSON."""
    from vision_tasks.benchmark import DEFAULT_OUTPUT, environment, merge_results
    from vision_tasks.utils import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["track"], required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--objects", type=int, default=30, help="objects a frame (association)")
    parser.add_argument("--boxes", type=int, default=10, help="boxes a frame (models)")
    parser.add_argument("--image-size", type=int, default=320, help="untrained models' input")
    parser.add_argument("--ckpt", type=Path, help="a detect checkpoint (default: untrained)")
    parser.add_argument("--reid", type=Path, help="a reid checkpoint (default: untrained)")
    parser.add_argument("--joint", type=Path, help="a multitask checkpoint with detect + reid")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    with_looks = association_ms(args.objects)
    timing = {
        "decode_ms": decode_ms(),
        "association_ms": with_looks["median_ms"],
        "association_p95_ms": with_looks["p95_ms"],
        "association_iou_ms": association_ms(args.objects, appearance=False)["median_ms"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        timing.update(model_ms(args, build_models(args), Path(tmp)))
    rows = configurations(timing)
    options = {
        "threads": args.threads,
        "objects": args.objects,
        "boxes": args.boxes,
        "image_size": args.image_size,
        "checkpoints": [str(p) for p in (args.ckpt, args.reid, args.joint) if p],
    }
    print(markdown(rows, timing, options))
    entry = {"task": "track", "options": options, "timing": timing, "configurations": rows}
    payload = merge_results(args.output, environment(), [entry], [])
    atomic_write_text(args.output, json.dumps(payload, indent=2))
    print(f"written: {args.output}")
    return entry


def is_track_run(argv: list[str]) -> bool:
    """Whether a ``tools/benchmark.py`` command line asks for ``--task track``."""
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv):
            return argv[i + 1] == "track"
        if arg == "--task=track":
            return True
    return False
