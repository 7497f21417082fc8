"""Instance segmentation, YOLACT / YOLOv8-seg style: the detector plus a mask per detection.

Detection is :mod:`vision_tasks.tasks.detect` unchanged (backbone c3..c5 -> PAN neck -> class and
box branches -> task-aligned assigner -> NMS). Two parts are added:

- a prototype branch: the neck's p3 (stride 8) upsampled onto the backbone's c2 (stride 4) ->
  ``k`` prototype masks per image, ``protos`` (B, k, H/4, W/4);
- a coefficient branch beside the class and box branches, on the same pyramid levels: ``k``
  coefficients per grid point, ``mask_coeffs`` (B, N, k).

A detection's mask is ``sigmoid(coeffs @ protos)`` cropped to its box (a pixel belongs to the box
when its centre lies inside). Training adds, for each positive point of detection's assigner, the
BCE (+ Dice) between its mask and its object's, both cropped to the object's box, the BCE a mean
over the box's pixels (Ultralytics' ``v8SegmentationLoss``). Evaluation pastes every mask back
into the original image (one bilinear resampling at each original pixel's centre) and encodes it
as COCO RLE for COCOeval ``segm``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from vision_tasks import ops
from vision_tasks.evaluation.coco_eval import results_from_predictions
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.layers import ConvBNAct
from vision_tasks.tasks.base import letterbox_numbers, samples_figure
from vision_tasks.tasks.detect import (
    DetectTask,
    assign_points,
    decode_boxes,
    detection_loss,
    pad_targets,
    postprocess,
)
from vision_tasks.tasks.instance.evaluation import CocoMaskMetric, decode_rle, encode_masks
from vision_tasks.tasks.instance.masks import (
    box_pixels,
    mask_logits,
    paste_masks,
    prototype_grid_masks,
)
from vision_tasks.tasks.segment import PALETTE

MASK_LEVEL = "c2"  # the backbone level the prototypes are made at (stride 4)

# ---- head -------------------------------------------------------------------------------------


class PrototypeBranch(nn.Module):
    """The neck's p3 upsampled onto the backbone's c2 -> ``num_prototypes`` prototype masks.

    ``forward(p3, c2)`` with p3 (B, width, H/8, W/8) and c2 (B, c2_channels, H/4, W/4) returns
    (B, num_prototypes, H/4, W/4): p3 brings what the objects are, c2 where their edges lie.
    """

    def __init__(self, width: int, c2_channels: int, channels: int, num_prototypes: int) -> None:
        super().__init__()
        self.top = ConvBNAct(width, channels)
        self.lateral = ConvBNAct(c2_channels, channels, 1)
        self.fuse = ConvBNAct(channels, channels)
        self.out = nn.Conv2d(channels, num_prototypes, 1)

    def forward(self, p3: Tensor, c2: Tensor) -> Tensor:
        """Prototype masks (raw, unbounded) at c2's resolution."""
        top = F.interpolate(self.top(p3), size=c2.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.fuse(top + self.lateral(c2)))


class MaskCoefficientHead(nn.Module):
    """A third branch beside detection's class and box branches, one per pyramid level.

    ``forward([p3, p4, p5])`` returns (B, N, num_prototypes), points in detection's order
    (level by level, row-major), so coefficients and boxes of a point share its index.
    """

    def __init__(self, width: int, num_prototypes: int, num_levels: int = 3) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                ConvBNAct(width, width),
                ConvBNAct(width, width),
                nn.Conv2d(width, num_prototypes, 1),
            )
            for _ in range(num_levels)
        )

    def forward(self, pyramid: list[Tensor]) -> Tensor:
        """Mask coefficients (B, N, num_prototypes)."""
        coeffs = [branch(p).flatten(2) for branch, p in zip(self.branches, pyramid)]
        return torch.cat(coeffs, dim=2).transpose(1, 2)


# ---- assignment and loss ------------------------------------------------------------------------


