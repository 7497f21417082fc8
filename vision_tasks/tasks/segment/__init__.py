"""Semantic segmentation: COCO masks -> label maps -> U-Net -> cross-entropy (+ Dice) -> mIoU.

Targets are one label map per image, rasterised by pycocotools (``COCO.annToMask``) from the
polygons and RLEs of its annotations: background 0, category ``k`` (contiguous index) ``k + 1``,
and ``IGNORE_INDEX`` (255) where a pixel is unknown, so it neither trains nor counts:

- overlapping instances: painted largest area first, so the smaller instance wins (a small
  object lying on a large one stays visible); equal areas in annotation-id order;
- ``iscrowd`` regions are painted last and always win: their pixels are ignored;
- an annotation without a segmentation is ignored over its box (its pixels are unknown).

Scores are computed at each image's original resolution: the logits of the valid (unpadded)
part of the network input are resized bilinearly to the original size, as prediction does.

``data.py`` (label maps from annotations, dataset view, data module), ``head.py`` (U-Net head,
cross-entropy + Dice), ``outputs.py`` (back to the original size, class map, RLE results,
palette drawings) and ``model.py`` (the task).
"""

from vision_tasks.tasks.segment.data import (
    IGNORE_INDEX,
    NETWORK_STRIDE,
    SegmentData,
    SegmentDataset,
    hard_label_map,
    input_size,
    one_hot_label_map,
    pad_stack,
    semantic_label_map,
)
from vision_tasks.tasks.segment.head import SegmentHead, dice_loss, segmentation_loss
from vision_tasks.tasks.segment.model import SegmentTask
from vision_tasks.tasks.segment.outputs import (
    PALETTE,
    class_map,
    label_map_results,
    logits_to_original,
    overlay,
    voc_palette,
)

__all__ = [
    "IGNORE_INDEX",
    "NETWORK_STRIDE",
    "PALETTE",
    "SegmentData",
    "SegmentDataset",
    "SegmentHead",
    "SegmentTask",
    "class_map",
    "dice_loss",
    "hard_label_map",
    "input_size",
    "label_map_results",
    "logits_to_original",
    "one_hot_label_map",
    "overlay",
    "pad_stack",
    "segmentation_loss",
    "semantic_label_map",
    "voc_palette",
]
