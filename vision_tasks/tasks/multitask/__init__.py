"""Joint multi-task training: one backbone + neck forward feeding every configured head.

``data.py`` (one letterboxed image with all its labels and masks of what it lacks, several
training files), ``model.py`` (shared forward, per-box RoI heads), ``losses.py`` (masked and
weighted losses), ``outputs.py`` (metrics, COCO results per head, drawings, the report).
"""

from vision_tasks.tasks.multitask.data import MultiTaskData, MultiTaskDataset, collate_multitask
from vision_tasks.tasks.multitask.losses import weighted_total
from vision_tasks.tasks.multitask.model import HEADS, MultiTaskTask
from vision_tasks.tasks.multitask.outputs import HeadMetrics

__all__ = [
    "HEADS",
    "HeadMetrics",
    "MultiTaskData",
    "MultiTaskDataset",
    "MultiTaskTask",
    "collate_multitask",
    "weighted_total",
]
