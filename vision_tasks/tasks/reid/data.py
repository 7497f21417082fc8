"""Re-ID data: crops of identity-carrying annotations, the P x K sampler, the data module."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, Dataset, DistributedSampler

from vision_tasks import ops
from vision_tasks.data.coco import CocoDataError, CocoIndex, Policy, is_integer
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import reid_transforms

log = logging.getLogger(__name__)

# ---- dataset view -----------------------------------------------------------------------------


def crop_size(image_size: int, aspect_ratio: float) -> tuple[int, int]:
    """Crop ``(width, height)``: ``image_size`` is the height, ``aspect_ratio`` = width / height."""
    return max(8, round(image_size * aspect_ratio)), image_size


class ReidDataset(Dataset):
    """Identity-carrying annotations of a COCO split as crops.

    Samples are ``{"image", "identity", "label", "camera", "is_query", "image_id",
    "annotation_id"}``; ``label`` is the contiguous index of the identity among this split's
    identities (for the identity loss) when ``train``, else -1.
    """

    def __init__(
        self,
        index: CocoIndex,
        image_size: int,
        train: bool,
        aspect_ratio: float = 0.5,
        identity_field: str = "track_id",
        camera_field: str = "camera_id",
        crop_margin: float = 0.1,
    ) -> None:
        self.index = index
        self.size = crop_size(image_size, aspect_ratio)
        self.crop_margin = crop_margin
        self.transform = reid_transforms(self.size[1], self.size[0], train)
        self.skipped: Counter[str] = Counter()
        self.samples = self._samples(identity_field, camera_field)
        self.identities = [s["identity"] for s in self.samples]
        self.cameras = [s["camera"] for s in self.samples]
        self.is_query = self._query_flags()
        known = sorted(set(self.identities)) if train else []
        self.labels = {identity: i for i, identity in enumerate(known)}
        self.positions = {s["ann"]["id"]: i for i, s in enumerate(self.samples)}
        if self.skipped:
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
            log.info("%s: re-ID left out %s", index.json_path.name, counts)

    def _samples(self, identity_field: str, camera_field: str) -> list[dict[str, Any]]:
        samples, name = [], self.index.json_path.name
        for image_id in self.index.image_ids:
            image = self.index.image_info(image_id)
            for ann in self.index.annotations(image_id, include_crowd=False):
                identity = ann.get(identity_field)
                if identity is not None and not is_integer(identity):
                    raise CocoDataError(
                        f"{name}: annotation id={ann['id']}: field '{identity_field}': expected "
                        f"an integer identity (or null / -1 for none), got {identity!r}"
                    )
                if identity is None or identity < 0:
                    self.skipped["annotations without identity"] += 1
                    continue
                camera = image.get(camera_field)
                if not is_integer(camera):
                    raise CocoDataError(
                        f"{name}: image id={image_id}: field '{camera_field}': expected an "
                        f"integer camera id, got {camera!r} (set --data.camera_field)"
                    )
                samples.append(
                    {
                        "image_id": image_id,
                        "ann": ann,
                        "identity": identity,
                        "camera": camera,
                        "split": image.get("split"),
                    }
                )
        return samples

    def _query_flags(self) -> list[bool]:
        """Query marks from the data, else the first sample of each (identity, camera)."""
        marks = ("query", "gallery")
        if any("is_query" in s["ann"] or s["split"] in marks for s in self.samples):
            return [bool(s["ann"].get("is_query", s["split"] == "query")) for s in self.samples]
        first: dict[tuple[int, int], int] = {}
        for i, s in enumerate(self.samples):
            key = (s["identity"], s["camera"])
            if key not in first or s["ann"]["id"] < self.samples[first[key]]["ann"]["id"]:
                first[key] = i
        chosen = set(first.values())
        return [i in chosen for i in range(len(self.samples))]

    def __len__(self) -> int:
        return len(self.samples)

    def crop(self, i: int) -> np.ndarray:
        """The un-augmented crop of sample ``i`` (H, W, 3) uint8 RGB."""
        sample = self.samples[i]
        x, y, w, h = sample["ann"]["bbox"]
        matrix = ops.box_affine([x, y, x + w, y + h], self.size, margin=self.crop_margin)
        return ops.crop_affine(self.index.load_image(sample["image_id"]), matrix, self.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        return {
            "image": self.transform(image=self.crop(i))["image"],
            "identity": sample["identity"],
            "label": self.labels.get(sample["identity"], -1),
            "camera": sample["camera"],
            "is_query": self.is_query[i],
            "image_id": sample["image_id"],
            "annotation_id": sample["ann"]["id"],
        }


# ---- P x K sampler ----------------------------------------------------------------------------


class _Cycle:
    """Draws items in shuffled rounds; ``take(n)`` gives n distinct items (n <= len(items))."""

    def __init__(self, items: Sequence[int], rng: np.random.Generator) -> None:
        self.items, self.rng, self.queue = list(items), rng, []

    def take(self, n: int) -> list[int]:
        if len(self.queue) < n:  # new round, never repeating what is still queued
            rest = set(self.queue)
            self.queue += [x for x in self.rng.permutation(self.items).tolist() if x not in rest]
        taken, self.queue = self.queue[:n], self.queue[n:]
        return taken


class PKBatchSampler(BatchSampler):
    """Batches of P identities x K instances, deterministic in (seed, epoch), sharded for DDP.

    Identities with fewer than 2 instances cannot form a positive pair and are left out (counted
    in ``left_out``). Identities come in shuffled rounds (each seen about equally often); an
    identity with fewer than K instances repeats some. One epoch has ``len(samples) // (P * K)``
    batches over all processes; every process builds the same global sequence from
    ``(seed, epoch)`` and takes every ``num_replicas``-th batch, so all ranks run the same
    number of steps.

    The shard and the epoch are read from ``sampler``, a :class:`DistributedSampler` used only
    for its ``num_replicas``, ``rank`` and ``epoch`` (it draws nothing): this is the object
    Lightning injects into a batch sampler under DDP and whose ``set_epoch`` it calls every epoch.

    Args:
        sampler: the shard (``None``: one process); see above.
        identities: (N,) identity of every dataset sample.
        num_identities: P, identities per batch (fewer if fewer are eligible).
        num_instances: K, samples per identity in a batch.
        seed: seed of the sampling.
    """

    def __init__(
        self,
        sampler: DistributedSampler | None,
        identities: Sequence[int],
        num_identities: int = 16,
        num_instances: int = 4,
        seed: int = 0,
    ) -> None:
        # No super().__init__(): BatchSampler's checks assume a batch size over an index sampler.
        if sampler is None:
            sampler = DistributedSampler(range(len(identities)), 1, 0, shuffle=False)
        self.sampler = sampler
        groups: dict[int, list[int]] = defaultdict(list)
        for i, identity in enumerate(identities):
            groups[identity].append(i)
        self.groups = {k: v for k, v in sorted(groups.items()) if len(v) >= 2}
        self.left_out = len(groups) - len(self.groups)
        if len(self.groups) < 2:
            raise CocoDataError(
                f"P x K sampling needs 2 or more identities with 2 or more samples each; the "
                f"training split has {len(self.groups)} ({len(groups)} identities in all)"
            )
        if num_instances < 2 or num_identities < 2:
            raise ValueError(f"P and K must be >= 2, got P={num_identities}, K={num_instances}")
        self.num_identities = min(num_identities, len(self.groups))
        self.num_instances, self.seed = num_instances, seed
        self.batch_size, self.drop_last = self.num_identities * num_instances, True
        eligible = sum(len(v) for v in self.groups.values())
        self.num_batches = max(1, eligible // self.batch_size // self.sampler.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (Lightning calls this on ``self.sampler`` for us)."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.Generator(np.random.PCG64([self.seed, self.sampler.epoch]))
        identities = _Cycle(list(self.groups), rng)
        instances = {k: _Cycle(v, rng) for k, v in self.groups.items()}
        world, rank = self.sampler.num_replicas, self.sampler.rank
        for step in range(self.num_batches * world):
            batch = []
            for identity in identities.take(self.num_identities):
                members = self.groups[identity]
                if len(members) >= self.num_instances:
                    batch += instances[identity].take(self.num_instances)
                else:  # every member once, the rest drawn again
                    extra = rng.choice(members, self.num_instances - len(members)).tolist()
                    batch += members + extra
            if step % world == rank:
                yield batch


# ---- data module ------------------------------------------------------------------------------


class ReidData(VisionDataModule):
    """Re-ID data: crops of identity-carrying annotations, P x K training batches.

    ``batch_size`` = P x K: K is ``num_instances`` (at most half the batch), P = batch_size // K.
    """

    needs_categories = False  # identities, not categories

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 128,
        batch_size: int = 64,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        aspect_ratio: float = 0.5,
        num_instances: int = 4,
        identity_field: str = "track_id",
        camera_field: str = "camera_id",
        crop_margin: float = 0.1,
        sampler_seed: int = 0,
    ) -> None:
        super().__init__(
            train_json=train_json,
            train_images=train_images,
            val_json=val_json,
            val_images=val_images,
            test_json=test_json,
            test_images=test_images,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            policy=policy,
            synthetic_seed=synthetic_seed,
            synthetic_train=synthetic_train,
            synthetic_val=synthetic_val,
        )
        self.aspect_ratio = aspect_ratio
        self.num_instances = num_instances
        self.identity_field, self.camera_field = identity_field, camera_field
        self.crop_margin = crop_margin
        self.sampler_seed = sampler_seed

    def describe_samples(self) -> str:
        """Non-crowd annotations that carry an identity."""
        return (
            f"non-crowd annotations with an identity: an integer field "
            f"'{self.identity_field}' >= 0 (another field: --data.identity_field)"
        )

    def build_dataset(self, index: CocoIndex, train: bool) -> ReidDataset:
        """Crops of the annotations that carry an identity."""
        return ReidDataset(
            index,
            self.image_size,
            train,
            self.aspect_ratio,
            self.identity_field,
            self.camera_field,
            self.crop_margin,
        )

    def train_batch_sampler(self, dataset: ReidDataset) -> PKBatchSampler:
        """P x K batches, sharded by this process's rank."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        shard = DistributedSampler(range(len(dataset)), world, rank, shuffle=False)
        k = min(self.num_instances, max(2, self.batch_size // 2))
        try:
            sampler = PKBatchSampler(
                shard, dataset.identities, max(2, self.batch_size // k), k, self.sampler_seed
            )
        except CocoDataError as error:
            raise CocoDataError(
                f"{dataset.index.json_path}: field '{self.identity_field}': {error}"
            ) from None
        if sampler.left_out:
            log.info("P x K sampler: %d identities with one sample left out", sampler.left_out)
        return sampler

    @property
    def num_train_identities(self) -> int:
        """Identities of the training split (the identity classifier's classes)."""
        return len(self._dataset("train").labels)
