"""Instance evaluation: COCOeval ``segm`` beside ``bbox`` on the same results, and a semantic view.

Masks travel as COCO RLE (``pycocotools.mask.encode`` of Fortran-ordered uint8 masks at the
original image size), the form ``COCO.loadRes`` reads. Both evaluations run through
:func:`~vision_tasks.evaluation.coco_eval.coco_evaluate` on the same records (each holding
``bbox`` and ``segmentation``, as ``results.json`` does).

The semantic view: the masks scoring at least a threshold, merged by class (the most confident
on top) into one label map per image, scored against the segment task's label maps
(:func:`~vision_tasks.tasks.segment.semantic_label_map`: crowd regions ignored) with its metric,
so the instance model's mIoU stands beside ``--task segment``'s.

The panoptic view: the masks scoring at least 0.5 fused into one panoptic map per image
(Detectron2's fusion), scored with panoptic quality against the annotations' masks
(:mod:`vision_tasks.evaluation.panoptic`). Every category of an instance dataset is a thing, so
this PQ is panopticapi's PQ over things; there are no stuff classes to add.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torchmetrics import Metric

from vision_tasks.evaluation.coco_eval import (
    Backend,
    _gathered,
    _unique_records,
    check_backend,
    coco_evaluate,
    results_from_predictions,
)
from vision_tasks.evaluation.metrics import SegmentationMetric
from vision_tasks.evaluation.panoptic import PanopticQuality, fuse_instances, truth_panoptic
from vision_tasks.tasks.segment import IGNORE_INDEX, semantic_label_map


def encode_masks(masks: Tensor) -> list[dict[str, Any]]:
    """(K, H, W) bool masks -> K COCO RLEs ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    if len(masks) == 0:
        return []
    # (K, W, H) C-ordered is (H, W, K) Fortran-ordered: pycocotools' layout, without a copy.
    fortran = masks.to(torch.uint8).transpose(1, 2).contiguous().numpy().transpose(2, 1, 0)
    rles = mask_utils.encode(np.asfortranarray(fortran))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_rle(rles: list[dict[str, Any]], size_hw: tuple[int, int]) -> Tensor:
    """COCO RLEs of one image -> (K, H, W) bool masks."""
    if not rles:
        return torch.zeros(0, *size_hw, dtype=torch.bool)
    return torch.from_numpy(mask_utils.decode(list(rles))).permute(2, 0, 1).bool()


def merged_label_map(
    rles: list[dict[str, Any]],
    scores: list[float],
    labels: list[int],
    size_hw: tuple[int, int],
    threshold: float,
) -> np.ndarray:
    """Masks scoring >= ``threshold`` painted in increasing score order (the most confident on
    top) into an (H, W) uint8 label map: 0 background, k + 1 for class index k."""
    label_map = np.zeros(size_hw, np.uint8)
    for k in np.argsort(np.asarray(scores, dtype=np.float64), kind="stable"):
        if scores[k] >= threshold:
            label_map[mask_utils.decode(rles[k]) > 0] = labels[k] + 1
    return label_map


