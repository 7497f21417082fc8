"""Object detection, YOLO style: dataset view -> neck + head -> assigner + loss -> NMS -> task.

Backbone c3..c5 -> PAN neck (``layers.PANNeck``) -> an anchor-free decoupled head per level
(class logits + 4 box distances per grid point, as in YOLOX / YOLOv8 without DFL). Targets come
from the task-aligned assigner (TOOD, YOLOv8): each object takes the ``top_k`` points inside it
whose ``score^alpha * IoU^beta`` is highest, so the points that classify *and* localise best are
trained as positives and the class target is IoU-aware. It needs no anchor sizes and no per-image
cost matrix solve (SimOTA's dynamic-k), which keeps the step cheap on a CPU.
"""

from vision_tasks.tasks.detect.model import (
    LEVELS,
    DetectData,
    DetectDataset,
    DetectHead,
    DetectTask,
    collate_detection,
    decode_boxes,
    detection_loss,
    grid_points,
    pad_targets,
    points_inside,
    postprocess,
    task_aligned_assign,
)

__all__ = [
    "LEVELS",
    "DetectData",
    "DetectDataset",
    "DetectHead",
    "DetectTask",
    "collate_detection",
    "decode_boxes",
    "detection_loss",
    "grid_points",
    "pad_targets",
    "points_inside",
    "postprocess",
    "task_aligned_assign",
]
