"""Homography estimation between patch pairs: pairs -> heads -> losses -> task.

A pair is cut from any COCO image (annotations ignored): the image is made grey and resized
(320x240 by default), a random ``patch_size`` square is taken, its 4 corners are moved by up to
``rho`` pixels each, and the quadrilateral they span is warped back onto a square: the second
patch. Two architectures: ``regression`` (HomographyNet, DeTone et al. 2016) sees both patches
stacked (2 channels) and regresses the 8 corner offsets (divided by ``rho``); ``correlation``
(in the spirit of IHN, Cao et al. 2022) matches every feature cell of A in B and fits the
homography to the matches (see :class:`HomographyTask`). Corners are (x, y) in pixels of the
first patch, clockwise from top-left (``ops.square_corners``); the homography of a pair maps the
square onto the moved corners, and patch B at pixel ``q`` shows what the image shows at ``H q``
(in patch-A pixels).

Evaluation compares, on the same seeded validation pairs, the network with two baselines: the
identity (zero offsets) and ORB + RANSAC (OpenCV), where a failed estimate counts as identity.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchmetrics import MetricCollection

from vision_tasks import ops
from vision_tasks.data.coco import CocoIndex
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import homography_photometric, homography_transforms
from vision_tasks.evaluation.metrics import CornerError
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.layers import ConvBNAct
from vision_tasks.tasks.base import BaseTask
from vision_tasks.utils import atomic_write_bytes, atomic_write_json

# ---- pairs --------------------------------------------------------------------------------------


def random_pair(
    gray: np.ndarray, rng: np.random.Generator, patch_size: int, rho: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut one training pair from a grey (H, W) uint8 image.

    Returns:
        ``(patch_a, patch_b, corners, origin)``: two (P, P) uint8 patches, the (4, 2) float32
        moved corners in patch-A pixels and the (2,) top-left (x, y) of patch A in the image.
    """
    height, width = gray.shape
    margin = int(np.ceil(rho))
    if min(width, height) < patch_size + 2 * margin:
        raise ValueError(f"a {width}x{height} image is too small for patch_size {patch_size} "
                         f"+ 2 * rho {rho}")  # fmt: skip
    # The moved corners stay inside the image, so patch B never samples the border.
    x = int(rng.integers(margin, width - margin - patch_size + 1))
    y = int(rng.integers(margin, height - margin - patch_size + 1))
    square = ops.square_corners(patch_size).numpy()
    corners = (square + rng.uniform(-rho, rho, (4, 2))).astype(np.float32)
    origin = np.array([x, y], dtype=np.float32)
    patch_a = np.ascontiguousarray(gray[y : y + patch_size, x : x + patch_size])
    # Warping the image by the inverse homography, then cutting the window = mapping the moved
    # quadrilateral straight onto the square.
    to_square = cv2.getPerspectiveTransform(corners + origin, square)
    size = (patch_size, patch_size)
    patch_b = cv2.warpPerspective(gray, to_square, size, flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    return patch_a, patch_b, corners, origin


def to_gray(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> grey uint8 resized to ``size`` = (width, height)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    same = gray.shape[::-1] == tuple(size)
    return gray if same else cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


class HomographyDataset(Dataset):
    """Every image of a COCO split as ``{"image", "corners", "patches", "image_id"}`` pairs.

    Training pairs are drawn afresh at every access, ``pairs_per_image`` of them per image and
    epoch (fewer, longer epochs on a small set); evaluation pairs are one per image, fixed by
    ``(pair_seed, image_id)``, so every run, epoch and baseline sees the same pairs.

    A ``refine_fraction`` of the training pairs are refinement pairs, as the model's
    ``refine_steps`` passes see them: patch B undone by an estimate that is off by up to
    ``refine_jitter`` pixels per corner coordinate; ``corners`` is then the residual's.
    """

    def __init__(
        self,
        index: CocoIndex,
        image_size: int,
        train: bool,
        patch_size: int = 128,
        rho: float = 32.0,
        resize: tuple[int, int] = (320, 240),
        pair_seed: int = 0,
        photometric: bool = False,
        pairs_per_image: int = 1,
        refine_fraction: float = 0.0,
        refine_jitter: float = 8.0,
    ) -> None:
        if pairs_per_image < 1:
            raise ValueError(f"data.pairs_per_image must be >= 1, got {pairs_per_image}")
        if min(resize) < patch_size + 2 * int(np.ceil(rho)):
            raise ValueError(f"data.resize_width/height {resize} too small for data.patch_size "
                             f"{patch_size} + 2 * data.rho {rho}")  # fmt: skip
        self.index = index
        self.train = train
        self.patch_size = patch_size
        self.rho = rho
        self.resize = tuple(resize)
        self.pair_seed = pair_seed
        self.photometric = homography_photometric() if train and photometric else None
        self.transform = homography_transforms(image_size)
        self.pairs_per_image = pairs_per_image if train else 1
        self.refine_fraction = refine_fraction if train else 0.0
        self.refine_jitter = refine_jitter

    def __len__(self) -> int:
        return len(self.index.image_ids) * self.pairs_per_image

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.index.image_ids[i % len(self.index.image_ids)]
        gray = to_gray(self.index.load_image(image_id), self.resize)
        # torch's generator is seeded per worker (and by seed_everything); NumPy's is not.
        seed = int(torch.randint(2**62, ())) if self.train else (self.pair_seed, image_id)
        patch_a, patch_b, corners, _ = random_pair(gray, np.random.default_rng(seed),
                                                   self.patch_size, self.rho)  # fmt: skip
        if self.photometric is not None:
            patch_a, patch_b = (self.photometric(image=p)["image"] for p in (patch_a, patch_b))
        patches = np.stack([patch_a, patch_b], axis=-1)
        image, corners = self.transform(image=patches)["image"], torch.from_numpy(corners)
        if self.refine_fraction > 0 and torch.rand(()) < self.refine_fraction:
            image, corners = self._refinement_pair(image, corners)
        return {
            "image": image,
            "corners": corners,
            "patches": torch.from_numpy(patches).permute(2, 0, 1).contiguous(),
            "image_id": image_id,
        }

    def _refinement_pair(self, image: Tensor, corners: Tensor) -> tuple[Tensor, Tensor]:
        """(2, S, S) input and (4, 2) true corners -> the input and corners a refinement pass
        sees after an estimate off by up to ``refine_jitter`` px per coordinate.
        """
        # A random scale per pair: later passes see small residuals, and must see them here.
        scale = float(torch.rand(())) * self.refine_jitter
        jitter = (torch.rand(4, 2, dtype=torch.float64) * 2 - 1) * scale
        estimate = corners.double() + jitter
        aligned = ops.align_second_patch(image[None], estimate[None], self.patch_size)[0]
        # Aligned B shows A at R q with R = H H_estimate^-1, the map of the estimated corners
        # onto the true ones; the pair's corners are R's image of the square.
        residual = ops.four_point_to_homography(estimate, corners.double())
        square = ops.square_corners(self.patch_size, torch.float64)
        return aligned, ops.apply_homography(residual, square).float()


class HomographyData(VisionDataModule):
    """Homography pairs: the shared splits plus the pair geometry.

    ``image_size`` is the network input side: pairs are cut at ``patch_size`` and area-resized
    to it (corners stay in ``patch_size`` pixels). ``patch_size`` and ``rho`` must match the
    model's. ``pairs_per_image`` training pairs are drawn per image and epoch; a
    ``refine_fraction`` of them are refinement pairs (see :class:`HomographyDataset`).
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
        policy: Literal["strict", "skip"] = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        patch_size: int = 128,
        rho: float = 32.0,
        resize_width: int = 320,
        resize_height: int = 240,
        pair_seed: int = 0,
        photometric: bool = False,
        pairs_per_image: int = 1,
        refine_fraction: float = 0.0,
        refine_jitter: float = 8.0,
    ) -> None:
        super().__init__(
            train_json, train_images, val_json, val_images, test_json, test_images, image_size,
            batch_size, num_workers, policy, synthetic_seed, synthetic_train, synthetic_val,
        )  # fmt: skip
        self.patch_size = patch_size
        self.rho = rho
        self.resize = (resize_width, resize_height)
        self.pair_seed = pair_seed
        self.photometric = photometric
        self.pairs_per_image = pairs_per_image
        self.refine = (refine_fraction, refine_jitter)

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """One pair per image (annotations ignored)."""
        return HomographyDataset(index, self.image_size, train, self.patch_size, self.rho,
                                 self.resize, self.pair_seed, self.photometric,
                                 self.pairs_per_image, *self.refine)  # fmt: skip


# ---- head and loss ------------------------------------------------------------------------------


class HomographyHead(nn.Module):
    """1x1 reduce -> adaptive pool to ``pool_size`` (keeps where things are) -> MLP -> 8 offsets.

    (B, C, h, w) features -> (B, 8) corner offsets divided by rho, ordered x0, y0, ..., x3, y3.
    """

    def __init__(
        self,
        in_channels: int,
        reduce_channels: int = 128,
        pool_size: int = 2,
        hidden: int = 512,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.reduce = ConvBNAct(in_channels, reduce_channels, kernel_size=1, act=nn.ReLU)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(reduce_channels * pool_size**2, hidden),
            # Not ReLU: with AdamW every hidden unit died in the first epoch of a benchmark run
            # (constant output, no gradient left for the backbone); leaky units cannot die.
            nn.LeakyReLU(0.1, inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 8),
        )
        # Start near zero offsets (the identity baseline, not a random homography); a weight of
        # exactly zero would also zero the gradient reaching every layer before it.
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, 8)."""
        return self.mlp(self.pool(self.reduce(features)))


def homography_loss(
    outputs: Tensor, target: Tensor, kind: Literal["smooth_l1", "l2"] = "smooth_l1"
) -> Tensor:
    """Regression loss between (B, 8) predicted and true offsets (both divided by rho)."""
    if kind == "l2":
        return F.mse_loss(outputs, target)
    return F.smooth_l1_loss(outputs, target, beta=0.1)


class CorrelationHead(nn.Module):
    """Global correlation of A's feature map with B's.

    (B, C, h, w) features of A and of B -> ``{"logits": (B, N, N)}``, the scaled cosine
    similarity of each A cell (rows, N = h w, row-major) with each B cell. The matches are
    taken from it in decoding (:func:`windowed_soft_argmax`): its arg-max jumps a cell on a
    1e-7 difference between near-equal logits, so it stays out of the exported graph, whose
    outputs ONNX Runtime must reproduce to 1e-4.
    """

    def __init__(self, in_channels: int, embed_channels: int = 64) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, embed_channels, kernel_size=1)
        # Cosine similarity needs a temperature to make a peaked softmax; learned, from 1/0.1.
        self.log_scale = nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))

    def forward(self, features_a: Tensor, features_b: Tensor) -> dict[str, Tensor]:
        """(B, C, h, w) twice -> ``{"logits": (B, N, N)}``."""
        a = F.normalize(self.project(features_a).flatten(2), dim=1)  # (B, E, N)
        b = F.normalize(self.project(features_b).flatten(2), dim=1)
        return {"logits": self.log_scale.exp() * (a.transpose(1, 2) @ b)}


