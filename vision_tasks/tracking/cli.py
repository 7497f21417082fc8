"""``tools/track.py`` / ``vision-tasks track``: track objects through a video or image folder.

    tools/track.py --ckpt detect.ckpt [--reid reid.ckpt] --source video.mp4 --output DIR
    tools/track.py --ckpt multitask.ckpt --source frames/ --output DIR     # one pass per frame
    tools/track.py --detections det.txt [--reid reid.ckpt] --source video.mp4 --output DIR
    ... --gt gt.txt                                                        # and score it

Writes ``DIR/<source>.txt`` (MOTChallenge), ``DIR/<source>.mp4`` (boxes, identities, trails)
and, with ``--gt``, ``DIR/report.json`` / ``report.md`` / figures from TrackEval.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vision_tasks.tracking.io import (
    AnnotatedVideo,
    mot_lines,
    open_source,
    read_mot_detections,
    write_mot_results,
)
from vision_tasks.tracking.models import (
    CropEmbedder,
    Detector,
    JointModel,
    can_detect,
    can_embed,
)
from vision_tasks.tracking.tracker import Detections, Tracker

log = logging.getLogger(__name__)
BoxSource = Callable[[int, np.ndarray], Detections]
Embedder = Callable[[np.ndarray, np.ndarray], np.ndarray]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/track.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, type=Path, help="video file or image folder")
    parser.add_argument("--output", required=True, type=Path, help="folder for the results")
    parser.add_argument(
        "--ckpt", type=Path, help="detect checkpoint, or multitask with a detect head"
    )
    parser.add_argument(
        "--reid",
        type=Path,
        help="appearance: a reid checkpoint (crops), or a multitask one with a reid head",
    )
    parser.add_argument(
        "--detections",
        type=Path,
        help="MOTChallenge detection file used instead of a detector (public detections)",
    )
    parser.add_argument("--gt", type=Path, help="MOTChallenge ground truth: score with TrackEval")
    parser.add_argument(
        "--engine",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="auto: onnxruntime on exports cached beside the checkpoints when it is installed "
        "and the model exports (not multitask), else torch; onnx: the same, or an error",
    )
    parser.add_argument("--onnx", type=Path, help="run this detector .onnx (e.g. CKPT.int8.onnx)")
    parser.add_argument("--reid-onnx", type=Path, help="run this re-ID .onnx")
    parser.add_argument("--fps", type=float, help="frame rate of an image folder (default 25)")
    parser.add_argument("--no-video", action="store_true", help="skip the annotated video")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    tracker = parser.add_argument_group("tracker (see vision_tasks/tracking/tracker.py)")
    defaults = Tracker()
    for name, help_text in (
        ("high_threshold", "boxes at least this confident are matched first and start tracks"),
        ("low_threshold", "boxes down to this keep tracks alive (ByteTrack's second stage)"),
        ("new_track_threshold", "a free box this confident starts a track"),
        ("match_threshold", "largest 1 - IoU admitted"),
        ("appearance_weight", "share of the embedding distance in the cost (0: IoU only)"),
    ):
        flag = "--" + name.replace("_", "-")
        tracker.add_argument(flag, type=float, default=getattr(defaults, name), help=help_text)
    tracker.add_argument("--min-hits", type=int, default=defaults.min_hits)
    tracker.add_argument("--max-age", type=int, default=defaults.max_age)
    return parser


def track_main(argv: list[str] | None = None) -> dict[str, Any]:
    """``tools/track.py`` entry point (see the module docstring); returns the run's summary."""
    from vision_tasks.cli import log_to_console

    args = build_parser().parse_args(argv)
    if args.detections is not None and args.ckpt is not None:
        raise SystemExit(
            "--detections replaces the detector: drop --ckpt (give --reid CKPT for appearance)"
        )
    if args.detections is None and args.ckpt is None:
        raise SystemExit("give --ckpt CKPT (a detector) or --detections FILE (public detections)")
    log_to_console()
    return run(args)


def _load(path: Path) -> tuple[Any, dict[str, Any]]:
    from vision_tasks.checkpoint import load_task_checkpoint, read_checkpoint

    saved = read_checkpoint(path, mmap=True)
    return load_task_checkpoint(path), saved.get("datamodule_hyper_parameters", {})


def _network(model: Any, checkpoint: Path, engine: str, onnx_file: Path | None) -> Any:
    from vision_tasks.export import inference_network

    return inference_network(model, checkpoint, engine, onnx_file, torch.get_num_threads())[0]


def build_models(args: argparse.Namespace) -> tuple[BoxSource, Embedder | None]:
    """The box source (detector or file) and the embedder the arguments ask for."""
    embedder = None
    joint = None
    if args.ckpt is not None:
        model, _ = _load(args.ckpt)
        if not can_detect(model):
            raise SystemExit(
                f"{args.ckpt}: a {model.task_name} checkpoint cannot track: --ckpt takes a "
                f"detect checkpoint or a multitask one with a detect head"
            )
        if model.task_name == "multitask":
            _network(model, args.ckpt, args.engine, args.onnx)  # torch, or why not onnx
            joint = JointModel(model, args.low_threshold, args.high_threshold)
            has_reid = "reid" in model.heads and args.reid is None
            detect = joint if has_reid else _without_embeddings(joint)
        else:
            network = _network(model, args.ckpt, args.engine, args.onnx)
            detect = Detector(model, network, args.low_threshold)
        source: BoxSource = lambda number, frame: detect(frame)  # noqa: E731
    else:
        per_frame = read_mot_detections(args.detections)
        empty = Detections(np.zeros((0, 4)), np.zeros(0))
        source = lambda number, frame: per_frame.get(number, empty)  # noqa: E731
    if args.reid is not None:
        embedder = _embedder(args)
    return source, embedder


