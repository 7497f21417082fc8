"""Panoptic quality (PQ, SQ, RQ) as panopticapi's ``pq_compute`` defines them, and the
fusion of instance masks into a panoptic map as Detectron2's ``combine_semantic_and_instance_
outputs`` does it.

A panoptic map gives every pixel one segment id (0 = void). Per image, a predicted and a truth
segment of the same category match when their IoU is over 0.5 (then the match is unique), the
union leaving out the predicted segment's void pixels. Per category:

- ``PQ = sum(IoU of matches) / (TP + FP/2 + FN/2)``, ``SQ = sum(IoU) / TP``, ``RQ = TP / (TP +
  FP/2 + FN/2)``;
- a truth segment marked crowd is never a false negative, and an unmatched prediction is not a
  false positive when over half of it lies on void or on a crowd region of its own category;
- PQ, SQ and RQ are averaged over the categories with at least one TP, FP or FN, over all of
  them and separately over things and stuff.

panopticapi is not on PyPI, so this is a reimplementation; ``tests/test_panoptic.py`` checks it
against a scene counted by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

VOID = 0
_OFFSET = 1 << 24  # joint labels gt * OFFSET + pred, as panopticapi counts intersections


@dataclass
class Segment:
    """One segment of a panoptic map: its id in the map, its category and the crowd flag."""

    id: int
    category: int
    iscrowd: bool = False


def fuse_instances(
    masks: np.ndarray,
    scores: np.ndarray,
    categories: np.ndarray,
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.5,
) -> tuple[np.ndarray, list[Segment]]:
    """(K, H, W) instance masks -> an (H, W) int32 panoptic map and its segments.

    Detectron2's fusion: from the most confident down, masks scoring ``score_threshold`` or
    more claim the pixels no earlier mask took; a mask left with under ``overlap_threshold`` of
    its own area is dropped. Pixels nobody claims are void.
    """
    height, width = masks.shape[1:] if masks.ndim == 3 else (0, 0)
    panoptic = np.zeros((height, width), np.int32)
    segments: list[Segment] = []
    for k in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        if scores[k] < score_threshold:
            break
        mask = masks[k].astype(bool)
        area = int(mask.sum())
        if area == 0:
            continue
        free = mask & (panoptic == VOID)
        if free.sum() / area < overlap_threshold:
            continue
        segment = Segment(len(segments) + 1, int(categories[k]))
        panoptic[free] = segment.id
        segments.append(segment)
    return panoptic, segments


def truth_panoptic(
    masks: list[np.ndarray], categories: list[int], crowd: list[bool], size_hw: tuple[int, int]
) -> tuple[np.ndarray, list[Segment]]:
    """Instance annotations' masks -> a truth panoptic map and its segments.

    panopticapi needs segments that do not overlap; COCO instance masks may. Pixels covered by
    two or more non-crowd objects are made void (neither object's), so an overlap counts for no
    one instead of for whichever object was listed last. A crowd region takes only pixels that
    no object covers.
    """
    panoptic = np.zeros(size_hw, np.int32)
    cover = np.zeros(size_hw, np.int32)
    segments = [Segment(i + 1, int(c), bool(z)) for i, (c, z) in enumerate(zip(categories, crowd))]
    for segment, mask in zip(segments, masks):
        if not segment.iscrowd:
            mask = mask.astype(bool)
            panoptic[mask] = segment.id
            cover += mask
    panoptic[cover > 1] = VOID
    for segment, mask in zip(segments, masks):
        if segment.iscrowd:
            panoptic[mask.astype(bool) & (cover == 0)] = segment.id
    return panoptic, segments


@dataclass
class _CategoryStat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


@dataclass
class PanopticQuality:
    """Accumulates per-category TP / FP / FN and matched IoU over images (``update``), then
    gives PQ / SQ / RQ (``compute``). ``things``: the category ids that are things (the rest are
    stuff); None: every category is a thing."""

    things: set[int] | None = None
    stats: dict[int, _CategoryStat] = field(default_factory=dict)

    def update(
        self,
        predicted: np.ndarray,
        predicted_segments: list[Segment],
        truth: np.ndarray,
        truth_segments: list[Segment],
    ) -> None:
        """Add one image: its predicted and truth panoptic maps and their segments."""
        if predicted.shape != truth.shape:
            raise ValueError(f"panoptic maps differ in size: {predicted.shape} vs {truth.shape}")
        joint = truth.astype(np.int64) * _OFFSET + predicted.astype(np.int64)
        labels, counts = np.unique(joint, return_counts=True)
        overlap = {(int(j // _OFFSET), int(j % _OFFSET)): int(n) for j, n in zip(labels, counts)}
        truth_area = {s.id: 0 for s in truth_segments}
        pred_area = {s.id: 0 for s in predicted_segments}
        for (t, p), n in overlap.items():
            if t in truth_area:
                truth_area[t] += n
            if p in pred_area:
                pred_area[p] += n
        truth_by_id = {s.id: s for s in truth_segments}
        pred_by_id = {s.id: s for s in predicted_segments}
        matched_truth, matched_pred = set(), set()
        for (t, p), n in overlap.items():
            if t not in truth_by_id or p not in pred_by_id:
                continue
            gt, pred = truth_by_id[t], pred_by_id[p]
            if gt.iscrowd or gt.category != pred.category:
                continue
            union = pred_area[p] + truth_area[t] - n - overlap.get((VOID, p), 0)
            iou = n / union
            if iou > 0.5:
                stat = self.stat(gt.category)
                stat.tp += 1
                stat.iou += iou
                matched_truth.add(t)
                matched_pred.add(p)
        crowd_of: dict[int, int] = {}
        for segment in truth_segments:
            if segment.iscrowd:
                crowd_of[segment.category] = segment.id  # one crowd region per category
        for segment in truth_segments:
            if not segment.iscrowd and segment.id not in matched_truth:
                self.stat(segment.category).fn += 1
        for segment in predicted_segments:
            if segment.id in matched_pred or pred_area[segment.id] == 0:
                continue
            ignored = overlap.get((VOID, segment.id), 0)
            crowd = crowd_of.get(segment.category)
            if crowd is not None:
                ignored += overlap.get((crowd, segment.id), 0)
            if ignored / pred_area[segment.id] > 0.5:
                continue
            self.stat(segment.category).fp += 1

    def stat(self, category: int) -> _CategoryStat:
        """The counts of one category (zero until an image adds to them)."""
        return self.stats.setdefault(category, _CategoryStat())

    def compute(self) -> dict[str, Any]:
        """``pq``, ``sq``, ``rq`` and ``categories`` over all categories, ``things`` and
        ``stuff`` (each a dict of those four; None where no category of the kind was seen),
        and ``per_category`` {id: {pq, sq, rq, tp, fp, fn}}."""
        per_category = {}
        for category, s in sorted(self.stats.items()):
            if s.tp + s.fp + s.fn == 0:
                continue
            denominator = s.tp + 0.5 * s.fp + 0.5 * s.fn
            sq = s.iou / s.tp if s.tp else 0.0
            rq = s.tp / denominator
            per_category[category] = {
                "pq": sq * rq,
                "sq": sq,
                "rq": rq,
                "tp": s.tp,
                "fp": s.fp,
                "fn": s.fn,
            }

        def average(ids: list[int]) -> dict[str, float] | None:
            if not ids:
                return None
            return {
                key: float(np.mean([per_category[i][key] for i in ids]))
                for key in ("pq", "sq", "rq")
            } | {"categories": len(ids)}

        ids = list(per_category)
        things = [i for i in ids if self.things is None or i in self.things]
        stuff = [i for i in ids if i not in things]
        overall = average(ids) or {"pq": 0.0, "sq": 0.0, "rq": 0.0, "categories": 0}
        return overall | {
            "things": average(things),
            "stuff": average(stuff),
            "per_category": per_category,
        }

    def reset(self) -> None:
        """Forget every image added."""
        self.stats.clear()
