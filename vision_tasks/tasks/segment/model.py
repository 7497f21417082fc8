"""Semantic segmentation: COCO masks -> label maps -> U-Net -> cross-entropy (+ Dice) -> mIoU.

Targets are one label map per image, rasterised by pycocotools (``COCO.annToMask``) from the
polygons and RLEs of its annotations: background 0, category ``k`` (contiguous index) ``k + 1``,
and ``IGNORE_INDEX`` (255) where a pixel is unknown, so it neither trains nor counts:

- overlapping instances: painted largest area first, so the smaller instance wins (a small
  object lying on a large one stays visible); equal areas in annotation-id order;
- ``iscrowd`` regions are painted last and always win: their pixels are ignored;
- an annotation without a segmentation is ignored over its box (its pixels are unknown).

Scores are computed at each image's original resolution: the logits of the valid (unpadded)
part of the network input are resized bilinearly to the original size, as prediction does.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from vision_tasks import ops
from vision_tasks.data.coco import CocoDataError, CocoIndex, Policy
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import segment_transforms
from vision_tasks.evaluation.metrics import SegmentationMetric
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.layers import ConvBNAct, UNetDecoder
from vision_tasks.tasks.base import BaseTask, samples_figure
from vision_tasks.utils import atomic_write_bytes

IGNORE_INDEX = 255
NETWORK_STRIDE = 32  # c5's stride: inputs are padded to a multiple of it

# ---- targets ----------------------------------------------------------------------------------


def semantic_label_map(
    coco: COCO, anns: list[dict], cat_to_index: dict[int, int], height: int, width: int
) -> np.ndarray:
    """Rasterise one image's annotations into an (H, W) uint8 label map (see module docstring).

    Args:
        coco: the pycocotools index the annotations belong to (sizes come from its images).
        anns: the image's annotations, crowd ones included.
        cat_to_index: COCO category id -> contiguous index (label = index + 1).
        height: image height.
        width: image width.
    """
    label = np.zeros((height, width), np.uint8)
    things = sorted((a for a in anns if not a.get("iscrowd")), key=lambda a: (-a["area"], a["id"]))
    unknown = [a for a in anns if a.get("iscrowd") or not a.get("segmentation")]
    for ann in things:
        if ann.get("segmentation"):
            label[coco.annToMask(ann) > 0] = cat_to_index[ann["category_id"]] + 1
    for ann in unknown:
        if ann.get("segmentation"):
            label[coco.annToMask(ann) > 0] = IGNORE_INDEX
        else:
            x, y, w, h = ann["bbox"]
            x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
            label[y0 : int(np.ceil(y + h)), x0 : int(np.ceil(x + w))] = IGNORE_INDEX
    return label


def voc_palette(num_entries: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (num_entries, 3) uint8: 0 black, 255 (ignore) cream."""
    palette = np.zeros((num_entries, 3), np.uint8)
    for index in range(num_entries):
        value, shift = index, 7
        while value:  # the bits of the index spread over the high bits of R, G, B
            for channel in range(3):
                palette[index, channel] |= ((value >> channel) & 1) << shift
            value, shift = value >> 3, shift - 1
    return palette


