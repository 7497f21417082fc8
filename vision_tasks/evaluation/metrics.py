"""torchmetrics Metrics no library gives: re-ID CMC + mAP, homography corner error, keypoint
OKS AP + PCK."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.utilities import dim_zero_cat

from vision_tasks.evaluation.coco_eval import Backend, check_backend, coco_evaluate


class CornerError(Metric):
    """Mean average corner error (MACE, pixels) of 4-point homographies, per pair kept.

    The error of one pair is the mean Euclidean distance between its 4 predicted and true
    corners (DeTone et al. 2016). ``failed`` marks pairs whose estimate failed (a baseline that
    fell back to identity): they count with the error given, and their rate is reported.

    ``compute()`` returns ``mace`` (mean), ``median``, ``p90``, ``failure_rate`` and ``errors``
    (N,), the per-pair errors for a histogram.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("errors", default=[], dist_reduce_fx="cat")
        self.add_state("failures", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predicted: Tensor, target: Tensor, failed: Tensor | None = None) -> None:
        """Add (B, 4, 2) predicted and true corners; ``failed`` is an optional (B,) bool mask."""
        if predicted.shape != target.shape or predicted.shape[-2:] != (4, 2):
            raise ValueError(
                f"expected (B, 4, 2) corners, got {tuple(predicted.shape)} and "
                f"{tuple(target.shape)}"
            )
        errors = (predicted.double() - target.double()).norm(dim=-1).mean(dim=-1)
        self.errors.append(errors)
        if failed is not None:
            self.failures += failed.sum().to(self.failures.device)

    def compute(self) -> dict[str, Tensor]:
        """MACE, median, 90th percentile, failure rate and the per-pair errors."""
        errors = dim_zero_cat(self.errors)
        return {
            "mace": errors.mean(),
            "median": errors.quantile(0.5),  # the middle value, averaged if N is even
            "p90": errors.quantile(0.9),
            "failure_rate": self.failures.double() / errors.numel(),
            "errors": errors,
        }


def market1501_rank(
    distances: Tensor,
    query_ids: Tensor,
    query_cams: Tensor,
    gallery_ids: Tensor,
    gallery_cams: Tensor,
    max_rank: int = 50,
) -> tuple[Tensor, Tensor, Tensor]:
    """CMC hits and average precision of each query under the Market-1501 protocol.

    Gallery samples of the query's identity seen by the query's camera are junk: removed from
    the ranking (neither a hit nor a miss). Average precision is the mean precision at each
    correct match, as in torchreid / open-reid (the original MATLAB code interpolates slightly
    differently). Every query is handled at once with tensor operations.

    Args:
        distances: (Q, G) query-to-gallery distances (smaller is more similar).
        query_ids: (Q,) identities of the queries.
        query_cams: (Q,) cameras of the queries.
        gallery_ids: (G,) identities of the gallery samples.
        gallery_cams: (G,) cameras of the gallery samples.
        max_rank: length of the CMC curve.

    Returns:
        ``hits`` (Q, max_rank) bool: a correct match within the top ``r + 1``;
        ``average_precision`` (Q,); ``valid`` (Q,) bool: the query has a correct match in the
        gallery at all (invalid queries are skipped, as Market-1501 does).
    """
    order = distances.argsort(dim=1, stable=True)
    same_id = gallery_ids[order] == query_ids[:, None]
    kept = ~(same_id & (gallery_cams[order] == query_cams[:, None]))
    matches = same_id & kept
    position = kept.long().cumsum(dim=1)  # 1-based rank among the kept samples
    first = torch.where(matches, position, position.new_tensor(distances.shape[1] + 1))
    first = first.min(dim=1).values if distances.shape[1] else first.new_ones(len(first))
    hits = first[:, None] <= torch.arange(1, max_rank + 1, device=first.device)
    num_matches = matches.sum(dim=1)
    precision = matches.long().cumsum(dim=1) / position.clamp(min=1)
    average_precision = (precision * matches).sum(dim=1) / num_matches.clamp(min=1)
    return hits, average_precision, num_matches > 0


