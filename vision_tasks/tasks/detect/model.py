"""DetectTask: backbone levels (c3..c5 by default) -> PAN neck -> :class:`~.head.DetectHead`;
loss, decoding back to the original image, metric, report and prediction drawings.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from vision_tasks import ops
from vision_tasks.evaluation.coco_eval import CocoBoxMetric, results_from_predictions
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.layers import PANNeck
from vision_tasks.tasks.base import BaseTask, letterbox_numbers, letterbox_sample, samples_figure
from vision_tasks.tasks.detect.head import LEVELS, DetectHead, check_levels, grid_points
from vision_tasks.tasks.detect.loss import detection_loss, pad_targets
from vision_tasks.tasks.detect.postprocess import postprocess


class DetectTask(BaseTask):
    """Anchor-free one-stage detector: backbone levels -> PAN neck -> decoupled head.

    Args:
        categories: COCO category records (id, name); linked from the data module.
        image_size: letterbox side the model was trained at (kept for prediction).
        neck_width: channels of the neck and head.
        levels: consecutive backbone levels the neck reads, finest first (c2..c5). Fewer than
            the default c3, c4, c5 make a lighter model: ``[c3, c4]`` drops the ResNet's last
            stage entirely (docs/benchmarks.md, "Lighter configurations").
        assign_top_k: positives per object in the task-aligned assigner.
        box_loss_weight: weight of the CIoU loss.
        cls_loss_weight: weight of the classification BCE.
        score_threshold: minimum score kept before NMS (0.001 for COCO evaluation).
        nms_iou: IoU threshold of the class-aware NMS.
        max_detections: detections kept per image (COCO evaluates at most 100).
        coco_backend: COCOeval of the AP metric: ``pycocotools`` (the reference) or ``faster``
            (faster-coco-eval, same stats, several times faster; docs/evaluation.md).
        (the rest: see :class:`BaseTask`)
    """

    task_name = "detect"
    monitor = "val/AP"
    monitor_mode = "max"
    num_report_samples = 8
    draw_score_threshold = 0.3

    def __init__(
        self,
        categories: list[dict[str, Any]] | None = None,
        image_size: int = 256,
        neck_width: int = 64,
        levels: tuple[str, ...] = LEVELS,
        assign_top_k: int = 10,
        box_loss_weight: float = 5.0,
        cls_loss_weight: float = 1.0,
        score_threshold: float = 0.001,
        nms_iou: float = 0.65,
        max_detections: int = 100,
        coco_backend: Literal["pycocotools", "faster"] = "pycocotools",
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
        if not categories:
            raise ValueError("DetectTask needs categories (linked from the data module)")
        self.categories = categories
        self.class_names = [c["name"] for c in categories]
        self.levels = check_levels(levels)
        # Stages past the last level read would run on every image for nothing.
        self.backbone.truncate(self.levels[-1])
        channels = [self.backbone.out_channels[level] for level in self.levels]
        self.neck = PANNeck(channels, neck_width)
        self.head = DetectHead(neck_width, len(categories), len(self.levels))
        self.strides = [self.backbone.strides[level] for level in self.levels]
        self.val_metric = CocoBoxMetric(backend=coco_backend)
        self.test_metric = CocoBoxMetric(backend=coco_backend)
        self._grid: tuple[tuple, Tensor, Tensor] | None = None

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, S, S) -> ``cls_logits`` (B, N, C), ``box_regression`` (B, N, 4),
        ``points`` (N, 2) and ``strides`` (N, 1)."""
        features = self.backbone(images)
        pyramid = self.neck([features[level] for level in self.levels])
        cls_logits, box_regression = self.head(pyramid)
        points, strides = self._grid_for([tuple(p.shape[-2:]) for p in pyramid], images.device)
        return {
            "cls_logits": cls_logits,
            "box_regression": box_regression,
            "points": points,
            "strides": strides,
        }

    def _grid_for(self, shapes: list[tuple], device: torch.device) -> tuple[Tensor, Tensor]:
        key = (tuple(shapes), str(device))
        if self._grid is None or self._grid[0] != key:
            self._grid = (key, *grid_points(shapes, self.strides, device))
        return self._grid[1], self._grid[2]

    def compute_loss(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Task-aligned assignment, BCE class loss, CIoU box loss."""
        targets = pad_targets(batch["boxes_xyxy"], batch["label"], batch["crowd"])
        hp = self.hparams
        return detection_loss(
            outputs["cls_logits"],
            outputs["box_regression"],
            outputs["points"],
            outputs["strides"],
            targets,
            hp.assign_top_k,
            hp.box_loss_weight,
            hp.cls_loss_weight,
        )

    def decode(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Per image: ``bbox`` (K, 4) COCO xywh in original pixels, ``score``, ``category_id``."""
        hp = self.hparams
        detections = postprocess(
            outputs["cls_logits"],
            outputs["box_regression"],
            outputs["points"],
            outputs["strides"],
            hp.score_threshold,
            iou_threshold=hp.nms_iou,
            max_detections=hp.max_detections,
        )
        category_ids = torch.tensor([c["id"] for c in self.categories])
        predictions = []
        for i, (boxes, scores, labels) in enumerate(detections):
            scale, pad_x, pad_y, size = letterbox_numbers(batch, i)
            boxes = ops.boxes_to_original(boxes, scale, (pad_x, pad_y), size)
            predictions.append(
                {
                    "image_id": int(batch["image_id"][i]),
                    "bbox": ops.xyxy_to_xywh(boxes).float(),
                    "score": scores.float().cpu(),
                    "category_id": category_ids[labels.cpu()],
                }
            )
        return predictions

    def update_metric(self, metric: CocoBoxMetric, outputs: dict, batch: dict[str, Any]) -> None:
        """Collect this batch's detections (COCOeval runs once per epoch, on every process's)."""
        metric.update(self.decode(outputs, batch), batch["image_id"])

    def on_validation_epoch_start(self) -> None:
        """Point the metric at the validation ground truth."""
        self.val_metric.index = self.trainer.datamodule.index("val")

    def on_test_epoch_start(self) -> None:
        """Point the metric at the test ground truth."""
        super().on_test_epoch_start()
        self.test_metric.index = self.trainer.datamodule.index("test")

    def draw_samples(self, outputs: dict, batch: dict[str, Any]) -> list:
        """Network inputs with true boxes (green) and detections above 0.3 (red)."""
        images = ops.denormalize(batch["image"].detach().cpu())
        detections = postprocess(
            outputs["cls_logits"],
            outputs["box_regression"],
            outputs["points"],
            outputs["strides"],
            self.draw_score_threshold,
        )
        drawn = []
        for image, truth, (boxes, scores, labels) in zip(images, batch["boxes_xyxy"], detections):
            names = [
                f"{self.class_names[k]} {s:.2f}" for k, s in zip(labels.tolist(), scores.tolist())
            ]
            image = draw_bounding_boxes(image, truth.cpu(), colors="lime", width=1)
            image = draw_bounding_boxes(image, boxes.cpu(), names, colors="red", width=1)
            drawn.append((image.permute(1, 2, 0).numpy(), f"{len(boxes)} detections", None))
        return drawn

    def build_report(self, values: dict[str, Any], samples: list) -> Report:
        """The 12 COCO stats, per-category AP, PR curves at IoU 0.5, drawn predictions."""
        result = values["result"]
        headline = {k: result.stats[k] for k in ("AP", "AP50", "AP75")}
        figures = [
            Figure(
                "pr_curves",
                "curves",
                "Precision-recall at IoU 0.5 (area all, 100 dets)",
                {"series": result.pr_curves, "xlabel": "recall", "ylabel": "precision"},
            ),
            samples_figure(samples, "Detections (red) and ground truth (green)"),
        ]
        metrics = {**result.stats, "images": values["images"], "detections": values["detections"]}
        return Report(
            "detect", headline, metrics, {"per_category_AP": result.per_category}, figures
        )

    # ---- tools/predict.py --------------------------------------------------------------------
    def predict_sample(self, image: np.ndarray) -> dict[str, Any]:
        """Letterbox and normalise one RGB image."""
        return letterbox_sample(image, self.hparams.image_size)

    def to_results(self, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One COCO results record per detection."""
        return results_from_predictions(predictions)

    def draw_prediction(self, image: np.ndarray, prediction: dict[str, Any]) -> np.ndarray:
        """The original image with its detections above 0.3 (red, class and score)."""
        index_of = {c["id"]: k for k, c in enumerate(self.categories)}
        keep = prediction["score"] >= self.draw_score_threshold
        boxes = ops.xywh_to_xyxy(prediction["bbox"][keep])
        labels = [
            f"{self.class_names[index_of[int(c)]]} {float(s):.2f}"
            for c, s in zip(prediction["category_id"][keep], prediction["score"][keep])
        ]
        drawn = draw_bounding_boxes(
            torch.from_numpy(image).permute(2, 0, 1), boxes, labels, colors="red", width=2
        )
        return drawn.permute(1, 2, 0).numpy()
