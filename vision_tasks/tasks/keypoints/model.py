"""Top-down keypoint detection: one crop per instance -> one heatmap per keypoint -> OKS AP.

In reading order: keypoint metadata (flip pairs, OKS sigmas) -> heatmap encode / decode (pure
functions) -> dataset view (an affine crop per annotated instance, or per detected box) -> data
module -> loss -> task (its head is ``layers.HeatmapHead``).

Pixel convention: inside this file pixel centres sit on integers, as in OpenCV's ``warpAffine``
and albumentations; COCO puts them on half-integers, so coordinates move by half a pixel where
they enter (annotations, boxes) and leave (results). Heatmap cell ``j`` covers crop pixels
``[stride * j, stride * (j + 1))``: its centre is crop pixel ``stride * j + (stride - 1) / 2``.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.utils import draw_keypoints

from vision_tasks import ops
from vision_tasks.data.coco import CocoDataError, CocoIndex, Policy, _load_json
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import keypoint_transforms
from vision_tasks.evaluation.coco_eval import COCO_PERSON_SIGMAS, KEYPOINT_STATS
from vision_tasks.evaluation.metrics import PCK_CURVE_THRESHOLDS, KeypointMetric
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.layers import HeatmapHead
from vision_tasks.tasks.base import BaseTask, samples_figure

HEATMAP_STRIDE = 4
CROP_ASPECT = 0.75  # width / height, as COCO top-down models (192 x 256)
COCO_OFFSET = 0.5  # COCO pixel centres are at +0.5 in our (OpenCV) convention

# ---- keypoint metadata ------------------------------------------------------------------------


def crop_size(image_size: int) -> tuple[int, int]:
    """Crop ``(width, height)``: ``image_size`` high, about 3:4, both multiples of 32."""
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size (the crop height) must be a multiple of 32, got {image_size}")
    return max(32, round(image_size * CROP_ASPECT / 32) * 32), image_size


def flip_pairs_from_names(names: list[str]) -> list[list[int]]:
    """Index pairs of keypoints whose names differ only by ``left`` / ``right``."""
    position = {name: i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        partner = name.replace("left", "right").replace("Left", "Right")
        if partner != name and partner in position:
            pairs.append([i, position[partner]])
    return pairs


def flip_permutation(num_keypoints: int, pairs: list[list[int]]) -> list[int]:
    """Channel order after a horizontal flip: entry ``i`` is the partner of keypoint ``i``."""
    order = list(range(num_keypoints))
    used: set[int] = set()
    for pair in pairs:
        if len(pair) != 2 or not all(0 <= i < num_keypoints for i in pair) or used & set(pair):
            raise ValueError(
                f"flip pair {pair}: expected two distinct, unpaired keypoint indices "
                f"in 0..{num_keypoints - 1}"
            )
        used |= set(pair)
        order[pair[0]], order[pair[1]] = pair[1], pair[0]
    return order


def keypoint_sigmas(category: dict[str, Any], sigmas: list[float] | None) -> np.ndarray:
    """OKS sigmas (K,) of a category: ``sigmas`` if given, else COCO's for 17 keypoints."""
    count = len(category["keypoints"])
    if sigmas is not None and len(sigmas) != count:
        raise CocoDataError(
            f"--model.oks_sigmas has {len(sigmas)} values but category "
            f"{category['name']!r} has {count} keypoints"
        )
    if sigmas is None and count != len(COCO_PERSON_SIGMAS):
        raise CocoDataError(
            f"category {category['name']!r} has {count} keypoints, not COCO's "
            f"17: give their OKS sigmas with --model.oks_sigmas (a list of "
            f"{count})"
        )
    return np.asarray(COCO_PERSON_SIGMAS if sigmas is None else sigmas, dtype=np.float64)


# ---- heatmaps ---------------------------------------------------------------------------------