PALETTE = voc_palette()


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colours of an (H, W) label map over an (H, W, 3) uint8 RGB image."""
    colours = PALETTE[label]
    blended = cv2.addWeighted(image, 1 - alpha, colours, alpha, 0.0)
    return np.where((label > 0)[..., None], blended, image)


# ---- dataset view -----------------------------------------------------------------------------


class SegmentDataset(Dataset):
    """COCO split as ``{"image", "mask", "image_id", "input_hw", "original_hw"}`` samples.

    Evaluation samples also carry ``mask_original``: the label map at the original size.
    ``input_hw`` is the part of ``image`` that holds the picture (the rest is padding).
    With ``soft_targets``, training samples also carry ``mask_soft``, (C, H, W) class
    fractions: the one-hot label map at the original size, resampled by area (see
    :func:`soft_label_map`); ``mask`` is then its hard version.
    """

    def __init__(
        self,
        index: CocoIndex,
        image_size: int,
        crop_size: int,
        train: bool,
        scale_range: tuple[float, float] = (0.75, 1.25),
        colour_shift: float = 0.0,
        soft_targets: bool = False,
    ) -> None:
        if index.num_classes + 1 > IGNORE_INDEX:
            raise CocoDataError(
                f"{index.json_path.name}: {index.num_classes} categories; "
                f"segmentation supports at most {IGNORE_INDEX - 1}"
            )
        self.index = index
        self.image_size = image_size
        self.train = train
        self.soft = soft_targets and train
        # Evaluation pads each image only to the network stride: no compute spent on a square.
        self.transform = segment_transforms(
            image_size,
            crop_size,
            train,
            scale_range,
            IGNORE_INDEX,
            square=False,
            colour_shift=colour_shift,
            soft_masks=self.soft,
        )
        self.image_ids = list(index.image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def label_map(self, image_id: int) -> np.ndarray:
        """The (H, W) uint8 label map of ``image_id`` at its original size."""
        info = self.index.image_info(image_id)
        anns = self.index.annotations(image_id, include_crowd=True)
        return semantic_label_map(
            self.index.coco, anns, self.index.cat_to_index, info["height"], info["width"]
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.image_ids[i]
        image, label = self.index.load_image(image_id), self.label_map(image_id)
        if self.soft:
            one_hot = one_hot_label_map(label, self.index.num_classes + 1)
            out = self.transform(image=image, mask=one_hot)
            fractions = out["mask"].permute(2, 0, 1).float()
            out["mask"] = hard_label_map(fractions)
        else:
            out = self.transform(image=image, mask=label)
        sample = {
            "image": out["image"],
            "mask": out["mask"].long(),
            "image_id": image_id,
            "input_hw": torch.tensor(input_size(image.shape[:2], self.image_size)),
            "original_hw": torch.tensor(image.shape[:2]),
        }
        if self.train:
            sample["input_hw"] = torch.tensor(out["image"].shape[-2:])  # a crop: all of it
            if self.soft:
                sample["mask_soft"] = fractions
        else:
            sample["mask_original"] = torch.from_numpy(label).long()
        return sample


def one_hot_label_map(label: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) label map -> (H, W, num_classes) float32 one-hot; all zeros where ignored."""
    known = label != IGNORE_INDEX
    return np.eye(num_classes, dtype=np.float32)[np.where(known, label, 0)] * known[..., None]


def hard_label_map(fractions: Tensor) -> Tensor:
    """(C, H, W) class fractions -> (H, W) labels: the largest, ``IGNORE_INDEX`` where less than
    half of the pixel is known."""
    known = fractions.sum(dim=0) >= 0.5
    return torch.where(known, fractions.argmax(dim=0), IGNORE_INDEX)


def input_size(original_hw: tuple[int, int], image_size: int) -> tuple[int, int]:
    """(h, w) of an (H, W) image once its long side is resized to ``image_size`` (albumentations'
    LongestMaxSize rounding)."""
    scale = image_size / max(original_hw)
    return tuple(max(1, round(side * scale)) for side in original_hw)


def pad_stack(tensors: list[Tensor], value: float) -> Tensor:
    """Stack (..., H_i, W_i) tensors into (B, ..., H, W), padding bottom/right with ``value``."""
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    return torch.stack(
        [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value) for t in tensors]
    )


