"""Object detection, YOLO style: dataset view -> neck + head -> assigner + loss -> NMS -> task.

Backbone c3..c5 -> PAN neck (``layers.PANNeck``) -> an anchor-free decoupled head per level
(class logits + 4 box distances per grid point, as in YOLOX / YOLOv8 without DFL). Targets come
from the task-aligned assigner (TOOD, YOLOv8): each object takes the ``top_k`` points inside it
whose ``score^alpha * IoU^beta`` is highest, so the points that classify *and* localise best are
trained as positives and the class target is IoU-aware. It needs no anchor sizes and no per-image
cost matrix solve (SimOTA's dynamic-k), which keeps the step cheap on a CPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.ops import batched_nms, box_iou, complete_box_iou_loss
from torchvision.utils import draw_bounding_boxes

from vision_tasks import ops
from vision_tasks.data.coco import CocoIndex, Policy
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import detect_transforms
from vision_tasks.evaluation.coco_eval import CocoBoxMetric, results_from_predictions
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.layers import ConvBNAct, PANNeck
from vision_tasks.tasks.base import (
    BaseTask,
    letterbox_numbers,
    letterbox_sample,
    samples_figure,
)

LEVELS = ("c3", "c4", "c5")

# ---- dataset view -----------------------------------------------------------------------------


class DetectDataset(Dataset):
    """COCO images letterboxed to ``image_size`` with their boxes in network pixels.

    Sample keys: ``image`` (3, S, S), ``boxes_xyxy`` (n, 4), ``label`` (n,) class indices,
    ``crowd`` (n,) bool, ``image_id``, and ``scale`` / ``pad`` / ``orig_size`` that map network
    pixels back to the original image (``ops.boxes_to_original``).
    """

    def __init__(
        self, index: CocoIndex, image_size: int, train: bool, colour_shift: float = 0.0
    ) -> None:
        self.index = index
        self.image_size = image_size
        self.train = train
        self.transform = detect_transforms(train, colour_shift)

    def __len__(self) -> int:
        return len(self.index.image_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.index.image_ids[i]
        image = self.index.load_image(image_id)
        anns = self.index.annotations(image_id)
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        square, scale, pad_x, pad_y = ops.letterbox_image(image, self.image_size)
        boxes = np.clip(boxes * scale + [pad_x, pad_y, pad_x, pad_y], 0, self.image_size)
        labels = [self.index.cat_to_index[a["category_id"]] for a in anns]
        crowd = [bool(a.get("iscrowd", 0)) for a in anns]
        if self.train:
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out = self.transform(
                image=square,
                bboxes=boxes[keep],
                label=np.array(labels)[keep],
                crowd=np.array(crowd)[keep],
            )
            tensor, boxes = out["image"], np.asarray(out["bboxes"]).reshape(-1, 4)
            labels, crowd = list(out["label"]), list(out["crowd"])
        else:
            tensor = self.transform(image=square)["image"]
        return {
            "image": tensor,
            "boxes_xyxy": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "label": torch.as_tensor(np.asarray(labels, dtype=np.int64)),
            "crowd": torch.as_tensor(np.asarray(crowd, dtype=bool)),
            "image_id": image_id,
            "scale": scale,
            "pad": (pad_x, pad_y),
            "orig_size": image.shape[:2],
        }


def collate_detection(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and letterbox metadata; boxes, labels and crowd flags stay per-image lists."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "boxes_xyxy": [s["boxes_xyxy"] for s in samples],
        "label": [s["label"] for s in samples],
        "crowd": [s["crowd"] for s in samples],
        "image_id": torch.tensor([s["image_id"] for s in samples]),
        "scale": torch.tensor([s["scale"] for s in samples], dtype=torch.float64),
        "pad": torch.tensor([s["pad"] for s in samples], dtype=torch.float64),
        "orig_size": torch.tensor([s["orig_size"] for s in samples]),
    }


class DetectData(VisionDataModule):
    """Detection data: the shared splits, letterboxed to ``image_size``; ``colour_shift`` as in
    :func:`vision_tasks.data.transforms.photometric`."""

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 256,
        batch_size: int = 16,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        colour_shift: float = 0.0,
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
        self.colour_shift = colour_shift

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """Every image of the split (images without objects are negatives)."""
        return DetectDataset(index, self.image_size, train, self.colour_shift)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Ragged boxes per image: see :func:`collate_detection`."""
        return collate_detection(samples)


