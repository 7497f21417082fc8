"""Object detection, YOLO style: dataset view -> neck + head -> assigner + loss -> NMS -> task.

Backbone c3..c5 -> PAN neck (``layers.PANNeck``) -> an anchor-free decoupled head per level
(class logits + 4 box distances per grid point, as in YOLOX / YOLOv8 without DFL). Targets come
from the task-aligned assigner (TOOD, YOLOv8): each object takes the ``top_k`` points inside it
whose ``score^alpha * IoU^beta`` is highest, so the points that classify *and* localise best are
trained as positives and the class target is IoU-aware. It needs no anchor sizes and no per-image
cost matrix solve (SimOTA's dynamic-k), which keeps the step cheap on a CPU.

``head.py`` (the branches, grid points, box decoding), ``loss.py`` (padded targets, assigner,
loss), ``postprocess.py`` (NMS), ``data.py`` (dataset view, collate, data module) and
``model.py`` (the task). The instance and joint models reuse the head, loss and NMS.
"""

from vision_tasks.tasks.detect.data import DetectData, DetectDataset, collate_detection
from vision_tasks.tasks.detect.head import (
    LEVEL_CHOICES,
    LEVELS,
    DetectHead,
    check_levels,
    decode_boxes,
    grid_points,
)
from vision_tasks.tasks.detect.loss import (
    Assignment,
    assign_points,
    detection_loss,
    pad_targets,
    points_inside,
    task_aligned_assign,
)
from vision_tasks.tasks.detect.model import DetectTask
from vision_tasks.tasks.detect.postprocess import postprocess

__all__ = [
    "LEVELS",
    "LEVEL_CHOICES",
    "check_levels",
    "Assignment",
    "DetectData",
    "DetectDataset",
    "DetectHead",
    "DetectTask",
    "assign_points",
    "collate_detection",
    "decode_boxes",
    "detection_loss",
    "grid_points",
    "pad_targets",
    "points_inside",
    "postprocess",
    "task_aligned_assign",
]
