"""Image classification: dataset view -> head -> loss -> decode -> task.

Two ways to read COCO data as classification samples:

- ``mode="image"``: one label per image, from its single annotation (datasets converted from
  ImageFolder look like this);
- ``mode="crop"``: one sample per (non-crowd) annotation, the box cut out with a margin.
"""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from vision_tasks import ops
from vision_tasks.data.coco import CocoDataError, CocoIndex, Policy
from vision_tasks.data.datamodule import VisionDataModule
from vision_tasks.data.transforms import classify_transforms
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.tasks.base import BaseTask, samples_figure

# ---- dataset view -----------------------------------------------------------------------------


class ClassifyDataset(Dataset):
    """COCO split as ``{"image", "label", "image_id", "annotation_id"}`` samples."""

    def __init__(
        self,
        index: CocoIndex,
        image_size: int,
        train: bool,
        mode: Literal["image", "crop"] = "crop",
        crop_margin: float = 0.15,
        colour_shift: float = 0.0,
    ) -> None:
        self.index = index
        self.image_size = image_size
        self.mode = mode
        self.crop_margin = crop_margin
        self.transform = classify_transforms(image_size, train, mode == "crop", colour_shift)
        self.samples = self._crop_samples() if mode == "crop" else self._image_samples()

    def _image_samples(self) -> list[tuple[int, dict]]:
        samples = []
        for image_id in self.index.image_ids:
            anns = self.index.annotations(image_id, include_crowd=False)
            if len(anns) != 1:
                raise CocoDataError(
                    f"{self.index.json_path.name}: image id={image_id}: field 'annotations': "
                    f"classification mode 'image' needs exactly one annotation per image, found "
                    f"{len(anns)} (use --data.mode crop for one sample per box)"
                )
            samples.append((image_id, anns[0]))
        return samples

    def _crop_samples(self) -> list[tuple[int, dict]]:
        return [
            (image_id, ann)
            for image_id in self.index.image_ids
            for ann in self.index.annotations(image_id, include_crowd=False)
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id, ann = self.samples[i]
        image = self.index.load_image(image_id)
        if self.mode == "crop":
            x, y, w, h = ann["bbox"]
            size = (self.image_size, self.image_size)
            matrix = ops.box_affine([x, y, x + w, y + h], size, margin=self.crop_margin)
            image = ops.crop_affine(image, matrix, size)
        return {
            "image": self.transform(image=image)["image"],
            "label": self.index.cat_to_index[ann["category_id"]],
            "image_id": image_id,
            "annotation_id": ann["id"],
        }


class ClassifyData(VisionDataModule):
    """Classification data: the shared splits plus ``mode``, ``crop_margin`` and ``colour_shift``
    (:func:`vision_tasks.data.transforms.photometric`)."""

    def __init__(
        self,
        train_json: str | None = None,
        train_images: str | None = None,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: int | None = None,
        policy: Policy = "strict",
        synthetic_seed: int = 0,
        synthetic_train: int = 600,
        synthetic_val: int = 120,
        mode: Literal["image", "crop"] = "crop",
        crop_margin: float = 0.15,
        colour_shift: float = 0.0,
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
        self.mode = mode
        self.crop_margin = crop_margin
        self.colour_shift = colour_shift

    def describe_samples(self) -> str:
        """Crops of non-crowd annotations (or whole images, each with one)."""
        return f"non-crowd annotations (--data.mode {self.mode})"

    def build_dataset(self, index: CocoIndex, train: bool) -> Dataset:
        """One sample per image or per annotation box."""
        return ClassifyDataset(
            index, self.image_size, train, self.mode, self.crop_margin, self.colour_shift
        )


# ---- head and loss ------------------------------------------------------------------------------


class ClassifyHead(nn.Module):
    """Global average pool over c5 -> dropout -> linear: (B, C5, h, w) -> (B, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, c5: Tensor) -> Tensor:
        """Class logits (B, num_classes)."""
        return self.fc(self.dropout(c5.mean(dim=(2, 3))))


def classification_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of (B, C) logits against (B,) class indices."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def classification_metrics(num_classes: int) -> MetricCollection:
    """Top-1 / top-5 accuracy, per-class accuracy and the confusion matrix."""
    return MetricCollection(
        {
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "per_class": MulticlassAccuracy(num_classes, average="none"),
            "confusion": MulticlassConfusionMatrix(num_classes),
        },
        # Compute groups merge members whose states are equal after the first batch: a
        # perfect first batch made top-5 share top-1's state for the rest of the epoch.
        compute_groups=False,
    )


# ---- task -------------------------------------------------------------------------------------


class ClassifyTask(BaseTask):
    """Backbone -> pooled c5 -> linear classifier.

    Args:
        categories: COCO category records (id, name); linked from the data module.
        image_size: input size the model was trained at (kept for prediction).
        label_smoothing: cross-entropy label smoothing.
        dropout: dropout before the linear layer.
        (the rest: see :class:`BaseTask`)
    """

    task_name = "classify"
    monitor = "val/top1"
    monitor_mode = "max"

    def __init__(
        self,
        categories: list[dict[str, Any]] | None = None,
        image_size: int = 64,
        label_smoothing: float = 0.0,
        dropout: float = 0.0,
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
            raise ValueError("ClassifyTask needs categories (linked from the data module)")
        self.categories = categories
        self.class_names = [c["name"] for c in categories]
        self.head = ClassifyHead(self.backbone.out_channels["c5"], len(categories), dropout)
        self.val_metric = classification_metrics(len(categories))
        self.test_metric = self.val_metric.clone()

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, num_classes) logits."""
        return self.head(self.backbone(images)["c5"])

    def compute_loss(self, outputs: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Cross-entropy."""
        loss = classification_loss(outputs, batch["label"], self.hparams.label_smoothing)
        return {"loss": loss}

    def update_metric(self, metric: MetricCollection, outputs: Tensor, batch: dict) -> None:
        """Accumulate accuracies and the confusion matrix."""
        metric.update(outputs, batch["label"])

    def decode(self, outputs: Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Per sample: image id, COCO category id, score and the top-5 alternatives."""
        probs = outputs.softmax(dim=1)
        top_scores, top_indices = probs.topk(min(5, probs.shape[1]), dim=1)
        results = []
        for i in range(probs.shape[0]):
            indices = top_indices[i].tolist()
            results.append(
                {
                    "image_id": int(batch["image_id"][i]),
                    "category_id": self.categories[indices[0]]["id"],
                    "score": float(top_scores[i, 0]),
                    "top5": [
                        {"category_id": self.categories[k]["id"], "score": float(s)}
                        for k, s in zip(indices, top_scores[i].tolist())
                    ],
                }
            )
        return results

    def draw_samples(self, outputs: Tensor, batch: dict[str, Any]) -> list:
        """Input images with predicted / true class names."""
        images = ops.denormalize(batch["image"].detach().cpu()).permute(0, 2, 3, 1).numpy()
        predicted = outputs.argmax(dim=1).tolist()
        truth = batch["label"].tolist()
        return [
            (
                np.ascontiguousarray(img),
                f"{self.class_names[p]} (true: {self.class_names[t]})",
                p == t,
            )
            for img, p, t in zip(images, predicted, truth)
        ]

    def build_report(self, values: dict[str, Any], samples: list) -> Report:
        """Top-1/top-5, per-class accuracy table, confusion matrix, prediction grid."""
        confusion = values["confusion"].cpu().numpy()
        per_class = values["per_class"].cpu().tolist()
        support = confusion.sum(axis=1).tolist()
        table = [
            {"id": c["id"], "class": c["name"], "accuracy": acc, "samples": int(n)}
            for c, acc, n in zip(self.categories, per_class, support)
        ]
        headline = {"top1": float(values["top1"]), "top5": float(values["top5"])}
        figures = [
            Figure(
                "confusion_matrix",
                "confusion_matrix",
                "Confusion matrix",
                {"matrix": confusion, "names": self.class_names},
            ),
            samples_figure(samples, "Predictions (true class in brackets)"),
        ]
        metrics = {**headline, "samples": int(confusion.sum())}
        return Report("classify", headline, metrics, {"per_class": table}, figures)

    # ---- tools/predict.py --------------------------------------------------------------------
    def predict_sample(self, image: np.ndarray) -> dict[str, Any]:
        """The whole image, letterboxed to ``image_size`` as in evaluation of image mode."""
        size = self.hparams.image_size
        transform = classify_transforms(size, train=False, already_cropped=False)
        return {"image": transform(image=image)["image"]}

    prediction_suffix = "_pred.jpg"

    def draw_prediction(self, image: np.ndarray, prediction: dict[str, Any]) -> np.ndarray:
        """The image with its top class and score written on it."""
        name_of = {c["id"]: c["name"] for c in self.categories}
        text = f"{name_of[prediction['category_id']]} {prediction['score']:.2f}"
        drawn = np.ascontiguousarray(image).copy()
        cv2.putText(drawn, text, (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 0, 0), 2)
        return drawn
