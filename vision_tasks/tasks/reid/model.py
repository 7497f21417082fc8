"""Re-ID model: pooling + BNNeck head, batch-hard triplet and identity losses, the task."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision_tasks import ops
from vision_tasks.backbone import Backbone
from vision_tasks.data.coco import CocoDataError, CocoIndex
from vision_tasks.data.transforms import reid_transforms
from vision_tasks.evaluation.metrics import ReidMetric
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.layers import GeneralizedMeanPool
from vision_tasks.tasks.base import BaseTask
from vision_tasks.tasks.reid.data import ReidDataset, crop_size
from vision_tasks.utils import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

# ---- head and losses --------------------------------------------------------------------------


class ReidHead(nn.Module):
    """Pooling -> optional linear reduction -> BNNeck over c5.

    Args:
        in_channels: channels of the feature map.
        embedding_dim: 0 keeps ``in_channels``; else a linear layer reduces to it.
        pooling: ``avg`` or ``gem`` (generalised mean, learnt exponent).
    """

    def __init__(
        self, in_channels: int, embedding_dim: int = 0, pooling: Literal["avg", "gem"] = "gem"
    ) -> None:
        super().__init__()
        self.pool = GeneralizedMeanPool() if pooling == "gem" else None
        dim = embedding_dim or in_channels
        self.reduce = nn.Linear(in_channels, dim) if embedding_dim else nn.Identity()
        self.bnneck = nn.BatchNorm1d(dim)
        self.bnneck.bias.requires_grad_(False)  # BNNeck: a shift would only blur the ID loss
        self.out_channels = dim

    def forward(self, c5: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, h, w) -> features (B, D) for the triplet loss, BN features (B, D)."""
        pooled = self.pool(c5) if self.pool is not None else c5.mean(dim=(2, 3))
        features = self.reduce(pooled)
        return features, self.bnneck(features)


