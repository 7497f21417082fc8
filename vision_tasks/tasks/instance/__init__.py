"""Instance segmentation (YOLACT / YOLOv8-seg): detection plus one mask per detected object.

``data.py`` (detection's letterboxed samples with a mask per object), ``model.py`` (prototype
branch, mask coefficients beside the box head, mask loss on positives, the task),
``masks.py`` (crop to a box, paste back into the original image, prototype-grid targets),
``evaluation.py`` (COCOeval segm and bbox, the semantic view).
"""

from vision_tasks.tasks.instance.data import InstanceData, InstanceDataset, collate_instances
from vision_tasks.tasks.instance.model import InstanceTask

__all__ = ["InstanceData", "InstanceDataset", "InstanceTask", "collate_instances"]