class CocoMaskMetric(Metric):
    """Detections with masks over an epoch -> COCOeval ``segm`` and ``bbox``, and the semantic
    view (see the module docstring).

    Set ``index`` (the split's :class:`~vision_tasks.data.coco.CocoIndex`) before the first
    ``update``. ``compute`` returns the 12 stats of each as ``mask_*`` and ``box_*``,
    ``semantic_miou`` (when the classes fit a uint8 label map), ``segm`` / ``bbox``
    (:class:`~vision_tasks.evaluation.coco_eval.CocoEvalResult`), ``semantic`` (the segment
    metric's scores), ``images`` and ``detections``.

    Args:
        num_classes: categories (the semantic view adds background).
        semantic_threshold: score from which a mask enters the semantic view.
        backend: the COCOeval of both evaluations (see
            :func:`~vision_tasks.evaluation.coco_eval.coco_evaluate`).
    """

    full_state_update = False
    _STATES = (
        "image_ids",
        "det_image_ids",
        "det_boxes",
        "det_scores",
        "det_categories",
        "det_rle_bytes",
        "det_rle_lengths",
    )
    _PANOPTIC_STATES = ("pq_tp", "pq_fp", "pq_fn", "pq_iou")
    panoptic_threshold = 0.5  # Detectron2's instance score threshold for panoptic fusion

    def __init__(
        self, num_classes: int, semantic_threshold: float = 0.3, backend: Backend = "pycocotools"
    ) -> None:
        super().__init__()
        check_backend(backend)
        self.backend = backend
        for name in self._STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        # Label maps are uint8 with IGNORE_INDEX: more classes than that get no semantic view.
        fits = num_classes + 1 < IGNORE_INDEX
        self.semantic = SegmentationMetric(num_classes + 1, IGNORE_INDEX) if fits else None
        self.semantic_threshold = semantic_threshold
        # Per-class sums, so that DDP ranks add their images' counts up (dist_reduce_fx sum).
        for name in self._PANOPTIC_STATES:
            self.add_state(
                name, default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum"
            )
        self.index = None

    def update(self, predictions: list[dict[str, Any]], image_ids: Tensor) -> None:
        """Add one batch: per-image predictions (``bbox``, ``score``, ``category_id``,
        ``segmentation``) and the ids of every image evaluated."""
        self.image_ids.append(torch.as_tensor(image_ids).long().cpu())
        for p in predictions:
            count = len(p["score"])
            self.det_image_ids.append(torch.full((count,), int(p["image_id"]), dtype=torch.long))
            self.det_boxes.append(torch.as_tensor(p["bbox"]).float().reshape(-1, 4))
            self.det_scores.append(torch.as_tensor(p["score"]).float())
            self.det_categories.append(torch.as_tensor(p["category_id"]).long())
            counts = [rle["counts"].encode("ascii") for rle in p["segmentation"]]
            # RLE strings as bytes in a tensor: torchmetrics gathers only tensors across ranks.
            joined = np.frombuffer(b"".join(counts), dtype=np.uint8).copy()
            self.det_rle_bytes.append(torch.from_numpy(joined))
            self.det_rle_lengths.append(torch.tensor([len(c) for c in counts], dtype=torch.long))
            if self.semantic is not None:
                self._update_semantic(p)
            self._update_panoptic(p)

    def _update_semantic(self, prediction: dict[str, Any]) -> None:
        index, image_id = self.index, int(prediction["image_id"])
        info = index.image_info(image_id)
        size = (info["height"], info["width"])
        truth = semantic_label_map(
            index.coco, index.annotations(image_id), index.cat_to_index, *size
        )
        labels = [index.cat_to_index[int(c)] for c in prediction["category_id"]]
        scores = torch.as_tensor(prediction["score"]).tolist()
        predicted = merged_label_map(
            prediction["segmentation"], scores, labels, size, self.semantic_threshold
        )
        self.semantic.update(
            torch.from_numpy(predicted)[None].long(), torch.from_numpy(truth)[None]
        )

    def _update_panoptic(self, prediction: dict[str, Any]) -> None:
        index, image_id = self.index, int(prediction["image_id"])
        info = index.image_info(image_id)
        size = (info["height"], info["width"])
        anns = index.annotations(image_id)
        truth, truth_segments = truth_panoptic(
            [index.coco.annToMask(a) for a in anns],
            [int(a["category_id"]) for a in anns],
            [bool(a.get("iscrowd", 0)) for a in anns],
            size,
        )
        scores = torch.as_tensor(prediction["score"]).numpy()
        kept = np.flatnonzero(scores >= self.panoptic_threshold)
        masks = decode_rle([prediction["segmentation"][k] for k in kept], size).numpy()
        categories = torch.as_tensor(prediction["category_id"]).numpy()[kept]
        predicted, segments = fuse_instances(masks, scores[kept], categories, 0.0)
        quality = PanopticQuality()
        quality.update(predicted, segments, truth, truth_segments)
        for category, stat in quality.stats.items():
            k = index.cat_to_index[category]
            self.pq_tp[k] += stat.tp
            self.pq_fp[k] += stat.fp
            self.pq_fn[k] += stat.fn
            self.pq_iou[k] += stat.iou

    def panoptic(self) -> dict[str, Any]:
        """Panoptic quality over everything collected (see :meth:`PanopticQuality.compute`),
        per category keyed by category id."""
        quality = PanopticQuality()
        ids = [c["id"] for c in self.index.categories]
        for k, category in enumerate(ids):
            stat = quality.stat(category)
            stat.tp, stat.fp, stat.fn = int(self.pq_tp[k]), int(self.pq_fp[k]), int(self.pq_fn[k])
            stat.iou = float(self.pq_iou[k])
        return quality.compute()

    def records(self) -> list[dict[str, Any]]:
        """Every collected detection as a COCO results record (``bbox`` and ``segmentation``)."""
        scores = _gathered(self.det_scores)
        if not len(scores):
            return []
        prediction = {
            "image_id": 0,
            "bbox": _gathered(self.det_boxes).reshape(-1, 4),
            "score": scores,
            "category_id": _gathered(self.det_categories),
        }
        records = results_from_predictions([prediction])
        data = _gathered(self.det_rle_bytes).to(torch.uint8).numpy().tobytes()
        ends = np.cumsum(_gathered(self.det_rle_lengths).tolist())
        image_ids = _gathered(self.det_image_ids).tolist()
        for record, image_id, end, length in zip(
            records, image_ids, ends, _gathered(self.det_rle_lengths).tolist()
        ):
            info = self.index.image_info(image_id)
            record["image_id"] = image_id
            counts = data[end - length : end].decode("ascii")
            record["segmentation"] = {"size": [info["height"], info["width"]], "counts": counts}
        return _unique_records(records)

    def compute(self) -> dict[str, Any]:
        """COCOeval segm and bbox over everything collected, and the semantic view."""
        if self.index is None:
            raise RuntimeError("CocoMaskMetric.index must be set to the split's CocoIndex")
        image_ids = sorted(set(_gathered(self.image_ids).tolist()))
        records = self.records()
        bbox = coco_evaluate(self.index, records, "bbox", image_ids=image_ids, backend=self.backend)
        segm = coco_evaluate(self.index, records, "segm", image_ids=image_ids, backend=self.backend)
        values: dict[str, Any] = {f"mask_{k}": v for k, v in segm.stats.items()}
        values |= {f"box_{k}": v for k, v in bbox.stats.items()}
        values |= {"segm": segm, "bbox": bbox, "images": len(image_ids), "detections": len(records)}
        if self.semantic is not None:
            semantic = self.semantic.compute()
            values |= {"semantic": semantic, "semantic_miou": float(semantic["miou"])}
        panoptic = self.panoptic()
        values |= {"panoptic": panoptic} | {
            f"panoptic_{k.upper()}": panoptic[k] for k in ("pq", "sq", "rq")
        }
        return values

    def reset(self) -> None:
        """Clear the collected detections and the semantic view's confusion matrix."""
        super().reset()
        if self.semantic is not None:
            self.semantic.reset()