class ReidMetric(Metric):
    """CMC rank-k and mAP of query embeddings against a gallery (Market-1501 protocol).

    Every sample is added with its identity, camera and a query flag; queries are ranked
    against all non-query samples by Euclidean distance, in chunks of queries (batched tensor
    operations on the CPU, no per-pair Python loop). Queries without a correct match in the
    gallery are skipped and counted, as Market-1501 does. ``keys`` (e.g. annotation ids) make
    samples unique: a sample seen twice (padding of a DDP sampler) is counted once.

    ``compute()`` returns ``rank1``, ``rank5``, ``rank10``, ``mAP``, the ``cmc`` curve
    (max_rank,), the counts ``num_queries``, ``num_valid_queries``, ``num_skipped_queries``,
    ``num_gallery`` and ``examples``: the keys of a few queries, their top-k gallery keys and
    whether each is a correct match (for a retrieval grid).

    Args:
        max_rank: length of the CMC curve.
        num_examples: queries listed in ``examples`` (spread evenly over the valid ones).
        example_top_k: gallery samples listed per example query.
        chunk_size: queries ranked at once (bounds memory at chunk_size x gallery size).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        max_rank: int = 50,
        num_examples: int = 6,
        example_top_k: int = 10,
        chunk_size: int = 512,
    ) -> None:
        super().__init__()
        self.max_rank, self.chunk_size = max_rank, chunk_size
        self.num_examples, self.example_top_k = num_examples, example_top_k
        for name in ("embeddings", "identities", "cameras", "is_query", "keys"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        embeddings: Tensor,
        identities: Tensor,
        cameras: Tensor,
        is_query: Tensor,
        keys: Tensor,
    ) -> None:
        """Add (B, D) embeddings with their (B,) identities, cameras, query flags and keys."""
        self.embeddings.append(embeddings.detach().float())
        self.identities.append(identities.long())
        self.cameras.append(cameras.long())
        self.is_query.append(is_query.bool())
        self.keys.append(keys.long())

    def compute(self) -> dict[str, Any]:
        """CMC, mAP, counts and retrieval examples (see the class docstring)."""
        if len(self.keys) == 0:  # a list per batch, or one tensor once synced across processes
            return self._result(torch.zeros(self.max_rank), torch.zeros(0), 0, 0, 0, {})
        # Ranking on the CPU: a large gallery's (chunk, G) matrices stay off the GPU.
        keys = dim_zero_cat(self.keys).cpu()
        unique, inverse = torch.unique(keys, return_inverse=True)
        first = torch.full((len(unique),), len(keys)).scatter_reduce(
            0, inverse, torch.arange(len(keys)), reduce="amin"
        )
        keep = first.sort().values
        feats, ids, cams, query, keys = (
            dim_zero_cat(state).cpu()[keep]
            for state in (self.embeddings, self.identities, self.cameras, self.is_query, self.keys)
        )
        q, g = query.nonzero().squeeze(1), (~query).nonzero().squeeze(1)
        hits, ap, valid = [], [], []
        for start in range(0, len(q), self.chunk_size):
            rows = q[start : start + self.chunk_size]
            distances = torch.cdist(feats[rows], feats[g])
            h, a, v = market1501_rank(
                distances, ids[rows], cams[rows], ids[g], cams[g], self.max_rank
            )
            hits.append(h[v])
            ap.append(a[v])
            valid.append(v)
        valid_mask = torch.cat(valid) if valid else torch.zeros(0, dtype=torch.bool)
        hits_all = torch.cat(hits) if hits else torch.zeros(0, self.max_rank, dtype=torch.bool)
        cmc = hits_all.double().mean(dim=0) if len(hits_all) else torch.zeros(self.max_rank)
        examples = self._examples(feats, ids, cams, keys, q[valid_mask], g)
        ap_all = torch.cat(ap) if ap else torch.zeros(0)
        return self._result(cmc, ap_all, len(q), int(valid_mask.sum()), len(g), examples)

    def _result(
        self, cmc: Tensor, ap: Tensor, queries: int, valid: int, gallery: int, examples: dict
    ) -> dict[str, Any]:
        """Assemble compute()'s dict; with no valid query every score is 0 (and counted)."""
        cmc = cmc.double()
        score = {f"rank{r}": cmc[r - 1] if r <= len(cmc) else cmc[-1] for r in (1, 5, 10)}
        return {
            **score,
            "mAP": ap.double().mean() if len(ap) else torch.tensor(0.0, dtype=torch.float64),
            "cmc": cmc,
            "num_queries": queries,
            "num_valid_queries": valid,
            "num_skipped_queries": queries - valid,
            "num_gallery": gallery,
            "examples": examples,
        }

    def _examples(
        self,
        feats: Tensor,
        ids: Tensor,
        cams: Tensor,
        keys: Tensor,
        queries: Tensor,
        gallery: Tensor,
    ) -> dict[str, Tensor]:
        """Top-k gallery keys (junk removed) of a few valid queries spread over the set."""
        if len(queries) == 0 or self.num_examples == 0:
            return {}
        picks = torch.linspace(0, len(queries) - 1, min(self.num_examples, len(queries)))
        rows = queries[picks.round().long().unique()]
        order = torch.cdist(feats[rows], feats[gallery]).argsort(dim=1, stable=True)
        top, correct = [], []
        for row, ranked in zip(rows, gallery[order]):  # a handful of queries
            junk = (ids[ranked] == ids[row]) & (cams[ranked] == cams[row])
            ranked = ranked[~junk][: self.example_top_k]
            top.append(keys[ranked])
            correct.append(ids[ranked] == ids[row])
        return {"query_keys": keys[rows], "gallery_keys": top, "correct": correct}