def _without_embeddings(joint: JointModel) -> Callable[[np.ndarray], Detections]:
    def detect(frame: np.ndarray) -> Detections:
        found = joint(frame)
        found.embeddings = None
        return found

    return detect


def _embedder(args: argparse.Namespace) -> Embedder:
    model, data = _load(args.reid)
    if not can_embed(model):
        raise SystemExit(
            f"{args.reid}: a {model.task_name} checkpoint gives no embeddings: --reid takes a "
            f"reid checkpoint or a multitask one with a reid head"
        )
    if model.task_name == "multitask":
        return JointModel(model).embed
    network = _network(model, args.reid, args.engine, args.reid_onnx)
    return CropEmbedder(model, network, float(data.get("crop_margin", 0.1)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Track every frame of ``args.source``; write the MOT file, the video and the report."""
    source = open_source(args.source, args.fps)
    box_source, embedder = build_models(args)
    tracker = Tracker(
        high_threshold=args.high_threshold,
        low_threshold=args.low_threshold,
        new_track_threshold=args.new_track_threshold,
        match_threshold=args.match_threshold,
        appearance_weight=args.appearance_weight,
        min_hits=args.min_hits,
        max_age=args.max_age,
    )
    args.output.mkdir(parents=True, exist_ok=True)
    video = (
        None if args.no_video else AnnotatedVideo(args.output / f"{source.name}.mp4", source.fps)
    )
    lines: list[str] = []
    spent = {"decode": 0.0, "model": 0.0, "association": 0.0}
    identities: set[int] = set()
    frames = 0
    bar = tqdm(total=source.expected or None, unit="frame", desc=source.name, disable=args.quiet)
    clock = time.perf_counter()
    for number, frame in source:
        now = time.perf_counter()
        spent["decode"] += now - clock
        detections = box_source(number, frame)
        if embedder is not None:
            detections.embeddings = _embed_confident(embedder, frame, detections, args)
        clock = time.perf_counter()
        spent["model"] += clock - now
        tracks = tracker.update(detections)
        now = time.perf_counter()
        spent["association"] += now - clock
        lines += mot_lines(number, tracks)
        identities.update(t.track_id for t in tracks)
        if video is not None:
            video.write(frame, tracks)
        frames = number
        bar.update()
        clock = time.perf_counter()
    bar.close()
    if source.stopped:
        log.warning(
            "stopped early: %s; the %d frames read are tracked and written", source.stopped, frames
        )
    written = [write_mot_results(args.output / f"{source.name}.txt", lines)]
    if video is not None and video.close() is not None:
        written.append(video.path)
    per_frame = {f"{k}_ms": 1000 * v / max(frames, 1) for k, v in spent.items()}
    summary = {
        "source": str(args.source),
        "frames": frames,
        "stopped": source.stopped,
        "tracks": len(identities),
        "boxes": len(lines),
        "fps": frames / max(sum(spent.values()), 1e-9),
        **per_frame,
        "files": [str(p) for p in written],
    }
    print(
        f"{source.name}: {frames} frames, {len(identities)} tracks, {len(lines)} boxes, "
        f"{summary['fps']:.1f} frames/s (decode {per_frame['decode_ms']:.1f} ms, model "
        f"{per_frame['model_ms']:.1f} ms, association {per_frame['association_ms']:.2f} ms "
        f"a frame) -> {', '.join(map(str, written))}"
    )
    if args.gt is not None:
        summary["headline"] = _score(args, written[0], frames, summary)
    return summary


def _embed_confident(
    embedder: Embedder, frame: np.ndarray, detections: Detections, args: argparse.Namespace
) -> np.ndarray | None:
    """Embeddings of the boxes the tracker matches by appearance (the confident ones)."""
    confident = detections.scores >= args.high_threshold
    if not confident.any():
        return None
    rows = embedder(frame, detections.boxes_xyxy[confident])
    out = np.zeros((len(detections), rows.shape[1]), dtype=np.float32)
    out[confident] = rows
    return out


def _score(args: argparse.Namespace, result: Path, frames: int, summary: dict) -> dict:
    from vision_tasks.tracking.evaluate import score

    meta = {"source": str(args.source), "frames tracked": frames}
    if summary["stopped"]:
        meta["stopped early"] = summary["stopped"]
    headline = score(result, args.gt, args.output, frames, meta)
    shown = ", ".join(
        f"{k} {v:.3f}" if k != "IDSW" else f"{k} {int(v)}" for k, v in headline.items()
    )
    print(f"  TrackEval: {shown} -> {args.output / 'report.md'}")
    return headline