def windowed_soft_argmax(logits: Tensor, window: int = 1) -> tuple[Tensor, Tensor]:
    """Where each A cell lies in B: the soft-argmax over the ``window``-cell neighbourhood of its
    best match (sub-cell precision without the pull of distant, ambiguous peaks).

    Args:
        logits: (B, N, N) correlation of each A cell with each cell of B's square grid.

    Returns:
        ``(matches, confidence)``: (B, N, 2) positions in B in feature cells (x, y) and (B, N)
        the softmax mass inside the neighbourhood.
    """
    side = round(logits.shape[-1] ** 0.5)
    grid = cell_grid(side, side).to(logits)  # (N, 2)
    peak = grid[logits.argmax(-1)]  # (B, N, 2)
    near = ((grid - peak[..., None, :]).abs() <= window).all(-1)  # (B, N, N)
    mass = logits.softmax(-1) * near
    confidence = mass.sum(-1)
    return (mass / confidence[..., None]) @ grid, confidence


def cell_grid(height: int, width: int) -> Tensor:
    """(h w, 2) float (x, y) cell coordinates of an h x w feature map, row-major."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2).float()


def true_matches(corners: Tensor, points_a: Tensor, patch_size: int) -> Tensor:
    """Where (B, N, 2) points of patch A lie in patch B, given the (B, 4, 2) true corners.

    Patch B at ``q`` shows A at ``H q`` (H: square -> corners), so A's point ``p`` is at
    ``H^-1 p`` in B. Returns (B, N, 2) in patch pixels (float64).
    """
    homography = ops.corners_to_homography(corners.double(), patch_size)
    return ops.apply_homography(torch.linalg.inv(homography), points_a.double())


def correlation_loss(logits: Tensor, matches: Tensor, target: Tensor, size: int) -> Tensor:
    """Dense matching loss of one pair batch, all in feature cells.

    Args:
        logits: (B, N, N) correlation of each A cell with each B cell.
        matches: (B, N, 2) predicted positions in B.
        target: (B, N, 2) true positions in B; those outside the ``size`` x ``size`` grid of B
            (no match to find) are left out.

    Returns:
        Cross-entropy against the bilinear split of the true position over its 4 neighbouring
        cells (a target whose mean is the true position) + smooth L1 of the soft-argmax.
    """
    inside = ((target >= 0) & (target <= size - 1)).all(-1)  # (B, N)
    if not inside.any():
        return logits.sum() * 0.0
    grid = cell_grid(size, size).to(logits)
    split = (1 - (grid - target[..., None, :].to(logits)).abs()).clamp_min(0).prod(-1)
    cross_entropy = -(split * logits.log_softmax(-1)).sum(-1)
    position = F.smooth_l1_loss(matches, target.to(matches), beta=0.25, reduction="none").sum(-1)
    return (cross_entropy + position)[inside].mean()


# ---- ORB + RANSAC baseline ----------------------------------------------------------------------


def orb_ransac_corners(patch_a: np.ndarray, patch_b: np.ndarray) -> tuple[np.ndarray, bool]:
    """Classical estimate of a pair's moved corners: ORB matches + RANSAC homography.

    Returns:
        ``(corners, ok)``: (4, 2) float64 corners in patch-A pixels and whether an estimate was
        found; with fewer than 4 matches or no RANSAC solution the corners are the square's
        (the identity).
    """
    square = ops.square_corners(patch_a.shape[0]).double().numpy()
    # Small border and descriptor patch: the default 31-pixel border leaves little of a
    # 128-pixel patch to detect in.
    orb = cv2.ORB_create(nfeatures=500, edgeThreshold=15, patchSize=15, fastThreshold=10)
    keys_a, desc_a = orb.detectAndCompute(patch_a, None)
    keys_b, desc_b = orb.detectAndCompute(patch_b, None)
    if desc_a is None or desc_b is None:
        return square, False
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(desc_b, desc_a)
    if len(matches) < 4:
        return square, False
    points_b = np.float32([keys_b[m.queryIdx].pt for m in matches])
    points_a = np.float32([keys_a[m.trainIdx].pt for m in matches])
    # A point shown at q in patch B lies at H q in patch A: fit B -> A, then move the square.
    homography, _ = cv2.findHomography(points_b, points_a, cv2.RANSAC, 3.0)
    if homography is None:
        return square, False
    corners = cv2.perspectiveTransform(square[None], homography)[0]
    if not np.isfinite(corners).all():
        return square, False
    return corners, True


def orb_ransac_batch(patches: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 2, P, P) uint8 pairs -> ((B, 4, 2) float64 corners, (B,) bool failed)."""
    results = [orb_ransac_corners(p[0], p[1]) for p in patches.cpu().numpy()]
    corners = torch.from_numpy(np.stack([c for c, _ in results]))
    failed = torch.tensor([not ok for _, ok in results])
    return corners, failed


