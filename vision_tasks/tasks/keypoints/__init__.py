"""Top-down keypoint detection: one crop per instance -> one heatmap per keypoint -> OKS AP.

In reading order: keypoint metadata (flip pairs, OKS sigmas) -> heatmap encode / decode (pure
functions) -> dataset view (an affine crop per annotated instance, or per detected box) -> data
module -> loss -> task (its head is ``layers.HeatmapHead``).

Pixel convention: inside this file pixel centres sit on integers, as in OpenCV's ``warpAffine``
and albumentations; COCO puts them on half-integers, so coordinates move by half a pixel where
they enter (annotations, boxes) and leave (results). Heatmap cell ``j`` covers crop pixels
``[stride * j, stride * (j + 1))``: its centre is crop pixel ``stride * j + (stride - 1) / 2``.
"""

from vision_tasks.tasks.keypoints.model import (
    COCO_OFFSET,
    CROP_ASPECT,
    HEATMAP_STRIDE,
    KeypointData,
    KeypointDataset,
    KeypointTask,
    crop_size,
    crop_to_image,
    decode_heatmaps,
    encode_heatmaps,
    flip_heatmaps,
    flip_pairs_from_names,
    flip_permutation,
    heatmap_loss,
    instance_scores,
    keypoint_sigmas,
    read_detections,
)

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