def mask_loss(
    mask_coeffs: Tensor,
    protos: Tensor,
    foreground: Tensor,
    object_index: Tensor,
    masks: Tensor,
    boxes: Tensor,
    has_mask: Tensor,
) -> dict[str, Tensor]:
    """Per-positive mask BCE and Dice inside the object's box, averaged over positives.

    Args:
        mask_coeffs: (B, N, k) coefficients per point.
        protos: (B, k, h, w) prototypes.
        foreground: (B, N) positives (detection's :class:`~vision_tasks.tasks.detect.Assignment`).
        object_index: (B, N) each positive's object.
        masks: (B, M, h, w) target fractions 0..1 on the prototype grid.
        boxes: (B, M, 4) object boxes in prototype pixels (the crop).
        has_mask: (B, M) objects with a mask target (not crowd, not box-only).

    Returns:
        ``bce``: the mean over positives of the BCE averaged over the pixels of the box;
        ``dice``: the mean over positives of ``1 - Dice`` (smoothed by 1 pixel) inside the box;
        ``positives``: how many were averaged. Zero losses (still in the graph) without one.
    """
    h, w = protos.shape[-2:]
    bce_terms, dice_terms = [], []
    for b in range(protos.shape[0]):
        chosen = foreground[b] & has_mask[b].gather(0, object_index[b])
        if not chosen.any():
            continue
        objects = object_index[b][chosen]
        logits = mask_logits(mask_coeffs[b][chosen], protos[b]).float()
        inside = box_pixels(boxes[b][objects].float(), h, w).float()
        target = masks[b][objects].float() * inside
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce_terms.append((bce * inside).sum((1, 2)) / inside.sum((1, 2)).clamp_min(1.0))
        probs = logits.sigmoid() * inside
        overlap = (probs * target).sum((1, 2))
        dice_terms.append(1 - (2 * overlap + 1) / (probs.sum((1, 2)) + target.sum((1, 2)) + 1))
    if not bce_terms:
        zero = (mask_coeffs.sum() + protos.sum()) * 0.0
        return {"bce": zero, "dice": zero, "positives": torch.zeros((), dtype=torch.long)}
    bce, dice = torch.cat(bce_terms), torch.cat(dice_terms)
    return {"bce": bce.mean(), "dice": dice.mean(), "positives": torch.tensor(len(bce))}


def pad_masks(masks: list[Tensor], has_mask: list[Tensor], count: int) -> tuple[Tensor, Tensor]:
    """Per-image (n_i, S, S) masks and (n_i,) flags -> (B, count, S, S) and (B, count)."""
    side = masks[0].shape[-2:]
    out = masks[0].new_zeros(len(masks), count, *side)
    flags = torch.zeros(len(masks), count, dtype=torch.bool, device=masks[0].device)
    for i, (m, f) in enumerate(zip(masks, has_mask)):
        out[i, : len(m)] = m
        flags[i, : len(f)] = f
    return out, flags


# ---- post-processing ----------------------------------------------------------------------------


