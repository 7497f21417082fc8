#!/usr/bin/env python
"""Every task on real files, each under a fixed wall budget: what a user gets from their data.

Runs ``tools/train.py`` on the datasets of ``../shared/data/real`` (never copied into the repo):
BCCD (Pascal VOC boxes) for detection and classification of cell crops, COCO-MINI for detection,
segmentation, person keypoints and homography, MOT15 TUD-Campus / TUD-Stadtmitte for re-ID
(trained on one sequence, tested on the other, both ways), and two fine-tuning pairs at the same
budget as their random-init rows: BCCD crops classified from the BCCD detector's backbone, and
BCCD detection from a backbone pretrained on the synthetic default. Each run is one
subprocess; its headline, wall time, epochs and peak memory go to ``benchmarks/real_data.json``
and the table of ``docs/real-data.md``.

    python benchmarks/real_data.py                    # everything, about an hour on 2 cores
    python benchmarks/real_data.py --only bccd-detect --budget-scale 0.2

Every run trains from random init (no ImageNet weights on this machine): the figures are low
next to published ones, but honest, and the same command reproduces them.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing

from vision_tasks.benchmark import environment  # noqa: E402
from vision_tasks.data.convert import convert  # noqa: E402
from vision_tasks.utils import atomic_write_json, atomic_write_text  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "real"
WORK = ROOT / "runs" / "real_data"
RESULTS = ROOT / "benchmarks" / "real_data.json"
DOC = ROOT / "docs" / "real-data.md"
TABLE_START, TABLE_END = "<!-- real-data table -->", "<!-- end of real-data table -->"
LONG_RUN = ["--trainer.max_epochs", "1000"]  # the budget, not an epoch cap, ends each run


@dataclass
class Job:
    """One training run: a task on one dataset's splits with extra options."""

    name: str
    task: str
    dataset: str
    metric: str  # the headline entry the table shows
    minutes: float
    args: list[str]
    seed_from: str | None = None  # a job whose best checkpoint seeds the backbone
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _splits(train: Path, train_images: Path, val: Path, val_images: Path) -> list[str]:
    return [
        "--data.train_json",
        str(train),
        "--data.train_images",
        str(train_images),
        "--data.val_json",
        str(val),
        "--data.val_images",
        str(val_images),
    ]


def jobs(data: dict[str, Path]) -> list[Job]:
    """The benchmark's runs, in the order they are run (a seeding job before its users)."""
    bccd = _splits(data["bccd_trainval"], data["bccd_root"], data["bccd_test"], data["bccd_root"])
    coco = REAL / "cocomini"
    notes = coco / "annotations"
    instances = _splits(
        notes / "instances_train2017.json",
        coco / "train2017",
        notes / "instances_val2017.json",
        coco / "val2017",
    )
    people = _splits(
        notes / "person_keypoints_train2017.json",
        coco / "train2017",
        notes / "person_keypoints_val2017.json",
        coco / "val2017",
    )
    campus, stadtmitte = data["campus"], data["stadtmitte"]
    real_colours = ["--data.colour_shift", "0"]  # the configs' shift is for synthetic shapes
    reid = [
        "--data.image_size",
        "128",
        "--data.aspect_ratio",
        "0.5",
        "--data.batch_size",
        "32",
        "--data.policy",
        "clip",
    ]
    bccd_detect = [*bccd, "--data.image_size", "320", *real_colours]
    bccd_classify = [*bccd, "--data.mode", "crop", "--data.image_size", "64", *real_colours]
    return [
        Job(
            "coco-detect",
            "detect",
            "COCO-MINI",
            "AP",
            5,
            [*instances, *real_colours, "--data.image_size", "320"],
        ),
        Job(
            "coco-segment",
            "segment",
            "COCO-MINI",
            "miou",
            5,
            [*instances, *real_colours, "--data.image_size", "256", "--data.crop_size", "192"],
        ),
        Job("coco-keypoints", "keypoints", "COCO-MINI", "AP", 5, [*people]),
        Job("coco-homography", "homography", "COCO-MINI", "mace", 3, [*instances]),
        Job("bccd-detect", "detect", "BCCD", "AP", 6, bccd_detect),
        Job("bccd-classify", "classify", "BCCD", "top1", 3, bccd_classify),
        Job(
            "bccd-classify-from-detect",
            "classify",
            "BCCD",
            "top1",
            3,
            bccd_classify,
            seed_from="bccd-detect",
            notes="backbone from the bccd-detect run",
        ),
        Job(
            "synthetic-detect",
            "detect",
            "synthetic default",
            "AP",
            6,
            ["--data.image_size", "320"],
            notes="pretraining for the next row",
        ),
        Job(
            "bccd-detect-from-synthetic",
            "detect",
            "BCCD",
            "AP",
            6,
            bccd_detect,
            seed_from="synthetic-detect",
            notes="backbone from the synthetic-detect run",
        ),
        Job(
            "tud-reid-campus-to-stadtmitte",
            "reid",
            "MOT15 TUD",
            "mAP",
            3,
            [*_splits(campus, data["campus_root"], stadtmitte, data["stadtmitte_root"]), *reid],
            notes="train TUD-Campus, test TUD-Stadtmitte",
        ),
        Job(
            "tud-reid-stadtmitte-to-campus",
            "reid",
            "MOT15 TUD",
            "mAP",
            3,
            [*_splits(stadtmitte, data["stadtmitte_root"], campus, data["campus_root"]), *reid],
            notes="train TUD-Stadtmitte, test TUD-Campus",
        ),
    ]


