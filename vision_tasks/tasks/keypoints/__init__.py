"""Top-down keypoint detection: one crop per instance -> one heatmap per keypoint -> OKS AP.

In reading order: ``metadata.py`` (crop size, flip pairs, OKS sigmas) -> ``heatmaps.py`` (encode
/ decode and the loss, pure functions) -> ``data.py`` (an affine crop per annotated instance, or
per detected box, and the data module) -> ``model.py`` (the task; its head is
``layers.HeatmapHead``).

Pixel convention: inside this package pixel centres sit on integers, as in OpenCV's ``warpAffine``
and albumentations; COCO puts them on half-integers, so coordinates move by half a pixel where
they enter (annotations, boxes) and leave (results). Heatmap cell ``j`` covers crop pixels
``[stride * j, stride * (j + 1))``: its centre is crop pixel ``stride * j + (stride - 1) / 2``.
"""

from vision_tasks.tasks.keypoints.data import KeypointData, KeypointDataset, read_detections
from vision_tasks.tasks.keypoints.heatmaps import (
    HEATMAP_STRIDE,
    crop_to_image,
    decode_heatmaps,
    encode_heatmaps,
    flip_heatmaps,
    heatmap_loss,
    instance_scores,
)
from vision_tasks.tasks.keypoints.metadata import (
    COCO_OFFSET,
    CROP_ASPECT,
    crop_size,
    flip_pairs_from_names,
    flip_permutation,
    keypoint_sigmas,
)
from vision_tasks.tasks.keypoints.model import KeypointTask

__all__ = [
    "COCO_OFFSET",
    "CROP_ASPECT",
    "HEATMAP_STRIDE",
    "KeypointData",
    "KeypointDataset",
    "KeypointTask",
    "crop_size",
    "crop_to_image",
    "decode_heatmaps",
    "encode_heatmaps",
    "flip_heatmaps",
    "flip_pairs_from_names",
    "flip_permutation",
    "heatmap_loss",
    "instance_scores",
    "keypoint_sigmas",
    "read_detections",
]
