"""SegmentTask: backbone -> :class:`~.head.SegmentHead`; loss, mIoU at the original resolution,
report and prediction files.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from vision_tasks import ops
from vision_tasks.data.transforms import segment_transforms
from vision_tasks.evaluation.metrics import SegmentationMetric
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.layers import ConvBNAct
from vision_tasks.tasks.base import BaseTask, samples_figure
from vision_tasks.tasks.segment.data import IGNORE_INDEX, NETWORK_STRIDE, input_size
from vision_tasks.tasks.segment.head import SegmentHead, segmentation_loss
from vision_tasks.tasks.segment.outputs import (
    PALETTE,
    class_map,
    label_map_results,
    logits_to_original,
    overlay,
)
from vision_tasks.utils import atomic_write_bytes


class SegmentTask(BaseTask):
    """Backbone -> U-Net decoder -> per-pixel classifier over background + categories.

    Args:
        categories: COCO category records (id, name); linked from the data module.
        image_size: long side images are resized to (kept for prediction).
        decoder_channels: widths of the U-Net blocks, coarse to fine (5 = full resolution;
            fewer end coarser and the logits are upsampled bilinearly).
        dice_weight: weight of the Dice loss added to the cross-entropy (0: off).
        class_weights: optional cross-entropy weight per class, background first.
        aux_weight: weight of an auxiliary cross-entropy on c4 (PSPNet's deep supervision),
            which trains the deep layers to tell classes apart from the first steps; training
            only, 0 turns it off.
        flip_test: in evaluation and prediction, average the logits with those of the mirrored
            image (test-time augmentation: twice the inference time).
        (the rest: see :class:`BaseTask`)
    """

    task_name = "segment"
    monitor = "val/miou"
    monitor_mode = "max"

    def __init__(
        self,
        categories: list[dict[str, Any]] | None = None,
        image_size: int = 320,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        dice_weight: float = 0.0,
        class_weights: tuple[float, ...] | None = None,
        aux_weight: float = 0.0,
        flip_test: bool = False,
        backbone: str = "resnet18",
        backbone_weights: str = "none",
        freeze_at: int = 0,
        lr: float = 1e-3,
        backbone_lr_mult: float = 1.0,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 1.0,
        freeze_backbone_epochs: int = 0,
        min_lr_ratio: float = 0.05,
    ) -> None:
        super().__init__(
            backbone=backbone,
            backbone_weights=backbone_weights,
            in_channels=3,
            freeze_at=freeze_at,
            lr=lr,
            backbone_lr_mult=backbone_lr_mult,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            freeze_backbone_epochs=freeze_backbone_epochs,
            min_lr_ratio=min_lr_ratio,
        )
        if not categories:
            raise ValueError("SegmentTask needs categories (linked from the data module)")
        self.categories = categories
        self.class_names = ["background", *(c["name"] for c in categories)]
        self.num_classes = len(self.class_names)
        if class_weights is not None and len(class_weights) != self.num_classes:
            raise ValueError(
                f"class_weights needs {self.num_classes} values (background first), "
                f"got {len(class_weights)}"
            )
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weights, persistent=False)
        self.head = SegmentHead(
            self.backbone.out_channels, self.num_classes, tuple(decoder_channels)
        )
        self.aux_head = None
        if aux_weight > 0:
            self.aux_head = nn.Sequential(
                ConvBNAct(self.backbone.out_channels["c4"], 64), nn.Conv2d(64, self.num_classes, 1)
            )
        self._aux_logits: Tensor | None = None
        self.val_metric = SegmentationMetric(self.num_classes, IGNORE_INDEX)
        self.test_metric = SegmentationMetric(self.num_classes, IGNORE_INDEX)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images, any H and W -> (B, num_classes, H, W) logits.

        The input is zero-padded (the normalised mean colour) bottom/right to a multiple of the
        network stride and the logits are cropped back to (H, W). With ``flip_test`` (eval
        only) they are the mean of the image's and its mirror image's.
        """
        logits = self._logits(images)
        if self.hparams.flip_test and not self.training:
            logits = (logits + self._logits(images.flip(-1)).flip(-1)) / 2
        return logits

    def _logits(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % NETWORK_STRIDE, -width % NETWORK_STRIDE
        padded = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
        features = self.backbone(padded)
        logits = self._to_input_size(self.head(features), padded.shape[-2:], (height, width))
        if self.training and self.aux_head is not None:
            # Kept for compute_loss: the forward's output stays the logits alone, so export,
            # prediction and evaluation never see the auxiliary branch.
            self._aux_logits = self._to_input_size(
                self.aux_head(features["c4"]), padded.shape[-2:], (height, width)
            )
        return logits

    @staticmethod
    def _to_input_size(logits: Tensor, padded_hw: Any, input_hw: tuple[int, int]) -> Tensor:
        if logits.shape[-2:] != padded_hw:
            logits = F.interpolate(logits, size=padded_hw, mode="bilinear", align_corners=False)
        return logits[..., : input_hw[0], : input_hw[1]]

    def compute_loss(self, outputs: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Cross-entropy (+ Dice, + auxiliary c4 cross-entropy) against the network-size mask."""
        fractions = batch.get("mask_soft")  # training with soft_targets
        losses = segmentation_loss(
            outputs, batch["mask"], self.class_weights, self.hparams.dice_weight, fractions
        )
        aux_logits, self._aux_logits = self._aux_logits, None
        if aux_logits is not None:
            losses["aux"] = segmentation_loss(
                aux_logits, batch["mask"], self.class_weights, fractions=fractions
            )["ce"]
            losses["loss"] = losses["loss"] + self.hparams.aux_weight * losses["aux"]
        return losses

    def update_metric(self, metric: SegmentationMetric, outputs: Tensor, batch: dict) -> None:
        """Confusion matrix at the original resolution (``mask_original``)."""
        for i in range(outputs.shape[0]):
            height, width = (int(v) for v in batch["original_hw"][i])
            logits = logits_to_original(outputs[i], batch["input_hw"][i], (height, width))
            target = batch["mask_original"][i, :height, :width]
            metric.update(class_map(logits, 0)[None], target[None])

    def decode(self, outputs: Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Per image: ``label_map`` (H0, W0) uint8 at the original size (0 background,
        k + 1 category index k) and ``segments``, COCO results records with RLE masks."""
        predictions = []
        for i in range(outputs.shape[0]):
            logits = logits_to_original(outputs[i], batch["input_hw"][i], batch["original_hw"][i])
            label = class_map(logits, 0).to(torch.uint8).cpu().numpy()
            image_id = int(batch["image_id"][i])
            predictions.append(
                {
                    "image_id": image_id,
                    "label_map": label,
                    "segments": label_map_results(label, image_id, self.categories),
                }
            )
        return predictions

    def draw_samples(self, outputs: Tensor, batch: dict[str, Any]) -> list:
        """Image | truth | prediction side by side, at network size, with the image's IoU."""
        images = ops.denormalize(batch["image"].detach().cpu()).permute(0, 2, 3, 1).numpy()
        predicted = class_map(outputs, 1).to(torch.uint8).cpu().numpy()
        truth = batch["mask"].cpu().numpy().astype(np.uint8)
        samples = []
        for i, image in enumerate(images):
            h, w = (int(v) for v in batch["input_hw"][i])
            pred, true, img = predicted[i, :h, :w], truth[i, :h, :w], image[:h, :w]
            known = true != IGNORE_INDEX
            accuracy = float((pred[known] == true[known]).mean()) if known.any() else float("nan")
            gap = np.full((h, 4, 3), 255, np.uint8)
            row = np.concatenate([img, gap, overlay(img, true), gap, overlay(img, pred)], axis=1)
            caption = f"image {int(batch['image_id'][i])}: pixel acc {accuracy:.3f}"
            samples.append((np.ascontiguousarray(row), caption, None))
        return samples

    def build_report(self, values: dict[str, Any], samples: list) -> Report:
        """mIoU, pixel accuracy, FW-IoU; per-class table; confusion matrix; overlay grid."""
        iou, accuracy = values["iou"].cpu().tolist(), values["accuracy"].cpu().tolist()
        pixels = values["pixels"].cpu().tolist()
        ids = [0, *(c["id"] for c in self.categories)]
        table = [
            {
                "index": k,
                "id": ids[k],
                "class": name,
                "iou": iou[k],
                "accuracy": accuracy[k],
                "pixels": int(pixels[k]),
            }
            for k, name in enumerate(self.class_names)
        ]
        headline = {key: float(values[key]) for key in ("miou", "pixel_accuracy", "fw_iou")}
        figures = [
            Figure(
                "confusion_matrix",
                "confusion_matrix",
                "Pixel confusion matrix",
                {"matrix": values["confusion"].cpu().numpy(), "names": self.class_names},
            ),
            samples_figure(samples, "Image | truth | prediction", columns=2),
        ]
        metrics = {**headline, "pixels": int(sum(pixels))}
        meta = {
            "ignore_index": IGNORE_INDEX,
            "scored_at": "original image resolution",
            "flip_test": bool(self.hparams.flip_test),
        }
        return Report("segment", headline, metrics, {"per_class": table}, figures, meta)

    # ---- tools/predict.py ------------------------------------------------------------------
    def predict_sample(self, image: np.ndarray) -> dict[str, Any]:
        """Resize the long side to ``image_size`` and pad to a square (as in evaluation)."""
        size = self.hparams.image_size
        out = segment_transforms(size, size, train=False)(image=image)
        return {
            "image": out["image"],
            "input_hw": input_size(image.shape[:2], size),
            "original_hw": image.shape[:2],
        }

    prediction_suffix = "_overlay.png"

    def draw_prediction(self, image: np.ndarray, prediction: dict[str, Any]) -> np.ndarray:
        """The image with its label map overlaid."""
        return overlay(image, prediction["label_map"])

    def prediction_files(
        self, image: np.ndarray, prediction: dict[str, Any], name: str, out_dir: Path
    ) -> list[Path]:
        """``<stem>_label.png``: a palette PNG of class indices, 0 for background and k + 1 for
        category index k."""
        png = Image.fromarray(prediction["label_map"])  # mode L; putpalette turns it into P
        png.putpalette(PALETTE.ravel().tolist())
        buffer = io.BytesIO()
        png.save(buffer, format="PNG")
        return [atomic_write_bytes(out_dir / f"{Path(name).stem}_label.png", buffer.getvalue())]