def hardest_pairs(distances: Tensor, identities: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batch-hard mining: each anchor's farthest positive and nearest negative.

    Args:
        distances: (B, B) pairwise distances.
        identities: (B,) identities.

    Returns:
        positive (B,) and negative (B,) indices, and valid (B,) bool: the anchor has both.
    """
    same = identities[:, None] == identities[None, :]
    eye = torch.eye(len(identities), dtype=torch.bool, device=distances.device)
    positives, negatives = same & ~eye, ~same
    inf = torch.finfo(distances.dtype).max
    positive = distances.masked_fill(~positives, -inf).argmax(dim=1)
    negative = distances.masked_fill(~negatives, inf).argmin(dim=1)
    return positive, negative, positives.any(dim=1) & negatives.any(dim=1)


def batch_hard_triplet_loss(
    features: Tensor, identities: Tensor, margin: float | None = 0.3
) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances.

    Args:
        features: (B, D) embeddings.
        identities: (B,) identities.
        margin: hinge margin; ``None`` uses the soft margin ``log(1 + exp(d_ap - d_an))``.

    Returns:
        Scalar mean over anchors that have a positive and a negative (0 if none has).
    """
    squared = torch.cdist(features, features).pow(2)
    distances = squared.clamp(min=1e-12).sqrt()  # gradient-safe on the diagonal
    positive, negative, valid = hardest_pairs(distances.detach(), identities)
    rows = torch.arange(len(features), device=features.device)
    gap = distances[rows, positive] - distances[rows, negative]
    losses = F.softplus(gap) if margin is None else F.relu(gap + margin)
    return losses[valid].mean() if valid.any() else features.sum() * 0.0


def identity_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.1) -> Tensor:
    """Label-smoothed cross-entropy of (B, N) logits over rows with a label >= 0."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], labels[known], label_smoothing=label_smoothing)


# ---- task -------------------------------------------------------------------------------------


class ReidTask(BaseTask):
    """Backbone -> pooling -> BNNeck embedding, trained with triplet (+ identity) losses.

    Args:
        categories: COCO category records; linked from the data module (kept, not used).
        image_size: crop height the model was trained at (for prediction).
        crop_aspect_ratio: crop width / height; the CLI links it from the data's
            ``aspect_ratio`` (under another name: Lightning refuses a model and data
            hyper-parameter of one name with two values).
        num_identities: identity classifier classes (0: none); the CLI links it from the
            identities of the training split.
        pooling: ``avg`` or ``gem``.
        embedding_dim: 0 keeps the backbone's c5 width, else a linear reduction.
        last_stride: 1 keeps c5 at stride 16 (finer pooled features, as usual in re-ID).
        margin: triplet margin; ``None`` for the soft margin.
        triplet_weight: weight of the triplet loss.
        id_loss_weight: weight of the identity cross-entropy (0 switches it off).
        label_smoothing: label smoothing of the identity cross-entropy.
        (the rest: see :class:`BaseTask`)
    """

    task_name = "reid"
    monitor = "val/mAP"
    monitor_mode = "max"
    # {model argument: data module attribute}, linked by the CLI when it builds both.
    linked_from_data = {
        "crop_aspect_ratio": "aspect_ratio",
        "num_identities": "num_train_identities",
    }

    def __init__(
        self,
        categories: list[dict[str, Any]] | None = None,
        image_size: int = 128,
        crop_aspect_ratio: float = 0.5,
        num_identities: int = 0,
        pooling: Literal["avg", "gem"] = "gem",
        embedding_dim: int = 0,
        last_stride: int = 1,
        margin: float | None = 0.3,
        triplet_weight: float = 1.0,
        id_loss_weight: float = 1.0,
        label_smoothing: float = 0.1,
        backbone: str = "resnet18",
        backbone_weights: str = "none",
        freeze_at: int = 0,
        lr: float = 3.5e-4,
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
        if last_stride != 2:  # BaseTask builds the usual stride-2 trunk
            self.backbone = Backbone(
                backbone, backbone_weights, 3, freeze_at, last_stride=last_stride
            )
        self.categories = categories or []
        self.head = ReidHead(self.backbone.out_channels["c5"], embedding_dim, pooling)
        self.classifier: nn.Linear | None = None
        if num_identities > 0 and id_loss_weight > 0:
            self._build_classifier(num_identities)
        self.val_metric = ReidMetric()
        self.test_metric = ReidMetric()

    def _build_classifier(self, num_identities: int) -> None:
        self.classifier = nn.Linear(self.head.out_channels, num_identities, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, images: Tensor) -> dict[str, Tensor | None]:
        """(B, 3, H, W) -> ``features`` (B, D), ``embedding`` (B, D) unit-norm, ``logits``."""
        features, bn_features = self.head(self.backbone(images)["c5"])
        logits = self.classifier(bn_features) if self.classifier is not None else None
        embedding = F.normalize(bn_features, dim=1)
        return {"features": features, "embedding": embedding, "logits": logits}

    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Triplet loss on the features, identity loss on the labelled rows."""
        hp = self.hparams
        triplet = batch_hard_triplet_loss(outputs["features"], batch["identity"], hp.margin)
        losses = {"triplet": triplet, "loss": hp.triplet_weight * triplet}
        if outputs["logits"] is not None:
            losses["id"] = identity_loss(outputs["logits"], batch["label"], hp.label_smoothing)
            losses["loss"] = losses["loss"] + hp.id_loss_weight * losses["id"]
        return losses

    def update_metric(self, metric: ReidMetric, outputs: dict[str, Any], batch: dict) -> None:
        """Collect embeddings with identity, camera, query flag and annotation id."""
        metric.update(
            outputs["embedding"],
            batch["identity"],
            batch["camera"],
            batch["is_query"],
            batch["annotation_id"],
        )

    def decode(self, outputs: dict[str, Any], batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Per sample: image id (annotation id where known) and its (D,) float32 embedding."""
        embeddings = outputs["embedding"].detach().float().cpu().numpy()
        results = []
        for i, embedding in enumerate(embeddings):
            result = {"image_id": int(batch["image_id"][i]), "embedding": embedding}
            if "annotation_id" in batch:
                result["annotation_id"] = int(batch["annotation_id"][i])
            results.append(result)
        return results

    def predict_sample(self, image: np.ndarray) -> dict[str, Any]:
        """A whole image is one crop: resized to the training crop size."""
        width, height = crop_size(self.hparams.image_size, self.hparams.crop_aspect_ratio)
        return {"image": reid_transforms(height, width, train=False)(image=image)["image"]}

    def write_predictions(
        self,
        predictions: list[dict[str, Any]],
        images: list[np.ndarray],
        names: list[str],
        out_dir: Path,
    ) -> list[Path]:
        """Append the batch to ``embeddings.npy`` (N, D) and its file names to ``embeddings.json``.

        One array for the whole run rather than the base's file per image: there is nothing to
        draw. ``tools/predict.py`` numbers images from 1 in file order: image 1 starts anew.
        """
        out_dir = Path(out_dir)
        array_path, names_path = out_dir / "embeddings.npy", out_dir / "embeddings.json"
        rows = np.stack([p["embedding"] for p in predictions]).astype(np.float32)
        if predictions[0]["image_id"] != 1 and array_path.is_file() and names_path.is_file():
            rows = np.concatenate([np.load(array_path), rows])
            names = json.loads(names_path.read_text())["files"] + list(names)
        buffer = io.BytesIO()
        np.save(buffer, rows)
        atomic_write_bytes(array_path, buffer.getvalue())
        listing = {"files": list(names), "dim": int(rows.shape[1]), "normalized": True}
        atomic_write_json(names_path, listing)
        return [array_path, names_path]

    def predict_coco(
        self,
        index: CocoIndex,
        network: Callable[[Tensor], Any],
        out_dir: Path,
        batch_size: int,
        data_hparams: dict[str, Any],
    ) -> list[Path]:
        """Embed every non-crowd box of a COCO file, cropped as in evaluation.

        Writes ``embeddings.npy`` (N, D) and ``embeddings.json``: one record per row with the
        annotation, image and category ids, and the identity and camera where the data has them
        (fields named as at training: ``identity_field``, ``camera_field``).
        """
        margin = data_hparams.get("crop_margin", 0.1)
        identity_field = data_hparams.get("identity_field", "track_id")
        camera_field = data_hparams.get("camera_field", "camera_id")
        size = crop_size(self.hparams.image_size, self.hparams.crop_aspect_ratio)
        transform = reid_transforms(size[1], size[0], train=False)
        records: list[dict[str, Any]] = []
        rows: list[np.ndarray] = []
        pending: list[Tensor] = []

        def embed_pending() -> None:
            batch = {"image_id": torch.as_tensor([r["image_id"] for r in records[-len(pending) :]])}
            with torch.inference_mode():
                predictions = self.decode(network(torch.stack(pending)), batch)
            rows.extend(p["embedding"] for p in predictions)
            pending.clear()

        for image_id in index.image_ids:
            image, info = index.load_image(image_id), index.image_info(image_id)
            for ann in index.annotations(image_id, include_crowd=False):
                x, y, w, h = ann["bbox"]
                matrix = ops.box_affine([x, y, x + w, y + h], size, margin=margin)
                pending.append(transform(image=ops.crop_affine(image, matrix, size))["image"])
                records.append(
                    {
                        "annotation_id": ann["id"],
                        "image_id": image_id,
                        "category_id": ann["category_id"],
                        "identity": ann.get(identity_field),
                        "camera": info.get(camera_field),
                    }
                )
                if len(pending) == batch_size:
                    embed_pending()
        if pending:
            embed_pending()
        if not records:
            raise CocoDataError(f"{index.json_path}: no non-crowd annotations to embed")
        out_dir = Path(out_dir)
        buffer = io.BytesIO()
        np.save(buffer, np.stack(rows).astype(np.float32))
        listing = {
            "annotations": records,
            "dim": int(rows[0].shape[0]),
            "normalized": True,
            "source": str(index.json_path),
        }
        return [
            atomic_write_bytes(out_dir / "embeddings.npy", buffer.getvalue()),
            atomic_write_json(out_dir / "embeddings.json", listing),
        ]

    # ---- report -----------------------------------------------------------------------------
    def build_report(self, values: dict[str, Any], samples: list) -> Report:
        """Rank-1/5/10 and mAP, the CMC curve and a retrieval grid (query + top 10)."""
        headline = {k: float(values[k]) for k in ("rank1", "rank5", "rank10", "mAP")}
        counts = ("num_queries", "num_valid_queries", "num_skipped_queries", "num_gallery")
        cmc = [float(v) for v in values["cmc"]]
        metrics = {**headline, **{k: int(values[k]) for k in counts}, "cmc": cmc}
        figures = [
            Figure(
                "cmc",
                "curves",
                "CMC curve",
                {
                    "series": [{"label": "CMC", "x": list(range(1, len(cmc) + 1)), "y": cmc}],
                    "xlabel": "rank",
                    "ylabel": "matching rate",
                },
            ),
        ]
        grid = self._retrieval_grid(values.get("examples") or {})
        if grid is not None:
            figures.append(grid)
        if metrics["num_skipped_queries"]:
            log.warning(
                "%d of %d queries have no match in the gallery and were skipped",
                metrics["num_skipped_queries"],
                metrics["num_queries"],
            )
        return Report("reid", headline, metrics, {}, figures)

    def _retrieval_grid(self, examples: dict[str, Any]) -> Figure | None:
        """Each row: a query crop, then its top gallery crops marked correct / wrong."""
        dataset = getattr(getattr(self._trainer, "test_dataloaders", None), "dataset", None)
        if not examples or not isinstance(dataset, ReidDataset):
            return None
        images, captions, ok = [], [], []
        columns = 1 + max(len(top) for top in examples["gallery_keys"])
        for query, top, correct in zip(
            examples["query_keys"].tolist(), examples["gallery_keys"], examples["correct"]
        ):
            for rank, key in enumerate([query, *top.tolist()]):
                i = dataset.positions[key]
                images.append(dataset.crop(i))
                where = f"id {dataset.identities[i]} cam {dataset.cameras[i]}"
                captions.append(f"query: {where}" if rank == 0 else f"#{rank}: {where}")
                ok.append(None if rank == 0 else bool(correct[rank - 1]))
            padding = columns - 1 - len(top)
            images += [np.zeros_like(images[-1])] * padding
            captions += [""] * padding
            ok += [None] * padding
        return Figure(
            "retrieval",
            "image_grid",
            "Retrieval: query, then the top gallery matches",
            {"images": images, "captions": captions, "ok": ok, "columns": columns},
        )
