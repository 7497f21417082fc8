"""Joint model's per-box heads: the boxes they read and the features cut for them.

Per-box heads read features cut from the backbone and neck maps with ``torchvision.ops``
RoI-Align, on ground-truth boxes in training and on the detector's boxes at inference (Keypoint
R-CNN for keypoints, JDE / FairMOT for embeddings):

- keypoints: each backbone level c2..c5 is RoI-aligned over the box's top-down crop region
  (``ops.crop_regions``: margin and aspect as the single-task crops) at the resolution that
  level would have for that crop, so ``layers.HeatmapHead`` gets the dict the single-task
  model's backbone gives for a crop, and its targets, loss and DARK decoding are the
  single-task ones, in crop pixels. With the segmentation head attached, its decoder's stride-4
  block (where the person's limbs are, to the pixel) joins c2 (``keypoints_read_segment``);
- re-ID: ``MultiScaleRoIAlign`` over the PAN pyramid (each box from the level that fits its
  size) -> ``reid.ReidHead`` (pooling + BNNeck) -> triplet + identity losses.

In training the boxes are the labelled ground truth (``labelled_instances``: masking per
sample, keypoint regions jittered); at inference the confident detections (``on_detections``).
A mixin of :class:`~vision_tasks.tasks.multitask.MultiTaskTask` (kept apart so each file reads
at once); it uses the model's heads, hyper-parameters and maps.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from vision_tasks import ops
from vision_tasks.tasks.detect import postprocess

KEYPOINT_LEVELS = ("c2", "c3", "c4", "c5")
PYRAMID = ("p3", "p4", "p5")


class MultiTaskRoiHeads:
    """Keypoint and re-ID branches on given boxes, and the boxes: labelled or detected."""

    def keypoint_branch(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor] | None,
        segment_c2: Tensor | None = None,
    ) -> dict[str, Tensor] | None:
        """Heatmaps of the boxes' crop regions from RoI-aligned c2..c5 and, when given, the
        segmentation decoder's stride-4 block beside c2 (see module docstring)."""
        if "keypoints" not in self.heads or boxes is None or sum(len(b) for b in boxes) == 0:
            return None
        width, height = self.crop_size
        index = torch.cat(
            [torch.full((len(b),), i, device=features["c5"].device) for i, b in enumerate(boxes)]
        )
        regions = ops.crop_regions(
            torch.cat(boxes).float(), self.crop_size, self.hparams.keypoint_margin
        )
        rois = torch.cat([index[:, None].to(regions), regions], dim=1)
        maps = dict(features)
        if self.shared_block is not None:
            maps["c2"] = torch.cat([features["c2"], segment_c2], dim=1)
        crops = {}
        for level in KEYPOINT_LEVELS:
            stride = self.backbone.strides[level]
            crops[level] = roi_align(
                maps[level],
                rois,
                (height // stride, width // stride),
                1.0 / stride,
                sampling_ratio=2,
                aligned=True,
            )
        return {"heatmaps": self.keypoint_head(crops), "regions": regions, "image_index": index}

    def reid_branch(
        self, pyramid: list[Tensor] | None, boxes: list[Tensor] | None, image_size: int
    ) -> dict[str, Any] | None:
        """Embeddings of the boxes from the PAN pyramid (MultiScaleRoIAlign -> BNNeck head)."""
        count = 0 if boxes is None else sum(len(b) for b in boxes)
        # BatchNorm (the BNNeck) cannot train on one row; nor can a triplet form.
        if "reid" not in self.heads or count == 0 or (self.training and count < 2):
            return None
        maps = OrderedDict(zip(PYRAMID, pyramid))
        pooled = self.reid_pool(
            maps, [b.float() for b in boxes], [(image_size, image_size)] * len(boxes)
        )
        features, bn_features = self.reid_head(self.reid_tower(pooled))
        classifier = self.identity_classifier
        index = torch.cat(
            [torch.full((len(b),), i, device=pooled.device) for i, b in enumerate(boxes)]
        )
        return {
            "features": features,
            "embedding": F.normalize(bn_features, dim=1),
            "logits": classifier(bn_features) if classifier is not None else None,
            "image_index": index,
        }

    def detect(self, outputs: dict[str, Any], score_threshold: float, max_detections: int):
        """Post-processed detections per image: (boxes (K, 4) network px, scores, labels)."""
        return postprocess(
            outputs["cls_logits"],
            outputs["box_regression"],
            outputs["points"],
            outputs["strides"],
            score_threshold,
            iou_threshold=self.hparams.nms_iou,
            max_detections=max_detections,
        )

    def on_detections(self, outputs: dict[str, Any], image_size: int) -> dict[str, Any]:
        """Keypoints and embeddings of the confident detections (inference's per-box path)."""
        hp = self.hparams
        detections = self.detect(outputs, hp.instance_score_threshold, hp.max_instances)
        result: dict[str, Any] = {"detections": detections}
        if "keypoints" in self.heads:
            persons = [
                (boxes[labels == self.keypoint_index], scores[labels == self.keypoint_index])
                for boxes, scores, labels in detections
            ]
            result["keypoint_scores"] = [s for _, s in persons]
            result["keypoints"] = self.keypoint_branch(
                outputs["features"], [b for b, _ in persons], outputs.get("segment_c2")
            )
        result["reid"] = self.reid_branch(
            outputs["pyramid"], [b for b, _, _ in detections], image_size
        )
        return result

    def forward_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Per-box heads on the labelled ground-truth boxes; in eval also on the detections."""
        truth = self.labelled_instances(batch)
        outputs = self(batch["image"], truth["keypoint_boxes"], truth["reid_boxes"])
        outputs["truth"] = truth
        if not self.training and "detect" in self.heads:
            outputs["on_detections"] = self.on_detections(outputs, batch["image"].shape[-1])
        return outputs

    def labelled_instances(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The instances that carry keypoint / identity labels, per image (masking per sample)."""
        truth: dict[str, Any] = {"keypoint_boxes": None, "reid_boxes": None}
        if "keypoints" in self.heads:
            rows = [
                (lab == self.keypoint_index) & ~crowd & (kps[..., 2] > 0).any(-1)
                for lab, crowd, kps in zip(batch["label"], batch["crowd"], batch["keypoints"])
            ]
            truth["keypoint_rows"] = rows
            truth["keypoint_boxes"] = [b[r] for b, r in zip(batch["boxes_xyxy"], rows)]
            truth["keypoints"] = [k[r] for k, r in zip(batch["keypoints"], rows)]
            copies = self.hparams.keypoint_rois
            if self.training and copies > 1:
                jitter = self.hparams.keypoint_jitter
                truth["keypoint_boxes"] = [
                    ops.jitter_boxes(b, copies, jitter).flatten(0, 1)
                    for b in truth["keypoint_boxes"]
                ]
                truth["keypoints"] = [
                    k.repeat_interleave(copies, dim=0) for k in truth["keypoints"]
                ]
        if "reid" in self.heads:
            # Colour-shifted images keep their boxes and masks but lose their identities: on
            # them a red shirt shows blue, which would teach re-ID that colour says nothing.
            shifted = batch.get("colour_shifted")
            if shifted is None:
                shifted = torch.zeros(len(batch["identity"]), dtype=torch.bool)
            rows = [
                (ids >= 0) & ~crowd & ~s.to(crowd.device)
                for ids, crowd, s in zip(batch["identity"], batch["crowd"], shifted)
            ]
            truth["reid_rows"] = rows
            truth["reid_boxes"] = [b[r] for b, r in zip(batch["boxes_xyxy"], rows)]
            truth["identity"] = torch.cat([i[r] for i, r in zip(batch["identity"], rows)])
            truth["identity_label"] = torch.cat(
                [i[r] for i, r in zip(batch["identity_label"], rows)]
            )
        return truth
