"""Score a MOTChallenge result file against ground truth with TrackEval: HOTA, CLEAR, Identity.

TrackEval (Luiten et al., the MOTChallenge reference code; PyPI ``trackeval`` 1.3.0, whose
metric and dataset code is JonathonLuiten/TrackEval's with only ``np.float`` / ``np.int``
replaced for NumPy 2) reads the files itself through its ``MotChallenge2DBox`` dataset, so the
parsing, the preprocessing and the IoU similarities are the benchmark's own:

- The ground truth is first read by the toolkit's MOT parser (one clear line per bad record)
  and written for TrackEval with 9 columns ``frame,id,x,y,w,h,conf,class,visibility``: a
  MOT15 file (10 columns, no class) gets class 1 (pedestrian) on every row.
- TrackEval then runs with its MOT17 preprocessing, the one MOT16/17/20 results are published
  with: tracker boxes matched (IoU >= 0.5, Hungarian) to a distractor (classes 2, 7, 8, 12) are
  removed before scoring, and only class-1 gt rows with ``conf != 0`` are scored. On a file of
  one class (MOT15, or our own converter's output) nothing is removed and this equals
  TrackEval's MOT15 mode, which skips preprocessing.
- The sequence length is the larger of the frames tracked and the last gt frame: frames a
  source lost (a video that ended early) count as missed, not as absent.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vision_tasks.data.coco import CocoDataError
from vision_tasks.data.convert.mot import _read_mot_gt  # the toolkit's one MOT gt parser
from vision_tasks.evaluation.report import Figure, Report, write_report

HEADLINE = ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW")
HOTA_FIELDS = ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA")
CLEAR_FIELDS = ("MOTA", "MOTP", "MODA", "CLR_Re", "CLR_Pr", "MT", "PT", "ML", "Frag")
CLEAR_COUNTS = ("CLR_TP", "CLR_FN", "CLR_FP", "IDSW")
IDENTITY_FIELDS = ("IDF1", "IDR", "IDP", "IDTP", "IDFN", "IDFP")
SEQUENCE, TRACKER = "sequence", "tracker"


def normalised_gt(gt_path: Path) -> tuple[str, int]:
    """The gt file as 9-column text for TrackEval, and its last frame (see module docstring)."""
    try:
        rows = _read_mot_gt(Path(gt_path))
    except CocoDataError as error:
        raise SystemExit(f"error: {error}") from None
    lines = [
        f"{r.frame},{r.track_id},{','.join(f'{v:.10g}' for v in r.bbox)},{r.conf:g},{r.cls},"
        f"{1.0 if r.visibility is None else r.visibility:g}\n"
        for r in rows
    ]
    return "".join(lines), max((r.frame for r in rows), default=0)


def _last_frame(result_path: Path) -> int:
    last = 0
    for line in Path(result_path).read_text(errors="replace").splitlines():
        head = line.split(",", 1)[0].strip()
        if head.isdigit():
            last = max(last, int(head))
    return last


def trackeval_sequence(result_path: Path, gt_path: Path, frames: int = 0) -> dict[str, Any]:
    """Run TrackEval's MOTChallenge dataset and HOTA / CLEAR / Identity on one sequence.

    Args:
        result_path: tracker output, ``frame,id,x,y,w,h,score,...`` per line.
        gt_path: MOTChallenge ground truth (MOT15 or MOT16/17/20 columns).
        frames: frames tracked (the sequence is at least this long).

    Returns:
        ``{"hota": {...}, "clear": {...}, "identity": {...}, "data": preprocessed data}``,
        TrackEval's own result dicts (HOTA fields are arrays over its 19 IoU thresholds).
    """
    import trackeval
    from trackeval.utils import TrackEvalException

    gt_text, gt_last = normalised_gt(gt_path)
    if not Path(result_path).is_file():
        raise SystemExit(f"{result_path}: result file not found")
    length = max(frames, gt_last, _last_frame(result_path), 1)
    with tempfile.TemporaryDirectory(prefix="trackeval_") as tmp:
        root = Path(tmp)
        (root / "gt" / SEQUENCE / "gt").mkdir(parents=True)
        (root / "gt" / SEQUENCE / "gt" / "gt.txt").write_text(gt_text)
        (root / "trackers" / TRACKER / "data").mkdir(parents=True)
        text = Path(result_path).read_text(errors="replace")
        (root / "trackers" / TRACKER / "data" / f"{SEQUENCE}.txt").write_text(text)
        config = {
            "GT_FOLDER": str(root / "gt"),
            "TRACKERS_FOLDER": str(root / "trackers"),
            "OUTPUT_FOLDER": str(root / "out"),
            "TRACKERS_TO_EVAL": [TRACKER],
            "BENCHMARK": "MOT17",
            "SKIP_SPLIT_FOL": True,
            "SEQ_INFO": {SEQUENCE: length},
            "PRINT_CONFIG": False,
        }
        quiet = {"PRINT_CONFIG": False}
        try:
            dataset = trackeval.datasets.MotChallenge2DBox(config)
            raw = dataset.get_raw_seq_data(TRACKER, SEQUENCE)
            data = dataset.get_preprocessed_seq_data(raw, "pedestrian")
        except TrackEvalException as error:
            message = str(error).replace(SEQUENCE, Path(result_path).name)
            raise SystemExit(f"error: {result_path} vs {gt_path}: {message}") from None
        return {
            "hota": trackeval.metrics.HOTA(quiet).eval_sequence(data),
            "clear": trackeval.metrics.CLEAR(quiet).eval_sequence(data),
            "identity": trackeval.metrics.Identity(quiet).eval_sequence(data),
            "data": data,
        }


def summary(results: dict[str, Any]) -> dict[str, float]:
    """Flat numbers: HOTA fields averaged over the IoU thresholds (as TrackEval's summaries)."""
    hota, clear, identity = results["hota"], results["clear"], results["identity"]
    out = {k: float(np.mean(hota[k])) for k in HOTA_FIELDS}
    out.update({k: float(hota[k]) for k in ("HOTA(0)", "LocA(0)")})
    out.update({k: float(clear[k]) for k in CLEAR_FIELDS + CLEAR_COUNTS})
    out.update({k: float(identity[k]) for k in IDENTITY_FIELDS})
    data = results["data"]
    out.update(
        frames=float(data["num_timesteps"]),
        gt_boxes=float(data["num_gt_dets"]),
        gt_ids=float(data["num_gt_ids"]),
        tracker_boxes=float(data["num_tracker_dets"]),
        tracker_ids=float(data["num_tracker_ids"]),
    )
    return out


def tracking_report(results: dict[str, Any], meta: dict[str, Any]) -> Report:
    """The report: headline, every number, HOTA per IoU threshold, two figures."""
    numbers = summary(results)
    hota, data = results["hota"], results["data"]
    alphas = [round(float(a), 2) for a in np.arange(0.05, 0.99, 0.05)]
    per_alpha = [
        {"IoU": a, **{k: float(hota[k][i]) for k in ("HOTA", "DetA", "AssA", "LocA")}}
        for i, a in enumerate(alphas)
    ]
    frames = list(range(1, data["num_timesteps"] + 1))
    counts = Figure(
        "per_frame_counts",
        "curves",
        "Boxes per frame: ground truth and tracks",
        {
            "series": [
                {"label": "ground truth", "x": frames, "y": [len(g) for g in data["gt_ids"]]},
                {"label": "tracks", "x": frames, "y": [len(t) for t in data["tracker_ids"]]},
            ],
            "xlabel": "frame",
            "ylabel": "boxes",
        },
    )
    by_alpha = Figure(
        "hota_by_iou",
        "curves",
        "HOTA, DetA and AssA by IoU threshold",
        {
            "series": [
                {"label": k, "x": alphas, "y": [row[k] for row in per_alpha]}
                for k in ("HOTA", "DetA", "AssA")
            ],
            "xlabel": "IoU threshold (alpha)",
            "ylabel": "score",
        },
    )
    headline = {k: numbers[k] for k in HEADLINE}
    return Report("track", headline, numbers, {"hota_by_iou": per_alpha}, [counts, by_alpha], meta)


def score(
    result_path: Path,
    gt_path: Path,
    out_dir: Path,
    frames: int = 0,
    meta: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Score ``result_path`` against ``gt_path``; write report.json / report.md / PNGs."""
    results = trackeval_sequence(result_path, gt_path, frames)
    info = {
        "result": str(result_path),
        "ground truth": str(gt_path),
        "scored with": "TrackEval MotChallenge2DBox, MOT17 preprocessing (see docs/tracking.md)",
        **(meta or {}),
    }
    report = tracking_report(results, info)
    write_report(report, out_dir)
    return report.headline
