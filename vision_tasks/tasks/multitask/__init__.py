"""Joint multi-task training: one backbone + neck forward feeding every configured head.

``data.py`` (one letterboxed image with all its labels and masks of what it lacks, several
training files), ``model.py`` (the heads built, the shared forward), ``roi_heads.py`` (the
per-box keypoint and re-ID branches and the boxes they read), ``losses.py`` (masked and weighted
losses), ``outputs.py`` (metrics, COCO results per head), ``report.py`` (drawings, the report),
``compare.py`` (against single-task models).
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
