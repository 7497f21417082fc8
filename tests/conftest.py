"""Shared fixtures: a tiny synthetic COCO dataset, built once per session, and a quiet env."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Timer

from vision_tasks.cli import train_main
from vision_tasks.data.synthetic import SyntheticPaths, generate

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_configure(config: pytest.Config) -> None:
    # Two cores: one intra-op thread per test process keeps timings predictable.
    torch.set_num_threads(int(os.environ.get("VISION_TASKS_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """No test reads or writes the user's dataset / weights caches."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("VISION_TASKS_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))


@pytest.fixture(autouse=True)
def _nothing_left_in_the_working_directory() -> Iterator[None]:
    """A test writes under tmp_path only. Lightning puts ``checkpoints/`` and ``lightning_logs/``
    in the working directory when a Trainer has no ``default_root_dir`` (the tasks bring their
    own ModelCheckpoint even with ``enable_checkpointing=False``): that fails the test."""
    cwd = Path.cwd()
    before = set(os.listdir(cwd))
    yield
    added = sorted(set(os.listdir(cwd)) - before)
    assert not added, f"the test left {added} in {cwd}: give its Trainer default_root_dir"


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPaths:
    """A few small synthetic images per split, with every annotation type."""
    root = tmp_path_factory.mktemp("tiny_coco")
    return generate(root, seed=0, num_train=12, num_val=6, width=160, height=120)


@pytest.fixture
def data_args(tiny_coco: SyntheticPaths) -> list[str]:
    """CLI arguments pointing a task at the tiny dataset."""
    return [
        "--data.train_json",
        str(tiny_coco.train_json),
        "--data.train_images",
        str(tiny_coco.train_images),
        "--data.val_json",
        str(tiny_coco.val_json),
        "--data.val_images",
        str(tiny_coco.val_images),
        "--data.num_workers",
        "0",
    ]


# One short fit per task, shared by the CLI, export and reliability tests.
QUICK_FIT = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--data.batch_size",
    "4",
]


class _TrainedRuns(dict):
    """{task: run folder}, each task trained on first use (``-k detect`` trains only detect)."""

    def __init__(self, data: list[str], workdir) -> None:
        super().__init__()
        self.data, self.workdir = data, workdir

    def __missing__(self, task: str):
        import os

        cwd = os.getcwd()
        os.chdir(self.workdir)  # run folders go under runs/ of the current directory
        try:
            cli = train_main(["--task", task, *self.data, *QUICK_FIT])
        finally:
            os.chdir(cwd)
        self[task] = (self.workdir / cli.trainer.log_dir).resolve()
        return self[task]


@pytest.fixture(scope="session")
def trained_runs(tiny_coco, tmp_path_factory) -> _TrainedRuns:
    """One short fit per task on the tiny dataset, on demand; maps task -> run folder."""
    data = [
        "--data.train_json",
        str(tiny_coco.train_json),
        "--data.train_images",
        str(tiny_coco.train_images),
        "--data.val_json",
        str(tiny_coco.val_json),
        "--data.val_images",
        str(tiny_coco.val_images),
        "--data.num_workers",
        "0",
    ]
    return _TrainedRuns(data, tmp_path_factory.mktemp("runs"))


class ClockAt(Timer):
    """A 10-minute time budget whose clock reads a fixed share of it spent."""

    def __init__(self, fraction: float) -> None:
        super().__init__(duration="00:00:10:00")
        self.fraction = fraction

    def time_elapsed(self, stage: str = "train") -> float:
        return 600.0 * self.fraction


@pytest.fixture
def clock_at() -> type[ClockAt]:
    """:class:`ClockAt`: a Timer callback at a known share of its budget."""
    return ClockAt