def prepare(work: Path) -> dict[str, Path]:
    """Convert BCCD (VOC) and the two TUD sequences (MOT) to COCO JSON under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    bccd = REAL / "bccd" / "BCCD"
    data = {"bccd_root": bccd}
    for split in ("trainval", "test"):
        data[f"bccd_{split}"] = convert("voc", bccd, work / f"bccd_{split}.json", {"split": split})
    for key, sequence in (("campus", "TUD-Campus"), ("stadtmitte", "TUD-Stadtmitte")):
        frames = work / "frames"
        options = {"gt": REAL / "mot" / f"{sequence}_gt.txt", "frames": frames, "chunks": 4}
        data[key] = convert("mot", REAL / "mot" / f"{sequence}.mp4", work / f"{key}.json", options)
        data[f"{key}_root"] = frames
    return data


def run_job(job: Job, done: dict[str, dict[str, Any]], scale: float) -> dict[str, Any]:
    """Train ``job`` in a subprocess; its figures, or the error it ended with."""
    minutes = job.minutes * scale
    budget = time.strftime("00:%H:%M:%S", time.gmtime(minutes * 60))
    argv = ["--task", job.task, *job.args, *LONG_RUN, "--trainer.max_time", budget]
    if job.seed_from is not None:
        seed = done.get(job.seed_from, {}).get("checkpoint")
        if not seed:
            return {"name": job.name, "error": f"needs the {job.seed_from} run's checkpoint"}
        argv += ["--model.backbone_weights", seed]
    command = [sys.executable, str(Path(__file__).resolve()), "--run-one", json.dumps(argv)]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    entry = {
        "name": job.name,
        "task": job.task,
        "dataset": job.dataset,
        "metric": job.metric,
        "budget_min": minutes,
        "wall_s": round(wall, 1),
        "notes": job.notes,
        "command": "python tools/train.py " + " ".join(_shown(argv)),
    }
    if run.returncode != 0:
        return {**entry, "error": (run.stderr or run.stdout)[-3000:]}
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    match = re.search(r"report:\s+(\S+)/report\.md", run.stdout)
    folder = Path(match.group(1)).parent if match else None
    report = json.loads((folder / "report" / "report.json").read_text()) if folder else {}
    return {
        **entry,
        **measured,
        "run": str(folder),
        "headline": report.get("headline", {}),
        "value": report.get("headline", {}).get(job.metric),
        "epochs": _epochs(folder / "metrics.csv") if folder else None,
        "checkpoint": _best_checkpoint(folder) if folder else None,
    }


def _shown(argv: list[str]) -> list[str]:
    """The command as a user would type it from the repo root (paths relative to it)."""
    return [
        str(Path(a).relative_to(ROOT.parent)) if a.startswith(str(ROOT.parent)) else a for a in argv
    ]


def _epochs(metrics_csv: Path) -> int | None:
    if not metrics_csv.is_file():
        return None
    with open(metrics_csv, newline="") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle) if row.get("epoch")]
    return max(epochs) + 1 if epochs else None


def _best_checkpoint(folder: Path) -> str | None:
    best = sorted((folder / "checkpoints").glob("best-*.ckpt"))
    return str(best[-1]) if best else None


def run_one(argv: list[str]) -> None:
    """In the subprocess: train, then print the peak memory as the last line (JSON)."""
    from vision_tasks.cli import train_main

    train_main(argv)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(own), "peak_worker_rss_mib": round(workers)}))


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The docs table: one row per run."""
    lines = [
        "| run | task | data | metric | value | wall | epochs | peak RSS (main / worker) | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['name']} | {r.get('task', '')} | {r.get('dataset', '')} | "
                f"| failed | | | | {r['error'].splitlines()[-1][:80]} |"
            )
            continue
        value = f"{r['value']:.3f}" if isinstance(r.get("value"), float) else "n/a"
        lines.append(
            f"| {r['name']} | {r['task']} | {r['dataset']} | {r['metric']} | {value} | "
            f"{r['wall_s'] / 60:.1f} min | {r['epochs']} | {r['peak_rss_mib']} / "
            f"{r['peak_worker_rss_mib']} MiB | {r['notes']} |"
        )
    return "\n".join(lines)