# ---- drawing ------------------------------------------------------------------------------------


def draw_quads(canvas: np.ndarray, quads: list[tuple[np.ndarray, tuple[int, int, int]]]) -> None:
    """Draw closed (4, 2) quadrilaterals with their RGB colours onto ``canvas`` in place."""
    for quad, colour in quads:
        points = np.round(np.asarray(quad, dtype=np.float64)).astype(np.int32)
        cv2.polylines(canvas, [points.reshape(-1, 1, 2)], True, colour, 1, cv2.LINE_AA)


SQUARE_COLOUR, TRUE_COLOUR, PREDICTED_COLOUR = (90, 140, 255), (0, 210, 0), (255, 40, 40)


def draw_pair(
    patches: np.ndarray, true_corners: np.ndarray, predicted: np.ndarray, margin: int
) -> np.ndarray:
    """Patch A on a ``margin`` border with its square (blue), the true (green) and predicted (red)
    quadrilaterals, beside patch B: (P + 2 margin, 2 P + 3 margin, 3) uint8 RGB.
    """
    size = patches.shape[-1]
    side = size + 2 * margin
    left = np.full((side, side), 40, np.uint8)
    left[margin : margin + size, margin : margin + size] = patches[0]
    right = np.full((side, size + margin), 40, np.uint8)
    right[margin : margin + size, :size] = patches[1]
    canvas = cv2.cvtColor(np.hstack([left, right]), cv2.COLOR_GRAY2RGB)
    square = ops.square_corners(size).numpy()
    draw_quads(canvas, [(square + margin, SQUARE_COLOUR), (true_corners + margin, TRUE_COLOUR),
                        (predicted + margin, PREDICTED_COLOUR)])  # fmt: skip
    return canvas


