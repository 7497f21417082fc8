#!/usr/bin/env python
"""Tracking on MOT15 TUD-Campus and TUD-Stadtmitte: models trained on one sequence track the other.

For each direction, a detector, a re-ID model and the joint model (multitask with detect and
reid heads) are trained on the one sequence (``tools/train.py`` through
``benchmarks/real_data.py``'s runner, each under its wall budget, from random init), and the
other sequence is tracked with ``tools/track.py``'s code and scored by TrackEval. Rows:

- (a) ground-truth boxes as detections, IoU only (SORT-like; association alone is scored);
- (b) the same boxes with appearance: from the re-ID model's crops, and from the joint model's
  embeddings of those boxes;
- (c) the models' own detections: the detector IoU only, the detector plus the re-ID model, and
  the joint model alone (boxes and embeddings from one pass).

The last checkpoint of each run is used, not the best: the runs validate on the sequence that
is then tracked, and choosing by it would select on the test data. Writes
``benchmarks/tracking_real.json``, prints the table and puts it in ``docs/tracking.md``.

    python benchmarks/tracking_real.py                         # 6 runs x 5 min + tracking
    python benchmarks/tracking_real.py --reuse        # resume: train only what is missing
    python benchmarks/tracking_real.py --budget-s 20 --no-doc --output /tmp/t.json \
        --train-args "--trainer.limit_val_batches 2 --trainer.limit_test_batches 2"   # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_data  # noqa: E402  (its training runner and split arguments)

from vision_tasks.benchmark import environment  # noqa: E402
from vision_tasks.data.convert import convert  # noqa: E402
from vision_tasks.utils import atomic_write_json, atomic_write_text  # noqa: E402

MOT = real_data.REAL / "mot"
SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")
WORK = ROOT / "runs" / "tracking_real"
RESULTS = ROOT / "benchmarks" / "tracking_real.json"
DOC = ROOT / "docs" / "tracking.md"
TABLE_START, TABLE_END = "<!-- tracking table -->", "<!-- end of tracking table -->"
CLIP = ["--data.policy", "clip"]  # MOT boxes cross the image edge
TRAINING = {  # task -> options on top of its config (sizes as benchmarks/real_data.py's)
    "detect": ["--data.image_size", "320", "--data.colour_shift", "0", *CLIP],
    "reid": [
        "--data.image_size",
        "128",
        "--data.aspect_ratio",
        "0.5",
        "--data.batch_size",
        "32",
        *CLIP,
    ],
    "multitask": [
        "--model.heads",
        "[detect, reid]",
        "--model.loss_weights",
        "{detect: 1.0, reid: 0.5}",
        "--data.image_size",
        "320",
        "--data.progressive_size",
        "0",
        "--data.colour_shift",
        "0",
        *CLIP,
    ],
}
ROWS = (  # (row, method, boxes from: "gt" or a task, embeddings from: None or a task)
    ("a", "gt boxes, IoU only", "gt", None),
    ("b", "gt boxes + re-ID crops", "gt", "reid"),
    ("b", "gt boxes + joint embeddings", "gt", "multitask"),
    ("c", "detector, IoU only", "detect", None),
    ("c", "detector + re-ID model", "detect", "reid"),
    ("c", "joint model, one pass", "multitask", None),  # its own embeddings
)


def prepare(work: Path) -> dict[str, Path]:
    """Each sequence as COCO JSON (frames extracted), 4 time chunks as cameras for re-ID."""
    if not MOT.is_dir():
        raise SystemExit(f"no MOT data at {MOT}: this benchmark needs ../shared/data/real/mot")
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for sequence in SEQUENCES:
        json_path = work / f"{sequence}.json"
        if not json_path.is_file():
            options = {"gt": MOT / f"{sequence}_gt.txt", "frames": work / "frames", "chunks": 4}
            convert("mot", MOT / f"{sequence}.mp4", json_path, options)
        out[sequence] = json_path
    return out


def train(
    task: str,
    train_on: str,
    test_on: str,
    data: dict[str, Path],
    seconds: float,
    extra: list[str],
) -> dict[str, Any]:
    """One training run (a real_data Job); its entry with the last checkpoint."""
    frames = WORK / "frames"
    splits = real_data._splits(data[train_on], frames, data[test_on], frames)
    options = [*splits, *TRAINING[task], *extra]
    job = real_data.Job(f"{task}-{train_on}", task, train_on, "", seconds / 60, options)
    entry = real_data.run_job(job, {}, 1.0)
    run = entry.get("run")
    last = ROOT / run / "checkpoints" / "last.ckpt" if run else None  # run: relative to ROOT
    entry["checkpoint"] = str(last) if last and last.is_file() else None
    return {**entry, "task": task, "trained_on": train_on}


def track(
    sequence: str, checkpoints: dict[str, str | None], extra: list[str]
) -> list[dict[str, Any]]:
    """Every row on one sequence; a row whose checkpoint is missing is reported as such."""
    from vision_tasks.tracking.cli import track_main

    gt = MOT / f"{sequence}_gt.txt"
    rows = []
    for row, method, boxes, embeddings in ROWS:
        entry = {"sequence": sequence, "row": row, "method": method}
        needs = [task for task in (boxes, embeddings) if task not in ("gt", None)]
        missing = [task for task in needs if not checkpoints.get(task)]
        if missing:
            rows.append({**entry, "error": f"no {', '.join(missing)} checkpoint"})
            continue
        models = ["--detections", str(gt)] if boxes == "gt" else ["--ckpt", checkpoints[boxes]]
        if embeddings is not None:
            models += ["--reid", checkpoints[embeddings]]
        if embeddings is None and boxes != "multitask":  # IoU only: nothing gives embeddings
            models += ["--appearance-weight", "0"]
        folder = WORK / "tracks" / sequence / f"{row}_{boxes}_{embeddings or 'iou'}"
        argv = ["--source", str(MOT / f"{sequence}.mp4"), "--gt", str(gt), "--output", str(folder)]
        argv += [*models, *extra]
        summary = track_main([*argv, "--no-video", "--quiet"])
        shown = " ".join(real_data._shown(argv))
        rows.append({**entry, **summary, "command": f"python tools/track.py {shown}"})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per (sequence, row): HOTA / IDF1 / MOTA, ID switches, frames/s."""
    lines = [
        "| tracked | trained on | row | method | HOTA | IDF1 | MOTA | IDSW | frames/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['sequence']} | {r.get('trained_on', '')} | ({r['row']}) | {r['method']} |"
        if "error" in r:
            lines.append(f"{head} | | | | | {r['error']} |")
            continue
        h = r["headline"]
        lines.append(
            f"{head} {h['HOTA']:.3f} | {h['IDF1']:.3f} | {h['MOTA']:.3f} | {int(h['IDSW'])} | "
            f"{r['fps']:.1f} |"
        )
    return "\n".join(lines)


def write_doc(table: str, env: dict[str, Any], budgets: dict[str, float]) -> None:
    """Replace the table between the markers of ``docs/tracking.md`` (the prose stays)."""
    shown = ", ".join(f"{k} {v:g} s" for k, v in budgets.items())
    block = (
        f"{TABLE_START}\nMeasured {env['measured_at']} on {env['cpus']} CPU cores "
        f"({env['processor']}), torch {env['torch']}, `python benchmarks/tracking_real.py` "
        f"(training budgets: {shown}).\n\n{table}\n{TABLE_END}"
    )
    text = DOC.read_text() if DOC.is_file() else f"# Tracking\n\n{TABLE_START}\n{TABLE_END}\n"
    before, _, rest = text.partition(TABLE_START)
    _, _, after = rest.partition(TABLE_END)
    atomic_write_text(DOC, before + block + after)


def _reused(path: Path) -> list[dict[str, Any]]:
    try:
        training = json.loads(path.read_text())["training"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SystemExit(f"--reuse: {path} has no 'training' list of an earlier run") from None
    return [t for t in training if isinstance(t, dict) and t.get("checkpoint")]


def main(argv: list[str] | None = None) -> None:
    """Train both ways, track both sequences, write JSON (after every step), table and docs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=300, help="wall budget of each run")
    for task in TRAINING:
        parser.add_argument(f"--{task}-s", type=float, help=f"{task} runs' budget (s)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the trained checkpoints recorded in --output; train only the missing ones",
    )
    parser.add_argument("--no-doc", action="store_true", help="leave docs/tracking.md alone")
    parser.add_argument(
        "--track-args", default="", help="extra tools/track.py options, e.g. '--high-threshold 0.4'"
    )
    parser.add_argument(
        "--train-args",
        default="",
        help="extra tools/train.py options for every run (a smoke test: "
        "'--trainer.limit_val_batches 2 --trainer.limit_test_batches 2')",
    )
    args = parser.parse_args(argv)
    budgets = {task: getattr(args, f"{task}_s") or args.budget_s for task in TRAINING}
    data = prepare(WORK)
    training = _reused(args.output) if args.reuse else []
    rows: list[dict[str, Any]] = []

    def save() -> None:
        payload = {"budgets_s": budgets, "training": training, "rows": rows}
        atomic_write_json(args.output, {"environment": environment(), **payload})

    for train_on, test_on in (SEQUENCES, SEQUENCES[::-1]):
        done = {t["task"] for t in training if t.get("trained_on") == train_on}
        for task, seconds in budgets.items():
            if task in done:
                continue
            print(f"training {task} on {train_on} ({seconds:g} s)", flush=True)
            training.append(train(task, train_on, test_on, data, seconds, args.train_args.split()))
            print(f"  -> {training[-1].get('checkpoint') or training[-1].get('error', '')[-300:]}")
            save()
        checkpoints = {
            t["task"]: t.get("checkpoint") for t in training if t.get("trained_on") == train_on
        }
        print(f"tracking {test_on} with the {train_on} models", flush=True)
        start = time.perf_counter()
        found = track(test_on, checkpoints, args.track_args.split())
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
        rows += [{**r, "trained_on": train_on} for r in found]
        save()
    table = markdown_table(rows)
    print(table)
    if not args.no_doc:
        write_doc(table, environment(), budgets)
    print(f"written: {args.output}" + ("" if args.no_doc else f", {DOC}"))


if __name__ == "__main__":
    main()
