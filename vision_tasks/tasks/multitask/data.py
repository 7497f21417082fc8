"""Joint-model data: one letterboxed image with every label it has, and a mask for what it lacks.

A sample carries boxes, a semantic label map, keypoints and identities of one image at once.
COCO files differ in what they annotate (``instances_*.json`` has boxes and polygons,
``person_keypoints_*.json`` boxes and keypoints of persons only), and several training files can
be mixed in one run, so what each image is labelled with is read from its file:

- boxes: the categories that occur in the file are annotated there (``class_mask``); an image of
  a file with boxes of persons only teaches nothing about circles, not "circles are background";
- masks: the file has masks if any of its non-crowd annotations has a segmentation
  (``has_mask``); an unsegmented annotation in such a file is ignored over its box;
- instance masks (``instance_masks=True``, for the ``instance`` head): per non-crowd annotation
  with a segmentation (``instance_has_mask``), rasterised and letterboxed as the instance task
  does;
- keypoints and identities: per annotation (visibility 0, ``num_keypoints`` 0, identity
  missing / negative: unlabelled);
- image label (classify): the image record's ``category_id``, else the category of its only
  non-crowd annotation; otherwise none.

Losses are then taken over the labelled samples / instances only (``tasks/multitask/losses.py``).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import ConcatDataset, Dataset

from vision_tasks import ops
from vision_tasks.data.coco import CocoDataError, CocoIndex, Policy, is_integer
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import colour_shifted, multitask_transforms
from vision_tasks.tasks.instance.data import instance_masks, letterbox_masks
from vision_tasks.tasks.keypoints import flip_pairs_from_names, flip_permutation
from vision_tasks.tasks.reid import ReidDataset
from vision_tasks.tasks.segment import IGNORE_INDEX, pad_stack, semantic_label_map
from vision_tasks.utils import time_budget_spent

RAGGED = (
    "boxes_xyxy",
    "label",
    "crowd",
    "keypoints",
    "identity",
    "identity_label",
    "annotation_id",
    "keypoints_original",
    "boxes_original",
    "is_query",
    "instance_masks",
    "instance_has_mask",
)


class MultiTaskDataset(Dataset):
    """One COCO file's images letterboxed to ``image_size`` with all their labels.

    Sample keys: ``image`` (3, S, S); per instance (n of them, crowd included) ``boxes_xyxy``
    (n, 4) network pixels, ``label`` (n,) class index, ``crowd`` (n,), ``keypoints`` (n, K, 3)
    network pixels (COCO's continuous coordinates) + visibility, ``identity`` (n,) (-1: none),
    ``identity_label`` (n,) contiguous training label (-1: none), ``annotation_id`` (n,); per
    image ``mask`` (S, S) label map (``IGNORE_INDEX`` where unknown), ``has_mask``,
    ``class_mask`` (C,), ``image_label`` (-1: none), ``camera`` (-1: none), ``image_id`` and the
    letterbox ``scale`` / ``pad`` / ``orig_size``; ``colour_shifted``: the augmentation shifted
    its colours (``colour_shift``), so its identities do not train re-ID (an identity is its
    colours: a red shirt turned blue is another person). Evaluation samples add ``mask_original``,
    ``keypoints_original`` / ``boxes_original`` (COCO pixels) and ``is_query`` (n,). With
    ``instance_masks``: ``instance_masks`` (n, S, S) uint8 coverage 0..255 (as
    :class:`~vision_tasks.tasks.instance.InstanceDataset`'s ``masks``) and ``instance_has_mask``
    (n,) bool.
    """

    def __init__(
        self,
        index: CocoIndex,
        categories: list[dict[str, Any]],
        image_size: int,
        train: bool,
        colour_shift: float = 0.0,
        identity_labels: dict[int, int] | None = None,
        identity_field: str = "track_id",
        camera_field: str = "camera_id",
        instance_masks: bool = False,
    ) -> None:
        self.index, self.image_size, self.train = index, image_size, train
        self.instance_masks = instance_masks
        self.cat_to_index = {c["id"]: k for k, c in enumerate(categories)}
        unknown = set(index.category_ids) - set(self.cat_to_index)
        if unknown:
            raise CocoDataError(
                f"{index.json_path.name}: field 'categories': ids {sorted(unknown)}"
                f" are not among the model's categories"
            )
        keypoint_category = next((c for c in categories if "flip_pairs" in c), None)
        self.keypoint_category_id = keypoint_category["id"] if keypoint_category else None
        self.num_keypoints = len(keypoint_category["keypoints"]) if keypoint_category else 0
        self.permutation = (
            flip_permutation(self.num_keypoints, keypoint_category["flip_pairs"])
            if keypoint_category
            else []
        )
        self.identity_labels = identity_labels or {}
        self.identity_field, self.camera_field = identity_field, camera_field
        self.transform = multitask_transforms(train, colour_shift, IGNORE_INDEX)
        anns = [a for i in index.image_ids for a in index.annotations(i)]
        present = {self.cat_to_index[a["category_id"]] for a in anns}
        self.class_mask = torch.tensor([k in present for k in range(len(categories))])
        self.has_masks = any(a.get("segmentation") for a in anns if not a["iscrowd"])
        self.query = self._query_flags() if not train else {}

    def _query_flags(self) -> dict[int, bool]:
        """Annotation id -> query flag, as the re-ID task splits query / gallery."""
        identities = (
            a.get(self.identity_field)
            for i in self.index.image_ids
            for a in self.index.annotations(i)
        )
        if not any(isinstance(v, int) and v >= 0 for v in identities):
            return {}
        reid = ReidDataset(
            self.index,
            64,
            False,
            identity_field=self.identity_field,
            camera_field=self.camera_field,
        )
        return {s["ann"]["id"]: q for s, q in zip(reid.samples, reid.is_query)}

    def __len__(self) -> int:
        return len(self.index.image_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.index.image_ids[i]
        image, info = self.index.load_image(image_id), self.index.image_info(image_id)
        anns = self.index.annotations(image_id)
        height, width = image.shape[:2]
        square, scale, pad_x, pad_y = ops.letterbox_image(image, self.image_size)
        if self.has_masks:
            label = semantic_label_map(self.index.coco, anns, self.cat_to_index, height, width)
        else:  # a file without masks: every pixel unknown
            label = np.full((height, width), IGNORE_INDEX, np.uint8)
        mask = ops.letterbox_label_map(label, self.image_size, IGNORE_INDEX)
        instances = self._instances(anns, scale, (pad_x, pad_y))
        if self.instance_masks:
            instances["instance_masks"] = letterbox_masks(
                instance_masks(self.index.coco, anns, height, width), self.image_size
            )
            with_mask = [bool(a.get("segmentation")) and not a["iscrowd"] for a in anns]
            instances["instance_has_mask"] = np.array(with_mask, bool)
        shifted = False
        if self.train:
            tensor, mask, instances, shifted = self._augment(square, mask, instances)
        else:
            tensor = self.transform(image=square)["image"]
        sample = {k: torch.as_tensor(v) for k, v in instances.items() if k != "original"}
        sample.update(
            image=tensor,
            mask=torch.as_tensor(mask).long(),
            has_mask=self.has_masks,
            class_mask=self.class_mask,
            image_label=self._image_label(info, anns),
            camera=_int_or(info.get(self.camera_field), -1),
            image_id=image_id,
            scale=scale,
            pad=(pad_x, pad_y),
            orig_size=(height, width),
            colour_shifted=shifted,
        )
        if not self.train:
            sample["mask_original"] = torch.from_numpy(label).long()
            sample["keypoints_original"] = torch.as_tensor(instances["original"][0])
            sample["boxes_original"] = torch.as_tensor(instances["original"][1])
            sample["is_query"] = torch.tensor(
                [self.query.get(int(a), False) for a in instances["annotation_id"]]
            )
        return sample

    def _instances(self, anns: list[dict], scale: float, pad: tuple[int, int]) -> dict[str, Any]:
        """Per-annotation arrays in network pixels (and, for evaluation, COCO pixels)."""
        n, k = len(anns), self.num_keypoints
        boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        keypoints = np.zeros((n, k, 3), np.float64)
        for j, ann in enumerate(anns):
            if k and ann["category_id"] == self.keypoint_category_id and ann.get("keypoints"):
                keypoints[j] = np.asarray(ann["keypoints"], np.float64).reshape(k, 3)
        original = (keypoints.astype(np.float32), boxes.astype(np.float32))
        offset = np.array([*pad, *pad], np.float64)
        network_boxes = np.clip(boxes * scale + offset, 0, self.image_size)
        network_keypoints = keypoints.copy()
        labelled = keypoints[..., 2:] > 0  # unlabelled keypoints stay (0, 0, 0), as in COCO
        network_keypoints[..., :2] = (keypoints[..., :2] * scale + offset[:2]) * labelled
        identities = [_int_or(a.get(self.identity_field), -1) for a in anns]
        return {
            "boxes_xyxy": network_boxes.astype(np.float32),
            "label": np.array([self.cat_to_index[a["category_id"]] for a in anns], np.int64),
            "crowd": np.array([bool(a["iscrowd"]) for a in anns], bool),
            "keypoints": network_keypoints.astype(np.float32),
            "identity": np.array(identities, np.int64),
            "identity_label": np.array(
                [self.identity_labels.get(v, -1) for v in identities], np.int64
            ),
            "annotation_id": np.array([a["id"] for a in anns], np.int64),
            "original": original,
        }

    def _augment(
        self, square: np.ndarray, mask: np.ndarray, instances: dict[str, Any]
    ) -> tuple[Any, np.ndarray, dict[str, Any], bool]:
        """One random geometry for image, mask, boxes and keypoints; drops lost boxes. Also
        says whether the colours were shifted (``colour_shift``)."""
        boxes = instances["boxes_xyxy"]
        valid = np.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[0]
        keypoints = instances["keypoints"]
        # albumentations maps "xy" keypoints with pixel centres on integers (OpenCV).
        points = keypoints[..., :2].reshape(-1, 2) - 0.5
        extra = {}
        if "instance_masks" in instances and len(boxes):
            # Inverted, so the affine's fill (the label map's ignore index, 255) reads as "no
            # object"; nearest resampling keeps the inversion exact.
            extra["masks"] = 255 - instances["instance_masks"]
        out = self.transform(
            image=square,
            mask=mask,
            bboxes=boxes[valid],
            instance=valid,
            keypoints=points,
            **extra,
        )
        moved = keypoints.copy()
        shape = (*keypoints.shape[:2], 2)
        moved[..., :2] = np.asarray(out["keypoints"], np.float32).reshape(shape) + 0.5
        if self.num_keypoints and any(
            name == "HorizontalFlip" for name, _ in out.get("applied_transforms", [])
        ):
            moved = moved[:, self.permutation]  # the left wrist now shows as a right one
        kept = np.asarray(out["instance"], np.int64)
        result = {key: value[kept] for key, value in instances.items() if key != "original"}
        result["boxes_xyxy"] = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        result["keypoints"] = moved[kept]
        if extra:
            result["instance_masks"] = (255 - np.asarray(out["masks"], np.uint8))[kept]
        return out["image"], out["mask"], result, colour_shifted(out["applied_transforms"])

    def _image_label(self, info: dict, anns: list[dict]) -> int:
        if _int_or(info.get("category_id"), None) in self.cat_to_index:
            return self.cat_to_index[info["category_id"]]
        things = [a for a in anns if not a["iscrowd"]]
        return self.cat_to_index[things[0]["category_id"]] if len(things) == 1 else -1


def _int_or(value: Any, default: Any) -> Any:
    return value if is_integer(value) else default  # beyond int64 would overflow the tensor


class _Concatenated(ConcatDataset):
    """Several files' datasets as one; seeding its ``transform`` seeds every part's pipeline."""

    @property
    def transform(self) -> _Concatenated:
        return self

    def set_random_seed(self, seed: int) -> None:
        """Seed each part's augmentation (``VisionDataModule`` seeds through ``transform``)."""
        for k, dataset in enumerate(self.datasets):
            dataset.transform.set_random_seed((seed + k) % 2**32)


def collate_multitask(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images, label maps and per-image values; per-instance values stay lists."""
    batch: dict[str, Any] = {key: [s[key] for s in samples] for key in RAGGED if key in samples[0]}
    batch["image"] = torch.stack([s["image"] for s in samples])
    batch["mask"] = torch.stack([s["mask"] for s in samples])
    batch["class_mask"] = torch.stack([s["class_mask"] for s in samples])
    for key in ("has_mask", "image_label", "camera", "image_id", "colour_shifted"):
        batch[key] = torch.tensor([s[key] for s in samples])
    batch["scale"] = torch.tensor([s["scale"] for s in samples], dtype=torch.float64)
    batch["pad"] = torch.tensor([s["pad"] for s in samples], dtype=torch.float64)
    batch["orig_size"] = torch.tensor([s["orig_size"] for s in samples])
    if "mask_original" in samples[0]:
        batch["mask_original"] = pad_stack([s["mask_original"] for s in samples], IGNORE_INDEX)
    return batch


class MultiTaskData(VisionDataModule):
    """Joint-model data: one or more training files, letterboxed images with all their labels.

    ``train_json`` / ``train_images`` take a list to mix files in one run (the n-th JSON with
    the n-th folder); categories are the union over every file (an id must have one name).

    Args (beyond :class:`VisionDataModule`):
        colour_shift: see :func:`vision_tasks.data.transforms.photometric`.
        keypoint_category: the category whose keypoints are learnt (default: the only one with
            ``keypoints``; none is fine when no keypoint head is trained).
        flip_pairs: left / right keypoint index pairs (default: from ``left_*`` / ``right_*``).
        identity_field: annotation field holding the re-ID identity.
        camera_field: image field holding the camera id.
        progressive_size: progressive resizing (fast.ai; Tan & Le, EfficientNetV2): train at
            this smaller side for the first ``progressive_until`` of the run, then at
            ``image_size``, the size validation, evaluation and prediction use. Low-resolution
            epochs are cheap and teach what is where; the full-size ones teach the precise
            placing keypoints need. 0: always ``image_size``.
        progressive_until: share of the run at ``progressive_size``: of ``--trainer.max_time``
            when the run has one, else of its ``max_epochs`` (whichever is further along).
        instance_masks: one mask per object in every sample, which the ``instance`` head's
            loss needs (rasterising them costs time the other heads do not spend).
    """

    def __init__(
        self,
        train_json: str | list[str] | None = None,
        train_images: str | list[str] | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        colour_shift: float = 0.0,
        keypoint_category: str | None = None,
        flip_pairs: list[list[int]] | None = None,
        identity_field: str = "track_id",
        camera_field: str = "camera_id",
        progressive_size: int = 0,
        progressive_until: float = 0.6,
        instance_masks: bool = False,
    ) -> None:
        jsons = [train_json] if isinstance(train_json, str) else list(train_json or [])
        folders = [train_images] if isinstance(train_images, str) else list(train_images or [])
        if len(jsons) != len(folders):
            raise CocoDataError(
                f"--data.train_json lists {len(jsons)} file(s) but "
                f"--data.train_images {len(folders)} folder(s): give one each"
            )
        super().__init__(
            train_json=jsons[0] if jsons else None,
            train_images=folders[0] if folders else None,
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
        for name, size in (("image_size", image_size), ("progressive_size", progressive_size)):
            if size % 32 or size < 0:
                raise ValueError(f"{name} must be a multiple of 32 (c5's stride), got {size}")
        if not 0 < progressive_until <= 1:
            raise ValueError(
                f"progressive_until is a share of the run, in (0, 1]; got {progressive_until}"
            )
        self.progressive_size, self.progressive_until = progressive_size, progressive_until
        self.extra_train = list(zip(jsons[1:], folders[1:]))
        self.colour_shift = colour_shift
        self.keypoint_category, self.flip_pairs = keypoint_category, flip_pairs
        self.identity_field, self.camera_field = identity_field, camera_field
        self.instance_masks = instance_masks

    @cached_property
    def train_indexes(self) -> list[CocoIndex]:
        """Every training file's index, the first one (``--data.train_json``'s) first."""
        if "train" not in self._indexes:
            return []
        return [
            self._indexes["train"],
            *(CocoIndex(j, i, policy=self.policy) for j, i in self.extra_train),
        ]

    @cached_property
    def categories(self) -> list[dict[str, Any]]:
        """The union of every file's categories by id; the keypoint one gets ``flip_pairs``."""
        union: dict[int, tuple[dict, str]] = {}
        for index in [*self.train_indexes, *self._indexes.values()]:
            for category in index.categories:
                seen = union.setdefault(category["id"], (category, str(index.json_path)))
                if seen[0]["name"] != category["name"]:
                    raise CocoDataError(
                        f"{index.json_path}: category id={category['id']}: field 'name': "
                        f"{category['name']!r}, but {seen[1]} names it {seen[0]['name']!r}"
                    )
        categories = [dict(union[i][0]) for i in sorted(union)]
        if not categories:
            files = sorted({str(p) for p, _ in self._indexes.paths.values()})
            raise CocoDataError(
                f"{', '.join(files)}: field 'categories': the list is empty; "
                f"the joint model needs at least one category"
            )
        named = [
            c
            for c in categories
            if c.get("keypoints") and self.keypoint_category in (None, c["name"])
        ]
        if self.keypoint_category is not None and len(named) != 1:
            raise CocoDataError(
                f"--data.keypoint_category {self.keypoint_category!r}: no "
                f"category of that name has 'keypoints'"
            )
        if len(named) > 1:
            raise CocoDataError(
                f"several categories have keypoints ({[c['name'] for c in named]})"
                f": pick one with --data.keypoint_category NAME"
            )
        if named:
            pairs = self.flip_pairs
            if pairs is None:
                pairs = flip_pairs_from_names(named[0]["keypoints"])
            flip_permutation(len(named[0]["keypoints"]), pairs)  # fails early on bad pairs
            named[0]["flip_pairs"] = [list(p) for p in pairs]
        return categories

    def adopt_categories(self, categories: list[dict[str, Any]]) -> None:
        """Evaluate with the joint model's categories (the union over its training files): the
        test split's must be among them, under the same names."""
        index, names = self.index("test"), {c["id"]: c["name"] for c in categories}
        foreign = [c for c in index.categories if names.get(c["id"]) != c["name"]]
        if foreign:
            raise CocoDataError(
                f"{index.json_path}: category id={foreign[0]['id']} "
                f"({foreign[0]['name']!r}) is not among the checkpoint's "
                f"{sorted(names.items())}"
            )
        self.categories = [dict(c) for c in categories]

    @cached_property
    def identity_labels(self) -> dict[int, int]:
        """Training identity -> contiguous label (the identity classifier's classes)."""
        found = {
            a.get(self.identity_field)
            for index in self.train_indexes
            for i in index.image_ids
            for a in index.annotations(i)
        }
        known = sorted(v for v in found if _int_or(v, -1) >= 0)
        return {identity: label for label, identity in enumerate(known)}

    @property
    def num_train_identities(self) -> int:
        """Identities of the training files (the identity classifier's classes)."""
        return len(self.identity_labels)

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """All training files as one dataset; one file for validation / test."""

        def view(part: CocoIndex) -> MultiTaskDataset:
            return MultiTaskDataset(
                part,
                self.categories,
                self.image_size,
                train,
                self.colour_shift,
                self.identity_labels if train else None,
                self.identity_field,
                self.camera_field,
                self.instance_masks,
            )

        if not train or len(self.train_indexes) == 1:
            return view(index)
        return _Concatenated([view(part) for part in self.train_indexes])

    def train_image_size(self) -> int:
        """The side training letterboxes to at this point of the run (``progressive_size``)."""
        trainer = self.trainer
        if not self.progressive_size or trainer is None:
            return self.image_size
        progress = time_budget_spent(trainer) or 0.0
        if trainer.max_epochs and trainer.max_epochs > 0:
            progress = max(progress, trainer.current_epoch / trainer.max_epochs)
        return self.progressive_size if progress < self.progressive_until else self.image_size

    def before_train_epoch(self, dataset: Dataset) -> None:
        """Set every training part's letterbox side to :meth:`train_image_size`."""
        size = self.train_image_size()
        parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
        if any(part.image_size != size for part in parts):
            rank_zero_info(
                f"epoch {self.trainer.current_epoch}: training at {size} px "
                f"(progressive resizing; validation at {self.image_size} px)"
            )
        for part in parts:
            part.image_size = size

    collate = staticmethod(collate_multitask)
