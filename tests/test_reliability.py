"""Runs that die or repeat: atomic checkpoints, SIGKILL + resume, NaN stop, seeds."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vision_tasks.cli import train_main
from vision_tasks.tasks.classify import ClassifyTask
from vision_tasks.utils import AtomicCheckpointIO, atomic_write_image

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_a_save_that_dies_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "weights": torch.arange(1000.0)}, path)

    def die(fd: int) -> None:  # the process "dies" after writing, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(1000)}, path)
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 1 and torch.equal(saved["weights"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def _headline(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "report" / "report.json").read_text())["headline"]


def _train_in(workdir: Path, args: list[str]) -> Path:
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cli = train_main(args)
        return (workdir / cli.trainer.log_dir).resolve()
    finally:
        os.chdir(cwd)


@pytest.mark.slow  # two fits per case, compared
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("task, workers", [("classify", "1"), ("detect", "0")])
def test_same_seed_gives_the_same_metrics(task, workers, data_args, tmp_path) -> None:
    args = [
        "--task",
        task,
        *data_args,
        "--data.num_workers",
        workers,
        "--data.batch_size",
        "4",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "3",
        *QUIET,
    ]
    runs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        (tmp_path / name).mkdir()
        runs.append(_train_in(tmp_path / name, [*args, "--seed_everything", seed]))
    losses = [(run / "metrics.csv").read_text() for run in runs]
    assert _headline(runs[0]) == _headline(runs[1]) and losses[0] == losses[1]
    assert losses[0] != losses[2]  # the seed does reach initialisation and augmentation


def _command(data_args: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "tools" / "train.py"),
        "--task",
        "classify",
        *data_args,
        "--data.batch_size",
        "2",
        "--trainer.max_epochs",
        "6",
        *QUIET,
        *extra,
    ]


def _wait_for_last_checkpoint(run: subprocess.Popen, runs: Path, epoch: int, log: Path) -> int:
    """Poll until the run's ``last.ckpt`` records ``epoch`` or later; return the epoch it records.

    Waits on the event itself, with a deadline only against a hang: on a machine shared with
    other heavy work, starting the run alone has taken minutes.
    """
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        for path in runs.glob("*/checkpoints/last.ckpt"):
            # Replaced by a rename, never rewritten in place: any version read is whole.
            saved = torch.load(path, weights_only=True, mmap=True)["epoch"]
            if saved >= epoch:
                return saved
        if run.poll() is not None:
            pytest.fail(
                f"the run ended (exit {run.returncode}) before saving epoch {epoch}:\n"
                f"{log.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    run.kill()
    pytest.fail(f"no last.ckpt of epoch {epoch} after 900 s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow  # three six-epoch fits, one of them killed
@pytest.mark.timeout(3600)
def test_killed_run_resumes_from_last_and_ends_like_an_uninterrupted_one(data_args, tmp_path):
    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    subprocess.run(_command(data_args), cwd=tmp_path / "whole", check=True, capture_output=True)
    [whole] = (tmp_path / "whole" / "runs" / "classify").iterdir()

    log = tmp_path / "killed.log"
    with log.open("w") as output:
        run = subprocess.Popen(
            _command(data_args), cwd=tmp_path / "killed", stdout=output, stderr=subprocess.STDOUT
        )
        checkpoints = tmp_path / "killed" / "runs" / "classify"
        # Killed once epoch 1 is saved: epochs 2-5 are still to run, so the kill lands mid-run
        # however slow the machine, and last.ckpt exists (it is only ever replaced by rename).
        _wait_for_last_checkpoint(run, checkpoints, 1, log)
        run.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
    [killed] = checkpoints.iterdir()
    assert not (killed / "report").exists(), "the run ended before the kill: nothing was tested"
    interrupted_at = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert 1 <= interrupted_at < 5
    # What a kill during a save leaves: the resumed run deletes it, and only it.
    stale = killed / "checkpoints" / ".last.ckpt.k1ll3d_x.tmp"
    stale.write_bytes(b"the first half of a checkpoint")
    unrelated = killed / "checkpoints" / "notes.tmp"
    unrelated.write_text("not written by vision_tasks")

    subprocess.run(
        _command(data_args, "--ckpt_path", "last"),
        cwd=tmp_path / "killed",
        check=True,
        capture_output=True,
    )
    assert not stale.exists() and unrelated.exists()
    assert _headline(killed) == pytest.approx(_headline(whole), abs=1e-6)
    # The resumed run continued the interrupted run's metrics.csv: every epoch's validation
    # row is there once, equal to the uninterrupted run's.
    assert _validation_rows(killed) == _validation_rows(whole)
    assert [epoch for epoch, _ in _validation_rows(whole)] == list(range(6))


def _validation_rows(run_dir: Path) -> list[tuple[int, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [(int(r["epoch"]), r["val/loss"]) for r in csv.DictReader(handle) if r["val/loss"]]


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    data_args, tmp_path, monkeypatch
) -> None:
    original, calls = ClassifyTask.compute_loss, []

    def poisoned(self, outputs, batch):
        losses = original(self, outputs, batch)
        calls.append(self.current_epoch)
        if self.training and self.current_epoch == 1:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(ClassifyTask, "compute_loss", poisoned)
    args = ["--task", "classify", *data_args, "--trainer.max_epochs", "3", *QUIET]
    with pytest.raises(SystemExit, match=r"train loss is nan at epoch 1.*last good checkpoint"):
        _train_in(tmp_path, args)
    [last] = (tmp_path / "runs" / "classify").glob("*/checkpoints/last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 0
    weights = [v for v in saved["state_dict"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)


def test_last_checkpoint_follows_every_epoch_even_when_the_metric_stalls(data_args, tmp_path):
    # A zero learning rate: the metric can only wander (the head's BN statistics still move).
    args = [
        "--task",
        "classify",
        *data_args,
        "--trainer.max_epochs",
        "4",
        "--model.lr",
        "0",
        "--model.freeze_at",
        "5",
        *QUIET,
    ]
    run = _train_in(tmp_path, args)
    rows = csv.DictReader((run / "metrics.csv").open())
    top1 = [float(row["val/top1"]) for row in rows if row.get("val/top1")]
    best_epoch = max(range(len(top1)), key=lambda e: (top1[e], -e))
    [best] = (run / "checkpoints").glob("best-*.ckpt")
    assert best.name == f"best-{best_epoch:03d}.ckpt"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3


def test_channels_last_callback_trains_in_nhwc_to_the_same_result(
    data_args, tmp_path, monkeypatch
) -> None:
    seen = []
    original = ClassifyTask.training_step

    def probe(self, batch, batch_idx):
        stem_weight, nhwc = self.backbone.stem[0].weight, torch.channels_last
        seen.append(
            (
                batch["image"].is_contiguous(memory_format=nhwc),
                stem_weight.is_contiguous(memory_format=nhwc),
            )
        )
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ClassifyTask, "training_step", probe)
    args = [
        "--task",
        "classify",
        *data_args,
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "4",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        *QUIET,
    ]
    (tmp_path / "plain").mkdir()
    (tmp_path / "nhwc").mkdir()
    plain = _train_in(tmp_path / "plain", args)
    assert seen and not any(image or weight for image, weight in seen)
    seen.clear()
    callback = "--trainer.callbacks+=vision_tasks.utils.ChannelsLast"
    nhwc = _train_in(tmp_path / "nhwc", [*args, callback])
    assert seen and all(image and weight for image, weight in seen)
    # Same arithmetic in another memory layout: the metrics agree to float noise.
    assert _headline(nhwc) == pytest.approx(_headline(plain), abs=1e-4)


def test_prediction_drawings_are_written_whole_in_rgb_and_bad_suffixes_fail(tmp_path) -> None:
    import cv2
    import numpy as np

    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: a channel-order slip would read back as blue
    path = atomic_write_image(tmp_path / "drawn.png", rgb)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["drawn.png"]  # no temporary file left
    with pytest.raises(ValueError, match="drawn.xyz"):
        atomic_write_image(tmp_path / "drawn.xyz", rgb)
