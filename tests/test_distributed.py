"""Lightning DDP on CPU (gloo, 2 processes): sharded data, metrics gathered and computed once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vision_tasks.cli import evaluate_main

ROOT = Path(__file__).resolve().parents[1]
COUNTS = {"detect": ["images", "detections"], "reid": ["num_queries", "num_gallery"]}
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
# Two training processes each: the slow tier. The timeout matches the subprocess's own below.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.mark.parametrize("task", ["detect", "reid"])
def test_two_process_run_reports_what_one_process_computes(task, data_args, tmp_path) -> None:
    command = [
        sys.executable,
        str(ROOT / "tools" / "train.py"),
        "--task",
        task,
        *data_args,
        *DDP,
        "--data.batch_size",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
    ]
    # The timeout only guards against a hang: on a machine shared with heavy work runs are slow.
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = (tmp_path / "runs" / task).iterdir()
    distributed = json.loads((run / "report" / "report.json").read_text())
    [best] = (run / "checkpoints").glob("best-*.ckpt")
    single = evaluate_main(
        [
            "--task",
            task,
            "--ckpt",
            str(best),
            "--output",
            str(tmp_path / "one"),
            "--accelerator",
            "cpu",
        ]
    )
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    # Every sample evaluated exactly once across the 2 ranks: none lost, none doubled.
    for count in COUNTS[task]:
        assert distributed["metrics"][count] == one["metrics"][count] > 0, count
    assert distributed["headline"] == pytest.approx(single, abs=1e-6)