# ---- task ---------------------------------------------------------------------------------------


class HomographyTask(BaseTask):
    """Two grey patches -> corner estimate, by one of two architectures.

    ``regression`` (DeTone et al.): the patches stacked -> backbone (``in_channels=2``) ->
    pooled ``feature_level`` -> 8 corner offsets. ``correlation`` (in the spirit of IHN, Cao et
    al. 2022): each patch alone through the backbone (``in_channels=1``, cut after
    ``feature_level``) -> global correlation of the two feature maps -> a match in B for every
    cell of A, supervised densely by the true homography -> in decoding, a robust weighted DLT
    of those matches. Both refine by ``refine_steps`` passes on patch B undone by the estimate.

    Args:
        categories: COCO category records; linked from the data module, unused by the model.
        image_size: network input side (pairs are area-resized to it from ``patch_size``).
        patch_size: side of the patches the corners are measured in (pixels).
        rho: corner perturbation range; targets are offsets / ``rho``.
        loss: ``smooth_l1`` or ``l2`` on the scaled offsets.
        architecture: ``regression`` or ``correlation`` (see above).
        feature_level: backbone level the head reads.
        reduce_channels: channels of the head's 1x1 reduction.
        pool_size: side of the adaptive average pool before the MLP.
        hidden: width of the MLP's hidden layer.
        dropout: dropout before the last layer.
        embed_channels: (correlation) channels of the features correlated.
        window: (correlation) half-side, in cells, of the soft-argmax window round the peak.
        robust_scale: (correlation) residual (px) at which a match's DLT weight halves.
        robust_iterations: (correlation) reweighted DLT fits after the first.
        refine_steps: evaluation passes that undo the current estimate on patch B and add the
            network's residual homography (a cascade with shared weights; 0 = one pass).
        (the rest: see :class:`BaseTask`)
    """

    task_name = "homography"
    monitor = "val/model_mace"
    monitor_mode = "min"
    num_report_samples = 8

    def __init__(
        self,
        categories: list[dict[str, Any]] | None = None,
        image_size: int = 128,
        patch_size: int = 128,
        rho: float = 32.0,
        loss: Literal["smooth_l1", "l2"] = "smooth_l1",
        architecture: Literal["regression", "correlation"] = "regression",
        feature_level: Literal["c2", "c3", "c4", "c5"] = "c5",
        reduce_channels: int = 128,
        pool_size: int = 2,
        hidden: int = 512,
        dropout: float = 0.0,
        embed_channels: int = 64,
        window: int = 1,
        robust_scale: float = 4.0,
        robust_iterations: int = 3,
        refine_steps: int = 0,
        backbone: str = "resnet18",
        backbone_weights: str = "none",
        freeze_at: int = 0,
        lr: float = 1e-3,
        backbone_lr_mult: float = 1.0,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 1.0,
        freeze_backbone_epochs: int = 0,
        min_lr_ratio: float = 0.05,
    ) -> None:
        siamese = architecture == "correlation"
        super().__init__(
            backbone, backbone_weights, 1 if siamese else 2, freeze_at, lr, backbone_lr_mult,
            weight_decay, warmup_epochs, freeze_backbone_epochs, min_lr_ratio,
        )  # fmt: skip
        self.categories = categories or []
        channels = self.backbone.out_channels[feature_level]
        if siamese:
            self.backbone.truncate(feature_level)
            self.head = CorrelationHead(channels, embed_channels)
        else:
            self.head = HomographyHead(channels, reduce_channels, pool_size, hidden, dropout)
        self.val_metric = MetricCollection({"model": CornerError(), "identity": CornerError()},
                                           compute_groups=False)  # fmt: skip
        self.test_metric = MetricCollection(
            {"model": CornerError(), "identity": CornerError(), "orb": CornerError()},
            compute_groups=False,  # each member is fed different corners
        )

    def setup(self, stage: str) -> None:
        """Refuse data cut at another patch size or rho than the model's."""
        data = self.trainer.datamodule
        mine = (self.hparams.patch_size, float(self.hparams.rho))
        theirs = (getattr(data, "patch_size", mine[0]), float(getattr(data, "rho", mine[1])))
        if mine != theirs:
            raise ValueError(f"model.patch_size/rho {mine} differ from data.patch_size/rho "
                             f"{theirs}: set both to the same values")  # fmt: skip

    def forward(self, images: Tensor) -> Tensor | dict[str, Tensor]:
        """(B, 2, S, S) normalised patch pairs -> ``regression``: (B, 8) corner offsets divided
        by rho; ``correlation``: ``{"logits": (B, N, N)}`` of :class:`CorrelationHead`.
        """
        level = self.hparams.feature_level
        if self.hparams.architecture == "regression":
            return self.head(self.backbone(images)[level])
        features = self.backbone(self.backbone_input(images))[level]
        features = features.reshape(images.shape[0], 2, *features.shape[1:])
        return self.head(features[:, 0], features[:, 1])

    def backbone_input(self, images: Tensor) -> Tensor:
        """``correlation``: both patches through the trunk as one batch of grey images (A0, B0,
        A1, B1, ...); ``regression``: the stacked pairs as they are."""
        if self.hparams.architecture == "regression":
            return images
        return images.reshape(-1, 1, *images.shape[-2:])

    def cells_to_patch(self, cells: Tensor) -> Tensor:
        """Feature-cell (x, y) coordinates -> patch pixels (cell centres; area-resized input)."""
        stride = self.backbone.strides[self.hparams.feature_level]
        scale = self.hparams.patch_size / self.hparams.image_size
        return (stride * cells + stride / 2) * scale - 0.5

    def patch_to_cells(self, points: Tensor) -> Tensor:
        """Inverse of :meth:`cells_to_patch`."""
        stride = self.backbone.strides[self.hparams.feature_level]
        scale = self.hparams.patch_size / self.hparams.image_size
        return ((points + 0.5) / scale - stride / 2) / stride

    def cell_points(self, count: int) -> Tensor:
        """Patch-pixel centres of the cells of a square map of ``count`` cells: (count, 2)."""
        side = round(count**0.5)
        return self.cells_to_patch(cell_grid(side, side))

    def predicted_corners(self, outputs: Tensor | dict[str, Tensor]) -> Tensor:
        """Network outputs -> (B, 4, 2) predicted corners in patch pixels (one pass)."""
        if self.hparams.architecture == "regression":
            return ops.offsets_to_corners(outputs * self.hparams.rho, self.hparams.patch_size)
        return self.corners_from_matches(*windowed_soft_argmax(outputs["logits"],
                                                               self.hparams.window))  # fmt: skip

    def corners_from_matches(self, matches: Tensor, confidence: Tensor) -> Tensor:
        """(B, N, 2) matches in B (feature cells) of A's cells, (B, N) confidences -> (B, 4, 2)
        corners in patch pixels: a robust weighted DLT fit of B -> A.
        """
        matches = self.cells_to_patch(matches.double())
        points_a = self.cell_points(matches.shape[1]).to(matches).expand_as(matches)
        confidence = confidence.double()
        weights = confidence
        # Iteratively reweighted least squares (Cauchy weights): cells of A whose content left
        # patch B, or repeated texture, give wrong matches that a plain fit would average in.
        for _ in range(self.hparams.robust_iterations + 1):
            homography = ops.weighted_dlt(matches, points_a, weights)  # B -> A
            residual = (ops.apply_homography(homography, matches) - points_a).norm(dim=-1)
            weights = confidence / (1 + (residual / self.hparams.robust_scale) ** 2)
        square = ops.square_corners(self.hparams.patch_size, torch.float64).to(matches)
        return ops.apply_homography(homography, square.expand(matches.shape[0], 4, 2))

    @torch.no_grad()
    def estimate_corners(self, outputs: Tensor | dict[str, Tensor], images: Tensor) -> Tensor:
        """Outputs for (B, 2, S, S) inputs -> (B, 4, 2) corners after ``refine_steps``."""
        corners = self.predicted_corners(outputs).double()
        size = self.hparams.patch_size
        for _ in range(self.hparams.refine_steps):
            aligned = ops.align_second_patch(images, corners, size)
            residual = self.predicted_corners(self(aligned)).double()
            # B shows A at H q; the aligned B shows A at R q (R: square -> residual), H = R H_est.
            corners = ops.apply_homography(ops.corners_to_homography(residual, size), corners)
        return corners.to(images.dtype)

    def compute_loss(self, outputs: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``regression``: loss on the offsets scaled by rho; ``correlation``: dense matching
        loss of every A cell against where the true homography puts it in B."""
        if self.hparams.architecture == "correlation":
            logits = outputs["logits"]
            matches = windowed_soft_argmax(logits, self.hparams.window)[0]
            points_a = self.cell_points(logits.shape[1]).to(batch["corners"])
            target = true_matches(batch["corners"], points_a, self.hparams.patch_size)
            side = round(logits.shape[1] ** 0.5)
            loss = correlation_loss(logits, matches, self.patch_to_cells(target), side)
            return {"loss": loss}
        square = ops.square_corners(self.hparams.patch_size).to(outputs)
        target = ((batch["corners"] - square) / self.hparams.rho).flatten(1)
        return {"loss": homography_loss(outputs, target, self.hparams.loss)}

    def update_metric(self, metric: MetricCollection, outputs: Tensor, batch: dict) -> None:
        """Corner errors of the network and the identity (and ORB + RANSAC in test)."""
        target = batch["corners"]
        square = ops.square_corners(self.hparams.patch_size).to(target).expand_as(target)
        metric["model"].update(self.estimate_corners(outputs, batch["image"]), target)
        metric["identity"].update(square, target)
        if "orb" in metric:
            corners, failed = orb_ransac_batch(batch["patches"])
            metric["orb"].update(corners.to(target), target, failed)

    def decode(self, outputs: Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Per pair: predicted corners and offsets (patch pixels), the homography; with true
        corners in the batch also those and the pair's corner error.
        """
        corners = self.estimate_corners(outputs, batch["image"]).double()
        homographies = ops.corners_to_homography(corners, self.hparams.patch_size)
        truth = batch.get("corners")
        truth = None if truth is None else torch.stack(list(truth)).to(corners)
        square = ops.square_corners(self.hparams.patch_size, torch.float64).to(corners)
        results = []
        for i in range(corners.shape[0]):
            result = {
                "image_id": int(batch["image_id"][i]),
                "corners": corners[i].tolist(),
                "offsets": (corners[i] - square).flatten().tolist(),
                "homography": homographies[i].tolist(),
            }
            if truth is not None:
                result["true_corners"] = truth[i].tolist()
                result["corner_error"] = float((corners[i] - truth[i]).norm(dim=-1).mean())
            results.append(result)
        return results

    def draw_samples(self, outputs: Tensor, batch: dict[str, Any]) -> list:
        """Pairs with the true (green) and predicted (red) quadrilaterals."""
        predicted = self.estimate_corners(outputs, batch["image"]).cpu().numpy()
        truth = batch["corners"].cpu().numpy()
        samples = []
        for patches, true, pred in zip(batch["patches"].cpu().numpy(), truth, predicted):
            error = float(np.linalg.norm(pred - true, axis=-1).mean())
            image = draw_pair(patches, true, pred, int(np.ceil(self.hparams.rho)))
            samples.append((image, f"corner error {error:.1f} px", None))
        return samples

    def build_report(self, values: dict[str, Any], samples: list) -> Report:
        """Table of the three methods, error histogram, drawn examples."""
        network = {"regression": "HomographyNet", "correlation": "correlation + DLT"}
        methods = {"model": network[self.hparams.architecture], "identity": "identity",
                   "orb": "ORB + RANSAC"}  # fmt: skip
        table = [
            {"method": name, "mace_px": float(values[f"{key}_mace"]),
             "median_px": float(values[f"{key}_median"]), "p90_px": float(values[f"{key}_p90"]),
             "failure_rate": float(values[f"{key}_failure_rate"])}
            for key, name in methods.items()
        ]  # fmt: skip
        headline = {
            "mace": float(values["model_mace"]),
            "mace_identity": float(values["identity_mace"]),
            "mace_orb_ransac": float(values["orb_mace"]),
        }
        errors = {name: values[f"{key}_errors"].cpu().tolist() for key, name in methods.items()}
        metrics = {**headline, "orb_ransac_failure_rate": float(values["orb_failure_rate"]),
                   "median": float(values["model_median"]),
                   "pairs": len(errors[methods["model"]])}  # fmt: skip
        figures = [
            Figure("corner_error_histogram", "histogram", "Mean corner error per pair",
                   {"values": errors, "xlabel": "mean corner error (px)", "bins": 40}),
            Figure("examples", "image_grid",
                   "Examples: square (blue), true (green), predicted (red) corners",
                   {"images": [s[0] for s in samples], "captions": [s[1] for s in samples],
                    "columns": 2}),
        ]  # fmt: skip
        meta = {"patch_size": self.hparams.patch_size, "rho": self.hparams.rho,
                "input_size": self.hparams.image_size}  # fmt: skip
        return Report("homography", headline, metrics, {"methods": table}, figures, meta)

    # ---- tools/predict.py: each image paired with a seeded random warp of itself ----------------
    def _predict_pair(self, image: np.ndarray) -> tuple[np.ndarray, tuple, np.ndarray]:
        """Grey image scaled so its short side is 1.25 (P + 2 rho) (240 at the defaults) and
        the pair cut from it, seeded by the image's bytes (the same file gives the same pair).
        """
        patch, rho = self.hparams.patch_size, self.hparams.rho
        height, width = image.shape[:2]
        scale = 1.25 * (patch + 2 * np.ceil(rho)) / min(height, width)
        size = (max(round(width * scale), patch), max(round(height * scale), patch))
        gray = to_gray(image, size)
        rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(image).tobytes()))
        return gray, random_pair(gray, rng, patch, rho), size

    def predict_sample(self, image: np.ndarray) -> dict[str, Any]:
        """RGB image -> a pair with its known corners (see :meth:`_predict_pair`)."""
        _, (patch_a, patch_b, corners, _), _ = self._predict_pair(image)
        patches = np.stack([patch_a, patch_b], axis=-1)
        return {
            "image": homography_transforms(self.hparams.image_size)(image=patches)["image"],
            "corners": torch.from_numpy(corners),
        }

    def write_predictions(
        self, predictions: list[dict[str, Any]], images: list[np.ndarray], names: list[str],
        out_dir: Path,
    ) -> list[Path]:  # fmt: skip
        """Per image: ``<stem>.homography.json`` (true vs predicted corners, in patch and image
        pixels) and ``<stem>.homography.png`` (both quadrilaterals drawn on the grey image).
        """
        written = []
        for prediction, image, name in zip(predictions, images, names):
            gray, (_, _, _, origin), size = self._predict_pair(image)
            record = {**prediction, "file": name, "image_size_used": list(size),
                      "patch_origin": origin.tolist(),
                      "corners_in_image": (np.array(prediction["corners"]) + origin).tolist(),
                      "true_corners_in_image":
                          (np.array(prediction["true_corners"]) + origin).tolist()}  # fmt: skip
            stem = Path(name).stem
            written.append(atomic_write_json(out_dir / f"{stem}.homography.json", record))
            canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
            square = ops.square_corners(self.hparams.patch_size).numpy() + origin
            draw_quads(canvas, [(square, SQUARE_COLOUR),
                                (record["true_corners_in_image"], TRUE_COLOUR),
                                (record["corners_in_image"], PREDICTED_COLOUR)])  # fmt: skip
            ok, png = cv2.imencode(".png", canvas[:, :, ::-1])
            written.append(atomic_write_bytes(out_dir / f"{stem}.homography.png", png.tobytes()))
        return written
