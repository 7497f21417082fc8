"""The homography task: both architectures, refinement passes, the ORB + RANSAC baseline,
evaluation report, drawings and tools/predict.py hooks."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch import Tensor
from torchmetrics import MetricCollection

from vision_tasks import ops
from vision_tasks.data.transforms import homography_transforms
from vision_tasks.evaluation.metrics import CornerError
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.tasks.base import BaseTask, samples_figure
from vision_tasks.tasks.homography.data import random_pair, to_gray
from vision_tasks.tasks.homography.heads import (
    CorrelationHead,
    HomographyHead,
    correlation_loss,
    homography_loss,
    true_matches,
    windowed_soft_argmax,
)
from vision_tasks.utils import atomic_write_json

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
    draw_quads(
        canvas,
        [
            (square + margin, SQUARE_COLOUR),
            (true_corners + margin, TRUE_COLOUR),
            (predicted + margin, PREDICTED_COLOUR),
        ],
    )
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
        patch_size: side of the patches the corners are measured in (pixels); the CLI links it
            from the data's.
        rho: corner perturbation range; targets are offsets / ``rho``; linked as patch_size.
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
    # {model argument: data module attribute}, linked by the CLI when it builds both: the
    # corners are measured in the data's patches.
    linked_from_data = {"patch_size": "patch_size", "rho": "rho"}
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
            backbone=backbone,
            backbone_weights=backbone_weights,
            in_channels=1 if siamese else 2,
            freeze_at=freeze_at,
            lr=lr,
            backbone_lr_mult=backbone_lr_mult,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            freeze_backbone_epochs=freeze_backbone_epochs,
            min_lr_ratio=min_lr_ratio,
        )
        self.categories = categories or []
        channels = self.backbone.out_channels[feature_level]
        if siamese:
            self.backbone.truncate(feature_level)
            self.head = CorrelationHead(channels, embed_channels)
        else:
            self.head = HomographyHead(channels, reduce_channels, pool_size, hidden, dropout)
        self.val_metric = MetricCollection(
            {"model": CornerError(), "identity": CornerError()}, compute_groups=False
        )
        self.test_metric = MetricCollection(
            {"model": CornerError(), "identity": CornerError(), "orb": CornerError()},
            compute_groups=False,  # each member is fed different corners
        )

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
        return self.cells_to_patch(ops.cell_grid(side, side))

    def predicted_corners(self, outputs: Tensor | dict[str, Tensor]) -> Tensor:
        """Network outputs -> (B, 4, 2) predicted corners in patch pixels (one pass)."""
        if self.hparams.architecture == "regression":
            return ops.offsets_to_corners(outputs * self.hparams.rho, self.hparams.patch_size)
        return self.corners_from_matches(
            *windowed_soft_argmax(outputs["logits"], self.hparams.window)
        )

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
        methods = {
            "model": network[self.hparams.architecture],
            "identity": "identity",
            "orb": "ORB + RANSAC",
        }
        table = [
            {
                "method": name,
                "mace_px": float(values[f"{key}_mace"]),
                "median_px": float(values[f"{key}_median"]),
                "p90_px": float(values[f"{key}_p90"]),
                "failure_rate": float(values[f"{key}_failure_rate"]),
            }
            for key, name in methods.items()
        ]
        headline = {
            "mace": float(values["model_mace"]),
            "mace_identity": float(values["identity_mace"]),
            "mace_orb_ransac": float(values["orb_mace"]),
        }
        errors = {name: values[f"{key}_errors"].cpu().tolist() for key, name in methods.items()}
        metrics = {
            **headline,
            "orb_ransac_failure_rate": float(values["orb_failure_rate"]),
            "median": float(values["model_median"]),
            "pairs": len(errors[methods["model"]]),
        }
        figures = [
            Figure(
                "corner_error_histogram",
                "histogram",
                "Mean corner error per pair",
                {"values": errors, "xlabel": "mean corner error (px)", "bins": 40},
            ),
            samples_figure(
                samples,
                "Examples: square (blue), true (green), predicted (red) corners",
                name="examples",
                columns=2,
            ),
        ]
        meta = {
            "patch_size": self.hparams.patch_size,
            "rho": self.hparams.rho,
            "input_size": self.hparams.image_size,
        }
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

    prediction_suffix = ".homography.png"

    def _placed(self, image: np.ndarray, prediction: dict[str, Any]) -> tuple[np.ndarray, dict]:
        """The grey image the pair was cut from, and the prediction's corners placed in it."""
        gray, (_, _, _, origin), size = self._predict_pair(image)
        return gray, {
            "image_size_used": list(size),
            "patch_origin": origin.tolist(),
            "corners_in_image": (np.array(prediction["corners"]) + origin).tolist(),
            "true_corners_in_image": (np.array(prediction["true_corners"]) + origin).tolist(),
        }

    def prediction_files(
        self, image: np.ndarray, prediction: dict[str, Any], name: str, out_dir: Path
    ) -> list[Path]:
        """``<stem>.homography.json``: true vs predicted corners, in patch and image pixels."""
        record = {**prediction, "file": name, **self._placed(image, prediction)[1]}
        return [atomic_write_json(out_dir / f"{Path(name).stem}.homography.json", record)]

    def draw_prediction(self, image: np.ndarray, prediction: dict[str, Any]) -> np.ndarray:
        """The grey image with the patch square, the true and the predicted quadrilaterals."""
        gray, placed = self._placed(image, prediction)
        canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
        square = ops.square_corners(self.hparams.patch_size).numpy()
        draw_quads(
            canvas,
            [
                (square + np.array(placed["patch_origin"]), SQUARE_COLOUR),
                (placed["true_corners_in_image"], TRUE_COLOUR),
                (placed["corners_in_image"], PREDICTED_COLOUR),
            ],
        )
        return canvas
