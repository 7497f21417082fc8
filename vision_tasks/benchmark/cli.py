"""Speed, memory and learning-quality measurements per task (``tools/benchmark.py``).

Speed (:mod:`.measure`): ``--task all`` runs each task in its own process so the peak resident
memory is the task's own. Quality (``--quality``): runs ``tools/train.py --task NAME`` with its
budgeted default config on the synthetic default, records the wall time and the headline metric
of the run's report. ``--task track`` hands over to :mod:`vision_tasks.tracking.benchmark`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vision_tasks.benchmark.measure import speed
from vision_tasks.benchmark.results import environment, format_table, merge_results
from vision_tasks.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results.json"


def quality(task: str, extra_args: list[str]) -> dict[str, Any]:
    """Train the task's budgeted default on the synthetic default; wall time and headline."""
    command = [sys.executable, str(ROOT / "tools" / "train.py"), "--task", task, *extra_args]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        return {"task": task, "error": run.stderr[-2000:], "wall_s": wall}
    match = re.search(r"report:\s+(\S+)/report\.md", run.stdout)
    report = json.loads((Path(match.group(1)) / "report.json").read_text()) if match else {}
    return {
        "task": task,
        "command": " ".join(command[1:]),
        "wall_s": wall,
        "headline": report.get("headline"),
        "report": match.group(1) if match else None,
    }


def main(argv: list[str] | None = None) -> None:
    """``tools/benchmark.py`` entry point."""
    from vision_tasks.tasks import TASKS
    from vision_tasks.tracking import benchmark as tracking

    argv = sys.argv[1:] if argv is None else list(argv)
    if tracking.is_track_run(argv):  # its own options: vision_tasks/tracking/benchmark.py
        tracking.main(argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=[*TASKS, "all", "track"])
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="network input size (default: the task config's)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--fuse", action="store_true", help="fold BatchNorm into convs for inference"
    )
    parser.add_argument(
        "--quality",
        action="store_true",
        help="also train each task's budgeted default and record its headline",
    )
    parser.add_argument(
        "--grad-mode",
        choices=["inference", "no_grad"],
        default="inference",
        help="inference: torch.inference_mode (what predict uses); no_grad: for comparison",
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the speed measurements")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="JSON file; entries of other tasks or options already in it are kept",
    )
    parser.add_argument("--baseline", type=Path, default=None, help="an earlier JSON to compare")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    options = {
        "image_size": args.image_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "channels_last": args.channels_last,
        "fuse": args.fuse,
        **({"grad_mode": args.grad_mode} if args.grad_mode != "inference" else {}),
    }
    if args.worker:  # one task in this process: print its JSON for the parent
        print(json.dumps(speed(tasks[0], **options)))
        return
    results = (
        []
        if args.no_speed
        else [
            {**_speed_in_subprocess(task, argv_of(args, task)), "options": options}
            for task in tasks
        ]
    )
    qualities = [quality(task, []) for task in tasks] if args.quality else []
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    if results:
        print(format_table(results, baseline))
    for q in qualities:
        print(f"quality {q['task']}: {q.get('headline')} in {q['wall_s']:.0f} s")
    payload = merge_results(args.output, environment(), results, qualities)
    atomic_write_text(args.output, json.dumps(payload, indent=2))
    print(f"written: {args.output}")


def argv_of(args: argparse.Namespace, task: str) -> list[str]:
    """The worker command line for one task."""
    argv = [
        "--task",
        task,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--worker",
    ]
    if args.image_size is not None:
        argv += ["--image-size", str(args.image_size)]
    argv += ["--channels-last"] * args.channels_last + ["--fuse"] * args.fuse
    argv += ["--grad-mode", args.grad_mode]
    return argv


def _speed_in_subprocess(task: str, argv: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(ROOT / "tools" / "benchmark.py"), *argv]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        return {"task": task, "error": (run.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(run.stdout.strip().splitlines()[-1])
