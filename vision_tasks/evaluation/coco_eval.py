"""COCO evaluation (bbox / segm / keypoints) with pycocotools' COCOeval: the reference numbers.

The results go through ``COCO.loadRes`` and ``COCOeval`` unchanged, so the 12 (or 10) stats are
exactly what ``pycocotools`` prints for the same files; this module only names them, adds the
per-category AP table and precision-recall curves that COCOeval computes but does not show.

``backend="faster"`` runs the same evaluation through faster-coco-eval's ``COCOeval_faster``
(per-image matching and accumulation in C++): the results are loaded by the same pycocotools
``loadRes`` and the stats agree with pycocotools' to 1e-12 (tests/test_coco_eval.py), several
times faster on large validation sets (benchmarks/coco_eval_backends.py, docs/evaluation.md).
Either backend evaluates a copy of the ground truth's annotations, because COCOeval writes into
them (``ignore`` flags; segm polygons replaced by RLE with bytes, which JSON cannot hold).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from vision_tasks.data.coco import CocoDataError, CocoIndex, load_results

Backend = Literal["pycocotools", "faster"]
BACKENDS = ("pycocotools", "faster")
BOX_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KEYPOINT_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# COCO's per-keypoint OKS sigmas for the 17 person keypoints (pycocotools' default).
COCO_PERSON_SIGMAS = (
    np.array(
        [
            0.26,
            0.25,
            0.25,
            0.35,
            0.35,
            0.79,
            0.79,
            0.72,
            0.72,
            0.62,
            0.62,
            1.07,
            1.07,
            0.87,
            0.87,
            0.89,
            0.89,
        ]
    )
    / 10.0
)


@dataclass
class CocoEvalResult:
    """Named COCOeval stats plus what a report shows beside them."""

    stats: dict[str, float]
    per_category: list[dict[str, Any]] = field(default_factory=list)
    pr_curves: list[dict[str, Any]] = field(default_factory=list)


def coco_evaluate(
    index: CocoIndex,
    results: list[dict[str, Any]],
    iou_type: str = "bbox",
    image_ids: list[int] | None = None,
    keypoint_sigmas: np.ndarray | None = None,
    category_ids: list[int] | None = None,
    backend: Backend = "pycocotools",
) -> CocoEvalResult:
    """Run COCOeval on ``results`` (COCO results form) against the index's ground truth.

    Args:
        index: ground truth (its ``coco`` object, after validation); left unchanged.
        results: e.g. ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` each;
            ``segm`` needs ``"segmentation"`` as compressed RLE (``pycocotools.mask.encode``).
        iou_type: ``bbox``, ``segm`` or ``keypoints``.
        image_ids: evaluate on these images only (default: every image of the index).
        keypoint_sigmas: (K,) OKS sigmas for ``keypoints`` (default: COCO's person sigmas).
        category_ids: evaluate these categories only (default: all); ``keypoints`` needs the
            ones that define keypoints (COCOeval reads ``num_keypoints`` of every ground truth).
        backend: ``pycocotools`` (the reference) or ``faster`` (faster-coco-eval, same stats).

    Raises:
        CocoDataError: a result that COCOeval cannot read (one line naming it and its field).
    """
    coco_class, eval_class = _backend(backend)
    if iou_type == "segm":
        _check_segm_results(index, results)
    detections = load_results(index, results)
    gt = _ground_truth_copy(index.coco, coco_class)
    if coco_class is not COCO:
        detections = coco_class(detections.dataset)
    evaluator = eval_class(gt, detections, iou_type)
    evaluator.params.imgIds = sorted(image_ids if image_ids is not None else index.image_ids)
    # Explicit for both: faster-coco-eval defaults keypoints to annotated categories only.
    evaluator.params.catIds = sorted(category_ids if category_ids is not None else gt.getCatIds())
    if iou_type == "keypoints" and keypoint_sigmas is not None:
        evaluator.params.kpt_oks_sigmas = np.asarray(keypoint_sigmas, dtype=np.float64)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    names = KEYPOINT_STATS if iou_type == "keypoints" else BOX_STATS
    stats = {name: float(value) for name, value in zip(names, evaluator.stats)}
    return CocoEvalResult(
        stats, _per_category(evaluator, index.coco), _pr_curves(evaluator, index.coco)
    )


def check_backend(backend: str) -> None:
    """Raise now for an unknown backend name or a missing faster-coco-eval (metrics call it when
    built, so a run fails at start rather than after its first validation epoch)."""
    _backend(backend)


def _backend(backend: str) -> tuple[type, type]:
    """The (COCO, COCOeval) classes of ``backend``."""
    if backend == "pycocotools":
        return COCO, COCOeval
    if backend == "faster":
        try:
            from faster_coco_eval import COCO as FasterCOCO
            from faster_coco_eval import COCOeval_faster
        except ImportError as error:
            raise ImportError(
                "coco_evaluate backend 'faster' needs faster-coco-eval: "
                "pip install 'faster-coco-eval>=1.8'"
            ) from error
        return FasterCOCO, COCOeval_faster
    raise ValueError(f"coco_evaluate backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def _ground_truth_copy(coco: COCO, coco_class: type) -> Any:
    """A ``coco_class`` index over copies of the annotation dicts, the only part COCOeval edits."""
    dataset = dict(coco.dataset)
    dataset["annotations"] = [dict(a) for a in coco.dataset["annotations"]]
    gt = coco_class()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' createIndex prints
        gt.createIndex()
    return gt


def _check_segm_results(index: CocoIndex, results: list[dict[str, Any]]) -> None:
    """One line for the first result whose ``segmentation`` is not its image's compressed RLE."""
    bad = []
    for i, result in enumerate(results):
        problem = _segm_problem(index, result)
        if problem:
            bad.append((i, problem))
    if bad:
        i, problem = bad[0]
        more = f" (and {len(bad) - 1} more results like it)" if len(bad) > 1 else ""
        raise CocoDataError(
            f"<results>: result #{i}: field 'segmentation': {problem}; segm expects compressed "
            f"RLE {{'size': [height, width], 'counts': str}} from pycocotools.mask.encode{more}"
        )


def _segm_problem(index: CocoIndex, result: Any) -> str:
    """Why ``result`` is no segm result COCOeval can read ('' if it is one)."""
    if not isinstance(result, dict):
        return ""  # load_results names it
    seg = result.get("segmentation")
    if seg is None:
        return "missing"
    if isinstance(seg, list):
        return "got a polygon list"
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        return f"got {type(seg).__name__} {_short(seg)}"
    if not isinstance(seg["counts"], (str, bytes)):
        return f"got uncompressed RLE (counts a {type(seg['counts']).__name__})"
    image_id = result.get("image_id")
    image = index.coco.imgs.get(image_id) if isinstance(image_id, int) else None
    if image is None:
        return ""  # load_results names an unknown image id
    expected = [image["height"], image["width"]]
    size = seg["size"]
    if not isinstance(size, (list, tuple)) or list(size) != expected:
        return f"size {_short(size)} differs from the image's [height, width] {expected}"
    return ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _per_category(evaluator: COCOeval, gt: COCO) -> list[dict[str, Any]]:
    """AP, AP50, AP75 per category (area all, maxDets last), -1 where it has no ground truth."""
    precision = evaluator.eval["precision"]  # (T iou, R recall, K cat, A area, M maxDets)
    iou_thresholds = list(evaluator.params.iouThrs)
    rows = []
    for k, cat_id in enumerate(evaluator.params.catIds):

        def ap(p: np.ndarray) -> float:
            valid = p[p > -1]
            return float(valid.mean()) if valid.size else -1.0

        rows.append(
            {
                "id": cat_id,
                "category": gt.cats[cat_id]["name"],
                "AP": ap(precision[:, :, k, 0, -1]),
                "AP50": ap(precision[_threshold(iou_thresholds, 0.5), :, k, 0, -1]),
                "AP75": ap(precision[_threshold(iou_thresholds, 0.75), :, k, 0, -1]),
                "instances": len(gt.getAnnIds(catIds=[cat_id], iscrowd=False)),
            }
        )
    return rows


def _pr_curves(evaluator: COCOeval, gt: COCO) -> list[dict[str, Any]]:
    """Precision vs recall at IoU 0.5 per category (area all, maxDets last)."""
    precision = evaluator.eval["precision"]
    recall = evaluator.params.recThrs
    t = _threshold(list(evaluator.params.iouThrs), 0.5)
    curves = []
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[t, :, k, 0, -1]
        if (p > -1).any():
            curves.append(
                {
                    "label": gt.cats[cat_id]["name"],
                    "x": recall.tolist(),
                    "y": np.clip(p, 0, None).tolist(),
                }
            )
    return curves


def _threshold(thresholds: list[float], value: float) -> int:
    return int(np.argmin(np.abs(np.asarray(thresholds) - value)))


def results_from_predictions(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-image predictions (``bbox`` (K, 4) xywh, ``score``, ``category_id``) -> COCO records."""
    records = []
    for prediction in predictions:
        image_id = int(prediction["image_id"])
        for box, score, category in zip(
            prediction["bbox"].tolist(),
            prediction["score"].tolist(),
            prediction["category_id"].tolist(),
        ):
            records.append(
                {
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": [round(v, 3) for v in box],
                    "score": round(score, 5),
                }
            )
    return records


class CocoBoxMetric(Metric):
    """Collects detections over an epoch (gathered across processes) and runs COCOeval bbox.

    ``backend`` picks the COCOeval implementation (see :func:`coco_evaluate`). Set ``index`` (the
    split's :class:`CocoIndex`) before ``compute``. ``compute`` returns the 12 stats as floats
    plus ``result`` (:class:`CocoEvalResult`), ``images`` and ``detections``.
    """

    full_state_update = False

    def __init__(self, backend: Backend = "pycocotools") -> None:
        super().__init__()
        check_backend(backend)
        self.backend = backend
        for name in ("image_ids", "det_image_ids", "det_boxes", "det_scores", "det_categories"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.index: CocoIndex | None = None

    def update(self, predictions: list[dict[str, Any]], image_ids: Tensor) -> None:
        """Add one batch: per-image predictions and the ids of every image evaluated."""
        self.image_ids.append(torch.as_tensor(image_ids).long().cpu())
        for p in predictions:
            count = len(p["score"])
            self.det_image_ids.append(torch.full((count,), int(p["image_id"]), dtype=torch.long))
            self.det_boxes.append(torch.as_tensor(p["bbox"]).float().reshape(-1, 4))
            self.det_scores.append(torch.as_tensor(p["score"]).float())
            self.det_categories.append(torch.as_tensor(p["category_id"]).long())

    def compute(self) -> dict[str, Any]:
        """COCOeval bbox over everything collected."""
        if self.index is None:
            raise RuntimeError("CocoBoxMetric.index must be set to the split's CocoIndex")
        # A list of batches here; one tensor after torchmetrics gathered it across processes.
        image_ids = sorted(set(_gathered(self.image_ids).tolist()))
        records = []
        scores = _gathered(self.det_scores)
        if len(scores):
            boxes = _gathered(self.det_boxes).reshape(-1, 4)
            predictions = [
                {
                    "image_id": 0,
                    "bbox": boxes,
                    "score": scores,
                    "category_id": _gathered(self.det_categories),
                }
            ]
            records = results_from_predictions(predictions)
            for record, image_id in zip(records, _gathered(self.det_image_ids).tolist()):
                record["image_id"] = image_id
            records = _unique_records(records)
        result = coco_evaluate(
            self.index, records, "bbox", image_ids=image_ids, backend=self.backend
        )
        return {
            **result.stats,
            "result": result,
            "images": len(image_ids),
            "detections": len(records),
        }


def _unique_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop exact repeats: a DistributedSampler pads a split by evaluating some images twice."""
    seen: set[tuple] = set()
    unique = []
    for record in records:
        key = (record["image_id"], record["category_id"], record["score"], *record["bbox"])
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


def _gathered(state: list[Tensor] | Tensor) -> Tensor:
    """A ``cat`` metric state as one tensor, whether still per batch or already synced."""
    if isinstance(state, Tensor):
        return state
    return dim_zero_cat(state) if state else torch.zeros(0)