def postprocess_with_points(
    cls_logits: Tensor,
    box_regression: Tensor,
    points: Tensor,
    strides: Tensor,
    **kwargs: Any,
) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Detection's :func:`~vision_tasks.tasks.detect.postprocess` (same keyword arguments),
    each detection with the grid point it came from, whose coefficients make its mask.

    Returns:
        Per image ``(boxes_xyxy (K, 4), scores (K,), labels (K,), point_index (K,))``. The point
        is the one whose decoded box and class score equal the detection's exactly (both are
        computed by the same operations on the same tensors).
    """
    detections = postprocess(cls_logits, box_regression, points, strides, **kwargs)
    decoded = decode_boxes(points, strides, box_regression)
    all_scores = cls_logits.sigmoid()
    results = []
    for (boxes, scores, labels), candidates, image_scores in zip(detections, decoded, all_scores):
        same = (boxes.unsqueeze(1) == candidates.unsqueeze(0)).all(-1)
        same &= image_scores[:, labels].T == scores.unsqueeze(1)
        results.append((boxes, scores, labels, same.to(torch.uint8).argmax(1)))
    return results


# ---- task -------------------------------------------------------------------------------------


class InstanceTask(DetectTask):
    """The detector of :class:`DetectTask` plus prototype masks and per-detection coefficients.

    Args:
        categories: COCO category records (id, name); linked from the data module.
        image_size: letterbox side the model was trained at (kept for prediction).
        neck_width: channels of the neck and the detection / coefficient branches.
        num_prototypes: prototype masks (``k``), each detection's mask a mix of them.
        prototype_channels: channels of the prototype branch (it runs at stride 4).
        mask_loss_weight: weight of the mask BCE.
        mask_dice_weight: weight of the mask Dice loss.
        coco_backend: COCOeval of the mask and box AP: ``pycocotools`` (the reference) or
            ``faster`` (faster-coco-eval, same stats; docs/evaluation.md).
        (the rest: see :class:`DetectTask` and :class:`~vision_tasks.tasks.base.BaseTask`)
    """

    task_name = "instance"
    monitor = "val/mask_AP"
    monitor_mode = "max"
    num_report_samples = 8

    def __init__(
        self,
        categories: list[dict[str, Any]] | None = None,
        image_size: int = 256,
        neck_width: int = 64,
        num_prototypes: int = 32,
        prototype_channels: int = 64,
        mask_loss_weight: float = 2.0,
        mask_dice_weight: float = 1.0,
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
            categories=categories,
            image_size=image_size,
            neck_width=neck_width,
            assign_top_k=assign_top_k,
            box_loss_weight=box_loss_weight,
            cls_loss_weight=cls_loss_weight,
            score_threshold=score_threshold,
            nms_iou=nms_iou,
            max_detections=max_detections,
            coco_backend=coco_backend,
            backbone=backbone,
            backbone_weights=backbone_weights,
            freeze_at=freeze_at,
            lr=lr,
            backbone_lr_mult=backbone_lr_mult,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            freeze_backbone_epochs=freeze_backbone_epochs,
            min_lr_ratio=min_lr_ratio,
        )
        self.mask_stride = self.backbone.strides[MASK_LEVEL]
        c2_channels = self.backbone.out_channels[MASK_LEVEL]
        self.prototypes = PrototypeBranch(
            neck_width, c2_channels, prototype_channels, num_prototypes
        )
        self.coefficients = MaskCoefficientHead(neck_width, num_prototypes, len(self.levels))
        self.val_metric = CocoMaskMetric(
            len(categories), self.draw_score_threshold, backend=coco_backend
        )
        self.test_metric = CocoMaskMetric(
            len(categories), self.draw_score_threshold, backend=coco_backend
        )

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, S, S) -> detection's outputs (see :meth:`DetectTask.forward`) plus
        ``mask_coeffs`` (B, N, k) and ``protos`` (B, k, S/4, S/4)."""
        features = self.backbone(images)
        pyramid = self.neck([features[level] for level in self.levels])
        cls_logits, box_regression = self.head(pyramid)
        points, strides = self._grid_for([tuple(p.shape[-2:]) for p in pyramid], images.device)
        return {
            "cls_logits": cls_logits,
            "box_regression": box_regression,
            "points": points,
            "strides": strides,
            "mask_coeffs": self.coefficients(pyramid),
            "protos": self.prototypes(pyramid[0], features[MASK_LEVEL]),
        }

    def compute_loss(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Detection's losses plus the mask BCE and Dice on the same positives: the assigner
        runs once, and its object index says which object's mask each positive learns."""
        hp = self.hparams
        targets = pad_targets(batch["boxes_xyxy"], batch["label"], batch["crowd"])
        head = (outputs["cls_logits"], outputs["box_regression"], outputs["points"])
        assignment = assign_points(*head, outputs["strides"], targets, hp.assign_top_k)
        losses = detection_loss(
            *head,
            outputs["strides"],
            targets,
            hp.assign_top_k,
            hp.box_loss_weight,
            hp.cls_loss_weight,
            assignment=assignment,
        )
        protos = outputs["protos"]
        h, w = protos.shape[-2:]
        masks, has_mask = pad_masks(batch["masks"], batch["has_mask"], targets["boxes"].shape[1])
        grid_masks = prototype_grid_masks(masks.flatten(0, 1), h, w, self.mask_stride)
        mask = mask_loss(
            outputs["mask_coeffs"],
            protos,
            assignment.foreground,
            assignment.object_index,
            grid_masks.view(*masks.shape[:2], h, w),
            targets["boxes"] / self.mask_stride,
            has_mask,
        )
        losses["mask"], losses["dice"] = mask["bce"].detach(), mask["dice"].detach()
        weighted = hp.mask_loss_weight * mask["bce"] + hp.mask_dice_weight * mask["dice"]
        losses["loss"] = losses["loss"] + weighted
        return losses

    def _detections(self, outputs: dict[str, Tensor], **kwargs: Any) -> list[tuple]:
        return postprocess_with_points(
            outputs["cls_logits"],
            outputs["box_regression"],
            outputs["points"],
            outputs["strides"],
            **kwargs,
        )

    def decode(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Detection's per-image predictions plus ``segmentation``: one COCO RLE per detection,
        in the original image (see :func:`paste_masks`)."""
        predictions = super().decode(outputs, batch)
        hp = self.hparams
        detections = self._detections(
            outputs,
            score_threshold=hp.score_threshold,
            iou_threshold=hp.nms_iou,
            max_detections=hp.max_detections,
        )
        for i, (prediction, (_, scores, _, point)) in enumerate(zip(predictions, detections)):
            if not torch.equal(scores.float().cpu(), prediction["score"]):
                raise RuntimeError("detect's decode and postprocess disagree on the detections")
            logits = mask_logits(outputs["mask_coeffs"][i, point], outputs["protos"][i])
            boxes = ops.xywh_to_xyxy(prediction["bbox"])
            scale, pad_x, pad_y, size = letterbox_numbers(batch, i)
            masks = paste_masks(logits, boxes, scale, (pad_x, pad_y), size, self.mask_stride)
            prediction["segmentation"] = encode_masks(masks.cpu())
        return predictions

    def update_metric(self, metric: CocoMaskMetric, outputs: dict, batch: dict[str, Any]) -> None:
        """Collect this batch's detections and masks (COCOeval runs once per epoch)."""
        metric.update(self.decode(outputs, batch), batch["image_id"])

    # ---- drawings and report -------------------------------------------------------------------
    def _network_masks(
        self, outputs: dict, i: int, boxes: Tensor, point: Tensor, side: int
    ) -> Tensor:
        """(K, S, S) bool masks of image ``i``'s detections on its ``side``-pixel input."""
        logits = mask_logits(outputs["mask_coeffs"][i, point], outputs["protos"][i])
        return paste_masks(logits, boxes, 1.0, (0.0, 0.0), (side, side), self.mask_stride)

    def draw_samples(self, outputs: dict, batch: dict[str, Any]) -> list:
        """Network inputs with predicted masks (class colours, score >= 0.3) and boxes (white),
        ground-truth boxes in green."""
        images = ops.denormalize(batch["image"].detach().cpu())
        detections = self._detections(outputs, score_threshold=self.draw_score_threshold)
        drawn = []
        for i, (image, truth, detection) in enumerate(zip(images, batch["boxes_xyxy"], detections)):
            boxes, scores, labels, point = detection
            side = int(batch["image"].shape[-1])
            masks = self._network_masks(outputs, i, boxes, point, side).cpu()
            names = [
                f"{self.class_names[k]} {s:.2f}" for k, s in zip(labels.tolist(), scores.tolist())
            ]
            image = self._draw(image, masks, boxes.cpu(), labels.tolist(), names)
            image = draw_bounding_boxes(image, truth.cpu(), colors="lime", width=1)
            drawn.append((image.permute(1, 2, 0).numpy(), f"{len(boxes)} instances", None))
        return drawn

    @staticmethod
    def _draw(
        image: Tensor, masks: Tensor, boxes: Tensor, labels: list[int], names: list[str]
    ) -> Tensor:
        """(3, H, W) uint8 with masks in their class's palette colour and named boxes."""
        if len(masks):
            colours = [tuple(int(c) for c in PALETTE[k + 1]) for k in labels]
            image = draw_segmentation_masks(image, masks, alpha=0.5, colors=colours)
        return draw_bounding_boxes(image, boxes, names, colors="white", width=1)

    def build_report(self, values: dict[str, Any], samples: list) -> Report:
        """Mask and box COCO stats, per-category mask / box AP, the semantic and panoptic views
        of the merged masks, mask PR curves at IoU 0.5, predicted masks drawn."""
        segm, bbox = values["segm"], values["bbox"]
        headline = {
            "mask_AP": segm.stats["AP"],
            "mask_AP50": segm.stats["AP50"],
            "mask_AP75": segm.stats["AP75"],
            "box_AP": bbox.stats["AP"],
            "box_AP50": bbox.stats["AP50"],
        }
        tables = {
            "per_category_mask_AP": segm.per_category,
            "per_category_box_AP": bbox.per_category,
        }
        semantic = values.get("semantic")
        if semantic is not None:
            headline["semantic_miou"] = float(semantic["miou"])
            names = ["background", *self.class_names]
            tables["semantic_view"] = [
                {"class": name, "iou": float(iou), "pixels": int(n)}
                for name, iou, n in zip(names, semantic["iou"].tolist(), semantic["pixels"])
            ]
        panoptic = values.get("panoptic")
        if panoptic is not None:
            headline |= {f"panoptic_{k.upper()}": panoptic[k] for k in ("pq", "sq", "rq")}
            names = {c["id"]: c["name"] for c in self.categories}
            tables["panoptic_per_category"] = [
                {"class": names.get(category, str(category))} | counts
                for category, counts in panoptic["per_category"].items()
            ]
        figures = [
            Figure(
                "pr_curves_mask",
                "curves",
                "Mask precision-recall at IoU 0.5 (area all, 100 dets)",
                {"series": segm.pr_curves, "xlabel": "recall", "ylabel": "precision"},
            ),
            samples_figure(
                samples, "Predicted masks (class colours, score >= 0.3), ground-truth boxes green"
            ),
        ]
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        meta = {
            "semantic_view": f"masks with score >= {self.draw_score_threshold} merged by "
            f"class, the most confident on top, against the label maps of the segment task",
            "panoptic_view": "masks with score >= 0.5 fused (Detectron2: the most confident "
            "first, a mask left with under half its area dropped), panoptic quality as "
            "panopticapi defines it; every class is a thing, pixels two objects share are void",
        }
        return Report("instance", headline, scalars, tables, figures, meta)

    # ---- tools/predict.py --------------------------------------------------------------------
    def to_results(self, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One COCO results record per detection: ``bbox`` and an RLE ``segmentation``."""
        records = results_from_predictions(predictions)
        segments = [rle for p in predictions for rle in p["segmentation"]]
        for record, rle in zip(records, segments, strict=True):
            record["segmentation"] = rle
        return records

    def draw_prediction(self, image: np.ndarray, prediction: dict[str, Any]) -> np.ndarray:
        """The original image with the masks and boxes scoring >= 0.3 (class colours, names)."""
        index_of = {c["id"]: k for k, c in enumerate(self.categories)}
        keep = (prediction["score"] >= self.draw_score_threshold).nonzero().flatten().tolist()
        labels = [index_of[int(prediction["category_id"][k])] for k in keep]
        masks = decode_rle([prediction["segmentation"][k] for k in keep], image.shape[:2])
        texts = [
            f"{self.class_names[c]} {float(prediction['score'][k]):.2f}"
            for c, k in zip(labels, keep)
        ]
        boxes = ops.xywh_to_xyxy(prediction["bbox"][keep])
        picture = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return self._draw(picture, masks, boxes, labels, texts).permute(1, 2, 0).numpy()
