"""Detection targets and loss: ragged targets padded, the task-aligned assigner (TOOD /
YOLOv8) and BCE on IoU-aware class targets + CIoU on the assigned points.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou, complete_box_iou_loss

from vision_tasks.tasks.detect.head import decode_boxes


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


class Assignment(NamedTuple):
    """The assigner's answer for every grid point of a batch."""

    foreground: Tensor  # (B, N) bool: the point is trained as some object's positive
    target_boxes: Tensor  # (B, N, 4) xyxy box of that object
    target_scores: Tensor  # (B, N, C) IoU-aware class targets (zero for background)
    object_index: Tensor  # (B, N) long: which of the targets' M objects (where foreground)


@torch.no_grad()
def task_aligned_assign(
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    targets: dict[str, Tensor],
    top_k: int = 10,
    alpha: float = 1.0,
    beta: float = 6.0,
) -> Assignment:
    """Task-aligned assignment (TOOD / YOLOv8).

    Args:
        scores: (B, N, C) predicted class probabilities.
        pred_boxes: (B, N, 4) predicted xyxy boxes.
        points: (N, 2) point centres.
        targets: from :func:`pad_targets`.

    Returns:
        An :class:`Assignment`; the class targets are the alignment normalised per object to
        its best IoU, and ``object_index`` lets a mask or keypoint loss train the same positives
        on the same objects without running the assigner again.
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
    return Assignment(foreground, target_boxes, target_scores, assigned)


def assign_points(
    cls_logits: Tensor,
    box_regression: Tensor,
    points: Tensor,
    strides: Tensor,
    targets: dict[str, Tensor],
    top_k: int = 10,
) -> Assignment:
    """The head's raw outputs -> :func:`task_aligned_assign` on its decoded boxes and scores."""
    pred_boxes = decode_boxes(points, strides, box_regression.detach())
    return task_aligned_assign(cls_logits.detach().sigmoid(), pred_boxes, points, targets, top_k)


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
    assignment: Assignment | None = None,
) -> dict[str, Tensor]:
    """BCE on IoU-aware class targets + CIoU box loss on the assigned points.

    Points inside a crowd region that were not assigned to an object are ignored by the class
    loss: COCO ignores detections there, so training them as background would be wrong.
    ``class_mask`` (B, C) bool, if given, marks the classes annotated in each image: the others
    are ignored by the class loss too (an image from a file that boxes only persons says nothing
    about circles, so a circle in it must not be trained as background).
    ``assignment``, if given, is :func:`assign_points`' answer for these outputs, computed once
    by a caller that trains more than boxes on the same positives (instance masks).
    """
    pred_boxes = decode_boxes(points, strides, box_regression)
    if assignment is None:
        assignment = assign_points(cls_logits, box_regression, points, strides, targets, top_k)
    foreground, target_boxes, target_scores, _ = assignment
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
