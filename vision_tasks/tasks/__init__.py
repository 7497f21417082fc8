"""The task registry: the one place that maps a task name to its model and data classes."""

from __future__ import annotations

from typing import NamedTuple

from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.tasks.base import BaseTask
from vision_tasks.tasks.classify import ClassifyData, ClassifyTask
from vision_tasks.tasks.detect import DetectData, DetectTask
from vision_tasks.tasks.homography import HomographyData, HomographyTask
from vision_tasks.tasks.instance import InstanceData, InstanceTask
from vision_tasks.tasks.keypoints import KeypointData, KeypointTask
from vision_tasks.tasks.multitask import MultiTaskData, MultiTaskTask
from vision_tasks.tasks.reid import ReidData, ReidTask
from vision_tasks.tasks.segment import SegmentData, SegmentTask


class TaskSpec(NamedTuple):
    """A task's LightningModule and LightningDataModule classes."""

    model: type[BaseTask]
    data: type[VisionDataModule]


TASKS: dict[str, TaskSpec] = {
    "classify": TaskSpec(ClassifyTask, ClassifyData),
    "detect": TaskSpec(DetectTask, DetectData),
    "homography": TaskSpec(HomographyTask, HomographyData),
    "instance": TaskSpec(InstanceTask, InstanceData),
    "keypoints": TaskSpec(KeypointTask, KeypointData),
    "multitask": TaskSpec(MultiTaskTask, MultiTaskData),
    "reid": TaskSpec(ReidTask, ReidData),
    "segment": TaskSpec(SegmentTask, SegmentData),
}
