"""VisionDataModule: COCO splits -> task datasets -> DataLoaders (workers, samplers, collate).

Each task subclasses it in its own file with ``build_dataset`` (and ``collate`` where samples
differ in size). With no JSON given, the synthetic default dataset is generated (once, cached)
and used, so ``tools/train.py --task NAME`` runs with no data argument.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import os
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from vision_tasks.data.coco import CocoDataError, CocoIndex, Policy
from vision_tasks.data.synthetic import synthetic_dataset

log = logging.getLogger(__name__)


def seed_augmentation(dataset: Dataset, seed: int) -> None:
    """Seed a dataset's albumentations pipeline (its ``transform``), if it has one."""
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed % 2**32)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Lightning's per-worker seeding, then the augmentation's.

    albumentations draws from its own generators, seeded from OS entropy unless told otherwise,
    so ``seed_everything`` alone leaves augmentation (and so the metrics) unreproducible; and
    every worker would otherwise share one copy of the same stream.
    """
    pl_worker_init_function(worker_id)
    seed_augmentation(get_worker_info().dataset, torch.initial_seed())


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for one (run seed, epoch, process) triple, well mixed (``SeedSequence``)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class EpochSeededLoader(DataLoader):
    """Training DataLoader whose randomness is a function of (seed, epoch) alone.

    Lightning creates a run's first iterator early (``estimated_stepping_batches`` in
    ``configure_optimizers``), before a resumed run's epoch is restored and before any hook can
    restore the random state; a loader drawing from the global generator there would shuffle
    and augment the resumed epoch differently from the uninterrupted run. So the iterator
    starts on its first batch, and first reseeds its own generator (shuffling, worker base
    seeds), the samplers' epoch and in-process augmentation from ``(seed, epoch, rank)``.

    Args:
        seed: the run's seed (``seed_everything``).
        epoch_and_rank: returns the trainer's current epoch and global rank.
        before_epoch: called with the dataset as each epoch's iterator starts, before workers
            copy the dataset (they are not persistent), so a change it makes reaches them.
    """

    def __init__(
        self,
        *args: Any,
        seed: int,
        epoch_and_rank: Callable[[], tuple[int, int]],
        before_epoch: Callable[[Dataset], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, generator=torch.Generator(), **kwargs)
        self.seed, self.epoch_and_rank, self.before_epoch = seed, epoch_and_rank, before_epoch

    def __iter__(self) -> Iterator[Any]:
        return _StartsOnFirstBatch(self._seeded_iterator)

    def _seeded_iterator(self) -> Iterator[Any]:
        epoch, rank = self.epoch_and_rank()
        if self.before_epoch is not None:
            self.before_epoch(self.dataset)
        self.generator.manual_seed(epoch_seed(self.seed, epoch))  # same on every rank
        samplers = {id(s): s for s in (self.batch_sampler, self.sampler) if s is not None}
        for sampler in samplers.values():
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)
        if self.num_workers == 0:  # workers seed theirs in seed_worker, from the base seed
            seed_augmentation(self.dataset, epoch_seed(self.seed, epoch, rank))
        return super().__iter__()


class _StartsOnFirstBatch:
    """An iterator created by ``start()`` when the first item is asked for."""

    def __init__(self, start: Callable[[], Iterator[Any]]) -> None:
        self._start, self._iterator = start, None

    def __iter__(self) -> _StartsOnFirstBatch:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)


WORKER_START_METHODS = ("forkserver", "spawn", "fork")


class WorkerStartError(ValueError):
    """``VISION_TASKS_WORKER_START`` names no start method (a user error: one line)."""


def worker_context() -> multiprocessing.context.BaseContext:
    """How loader workers start: ``forkserver`` unless ``VISION_TASKS_WORKER_START`` says
    ``spawn`` or ``fork``.

    A forked worker inherits every lock of a multithreaded parent (OpenMP, OpenCV and ONNX
    Runtime pools, the loaders' queue feeders, TensorBoard's writer) as it was at that instant;
    one held then stays held in the child, which waits on it forever. A validation worker hung
    so in CI on 2026-12-07 (its parent waited 600 s; which lock it was is not known). The fork
    server is a fresh interpreter (exec, not fork) that only imports, and every worker is forked
    from it: nothing is held there (Python 3.14's default for the same reason). The cost:
    the dataset and collate function are pickled to each worker (BCCD, 2 workers: the first
    batch after 0.64 s instead of 0.12 s, once an epoch), and a script that starts training
    must guard it with ``if __name__ == "__main__"``; ``VISION_TASKS_WORKER_START=fork`` is
    the way back for one that cannot.
    """
    method = os.environ.get("VISION_TASKS_WORKER_START", "forkserver")
    if method not in WORKER_START_METHODS:
        raise WorkerStartError(
            f"VISION_TASKS_WORKER_START={method!r}: choose one of {', '.join(WORKER_START_METHODS)}"
        )
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # Imported once in the server, so each worker starts without importing torch again.
        context.set_forkserver_preload(["__main__", __name__])
    return context


def default_num_workers() -> int:
    """Loader workers: decoding and augmentation in 2 processes keep a small CPU busy."""
    return min(2, os.cpu_count() or 1)


class VisionDataModule(L.LightningDataModule):
    """Train / val / test splits of COCO data for one task.

    Args:
        train_json: COCO JSON of the training split (``None``: the synthetic default).
        train_images: folder the training ``file_name``s are relative to.
        val_json: COCO JSON of the validation split (also the test split unless ``test_json``).
        val_images: folder of the validation images.
        test_json: optional separate test split.
        test_images: folder of the test images.
        image_size: network input size (square side, pixels).
        batch_size: samples per batch (per process under DDP).
        num_workers: loader processes; ``None`` picks :func:`default_num_workers`.
        policy: ``strict`` stops on any bad record; ``skip`` drops bad records and counts them;
            ``clip`` clips boxes that cross the image edge (MOT ground truth) and skips the rest.
        synthetic_seed: seed of the synthetic default dataset.
        synthetic_train: training images in the synthetic default dataset.
        synthetic_val: validation images in the synthetic default dataset.
    """

    # A task whose model predicts categories needs at least one; re-ID and homography do not.
    needs_categories: ClassVar[bool] = True

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 224,
        batch_size: int = 16,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if train_json is None and val_json is None:
            paths = synthetic_dataset(synthetic_seed, synthetic_train, synthetic_val)
            train_json, train_images = str(paths.train_json), str(paths.train_images)
            val_json, val_images = str(paths.val_json), str(paths.val_images)
        self.splits = {
            "train": _split(train_json, train_images, "train"),
            "val": _split(val_json, val_images, "val"),
            "test": _split(test_json, test_images, "test") or _split(val_json, val_images, "val"),
        }
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        # Read here, not when the first loader starts: a wrong value is then one line at start-up.
        self.worker_context = worker_context()
        self.policy = policy
        self.datasets: dict[str, Dataset] = {}
        self.split_labels: dict[str, str] = {}  # e.g. tools/evaluate.py --split NAME

    # ---- hooks a task implements -------------------------------------------------------
    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """This task's view of one COCO split (``train`` switches augmentation on)."""
        raise NotImplementedError

    # A plain function, not a method: workers start from a clean process and get it pickled,
    # and a bound method would drag the datamodule (and its trainer) along. Tasks with ragged
    # targets set their own module-level function here the same way.
    collate = staticmethod(default_collate)

    def train_batch_sampler(self, dataset: Dataset) -> Sampler | None:
        """A batch sampler for training (P x K for re-ID); ``None`` means shuffled batches."""
        return None

    def before_train_epoch(self, dataset: Dataset) -> None:
        """Adjust the training dataset as an epoch starts (the multitask data's input size)."""

    def describe_samples(self) -> str:
        """What this task's samples are made of, for the error that an empty split gives."""
        return "images"

    # ---- indexes and categories ----------------------------------------------------------
    def index(self, split: str) -> CocoIndex:
        """The validated COCO index of ``split`` (loaded once)."""
        return self._indexes[split]

    def split_label(self, split: str) -> str:
        """How reports name ``split``: its JSON file's name, after a ``split_labels`` entry."""
        paths, label = self.splits.get(split), self.split_labels.get(split)
        if paths is None:
            return label or split
        return f"{label} ({Path(paths[0]).name})" if label else Path(paths[0]).name

    @cached_property
    def _indexes(self) -> _LazyIndexes:
        # Loaded on first use: evaluating one split neither reads nor validates the others.
        return _LazyIndexes(self.splits, self.policy)

    @cached_property
    def categories(self) -> list[dict[str, Any]]:
        """Category records (id, name, keypoints, skeleton) shared by every split."""
        indexes = self._indexes
        reference_split = "train" if "train" in indexes else next(iter(indexes))
        reference = indexes[reference_split]
        if self.needs_categories and not reference.categories:
            raise CocoDataError(
                f"{reference.json_path}: field 'categories': the list is empty; "
                f"this task needs at least one category"
            )
        for index in indexes.values():
            if index.category_ids != reference.category_ids:
                raise CocoDataError(
                    f"{index.json_path}: categories {index.category_ids} differ from "
                    f"{reference.json_path}: {reference.category_ids}; every split needs the same "
                    f"category ids"
                )
        return [dict(c) for c in reference.categories]

    def adopt_categories(self, categories: list[dict[str, Any]]) -> None:
        """Evaluate with a trained model's categories; the test split must carry the same ids."""
        index, ids = self.index("test"), [c["id"] for c in categories]
        if index.category_ids != ids:
            raise CocoDataError(
                f"{index.json_path}: category ids {index.category_ids} differ "
                f"from the checkpoint's {ids}"
            )
        self.categories = [dict(c) for c in categories]

    # ---- Lightning hooks -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs."""
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}
        if self.needs_categories:
            self.categories  # noqa: B018 -- checks them (shared by every split, not empty)
        for split in wanted.get(stage or "fit", ["test"]):
            if split not in self.datasets and split in self._indexes:
                self.datasets[split] = self._build(split)

    def train_dataloader(self) -> DataLoader:
        """Shuffled (or task-sampled) training batches."""
        dataset = self._dataset("train")
        batch_sampler = self.train_batch_sampler(dataset)
        if batch_sampler is not None:
            return self._loader(dataset, training=True, batch_sampler=batch_sampler)
        return self._loader(
            dataset, training=True, shuffle=True, drop_last=len(dataset) > self.batch_size
        )

    def val_dataloader(self) -> DataLoader:
        """Validation batches in index order."""
        return self._loader(self._dataset("val"))

    def test_dataloader(self) -> DataLoader:
        """Test batches in index order (the validation split unless a test split is given)."""
        return self._loader(self._dataset("test"))

    def predict_dataloader(self) -> DataLoader:
        """Prediction batches over the test split."""
        return self._loader(self._dataset("test"))

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            if split not in self._indexes:
                raise CocoDataError(
                    f"no {split} split given: pass --data.{split}_json and --data.{split}_images"
                )
            self.datasets[split] = self._build(split)
        return self.datasets[split]

    def _build(self, split: str) -> Dataset:
        """``build_dataset`` of ``split``, refusing one without samples: an empty sampler or
        loader fails later with a message that names neither the file nor what is missing."""
        index = self._indexes[split]
        dataset = self.build_dataset(index, split == "train")
        if len(dataset) == 0:
            raise CocoDataError(
                f"{index.json_path}: the {split} split has no samples: this "
                f"task needs {self.describe_samples()}"
            )
        return dataset

    def _loader(self, dataset: Dataset, training: bool = False, **kwargs: Any) -> DataLoader:
        if "batch_sampler" not in kwargs:
            kwargs["batch_size"] = self.batch_size
        common = dict(
            num_workers=self.num_workers,
            collate_fn=self.collate,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
        )
        if self.num_workers > 0:
            common["multiprocessing_context"] = self.worker_context
        if training:
            # Fresh workers every epoch: persistent ones would carry augmentation streams a
            # resumed run cannot rebuild. Their start-up is a small share of an epoch here.
            return EpochSeededLoader(
                dataset,
                seed=self._seed(),
                epoch_and_rank=self._epoch_and_rank,
                before_epoch=self.before_train_epoch,
                persistent_workers=False,
                **common,
                **kwargs,
            )
        if self.num_workers == 0:
            seed_augmentation(dataset, 0)
        # Its own generator: evaluation never moves the global random stream training uses.
        return DataLoader(
            dataset,
            generator=torch.Generator().manual_seed(0),
            persistent_workers=self.num_workers > 0,
            **common,
            **kwargs,
        )

    def _seed(self) -> int:
        # seed_everything (the CLI always calls it) publishes the seed here, also to DDP workers.
        seed = os.environ.get("PL_GLOBAL_SEED")
        return int(seed) if seed is not None else int(torch.randint(2**31, ()).item())

    def _epoch_and_rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.current_epoch, trainer.global_rank) if trainer is not None else (0, 0)


class _LazyIndexes(Mapping):
    """``{split: CocoIndex}`` of the given splits, each validated when first asked for (one
    index per file: a test split that is the validation file shares its index)."""

    def __init__(self, splits: dict[str, tuple[str, str] | None], policy: Policy) -> None:
        self.paths = {split: paths for split, paths in splits.items() if paths is not None}
        self.policy = policy
        self.loaded: dict[str, CocoIndex] = {}

    def __getitem__(self, split: str) -> CocoIndex:
        if split not in self.loaded:
            json_path, images = self.paths[split]
            same_file = (i for i in self.loaded.values() if i.json_path == Path(json_path))
            index = next(same_file, None) or CocoIndex(json_path, images, policy=self.policy)
            self.loaded[split] = index
        return self.loaded[split]

    def __contains__(self, split: object) -> bool:
        return split in self.paths

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def _split(json_path: str | None, images: str | None, name: str) -> tuple[str, str] | None:
    if json_path is None:
        return None
    if images is None:
        raise CocoDataError(f"--data.{name}_json is set but --data.{name}_images is not")
    return json_path, images