def write_doc(results: list[dict[str, Any]], env: dict[str, Any]) -> None:
    """Replace the table between the markers of ``docs/real-data.md`` (the prose stays)."""
    table = (
        f"{TABLE_START}\nMeasured {env['measured_at']} on {env['cpus']} CPU cores "
        f"({env['processor']}), torch {env['torch']}, `python benchmarks/real_data.py`.\n\n"
        f"{markdown_table(results)}\n{TABLE_END}"
    )
    text = DOC.read_text() if DOC.is_file() else f"# Real data\n\n{TABLE_START}\n{TABLE_END}\n"
    before, _, rest = text.partition(TABLE_START)
    _, _, after = rest.partition(TABLE_END)
    atomic_write_text(DOC, before + table + after)


def main(argv: list[str] | None = None) -> None:
    """Prepare the data, run the jobs one after another, write JSON and the docs table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these jobs only")
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply every budget (0.1 for a quick check of every path)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        return run_one(json.loads(args.run_one))
    if not REAL.is_dir():
        raise SystemExit(f"no real data at {REAL}: this benchmark needs ../shared/data/real")
    all_jobs = jobs(prepare(WORK))
    names = [j.name for j in all_jobs]
    unknown = set(args.only or []) - set(names)
    if unknown:
        raise SystemExit(f"unknown job(s) {sorted(unknown)}; choose from {names}")
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    done = {r["name"]: r for r in previous.get("results", [])}
    for job in all_jobs:
        if args.only and job.name not in args.only:
            continue
        print(
            f"{job.name}: {job.task} on {job.dataset}, {job.minutes * args.budget_scale:g} min",
            flush=True,
        )
        done[job.name] = run_job(job, done, args.budget_scale)
        shown = done[job.name].get("value", done[job.name].get("error", "")[-200:])
        print(f"  -> {job.metric} {shown}", flush=True)
        env = environment()
        results = [done[n] for n in names if n in done]
        atomic_write_json(args.output, {"environment": env, "results": results})
        write_doc(results, env)


if __name__ == "__main__":
    main()