class SegmentData(VisionDataModule):
    """Segmentation data: the shared splits plus the training crop and scale range.

    ``image_size`` is the long side images are resized to; ``crop_size`` the side of the square
    training crops cut after a random rescale by a factor in [``scale_min``, ``scale_max``];
    ``colour_shift`` as in :func:`vision_tasks.data.transforms.photometric`; ``soft_targets``:
    train on the class fractions of each resized pixel rather than the class at its centre, so
    the model learns where an edge lies inside a pixel (scores are taken at the original size,
    where a pixel of a 0.6x input is 1.7 pixels wide).
    """

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 320,
        batch_size: int = 8,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        crop_size: int = 256,
        scale_min: float = 0.75,
        scale_max: float = 1.25,
        colour_shift: float = 0.0,
        soft_targets: bool = False,
    ) -> None:
        super().__init__(
            train_json=train_json,
            train_images=train_images,
            val_json=val_json,
            val_images=val_images,
            test_json=test_json,
            test_images=test_images,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            policy=policy,
            synthetic_seed=synthetic_seed,
            synthetic_train=synthetic_train,
            synthetic_val=synthetic_val,
        )
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        self.crop_size = crop_size
        self.scale_range = (scale_min, scale_max)
        self.colour_shift = colour_shift
        self.soft_targets = soft_targets

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """One sample per image: augmented crops for training, whole images otherwise."""
        return SegmentDataset(
            index,
            self.image_size,
            self.crop_size,
            train,
            self.scale_range,
            self.colour_shift,
            self.soft_targets,
        )

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack; evaluation images (sizes may differ) are padded bottom/right with 0 (the
        normalised mean colour), their masks with ignore."""
        if "mask_original" not in samples[0]:
            return default_collate(samples)
        padded = {"image": 0.0, "mask": IGNORE_INDEX, "mask_original": IGNORE_INDEX}
        batch = default_collate([{k: v for k, v in s.items() if k not in padded} for s in samples])
        for key, value in padded.items():
            batch[key] = pad_stack([s[key] for s in samples], value)
        return batch


# ---- head, loss, decode --------------------------------------------------------------------------


class SegmentHead(nn.Module):
    """U-Net decoder over the backbone dict -> 1x1 classifier.

    ``forward(features)`` -> (B, num_classes, H / s, W / s) logits, s = ``decoder.out_stride``
    (1 with the default five decoder blocks).
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        num_classes: int,
        channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        self.decoder = UNetDecoder(in_channels, channels)
        self.classifier = nn.Conv2d(self.decoder.out_channels, num_classes, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Class logits at the decoder's output stride."""
        return self.classifier(self.decoder(features))

    def forward_blocks(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The logits and every decoder block's output (another head may read them)."""
        blocks = self.decoder.block_outputs(features)
        return self.classifier(blocks[-1]), blocks


def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | None = None,
    dice_weight: float = 0.0,
    fractions: Tensor | None = None,
) -> dict[str, Tensor]:
    """Cross-entropy (ignore index honoured) plus optional soft Dice.

    Args:
        logits: (B, C, H, W) raw scores.
        target: (B, H, W) class indices, ``IGNORE_INDEX`` where unknown.
        class_weights: optional (C,) cross-entropy weights.
        dice_weight: weight of the Dice term (0: off).
        fractions: optional (B, C, H, W) class fractions of each pixel (all zeros where
            unknown), trained on instead of ``target``: the cross-entropy against a
            distribution, each pixel weighted by its known fraction.

    Returns:
        ``{"loss", "ce"[, "dice"]}``; the cross-entropy is a (weighted) mean over the known
        pixels and 0, not NaN, when a batch has none.
    """
    if fractions is None:
        known = (target != IGNORE_INDEX).unsqueeze(1)
        fractions = F.one_hot(target.masked_fill(~known[:, 0], 0), logits.shape[1])
        fractions = fractions.permute(0, 3, 1, 2).float() * known
    weights = fractions if class_weights is None else fractions * class_weights[:, None, None]
    ce = -(weights * logits.log_softmax(dim=1)).sum() / weights.sum().clamp(min=1e-6)
    losses = {"ce": ce, "loss": ce}
    if dice_weight > 0:
        losses["dice"] = dice_loss(logits, fractions)
        losses["loss"] = ce + dice_weight * losses["dice"]
    return losses


def dice_loss(logits: Tensor, fractions: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice averaged over classes, on the known pixels of (B, C, H, W) logits against
    (B, C, H, W) class fractions (one-hot where a pixel's class is known, all zeros where not)."""
    known = fractions.sum(dim=1, keepdim=True)
    probs = logits.softmax(dim=1) * known
    intersection = (probs * fractions).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + fractions.sum(dim=(0, 2, 3))
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()


def logits_to_original(logits: Tensor, input_hw: Any, original_hw: Any) -> Tensor:
    """(C, H, W) logits of one padded input -> (C, H0, W0) at the original image size.

    Keeps the top-left ``input_hw`` (the picture; the rest is padding) and resizes bilinearly.
    """
    h, w = (int(v) for v in input_hw)
    height, width = (int(v) for v in original_hw)
    valid = logits[None, :, :h, :w]
    if (h, w) != (height, width):
        valid = F.interpolate(valid, size=(height, width), mode="bilinear", align_corners=False)
    return valid[0]


def class_map(logits: Tensor, dim: int) -> Tensor:
    """The arg-max over the class dimension ``dim`` of per-pixel scores (first maximum on ties).

    ``Tensor.max(dim).indices`` rather than ``argmax``: on CPU, argmax over a leading dimension
    of (C, H, W) took 12.8 ms for a 320x240 image against 1.0 ms, a third of the per-epoch
    segmentation scoring (same result, ties included).
    """
    return logits.max(dim=dim).indices


def label_map_results(label: np.ndarray, image_id: int, categories: list[dict]) -> list[dict]:
    """One COCO results record (RLE) per category present in an (H, W) label map."""
    results = []
    for index in np.unique(label):
        if index == 0 or index > len(categories):
            continue
        rle = mask_utils.encode(np.asfortranarray(label == index, dtype=np.uint8))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": image_id,
                "category_id": categories[index - 1]["id"],
                "segmentation": rle,
                "score": 1.0,
            }
        )
    return results


# ---- task -------------------------------------------------------------------------------------


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
