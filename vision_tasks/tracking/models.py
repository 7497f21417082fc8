"""What a tracker reads from a network: boxes per frame and appearance embeddings per box.

Three sources, from the checkpoints the toolkit trains:

- :class:`Detector`: a ``detect`` checkpoint (torch, or its ONNX export through
  :class:`~vision_tasks.export.OnnxRunner`, chosen by :func:`~vision_tasks.export.
  inference_network`), decoded by the task's own ``decode``, as ``tools/predict.py`` does.
- :class:`CropEmbedder`: a ``reid`` checkpoint; each box is cropped from the frame as the re-ID
  data cropped it for training (``ops.box_affine`` with the data's ``crop_margin``), one batch of
  crops per frame.
- :class:`JointModel`: a ``multitask`` checkpoint with ``detect`` and ``reid`` heads. One
  backbone + neck pass gives the boxes, and the re-ID head RoI-aligns its embeddings from the
  same pyramid: no second network, no crops. Only the heads tracking reads run (a segmentation
  or keypoint head of the checkpoint is left idle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vision_tasks import ops
from vision_tasks.data.transforms import reid_transforms
from vision_tasks.tasks.base import BaseTask
from vision_tasks.tasks.detect import LEVELS, grid_points
from vision_tasks.tasks.reid.data import crop_size
from vision_tasks.tracking.tracker import Detections

Network = Callable[[Tensor], Any]


def _letterboxed(model: BaseTask, frame: np.ndarray) -> tuple[Tensor, dict[str, Any]]:
    """A (1, 3, S, S) network input for one RGB frame, and the batch dict ``decode`` reads."""
    sample = model.predict_sample(frame)
    batch = {
        "image_id": torch.tensor([0]),
        "scale": [sample["scale"]],
        "pad": [sample["pad"]],
        "orig_size": [sample["orig_size"]],
    }
    return sample["image"].unsqueeze(0), batch


class Detector:
    """Boxes of a ``detect`` checkpoint for one frame at a time.

    Args:
        model: the detection task (its ``predict_sample`` and ``decode`` are used).
        network: what runs ``images -> outputs``: the model itself or an ``OnnxRunner``.
        min_score: detections below this are dropped (the tracker's low threshold).
    """

    def __init__(self, model: BaseTask, network: Network | None = None, min_score: float = 0.1):
        self.model, self.network = model, network or model
        self.min_score = min_score

    @torch.inference_mode()
    def __call__(self, frame: np.ndarray) -> Detections:
        """(H, W, 3) uint8 RGB -> detections in frame pixels."""
        images, batch = _letterboxed(self.model, frame)
        found = self.model.decode(self.network(images), batch)[0]
        keep = found["score"] >= self.min_score
        boxes = ops.xywh_to_xyxy(found["bbox"][keep].double())
        return Detections(
            boxes.numpy(), found["score"][keep].numpy(), found["category_id"][keep].numpy()
        )


class CropEmbedder:
    """Embeddings of boxes from a ``reid`` checkpoint, one crop per box.

    Args:
        model: the re-ID task (crop size from its hyper-parameters).
        network: the model or an ``OnnxRunner`` of its export.
        crop_margin: the margin its training data cropped with (``--data.crop_margin``).
    """

    def __init__(self, model: BaseTask, network: Network | None = None, crop_margin: float = 0.1):
        self.model, self.network = model, network or model
        self.size = crop_size(model.hparams.image_size, model.hparams.crop_aspect_ratio)
        self.transform = reid_transforms(self.size[1], self.size[0], train=False)
        self.crop_margin = crop_margin

    @torch.inference_mode()
    def __call__(self, frame: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(K, 4) boxes of one RGB frame -> (K, D) float32 unit-norm embeddings."""
        if len(boxes_xyxy) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        crops = []
        for box in boxes_xyxy:
            matrix = ops.box_affine(box, self.size, margin=self.crop_margin)
            crops.append(self.transform(image=ops.crop_affine(frame, matrix, self.size))["image"])
        outputs = self.network(torch.stack(crops))
        return outputs["embedding"].float().cpu().numpy()


class JointModel:
    """Boxes and their embeddings from one pass of a ``multitask`` checkpoint (module docstring).

    Args:
        model: a multitask model with ``detect`` and ``reid`` heads.
        min_score: detections below this are dropped (the tracker's low threshold).
        embed_score: boxes scoring at least this are embedded (the tracker's high threshold:
            only those are matched by appearance).
    """

    def __init__(self, model: BaseTask, min_score: float = 0.1, embed_score: float = 0.5):
        self.model, self.min_score, self.embed_score = model, min_score, embed_score
        self._grid: tuple[tuple, Tensor, Tensor] | None = None

    def _pyramid(self, images: Tensor) -> list[Tensor]:
        features = self.model.backbone(images)
        return self.model.neck([features[level] for level in LEVELS])

    def _detect(self, pyramid: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Boxes (K, 4) in network pixels, scores (K,), class indices (K,) of image 0."""
        shapes = tuple(tuple(p.shape[-2:]) for p in pyramid)
        if self._grid is None or self._grid[0] != shapes:
            self._grid = (shapes, *grid_points(list(shapes), self.model.strides))
        cls_logits, box_regression = self.model.detect_head(pyramid)
        outputs = {
            "cls_logits": cls_logits,
            "box_regression": box_regression,
            "points": self._grid[1],
            "strides": self._grid[2],
        }
        return self.model.detect(outputs, self.min_score, self.model.hparams.max_detections)[0]

    def _embed(self, pyramid: list[Tensor], boxes: Tensor) -> np.ndarray:
        size = self.model.hparams.image_size
        found = self.model.reid_branch(pyramid, [boxes], size)
        if found is None:
            return np.zeros((len(boxes), self.model.reid_head.out_channels), dtype=np.float32)
        return found["embedding"].float().cpu().numpy()

    @torch.inference_mode()
    def __call__(self, frame: np.ndarray) -> Detections:
        """(H, W, 3) uint8 RGB -> detections with embeddings (rows below ``embed_score``: 0)."""
        images, batch = _letterboxed(self.model, frame)
        pyramid = self._pyramid(images)
        boxes, scores, labels = self._detect(pyramid)
        embeddings = np.zeros((len(boxes), self.model.reid_head.out_channels), dtype=np.float32)
        confident = scores >= self.embed_score
        if confident.any():
            embeddings[confident.cpu().numpy()] = self._embed(pyramid, boxes[confident])
        original = ops.boxes_to_original(
            boxes, batch["scale"][0], batch["pad"][0], batch["orig_size"][0]
        )
        ids = torch.tensor([c["id"] for c in self.model.categories])
        return Detections(
            original.numpy(), scores.float().cpu().numpy(), ids[labels.cpu()].numpy(), embeddings
        )

    @torch.inference_mode()
    def embed(self, frame: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Embeddings of given (K, 4) frame-pixel boxes (``--detections`` with this model)."""
        if len(boxes_xyxy) == 0:
            return np.zeros((0, self.model.reid_head.out_channels), dtype=np.float32)
        images, batch = _letterboxed(self.model, frame)
        scale, (pad_x, pad_y) = batch["scale"][0], batch["pad"][0]
        network_boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32) * scale
        network_boxes += torch.tensor([pad_x, pad_y, pad_x, pad_y], dtype=torch.float32)
        return self._embed(self._pyramid(images), network_boxes)


def can_detect(model: BaseTask) -> bool:
    """Whether ``model`` gives boxes: a detect checkpoint or a multitask one with that head."""
    return model.task_name == "detect" or (
        model.task_name == "multitask" and "detect" in model.heads
    )


def can_embed(model: BaseTask) -> bool:
    """Whether ``model`` gives embeddings: a reid checkpoint or a multitask one with that head."""
    return model.task_name == "reid" or (model.task_name == "multitask" and "reid" in model.heads)
