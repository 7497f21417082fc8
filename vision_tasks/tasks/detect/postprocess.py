"""Detection post-processing: score threshold -> top-k -> class-aware NMS, per image."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from vision_tasks.tasks.detect.head import decode_boxes


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