def segmentation_scores(confusion: Tensor) -> dict[str, Tensor]:
    """mIoU, per-class IoU / accuracy, pixel accuracy and frequency-weighted IoU.

    Args:
        confusion: (C, C) pixel counts, rows = true class, columns = predicted class.

    Returns:
        ``miou``: mean IoU over the classes present in the truth or the prediction (as
        torchmetrics' ``JaccardIndex(average="macro")``); ``iou`` (C,) and ``accuracy`` (C,)
        per class (NaN where undefined); ``pixel_accuracy``; ``fw_iou``: IoU weighted by each
        class's share of the true pixels; ``pixels`` (C,) true pixels per class; ``confusion``.
    """
    confusion = confusion.double()
    true_pixels, predicted_pixels = confusion.sum(dim=1), confusion.sum(dim=0)
    hits = confusion.diagonal()
    union = true_pixels + predicted_pixels - hits
    nan = torch.tensor(float("nan"), dtype=confusion.dtype, device=confusion.device)
    iou = torch.where(union > 0, hits / union.clamp(min=1), nan)
    accuracy = torch.where(true_pixels > 0, hits / true_pixels.clamp(min=1), nan)
    total = true_pixels.sum().clamp(min=1)
    frequency = true_pixels / total
    return {
        "miou": iou.nanmean() if (union > 0).any() else torch.zeros((), dtype=confusion.dtype),
        "pixel_accuracy": hits.sum() / total,
        "fw_iou": (frequency * iou.nan_to_num(0.0)).sum(),
        "iou": iou,
        "accuracy": accuracy,
        "pixels": true_pixels.long(),
        "confusion": confusion.long(),
    }