# ---- head -------------------------------------------------------------------------------------


class DetectHead(nn.Module):
    """Decoupled class / box branches per pyramid level.

    ``forward([p3, p4, p5])`` with ``p_i`` (B, width, H_i, W_i) returns ``cls_logits``
    (B, N, num_classes) and ``box_regression`` (B, N, 4), N = sum of H_i * W_i over levels,
    points ordered level by level, row-major (see :func:`grid_points`).
    """

    def __init__(self, width: int, num_classes: int, num_levels: int = 3) -> None:
        super().__init__()
        self.cls_branches = nn.ModuleList(
            self._branch(width, num_classes) for _ in range(num_levels)
        )
        self.box_branches = nn.ModuleList(self._branch(width, 4) for _ in range(num_levels))
        prior = 0.01  # start every class score near 1% so the many negatives do not swamp early
        for branch in self.cls_branches:
            nn.init.constant_(branch[-1].bias, -math.log((1 - prior) / prior))

    @staticmethod
    def _branch(width: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(
            ConvBNAct(width, width), ConvBNAct(width, width), nn.Conv2d(width, out_channels, 1)
        )

    def forward(self, pyramid: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Raw class logits (B, N, C) and box regression (B, N, 4)."""
        cls = [b(p).flatten(2) for b, p in zip(self.cls_branches, pyramid)]
        box = [b(p).flatten(2) for b, p in zip(self.box_branches, pyramid)]
        return torch.cat(cls, dim=2).transpose(1, 2), torch.cat(box, dim=2).transpose(1, 2)


def grid_points(
    shapes: list[tuple[int, int]], strides: list[int], device=None
) -> tuple[Tensor, Tensor]:
    """Centres (N, 2) in input pixels and strides (N, 1) of every grid cell of every level."""
    points, point_strides = [], []
    for (height, width), stride in zip(shapes, strides):
        points.append((ops.cell_grid(height, width, device=device) + 0.5) * stride)
        point_strides.append(torch.full((height * width, 1), float(stride), device=device))
    return torch.cat(points), torch.cat(point_strides)


def decode_boxes(points: Tensor, strides: Tensor, box_regression: Tensor) -> Tensor:
    """Box regression (B, N, 4) -> xyxy boxes (B, N, 4): softplus distances in stride units."""
    distances = F.softplus(box_regression) * strides
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


# ---- assigner and loss --------------------------------------------------------------------------


def pad_targets(
    boxes: list[Tensor], labels: list[Tensor], crowd: list[Tensor]
) -> dict[str, Tensor]:
    """Per-image ragged targets -> padded (B, M, ...) tensors with a ``valid`` mask."""
    max_objects = max([len(b) for b in boxes] + [1])
    batch = len(boxes)
    out = {
        "boxes": boxes[0].new_zeros(batch, max_objects, 4),
        "labels": torch.zeros(batch, max_objects, dtype=torch.long, device=boxes[0].device),
        "valid": torch.zeros(batch, max_objects, dtype=torch.bool, device=boxes[0].device),
        "crowd": torch.zeros(batch, max_objects, dtype=torch.bool, device=boxes[0].device),
    }
    for i, (b, lab, c) in enumerate(zip(boxes, labels, crowd)):
        out["boxes"][i, : len(b)] = b
        out["labels"][i, : len(b)] = lab
        out["valid"][i, : len(b)] = ~c
        out["crowd"][i, : len(b)] = c
    return out


def points_inside(points: Tensor, boxes: Tensor) -> Tensor:
    """(N, 2) points vs (B, M, 4) boxes -> (B, M, N) bool, strictly inside."""
    x, y = points[:, 0], points[:, 1]
    return (
        (x > boxes[..., 0:1])
        & (x < boxes[..., 2:3])
        & (y > boxes[..., 1:2])
        & (y < boxes[..., 3:4])
    )


@torch.no_grad()
def task_aligned_assign(
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    targets: dict[str, Tensor],
    top_k: int = 10,
    alpha: float = 1.0,
    beta: float = 6.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Task-aligned assignment (TOOD / YOLOv8).

    Args:
        scores: (B, N, C) predicted class probabilities.
        pred_boxes: (B, N, 4) predicted xyxy boxes.
        points: (N, 2) point centres.
        targets: from :func:`pad_targets`.

    Returns:
        ``foreground`` (B, N) bool, ``target_boxes`` (B, N, 4), ``target_scores`` (B, N, C):
        IoU-aware class targets, the alignment normalised per object to its best IoU.
    """
    gt_boxes, gt_labels, valid = targets["boxes"], targets["labels"], targets["valid"]
    batch, num_objects = gt_labels.shape
    ious = torch.stack([box_iou(g, p) for g, p in zip(gt_boxes, pred_boxes)])  # (B, M, N)
    # 0/0 where a padding box (zero area) meets a collapsed prediction (softplus -> 0): NaN would
    # survive the masking below (NaN * 0 is NaN) and poison both losses.
    ious = torch.nan_to_num(ious, nan=0.0)
    per_object = gt_labels.unsqueeze(-1).expand(-1, -1, scores.shape[1])
    class_scores = scores.transpose(1, 2).gather(1, per_object)
    candidates = points_inside(points, gt_boxes) & valid.unsqueeze(-1)
    alignment = class_scores.pow(alpha) * ious.pow(beta) * candidates
    k = min(top_k, alignment.shape[-1])
    top = alignment.topk(k, dim=-1).indices
    chosen = torch.zeros_like(candidates).scatter_(-1, top, True) & candidates
    # A point chosen by several objects goes to the one it overlaps most.
    overlap = torch.where(chosen, ious, torch.full_like(ious, -1.0))
    assigned = overlap.argmax(dim=1)  # (B, N)
    foreground = chosen.any(dim=1)
    chosen = chosen & (
        torch.arange(num_objects, device=ious.device).view(1, -1, 1) == assigned.unsqueeze(1)
    )
    alignment = alignment * chosen
    best_alignment = alignment.amax(dim=-1, keepdim=True).clamp_min(1e-9)
    best_iou = (ious * chosen).amax(dim=-1, keepdim=True)
    quality = (alignment / best_alignment * best_iou).amax(dim=1)  # (B, N)
    target_labels = gt_labels.gather(1, assigned)
    target_boxes = gt_boxes.gather(1, assigned.unsqueeze(-1).expand(-1, -1, 4))
    target_scores = F.one_hot(target_labels, scores.shape[-1]).to(scores.dtype)
    target_scores = target_scores * (quality * foreground).unsqueeze(-1)
    return foreground, target_boxes, target_scores


def detection_loss(
    cls_logits: Tensor,
    box_regression: Tensor,
    points: Tensor,
    strides: Tensor,
    targets: dict[str, Tensor],
    top_k: int = 10,
    box_weight: float = 5.0,
    cls_weight: float = 1.0,
    class_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """BCE on IoU-aware class targets + CIoU box loss on the assigned points.

    Points inside a crowd region that were not assigned to an object are ignored by the class
    loss: COCO ignores detections there, so training them as background would be wrong.
    ``class_mask`` (B, C) bool, if given, marks the classes annotated in each image: the others
    are ignored by the class loss too (an image from a file that boxes only persons says nothing
    about circles, so a circle in it must not be trained as background).
    """
    pred_boxes = decode_boxes(points, strides, box_regression)
    foreground, target_boxes, target_scores = task_aligned_assign(
        cls_logits.detach().sigmoid(), pred_boxes.detach(), points, targets, top_k
    )
    normaliser = target_scores.sum().clamp_min(1.0)
    in_crowd = (points_inside(points, targets["boxes"]) & targets["crowd"].unsqueeze(-1)).any(1)
    keep = (~(in_crowd & ~foreground)).unsqueeze(-1).to(cls_logits.dtype)
    if class_mask is not None:
        keep = keep * class_mask.unsqueeze(1).to(cls_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="none")
    cls_loss = (bce * keep).sum() / normaliser
    if foreground.any():
        weight = target_scores.sum(-1)[foreground]
        ciou = complete_box_iou_loss(
            pred_boxes[foreground], target_boxes[foreground], reduction="none"
        )
        box_loss = (ciou * weight).sum() / normaliser
    else:
        box_loss = box_regression.sum() * 0.0
    total = box_weight * box_loss + cls_weight * cls_loss
    return {"loss": total, "box": box_loss.detach(), "cls": cls_loss.detach()}


# ---- post-processing ----------------------------------------------------------------------------


def postprocess(
    cls_logits: Tensor,
    box_regression: Tensor,
    points: Tensor,
    strides: Tensor,
    score_threshold: float = 0.001,
    pre_nms_top_k: int = 1000,
    iou_threshold: float = 0.65,
    max_detections: int = 100,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Score threshold -> top-k -> class-aware NMS -> at most ``max_detections`` per image.

    Returns:
        Per image ``(boxes_xyxy (K, 4), scores (K,), labels (K,))`` in network pixels. A point
        may yield several classes (multi-label), as COCO evaluation expects.
    """
    scores = cls_logits.sigmoid()
    boxes = decode_boxes(points, strides, box_regression)
    num_classes = scores.shape[-1]
    results = []
    for image_scores, image_boxes in zip(scores, boxes):
        flat = image_scores.flatten()
        keep = torch.nonzero(flat > score_threshold).squeeze(1)
        if keep.numel() > pre_nms_top_k:
            keep = keep[flat[keep].topk(pre_nms_top_k).indices]
        candidate_scores = flat[keep]
        candidate_boxes = image_boxes[keep // num_classes]
        labels = keep % num_classes
        kept = batched_nms(candidate_boxes, candidate_scores, labels, iou_threshold)
        kept = kept[:max_detections]
        results.append((candidate_boxes[kept], candidate_scores[kept], labels[kept]))
    return results


# ---- task -------------------------------------------------------------------------------------


class DetectTask(BaseTask):
    """Anchor-free one-stage detector: backbone c3..c5 -> PAN neck -> decoupled head.

    Args:
        categories: COCO category records (id, name); linked from the data module.
        image_size: letterbox side the model was trained at (kept for prediction).
        neck_width: channels of the neck and head.
        assign_top_k: positives per object in the task-aligned assigner.
        box_loss_weight: weight of the CIoU loss.
        cls_loss_weight: weight of the classification BCE.
        score_threshold: minimum score kept before NMS (0.001 for COCO evaluation).
        nms_iou: IoU threshold of the class-aware NMS.
        max_detections: detections kept per image (COCO evaluates at most 100).
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
        assign_top_k: int = 10,
        box_loss_weight: float = 5.0,
        cls_loss_weight: float = 1.0,
        score_threshold: float = 0.001,
        nms_iou: float = 0.65,
        max_detections: int = 100,
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
        channels = [self.backbone.out_channels[level] for level in LEVELS]
        self.neck = PANNeck(channels, neck_width)
        self.head = DetectHead(neck_width, len(categories), len(LEVELS))
        self.strides = [self.backbone.strides[level] for level in LEVELS]
        self.val_metric = CocoBoxMetric()
        self.test_metric = CocoBoxMetric()
        self._grid: tuple[tuple, Tensor, Tensor] | None = None

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, S, S) -> ``cls_logits`` (B, N, C), ``box_regression`` (B, N, 4),
        ``points`` (N, 2) and ``strides`` (N, 1)."""
        features = self.backbone(images)
        pyramid = self.neck([features[level] for level in LEVELS])
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
