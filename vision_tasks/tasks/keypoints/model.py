"""KeypointTask: a crop -> backbone -> ``layers.HeatmapHead``; loss, OKS AP / PCK, flip test,
report and prediction drawings.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_keypoints

from vision_tasks import ops
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import keypoint_transforms
from vision_tasks.evaluation.coco_eval import KEYPOINT_STATS
from vision_tasks.evaluation.metrics import PCK_CURVE_THRESHOLDS, KeypointMetric
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.layers import HeatmapHead
from vision_tasks.tasks.base import BaseTask, samples_figure
from vision_tasks.tasks.keypoints.heatmaps import (
    crop_to_image,
    decode_heatmaps,
    encode_heatmaps,
    flip_heatmaps,
    heatmap_loss,
    instance_scores,
)
from vision_tasks.tasks.keypoints.metadata import (
    COCO_OFFSET,
    crop_size,
    flip_pairs_from_names,
    flip_permutation,
    keypoint_sigmas,
)


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
        coco_backend: COCOeval of the OKS AP metric: ``pycocotools`` (the reference) or
            ``faster`` (faster-coco-eval, same stats; docs/evaluation.md).
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
        coco_backend: Literal["pycocotools", "faster"] = "pycocotools",
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
        self.val_metric = KeypointMetric(self.category["id"], sigmas, pck_threshold, coco_backend)
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