class SegmentationMetric(MulticlassConfusionMatrix):
    """Pixel confusion matrix (torchmetrics, ``ignore_index`` honoured) -> segmentation scores.

    ``update(preds, target)`` takes (B, H, W) class indices (or (B, C, H, W) scores) and
    (B, H, W) true indices; ``compute()`` returns :func:`segmentation_scores` of the matrix.

    Args:
        num_classes: classes including background.
        ignore_index: true label whose pixels are left out (crowd regions, padding).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        # validate_args=False: the checks run torch.unique over every pixel of every batch.
        super().__init__(num_classes, ignore_index=ignore_index, validate_args=False)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """Scores of the accumulated confusion matrix (see :func:`segmentation_scores`)."""
        return segmentation_scores(self.confmat)


PCK_CURVE_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(21))  # 0 .. 0.2 of the box size


class KeypointMetric(Metric):
    """Top-down keypoint predictions over an epoch -> COCO OKS AP (COCOeval) and PCK.

    PCK counts a visible ground-truth keypoint as found when the prediction lies within
    ``pck_threshold`` times the longer side of the instance's box. Instances are identified by a
    sample id, so the copies a distributed sampler pads with are counted once. Set ``index`` (the
    split's :class:`CocoIndex`) before ``compute`` for the COCO stats; they cover the images seen,
    or every image of the index with ``every_image`` (crops from detected boxes: an image where
    the detector found nobody still has people to miss).

    ``compute()`` returns the 10 ``KEYPOINT_STATS`` (with an index), ``PCK`` (mean over keypoints),
    ``pck_per_keypoint``, ``visible_per_keypoint``, ``error_per_keypoint`` (mean pixels), each
    (K,), ``pck_curve`` (mean PCK at ``PCK_CURVE_THRESHOLDS``), ``instances`` and ``records``
    (the COCO results). ``backend`` picks the COCOeval implementation (see
    :func:`~vision_tasks.evaluation.coco_eval.coco_evaluate`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        category_id: int,
        sigmas: Any,
        pck_threshold: float = 0.05,
        backend: Backend = "pycocotools",
    ) -> None:
        super().__init__()
        check_backend(backend)
        self.backend = backend
        for name in ("sample_ids", "image_ids", "predicted", "scores", "truth", "box_sizes"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.category_id = category_id
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.pck_threshold = pck_threshold
        self.index = None
        self.every_image = False

    def update(
        self,
        sample_ids: Tensor,
        image_ids: Tensor,
        predicted: Tensor,
        scores: Tensor,
        truth: Tensor,
        box_sizes: Tensor,
    ) -> None:
        """Add B instances.

        Args:
            sample_ids: (B,) unique id of each instance (its dataset index).
            image_ids: (B,) COCO image ids.
            predicted: (B, K, 3) x, y (COCO image pixels), keypoint score.
            scores: (B,) instance scores (rank the results for AP).
            truth: (B, K, 3) x, y, visibility of the ground truth (visibility 0 where unknown).
            box_sizes: (B,) longer side of each instance box (PCK normaliser).
        """
        self.sample_ids.append(sample_ids.long())
        self.image_ids.append(image_ids.long())
        self.predicted.append(predicted.double())
        self.scores.append(scores.double())
        self.truth.append(truth.double())
        self.box_sizes.append(box_sizes.double())

    def compute(self) -> dict[str, Any]:
        """PCK over the collected instances; COCOeval keypoint stats when ``index`` is set."""
        # A list per batch, or one tensor once synced; empty updates stand for "nobody found".
        if len(self.sample_ids) == 0 or dim_zero_cat(self.sample_ids).numel() == 0:
            return {"instances": 0, "PCK": float("nan"), "records": []}
        ids = dim_zero_cat(self.sample_ids).cpu().numpy()
        _, keep = np.unique(ids, return_index=True)
        keep = torch.as_tensor(np.sort(keep))
        predicted, truth = (dim_zero_cat(s).cpu()[keep] for s in (self.predicted, self.truth))
        scores, sizes = (dim_zero_cat(s).cpu()[keep] for s in (self.scores, self.box_sizes))
        image_ids = dim_zero_cat(self.image_ids).cpu()[keep].tolist()
        values = _pck(predicted, truth, sizes, self.pck_threshold)
        records = [
            {
                "image_id": image_id,
                "category_id": self.category_id,
                "keypoints": [round(v, 3) for v in points.flatten().tolist()],
                "score": round(float(score), 6),
            }
            for image_id, points, score in zip(image_ids, predicted, scores)
        ]
        values.update(instances=len(records), records=records)
        if self.index is not None:
            seen = None if self.every_image else sorted(set(image_ids))
            result = coco_evaluate(
                self.index,
                records,
                "keypoints",
                image_ids=seen,
                keypoint_sigmas=self.sigmas,
                category_ids=[self.category_id],
                backend=self.backend,
            )
            values.update(result.stats)
        return values


def _pck(predicted: Tensor, truth: Tensor, box_sizes: Tensor, threshold: float) -> dict[str, Any]:
    """Per-keypoint PCK, visible counts, mean pixel errors and the mean-PCK curve."""
    errors = (predicted[..., :2] - truth[..., :2]).norm(dim=-1)  # (N, K)
    visible = truth[..., 2] > 0
    counts = visible.sum(dim=0).double()
    relative = errors / box_sizes.clamp(min=1e-6)[:, None]

    def per_keypoint(hits: Tensor) -> Tensor:  # NaN where a keypoint is never visible
        return (hits & visible).sum(dim=0) / counts.where(counts > 0, torch.nan)

    curve = [per_keypoint(relative <= t).nanmean() for t in PCK_CURVE_THRESHOLDS]
    pck = per_keypoint(relative <= threshold)
    return {
        "PCK": pck.nanmean(),
        "pck_per_keypoint": pck,
        "visible_per_keypoint": counts,
        "error_per_keypoint": (errors * visible).sum(dim=0) / counts.where(counts > 0, torch.nan),
        "pck_curve": torch.stack(curve),
    }