def encode_heatmaps(
    keypoints: Tensor,
    heatmap_size: tuple[int, int],
    sigma: float = 2.0,
    stride: int = HEATMAP_STRIDE,
) -> tuple[Tensor, Tensor]:
    """Gaussian target heatmaps and per-keypoint weights.

    Args:
        keypoints: (B, K, 3) x, y in crop pixels and COCO visibility (0 = not labelled).
        heatmap_size: ``(h, w)`` cells.
        sigma: the Gaussian's standard deviation in cells.
        stride: crop pixels per cell.

    Returns:
        (B, K, h, w) heatmaps with peak 1 at each keypoint, and (B, K) weights: 1 for a labelled
        keypoint whose centre falls on the heatmap, else 0 (its heatmap is all zero).
    """
    h, w = heatmap_size
    cells = (keypoints[..., :2] - (stride - 1) / 2) / stride
    inside = (cells >= -0.5).all(dim=-1) & (cells[..., 0] < w - 0.5) & (cells[..., 1] < h - 0.5)
    weights = ((keypoints[..., 2] > 0) & inside).to(keypoints.dtype)
    xs = torch.arange(w, dtype=keypoints.dtype, device=keypoints.device)
    ys = torch.arange(h, dtype=keypoints.dtype, device=keypoints.device)
    gx = torch.exp(-((xs - cells[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, K, w)
    gy = torch.exp(-((ys - cells[..., 1:2]) ** 2) / (2 * sigma**2))  # (B, K, h)
    return gy[..., :, None] * gx[..., None, :] * weights[..., None, None], weights


def decode_heatmaps(
    heatmaps: Tensor,
    sigma: float = 2.0,
    refine: Literal["dark", "quarter", "none"] = "dark",
    stride: int = HEATMAP_STRIDE,
) -> tuple[Tensor, Tensor]:
    """Keypoints from heatmaps: arg-max, sub-cell refinement, cells -> crop pixels.

    Args:
        heatmaps: (B, K, h, w).
        sigma: the targets' sigma in cells (sets DARK's fitting window).
        refine: ``dark`` (the peak of a Gaussian fitted to the log heatmap, after Zhang et al.
            2020; see :func:`_dark_offsets`), ``quarter`` (a quarter cell towards the higher
            neighbour, Newell et al. 2016) or ``none``.
        stride: crop pixels per cell.

    Returns:
        (B, K, 2) x, y in crop pixels and (B, K) scores (the heatmap maxima).
    """
    w = heatmaps.shape[-1]
    scores, flat = heatmaps.flatten(2).max(dim=2)
    x, y = flat % w, flat // w
    if refine == "dark":
        offsets = _dark_offsets(heatmaps, x, y, sigma)
    elif refine == "quarter":
        patch = _patches(heatmaps, x, y)
        dx, dy = patch[..., 1, 2] - patch[..., 1, 0], patch[..., 2, 1] - patch[..., 0, 1]
        offsets = 0.25 * torch.stack([dx.sign(), dy.sign()], dim=-1)
    elif refine == "none":
        offsets = heatmaps.new_zeros(*x.shape, 2)
    else:
        raise ValueError(f"refine must be 'dark', 'quarter' or 'none', got {refine!r}")
    cells = torch.stack([x, y], dim=-1).to(heatmaps.dtype) + offsets
    return cells * stride + (stride - 1) / 2, scores


def _patches(
    maps: Tensor, x: Tensor, y: Tensor, radius: int = 1, mode: str = "replicate"
) -> Tensor:
    """Neighbourhoods (B, K, n, n), n = 2 * radius + 1, of (B, K, h, w) maps around cells (x, y).

    Outside the map: the edge replicated (``mode="replicate"``) or zeros (``"constant"``).
    """
    b, k, h, w = maps.shape
    n = 2 * radius + 1
    padded = F.pad(maps.reshape(b * k, 1, h, w), (radius,) * 4, mode=mode).reshape(b, k, -1)
    steps = torch.arange(n, device=maps.device)
    index = (y[..., None, None] + steps[:, None]) * (w + 2 * radius) + x[..., None, None] + steps
    return padded.gather(2, index.flatten(2)).reshape(b, k, n, n)


def _dark_offsets(heatmaps: Tensor, x: Tensor, y: Tensor, sigma: float) -> Tensor:
    """DARK: the maximum of a quadratic fitted to the log heatmap around the arg-max (B, K, 2).

    DARK (Zhang et al. 2020) takes a Newton step on the log of a blurred heatmap; its zero-padded
    blur pulls a peak within ~3 sigma of the border by up to half a cell, and the step needs both
    neighbours. Fitting ``log h ~ a + b.u + u' C u / 2`` by least squares over the cells within
    1.5 sigma, weighted by ``h**2`` (Guo 2011: the weights undo the log's noise amplification),
    is exact for a Gaussian peak wherever the border cuts it, and smooths noise as DARK's blur.
    """
    radius = max(1, math.ceil(1.5 * sigma))
    n = 2 * radius + 1
    window = _patches(heatmaps, x, y, radius, mode="constant")  # outside the map: weight 0
    peak = window[..., radius, radius].clamp(min=1e-12)
    values = (window / peak[..., None, None]).clamp(min=0).flatten(2)  # (B, K, n * n)
    steps = torch.arange(-radius, radius + 1, dtype=heatmaps.dtype, device=heatmaps.device)
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    u, v = u.flatten(), v.flatten()
    design = torch.stack([torch.ones_like(u), u, v, u * u / 2, v * v / 2, u * v], dim=-1)
    weights = values**2
    normal = torch.einsum("ni,bkn,nj->bkij", design, weights, design)
    normal = normal + 1e-6 * torch.eye(6, dtype=normal.dtype, device=normal.device)
    rhs = torch.einsum("ni,bkn->bki", design, weights * values.clamp(min=1e-6).log())
    coef, info = torch.linalg.solve_ex(normal, rhs)
    gx, gy, hxx, hyy, hxy = coef.unbind(-1)[1:]
    det = hxx * hyy - hxy**2
    # A step needs a determined fit, a quadratic along each axis through three columns and
    # three rows of positive heatmap, and a maximum: a negative definite curvature, the fitted
    # Gaussian no wider than twice the window. Elsewhere (an untrained model's near-flat or
    # one-column maps) the step is a ratio of noise to noise, and the arg-max stands.
    positive = (values > 0).unflatten(-1, (n, n))
    supported = (positive.any(dim=-2).sum(-1) >= 3) & (positive.any(dim=-1).sum(-1) >= 3)
    flattest = (hxx + hyy) / 2 + (((hxx - hyy) / 2) ** 2 + hxy**2).sqrt()
    ok = (info == 0) & supported & (flattest < -1.0 / (2 * radius) ** 2) & (det > 1e-12)
    safe = torch.where(ok, det, 1.0)
    dx = torch.where(ok, -(hyy * gx - hxy * gy) / safe, 0.0)
    dy = torch.where(ok, -(hxx * gy - hxy * gx) / safe, 0.0)
    return torch.stack([dx, dy], dim=-1).clamp(-1, 1)


def flip_heatmaps(heatmaps: Tensor, permutation: list[int]) -> Tensor:
    """(B, K, h, w) heatmaps of mirrored crops -> of the crops: mirror and swap left / right."""
    return heatmaps.flip(-1)[:, permutation]


def crop_to_image(points: Tensor, matrices: Tensor) -> Tensor:
    """(B, K, 2) crop pixels through (B, 2, 3) crop-to-image affines -> COCO image pixels."""
    matrices = matrices.to(points.device, torch.float64)
    mapped = points.double() @ matrices[:, :, :2].transpose(1, 2) + matrices[:, None, :, 2]
    return mapped + COCO_OFFSET


def instance_scores(keypoint_scores: Tensor, box_scores: Tensor, threshold: float = 0.2) -> Tensor:
    """(B,) box score times the mean of the (B, K) keypoint scores above ``threshold``."""
    confident = keypoint_scores > threshold
    mean = (keypoint_scores * confident).sum(dim=1) / confident.sum(dim=1).clamp(min=1)
    return box_scores.to(mean) * mean


# ---- dataset view -----------------------------------------------------------------------------


class KeypointDataset(Dataset):
    """One crop per instance: ``{"image", "keypoints", "crop_to_image", "boxes_xyxy",
    "box_score", "image_id", "sample_id"}``.

    ``keypoints`` (K, 3) are crop pixels + visibility; ``crop_to_image`` (2, 3) maps crop pixels
    back to the image (before augmentation); ``boxes_xyxy`` (4,) is the box in COCO pixels.
    Samples are the annotated instances of ``category`` (``num_keypoints > 0``), or the given
    ``detections`` (``image_id``, ``box`` xyxy, ``score``) with no ground truth.
    """

    def __init__(
        self,
        index: CocoIndex,
        category: dict[str, Any],
        image_size: int,
        train: bool,
        crop_margin: float = 0.25,
        flip_pairs: list[list[int]] | None = None,
        detections: list[dict[str, Any]] | None = None,
    ) -> None:
        self.index = index
        self.num_keypoints = len(category["keypoints"])
        self.size = crop_size(image_size)
        self.crop_margin = crop_margin
        self.permutation = flip_permutation(self.num_keypoints, flip_pairs or [])
        self.transform = keypoint_transforms(train)
        self.train = train
        self.samples = detections if detections is not None else self._instances(category["id"])

    def _instances(self, category_id: int) -> list[dict[str, Any]]:
        samples = []
        for image_id in self.index.image_ids:
            for ann in self.index.annotations(image_id, include_crowd=False):
                if ann["category_id"] == category_id and ann.get("num_keypoints", 0) > 0:
                    x, y, w, h = ann["bbox"]
                    samples.append(
                        {
                            "image_id": image_id,
                            "box": [x, y, x + w, y + h],
                            "score": 1.0,
                            "keypoints": ann["keypoints"],
                        }
                    )
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        image = self.index.load_image(sample["image_id"])
        box = np.asarray(sample["box"]) - COCO_OFFSET
        matrix = ops.box_affine(box, self.size, self.crop_margin)
        keypoints = np.zeros((self.num_keypoints, 3), np.float32)
        if sample.get("keypoints") is not None:
            coco = np.asarray(sample["keypoints"], np.float64).reshape(-1, 3)
            keypoints[:, :2] = ops.apply_affine(coco[:, :2] - COCO_OFFSET, matrix)
            keypoints[:, 2] = coco[:, 2]
        crop = ops.crop_affine(image, matrix, self.size)
        if not self.train:
            out = self.transform(image=crop)
        else:
            out = self.transform(image=crop, keypoints=keypoints[:, :2])
            keypoints[:, :2] = out["keypoints"]
        if any(name == "HorizontalFlip" for name, _ in out.get("applied_transforms", [])):
            keypoints = keypoints[self.permutation]  # the left wrist now shows as a right one
        return {
            "image": out["image"],
            "keypoints": torch.from_numpy(keypoints),
            "crop_to_image": torch.from_numpy(ops.invert_affine(matrix)),
            "boxes_xyxy": torch.tensor(sample["box"], dtype=torch.float64),
            "box_score": float(sample["score"]),
            "image_id": sample["image_id"],
            "sample_id": i,
        }


def read_detections(
    path: str | Path, index: CocoIndex, category_id: int, threshold: float
) -> list[dict[str, Any]]:
    """Boxes of ``category_id`` scoring ``>= threshold`` from a detection results JSON."""
    path = Path(path)
    records, problems, boxes = _load_json(path), [], []
    if not isinstance(records, list):
        raise CocoDataError(
            f"{path}: expected a list of detection results, got {type(records).__name__}"
        )
    for i, record in enumerate(records):
        problem = _detection_problem(record, index)
        if problem:
            problems.append(f"{path.name}: result #{i}: {problem}")
        elif record["category_id"] == category_id and record["score"] >= threshold:
            x, y, w, h = record["bbox"]
            boxes.append(
                {
                    "image_id": record["image_id"],
                    "box": [x, y, x + w, y + h],
                    "score": float(record["score"]),
                    "keypoints": None,
                }
            )
    if problems:
        raise CocoDataError("\n".join([f"{len(problems)} problem(s) in {path}:", *problems[:20]]))
    return boxes


def _detection_problem(record: Any, index: CocoIndex) -> str | None:
    if not isinstance(record, dict):
        return "expected an object with image_id, category_id, bbox, score"
    number = (int, float)
    if record.get("image_id") not in index.image_ids:
        return f"field 'image_id': {record.get('image_id')!r} is not in {index.json_path.name}"
    if not isinstance(record.get("category_id"), int):
        return f"field 'category_id': expected an integer, got {record.get('category_id')!r}"
    box = record.get("bbox")
    if not (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, number) for v in box)
        and all(map(math.isfinite, box))
        and box[2] > 0
        and box[3] > 0
    ):
        return f"field 'bbox': expected [x, y, width, height] with a positive size, got {box!r}"
    score = record.get("score")
    if not isinstance(score, number) or not math.isfinite(score):
        return f"field 'score': expected a number, got {score!r}"
    return None


class KeypointData(VisionDataModule):
    """Keypoint data: the shared splits plus the category, crop margin, flip pairs and boxes.

    Args (beyond :class:`VisionDataModule`, whose ``image_size`` is the crop height):
        category: name of the category whose keypoints are learnt (default: the only one).
        crop_margin: the box is enlarged by this fraction before cropping.
        flip_pairs: left / right keypoint index pairs (default: from ``left_*`` / ``right_*``).
        boxes_json: detection results JSON whose boxes replace the ground-truth ones for the
            validation / test crops.
        box_score_threshold: detections scoring lower are not used.
    """

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 128,
        batch_size: int = 32,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        category: str | None = None,
        crop_margin: float = 0.25,
        flip_pairs: list[list[int]] | None = None,
        boxes_json: str | None = None,
        box_score_threshold: float = 0.3,
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
        crop_size(image_size)  # fail early on a size the backbone cannot take
        self.category = category
        self.crop_margin = crop_margin
        self.flip_pairs = flip_pairs
        self.boxes_json = boxes_json
        self.box_score_threshold = box_score_threshold

    @cached_property
    def categories(self) -> list[dict[str, Any]]:
        """The keypoint category alone, with its ``flip_pairs``: what the model learns."""
        everything = VisionDataModule.categories.func(self)
        source = self.splits["train"][0] if self.splits["train"] else self.splits["val"][0]
        named = [c for c in everything if c.get("keypoints")]
        if self.category is not None:
            named = [c for c in everything if c["name"] == self.category and c.get("keypoints")]
        if len(named) != 1:
            names = [c["name"] for c in everything if c.get("keypoints")]
            wanted = f"{self.category!r} " if self.category else ""
            raise CocoDataError(
                f"{source}: field 'categories': the category {wanted}to learn must "
                f"be one with 'keypoints'; those with keypoints: {names} (pick one "
                f"with --data.category NAME)"
            )
        category = named[0]
        pairs = self.flip_pairs
        if pairs is None:
            pairs = flip_pairs_from_names(category["keypoints"])
        try:
            flip_permutation(len(category["keypoints"]), pairs)
        except ValueError as error:
            raise CocoDataError(f"--data.flip_pairs for {category['name']!r}: {error}") from None
        return [{**category, "flip_pairs": [list(p) for p in pairs]}]

    def adopt_categories(self, categories: list[dict[str, Any]]) -> None:
        """Evaluate the checkpoint's keypoint category: the test split must define it alike."""
        index, category = self.index("test"), categories[0]
        theirs = next((c for c in index.categories if c["id"] == category["id"]), {})
        if [theirs.get(k) for k in ("name", "keypoints")] != [
            category["name"],
            category["keypoints"],
        ]:
            raise CocoDataError(
                f"{index.json_path}: no category id={category['id']} named "
                f"{category['name']!r} with the checkpoint's "
                f"{len(category['keypoints'])} keypoints"
            )
        self.categories = [dict(category)]

    def describe_samples(self) -> str:
        """Annotated instances of the keypoint category (or detections, to evaluate on)."""
        return (
            f"non-crowd annotations of category {self.categories[0]['name']!r} with "
            f"labelled keypoints (num_keypoints > 0; with --data.boxes_json: detections "
            f"scored --data.box_score_threshold or more)"
        )

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """Crops of annotated instances, or of detected boxes for evaluation with ``boxes_json``."""
        category = self.categories[0]
        detections = None
        if not train and self.boxes_json is not None:
            detections = read_detections(
                self.boxes_json, index, category["id"], self.box_score_threshold
            )
        return KeypointDataset(
            index,
            category,
            self.image_size,
            train,
            self.crop_margin,
            category["flip_pairs"],
            detections,
        )


# ---- loss ------------------------------------------------------------------------------------


def heatmap_loss(heatmaps: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """MSE of (B, K, h, w) heatmaps, averaged over the keypoints whose (B, K) weight is 1."""
    per_keypoint = (heatmaps - targets).pow(2).mean(dim=(2, 3))
    return (per_keypoint * weights).sum() / weights.sum().clamp(min=1)


# ---- task -------------------------------------------------------------------------------------


class KeypointTask(BaseTask):
    """Backbone -> U-Net heatmap head; MSE on Gaussian targets; DARK decoding; OKS AP.

    Args:
        categories: ``[keypoint category]`` with ``keypoints``, ``skeleton``, ``flip_pairs``;
            linked from the data module.
        image_size: crop height the model was trained at (width: :func:`crop_size`).
        head_channels: widths of the three decoder blocks (c4, c3, c2).
        heatmap_sigma: Gaussian sigma of the targets, in heatmap cells.
        refine: sub-cell refinement of the arg-max: ``dark``, ``quarter`` or ``none``.
        flip_test: average with the heatmaps of the mirrored crop at evaluation.
        oks_sigmas: per-keypoint OKS sigmas (default: COCO's, for 17 keypoints).
        pck_threshold: PCK radius as a fraction of the box's longer side.
        (the rest: see :class:`BaseTask`)
    """

    task_name = "keypoints"
    monitor = "val/AP"
    monitor_mode = "max"

    def __init__(
        self,
        categories: list[dict[str, Any]] | None = None,
        image_size: int = 128,
        head_channels: tuple[int, int, int] = (128, 64, 64),
        heatmap_sigma: float = 2.0,
        refine: Literal["dark", "quarter", "none"] = "dark",
        flip_test: bool = True,
        oks_sigmas: list[float] | None = None,
        pck_threshold: float = 0.05,
        backbone: str = "resnet18",
        backbone_weights: str = "none",
        freeze_at: int = 0,
        lr: float = 1e-3,
        backbone_lr_mult: float = 1.0,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        freeze_backbone_epochs: int = 0,
        min_lr_ratio: float = 0.05,
    ) -> None:
        super().__init__(
            backbone=backbone,
            backbone_weights=backbone_weights,
            in_channels=3,
            freeze_at=freeze_at,
            lr=lr,
            backbone_lr_mult=backbone_lr_mult,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            freeze_backbone_epochs=freeze_backbone_epochs,
            min_lr_ratio=min_lr_ratio,
        )
        if not categories or len(categories) != 1 or not categories[0].get("keypoints"):
            raise ValueError(
                "KeypointTask needs categories=[one category with keypoints] "
                "(linked from KeypointData)"
            )
        self.categories = categories
        self.category = categories[0]
        self.keypoint_names = list(self.category["keypoints"])
        num_keypoints = len(self.keypoint_names)
        pairs = self.category.get("flip_pairs")
        pairs = flip_pairs_from_names(self.keypoint_names) if pairs is None else pairs
        self.flip_permutation = flip_permutation(num_keypoints, pairs)
        self.skeleton = [(a - 1, b - 1) for a, b in self.category.get("skeleton") or []]
        self.crop_size = crop_size(image_size)
        sigmas = keypoint_sigmas(self.category, oks_sigmas)
        self.head = HeatmapHead(self.backbone.out_channels, num_keypoints, head_channels)
        self.val_metric = KeypointMetric(self.category["id"], sigmas, pck_threshold)
        self.test_metric = self.val_metric.clone()

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) crops -> (B, K, H / 4, W / 4) heatmaps (flip-averaged in eval)."""
        heatmaps = self.head(self.backbone(images))
        if self.hparams.flip_test and not self.training:
            mirrored = self.head(self.backbone(images.flip(-1)))
            heatmaps = (heatmaps + flip_heatmaps(mirrored, self.flip_permutation)) / 2
        return heatmaps

    def compute_loss(self, outputs: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Weighted heatmap MSE against Gaussians drawn at the batch's keypoints."""
        targets, weights = encode_heatmaps(
            batch["keypoints"], outputs.shape[-2:], self.hparams.heatmap_sigma
        )
        return {"loss": heatmap_loss(outputs, targets, weights)}

    def _image_keypoints(self, outputs: Tensor, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(B, K, 3) x, y (COCO image pixels), keypoint score, and (B,) instance scores."""
        points, scores = decode_heatmaps(
            outputs.detach().float(), self.hparams.heatmap_sigma, self.hparams.refine
        )
        matrices = torch.as_tensor(np.asarray(batch["crop_to_image"]))
        points = crop_to_image(points, matrices)
        box_scores = torch.as_tensor(batch["box_score"], dtype=torch.float64).to(scores.device)
        keypoints = torch.cat([points, scores[..., None].double()], dim=-1)
        return keypoints, instance_scores(scores.double(), box_scores)

    def update_metric(self, metric: KeypointMetric, outputs: Tensor, batch: dict) -> None:
        """Add the decoded instances and their ground truth (in image pixels)."""
        predicted, scores = self._image_keypoints(outputs, batch)
        truth = batch["keypoints"].double()
        truth = torch.cat(
            [crop_to_image(truth[..., :2], batch["crop_to_image"]), truth[..., 2:]], dim=-1
        )
        sizes = (batch["boxes_xyxy"][:, 2:] - batch["boxes_xyxy"][:, :2]).amax(dim=1)
        metric.update(batch["sample_id"], batch["image_id"], predicted, scores, truth, sizes)

    def decode(self, outputs: Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """COCO keypoint results, one per crop: image id, category id, K x (x, y, score)."""
        keypoints, scores = self._image_keypoints(outputs, batch)
        return [
            {
                "image_id": int(image_id),
                "category_id": self.category["id"],
                "keypoints": [round(v, 3) for v in points.flatten().tolist()],
                "score": float(score),
            }
            for image_id, points, score in zip(batch["image_id"], keypoints.cpu(), scores.cpu())
        ]

    # ---- evaluation -----------------------------------------------------------------------------
    def _attach_index(self, metric: KeypointMetric, split: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, VisionDataModule):
            metric.index = datamodule.index(split)
            metric.every_image = getattr(datamodule, "boxes_json", None) is not None

    def on_validation_epoch_end(self) -> None:
        """COCOeval against the validation split's ground truth."""
        self._attach_index(self.val_metric, "val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        """COCOeval against the test split's ground truth, then the report."""
        self._attach_index(self.test_metric, "test")
        super().on_test_epoch_end()

    def draw_samples(self, outputs: Tensor, batch: dict[str, Any]) -> list:
        """Crops with the predicted skeleton (red) over the labelled keypoints (green)."""
        images = ops.denormalize(batch["image"].detach().cpu())
        points, _ = decode_heatmaps(
            outputs.detach().cpu().float(), self.hparams.heatmap_sigma, self.hparams.refine
        )
        truth = batch["keypoints"].detach().cpu()
        # PCK radius in crop pixels: the box size times the crop's scale.
        scale = 1 / batch["crop_to_image"][:, :, :2].detach().cpu().det().abs().sqrt()
        sizes = (batch["boxes_xyxy"][:, 2:] - batch["boxes_xyxy"][:, :2]).amax(dim=1).cpu()
        radius = self.hparams.pck_threshold * sizes * scale
        samples = []
        for i, image in enumerate(images):
            visible = truth[i, :, 2] > 0
            hits = ((points[i] - truth[i, :, :2]).norm(dim=-1) <= radius[i]) & visible
            drawn = draw_keypoints(
                image, truth[i : i + 1, :, :2], colors="lime", radius=1, visibility=visible[None]
            )
            drawn = draw_keypoints(
                drawn, points[i : i + 1], self.skeleton, colors="red", radius=1, width=1
            )
            caption = f"image {int(batch['image_id'][i])}: {int(hits.sum())}/{int(visible.sum())}"
            ok = bool(hits.sum() == visible.sum()) if visible.any() else None
            samples.append((drawn.permute(1, 2, 0).numpy(), caption, ok))
        return samples

    def build_report(self, values: dict[str, Any], samples: list) -> Report:
        """The 10 COCO keypoint stats, per-keypoint PCK, the PCK curve and a prediction grid."""
        stats = {name: float(values.get(name, float("nan"))) for name in KEYPOINT_STATS}
        pck = float(values["PCK"])
        headline = {"AP": stats["AP"], "AP50": stats["AP50"], "AP75": stats["AP75"], "PCK": pck}
        table = [
            {"keypoint": name, "PCK": float(p), "visible": int(n), "mean_error_px": float(e)}
            for name, p, n, e in zip(
                self.keypoint_names,
                values.get("pck_per_keypoint", []),
                values.get("visible_per_keypoint", []),
                values.get("error_per_keypoint", []),
            )
        ]
        threshold = self.hparams.pck_threshold
        curve = [float(v) for v in values.get("pck_curve", [])]
        figures = [
            Figure(
                "pck_curve",
                "curves",
                "Mean PCK vs radius (fraction of the box's longer side)",
                {
                    "series": [
                        {
                            "label": "mean PCK",
                            "x": list(PCK_CURVE_THRESHOLDS[: len(curve)]),
                            "y": curve,
                        }
                    ],
                    "xlabel": "radius",
                    "ylabel": "PCK",
                },
            ),
            samples_figure(
                samples,
                f"Predictions (red), labels (green); caption: keypoints within PCK@{threshold}",
            ),
        ]
        metrics = {**stats, f"PCK@{threshold}": pck, "instances": int(values["instances"])}
        meta = {
            "category": self.category["name"],
            "flip_test": self.hparams.flip_test,
            "crop (w x h)": "x".join(map(str, self.crop_size)),
            "refine": self.hparams.refine,
        }
        return Report("keypoints", headline, metrics, {"per_keypoint": table}, figures, meta)

    # ---- tools/predict.py -----------------------------------------------------------------------
    def predict_sample(self, image: np.ndarray) -> dict[str, Any]:
        """The whole image as one instance box (no detector here): crop and normalise it."""
        height, width = image.shape[:2]
        box = np.array([0.0, 0.0, width, height])
        matrix = ops.box_affine(box - COCO_OFFSET, self.crop_size, margin=0.0)
        crop = ops.crop_affine(image, matrix, self.crop_size)
        return {
            "image": keypoint_transforms(False)(image=crop)["image"],
            "crop_to_image": torch.from_numpy(ops.invert_affine(matrix)),
            "boxes_xyxy": torch.from_numpy(box),
            "box_score": 1.0,
        }

    def draw_prediction(self, image: np.ndarray, prediction: dict[str, Any]) -> np.ndarray:
        """The image with its skeleton drawn (keypoints scoring above 0.2)."""
        points = torch.tensor(prediction["keypoints"]).reshape(1, -1, 3)
        drawn = draw_keypoints(
            torch.from_numpy(image).permute(2, 0, 1),
            points[..., :2],
            self.skeleton,
            colors="red",
            radius=2,
            width=2,
            visibility=points[..., 2] > 0.2,
        )
        return drawn.permute(1, 2, 0).numpy()
