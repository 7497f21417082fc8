"""The task registry: the one place that maps a task name to its model and data classes."""

from __future__ import annotations

from typing import NamedTuple

from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.tasks.base import BaseTask
from vision_tasks.tasks.classify import ClassifyData, ClassifyTask


class TaskSpec(NamedTuple):
    """A task's LightningModule and LightningDataModule classes."""

    model: type[BaseTask]
    data: type[VisionDataModule]


TASKS: dict[str, TaskSpec] = {
    "classify": TaskSpec(ClassifyTask, ClassifyData),
}
