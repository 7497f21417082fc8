"""Loader workers start from a clean process: nothing a busy parent holds reaches them."""

from __future__ import annotations

import inspect
import pickle
import threading

import pytest
import torch
from torch.utils.data import Dataset

from vision_tasks.cli import train_main
from vision_tasks.data.datamodule import WORKER_START_METHODS, WorkerStartError, worker_context
from vision_tasks.tasks import TASKS
from vision_tasks.tasks.classify import ClassifyData

# Held by the test process while workers load: a forked worker would inherit it held and wait
# on it for ever, as happens to any lock another thread holds at the instant of a fork.
PARENT_LOCK = threading.Lock()


class NeedsTheLock(Dataset):
    """Each sample takes :data:`PARENT_LOCK`, as library code in a worker takes its own locks."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        if not PARENT_LOCK.acquire(timeout=20):
            raise RuntimeError("the worker inherited the parent's held lock")
        PARENT_LOCK.release()
        return torch.tensor(i)


def test_workers_do_not_inherit_a_lock_the_parent_holds(tiny_coco, monkeypatch) -> None:
    monkeypatch.delenv("VISION_TASKS_WORKER_START", raising=False)
    data = ClassifyData(
        str(tiny_coco.train_json),
        str(tiny_coco.train_images),
        str(tiny_coco.val_json),
        str(tiny_coco.val_images),
        batch_size=2,
        num_workers=1,
    )
    loader = data._loader(NeedsTheLock())
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    with PARENT_LOCK:
        batches = [batch.tolist() for batch in loader]
    assert batches == [[0, 1], [2, 3]]


def test_the_start_method_can_be_chosen_and_a_wrong_one_is_named(monkeypatch) -> None:
    monkeypatch.setenv("VISION_TASKS_WORKER_START", "fork")
    assert worker_context().get_start_method() == "fork"
    monkeypatch.setenv("VISION_TASKS_WORKER_START", "forks")
    with pytest.raises(WorkerStartError, match=r"VISION_TASKS_WORKER_START='forks'.*forkserver"):
        worker_context()
    assert set(WORKER_START_METHODS) <= {"fork", "spawn", "forkserver"}


def test_a_wrong_start_method_stops_training_with_one_line(
    data_args, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISION_TASKS_WORKER_START", "forks")
    with pytest.raises(SystemExit) as error:
        train_main(["--task", "classify", *data_args, "--trainer.fast_dev_run", "true"])
    message = str(error.value.code)
    assert message.startswith("error: VISION_TASKS_WORKER_START='forks'")
    assert "\n" not in message
    assert not list(tmp_path.glob("runs/classify/*"))  # a failed start leaves no run folder


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_collate_pickles_without_its_datamodule(task: str) -> None:
    """Workers get the collate function pickled; a bound method would carry the trainer."""
    data_class = TASKS[task].data
    assert isinstance(inspect.getattr_static(data_class, "collate"), staticmethod)
    assert pickle.loads(pickle.dumps(data_class.collate)) is data_class.collate
