"""Joint model outputs -> metrics and COCO results per head (drawings, report: ``report.py``).

Every head is scored with its single-task metric: COCOeval bbox, mIoU at the original
resolution, COCOeval keypoints on ground-truth boxes and on detected ones, CMC / mAP of the
ground-truth boxes' embeddings, COCOeval segm of the detections' masks (pasted back and
RLE-encoded by the instance task's functions). A mixin of
:class:`~vision_tasks.tasks.multitask.MultiTaskTask` (kept apart so each file reads at once); it
uses the model's heads, hyper-parameters and maps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vision_tasks import ops
from vision_tasks.evaluation.coco_eval import results_from_predictions
from vision_tasks.tasks.base import letterbox_numbers, letterbox_sample
from vision_tasks.tasks.instance.evaluation import encode_masks
from vision_tasks.tasks.instance.masks import mask_logits, paste_masks
from vision_tasks.tasks.instance.model import postprocess_with_points
from vision_tasks.tasks.keypoints import decode_heatmaps, instance_scores
from vision_tasks.tasks.segment import class_map, label_map_results

# The number each head is judged by. Their mean picks the best checkpoint, so that "best" means
# best over the heads (as Ultralytics' pose models pick theirs on box + pose fitness), not the
# epoch where one head peaked while another fell.
SCORED_METRIC = {
    "detect": "detect/AP",
    "segment": "segment/miou",
    "keypoints": "keypoints_gt/AP",
    "reid": "reid/mAP",
    "classify": "classify/top1",
    "instance": "instance/mask_AP",
}


class HeadMetrics(nn.Module):
    """Several heads' metrics as one: ``compute()`` -> ``{"<head>/<name>": value}``, plus
    ``heads_mean``: the mean of the ``scored`` values that exist (COCO's -1 for "no ground
    truth" and NaN are left out)."""

    def __init__(self, metrics: dict[str, nn.Module], scored: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(metrics)
        self.scored = list(scored)

    def __getitem__(self, name: str) -> nn.Module:
        return self.heads[name]

    def __contains__(self, name: str) -> bool:
        return name in self.heads

    def compute(self) -> dict[str, Any]:
        """Every head's values, prefixed with the head's name."""
        values = {
            f"{head}/{key}": value
            for head, metric in self.heads.items()
            for key, value in metric.compute().items()
        }
        scores = [float(values[name]) for name in self.scored if name in values]
        scores = [v for v in scores if math.isfinite(v) and v >= 0]
        values["heads_mean"] = sum(scores) / len(scores) if scores else float("nan")
        return values

    def reset(self) -> None:
        """Reset every head's metric."""
        for metric in self.heads.values():
            metric.reset()


class MultiTaskOutputs:
    """Metrics, decoding, drawing, reporting and prediction files of the joint model."""

    # ---- metrics ------------------------------------------------------------------------------
    def _attach_indexes(self, metric: Any, split: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        for name in ("detect", "instance", "keypoints_gt", "keypoints_detected"):
            if name in metric:
                metric[name].index = datamodule.index(split)
        if "keypoints_detected" in metric:
            metric["keypoints_detected"].every_image = True  # a missed person is still missed

    def on_validation_epoch_start(self) -> None:
        """Point the COCO metrics at the validation ground truth."""
        self._attach_indexes(self.val_metric, "val")

    def on_test_epoch_start(self) -> None:
        """Point the COCO metrics at the test ground truth."""
        super().on_test_epoch_start()
        self._attach_indexes(self.test_metric, "test")

    def update_metric(self, metric: Any, outputs: dict[str, Any], batch: dict[str, Any]) -> None:
        """Feed every head's metric with this batch."""
        if "detect" in metric:
            predictions = self.decode_detections(outputs, batch)
            index = metric["detect"].index
            if index is not None:  # a category the evaluation file lacks cannot be scored
                for p in predictions:
                    keep = torch.isin(p["category_id"], torch.tensor(index.category_ids))
                    p.update(
                        bbox=p["bbox"][keep],
                        score=p["score"][keep],
                        category_id=p["category_id"][keep],
                    )
                    if "segmentation" in p:
                        p["segmentation"] = [s for s, k in zip(p["segmentation"], keep) if k]
            metric["detect"].update(predictions, batch["image_id"])
            if "instance" in metric:
                metric["instance"].update(predictions, batch["image_id"])
        if "segment" in metric:
            for i in range(len(batch["image_id"])):
                if not bool(batch["has_mask"][i]):
                    continue
                label = self._original_label_map(outputs["segment"][i], batch, i)
                height, width = label.shape
                target = batch["mask_original"][i, :height, :width].to(label.device)
                metric["segment"].update(label[None], target[None])
        if "classify" in metric and (batch["image_label"] >= 0).any():
            rows = batch["image_label"] >= 0
            metric["classify"].update(outputs["classify"][rows], batch["image_label"][rows])
        if "keypoints_gt" in metric and outputs.get("keypoints") is not None:
            self._update_keypoints_gt(metric["keypoints_gt"], outputs, batch)
        if "keypoints_detected" in metric:
            self._update_keypoints_detected(metric["keypoints_detected"], outputs, batch)
        if "reid" in metric and outputs.get("reid") is not None:
            truth, reid = outputs["truth"], outputs["reid"]
            rows = truth["reid_rows"]
            metric["reid"].update(
                reid["embedding"],
                truth["identity"],
                batch["camera"].to(reid["image_index"].device)[reid["image_index"]],
                torch.cat([q[r] for q, r in zip(batch["is_query"], rows)]),
                torch.cat([a[r] for a, r in zip(batch["annotation_id"], rows)]),
            )

    def _image_keypoints(self, predicted: dict[str, Tensor], batch: dict[str, Any]) -> Tensor:
        """(R, K, 3) x, y in original COCO pixels and keypoint score, from RoI heatmaps."""
        points, scores = decode_heatmaps(
            predicted["heatmaps"].detach().float(), self.hparams.heatmap_sigma
        )
        network = ops.from_region_pixels(points, predicted["regions"].float(), self.crop_size)
        numbers = [letterbox_numbers(batch, int(i)) for i in predicted["image_index"].cpu()]
        scale = torch.tensor([n[0] for n in numbers], dtype=torch.float64)
        pad = torch.tensor([n[1:3] for n in numbers], dtype=torch.float64)
        original = (network.double().cpu() - pad[:, None]) / scale[:, None, None]
        return torch.cat([original, scores.double().cpu()[..., None]], dim=-1)

    def _update_keypoints_gt(self, metric: Any, outputs: dict, batch: dict[str, Any]) -> None:
        rows = outputs["truth"]["keypoint_rows"]
        predicted = self._image_keypoints(outputs["keypoints"], batch)
        truth = torch.cat([k[r] for k, r in zip(batch["keypoints_original"], rows)]).double()
        boxes = torch.cat([b[r] for b, r in zip(batch["boxes_original"], rows)])
        sizes = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1)
        ids = torch.cat([a[r] for a, r in zip(batch["annotation_id"], rows)])
        image_ids = batch["image_id"][outputs["keypoints"]["image_index"].cpu()]
        scores = instance_scores(predicted[..., 2], torch.ones(len(predicted)))
        metric.update(ids, image_ids, predicted, scores, truth, sizes)

    def _update_keypoints_detected(self, metric: Any, outputs: dict, batch: dict) -> None:
        found = outputs.get("on_detections", {})
        if found.get("keypoints") is None:
            # Nobody detected is still a result (every person of these images is missed), and an
            # empty update keeps torchmetrics from warning that compute() came before update().
            points = torch.zeros(0, len(metric.sigmas), 3, dtype=torch.float64)
            ids = torch.zeros(0, dtype=torch.long)
            metric.update(ids, ids, points, ids.double(), points, ids.double())
            return
        predicted = self._image_keypoints(found["keypoints"], batch)
        box_scores = torch.cat(found["keypoint_scores"]).double().cpu()
        index = found["keypoints"]["image_index"].cpu()
        image_ids = batch["image_id"][index]
        # Unique per (image, detection): the metric drops repeats a DDP sampler pads with.
        rank = torch.cat([torch.arange(len(s)) for s in found["keypoint_scores"]])
        sample_ids = image_ids.long() * (self.hparams.max_instances + 1) + rank
        regions = found["keypoints"]["regions"].detach().double().cpu()
        scale = torch.tensor(
            [letterbox_numbers(batch, int(i))[0] for i in index], dtype=torch.float64
        )
        sizes = (regions[:, 2:] - regions[:, :2]).amax(dim=1) / scale
        truth = torch.zeros_like(predicted)  # no ground truth is paired with a detection
        metric.update(
            sample_ids,
            image_ids,
            predicted,
            instance_scores(predicted[..., 2], box_scores),
            truth,
            sizes,
        )

    def _original_label_map(self, logits: Tensor, batch: dict[str, Any], i: int) -> Tensor:
        scale, pad_x, pad_y, size = letterbox_numbers(batch, i)
        return class_map(ops.unletterbox_map(logits.detach(), scale, pad_x, pad_y, size), 0)

    # ---- decoding -------------------------------------------------------------------------------
    def decode_detections(self, outputs: dict[str, Any], batch: dict) -> list[dict[str, Any]]:
        """Per image: ``bbox`` (K, 4) COCO xywh in original pixels, ``score``, ``category_id``;
        with the instance head also ``segmentation``, one COCO RLE per detection (the
        detection's mask pasted into the original image, see :meth:`paste_instance_masks`)."""
        hp = self.hparams
        if "instance" in self.heads:  # the same detections, with the point each came from
            detections = postprocess_with_points(
                outputs["cls_logits"],
                outputs["box_regression"],
                outputs["points"],
                outputs["strides"],
                score_threshold=hp.score_threshold,
                iou_threshold=hp.nms_iou,
                max_detections=hp.max_detections,
            )
        else:
            detections = self.detect(outputs, hp.score_threshold, hp.max_detections)
        ids = torch.tensor([c["id"] for c in self.categories])
        predictions = []
        for i, (boxes, scores, labels, *point) in enumerate(detections):
            prediction = {
                "image_id": int(batch["image_id"][i]),
                "bbox": self._to_original_boxes(boxes, batch, i),
                "score": scores.float().cpu(),
                "category_id": ids[labels.cpu()],
            }
            if point:
                masks = self.paste_instance_masks(outputs, batch, i, point[0], prediction["bbox"])
                prediction["segmentation"] = encode_masks(masks.cpu())
            predictions.append(prediction)
        return predictions

    def paste_instance_masks(
        self, outputs: dict[str, Any], batch: dict, i: int, point: Tensor, bbox: Tensor
    ) -> Tensor:
        """(K, H0, W0) bool masks of image ``i``'s detections in its original pixels.

        Args:
            outputs: the forward's ``mask_coeffs`` (B, N, k) and ``protos`` (B, k, S/4, S/4).
            batch: the letterbox numbers (``scale``, ``pad``, ``orig_size``).
            i: the image's position in the batch.
            point: (K,) the grid point each detection came from.
            bbox: (K, 4) the detections' COCO xywh boxes in original pixels (the crops).
        """
        logits = mask_logits(outputs["mask_coeffs"][i, point], outputs["protos"][i])
        scale, pad_x, pad_y, size = letterbox_numbers(batch, i)
        boxes = ops.xywh_to_xyxy(bbox)
        return paste_masks(logits, boxes, scale, (pad_x, pad_y), size, self.mask_stride)

    def _to_original_boxes(self, boxes: Tensor, batch: dict[str, Any], i: int) -> Tensor:
        scale, pad_x, pad_y, size = letterbox_numbers(batch, i)
        return ops.xyxy_to_xywh(ops.boxes_to_original(boxes, scale, (pad_x, pad_y), size)).float()

    def decode(self, outputs: dict[str, Any], batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Per image, every head's predictions in COCO results form.

        Keys: ``image_id``; ``detect`` (``bbox`` / ``score`` / ``category_id`` tensors);
        ``segment`` (RLE records) and ``label_map`` (H0, W0) uint8; ``keypoints`` (records,
        detected persons); ``reid`` (records of the confident detections with their
        ``embedding`` and ``identity``: the most likely training identity, -1 without a
        classifier); ``classify`` (one record); ``instance`` (the detections' records, each
        with an RLE ``segmentation``).
        """
        count = len(batch["image_id"])
        results: list[dict[str, Any]] = [
            {"image_id": int(batch["image_id"][i])} for i in range(count)
        ]
        if "detect" in self.heads:
            for result, det in zip(results, self.decode_detections(outputs, batch)):
                result["detect"] = {k: det[k] for k in ("bbox", "score", "category_id")}
                if "segmentation" in det:
                    records = results_from_predictions([det])
                    for record, rle in zip(records, det["segmentation"], strict=True):
                        record["segmentation"] = rle
                    result["instance"] = records
        if "segment" in self.heads:
            for i, result in enumerate(results):
                label = self._original_label_map(outputs["segment"][i], batch, i)
                result["label_map"] = label.to(torch.uint8).cpu().numpy()
                result["segment"] = label_map_results(
                    result["label_map"], result["image_id"], self.categories
                )
        if "classify" in self.heads:
            probs = outputs["classify"].softmax(dim=1)
            for result, p in zip(results, probs):
                k = int(p.argmax())
                result["classify"] = [
                    {
                        "image_id": result["image_id"],
                        "score": float(p[k]),
                        "category_id": self.categories[k]["id"],
                    }
                ]
        self._decode_instances(outputs.get("on_detections") or {}, batch, results)
        return results

    def _decode_instances(self, found: dict[str, Any], batch: dict, results: list[dict]) -> None:
        if "keypoints" in self.heads:
            for result in results:
                result["keypoints"] = []
            if found.get("keypoints") is not None:
                points = self._image_keypoints(found["keypoints"], batch)
                box_scores = torch.cat(found["keypoint_scores"]).double().cpu()
                scores = instance_scores(points[..., 2], box_scores)
                for i, p, s in zip(found["keypoints"]["image_index"].tolist(), points, scores):
                    results[i]["keypoints"].append(
                        {
                            "image_id": results[i]["image_id"],
                            "category_id": self.keypoint_category["id"],
                            "keypoints": [round(v, 3) for v in p.flatten().tolist()],
                            "score": float(s),
                        }
                    )
        if "reid" not in self.heads:
            return
        ids = [c["id"] for c in self.categories]
        reid = found.get("reid")
        embeddings = reid["embedding"].detach().float().cpu() if reid is not None else None
        logits = reid["logits"] if reid is not None else None
        row = 0
        for i, (boxes, scores, labels) in enumerate(found.get("detections", [])):
            records = []
            xywh = self._to_original_boxes(boxes, batch, i)
            for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
                identity = int(logits[row].argmax()) if logits is not None else -1
                records.append(
                    {
                        "image_id": results[i]["image_id"],
                        "category_id": ids[label],
                        "bbox": [round(v, 3) for v in box],
                        "score": round(score, 5),
                        "embedding": embeddings[row].tolist(),
                        "identity": identity,
                    }
                )
                row += 1
            results[i]["reid"] = records
        for result in results:
            result.setdefault("reid", [])

    def head_results(self, predictions: list[dict[str, Any]]) -> dict[str, list[dict]]:
        """Predictions -> one list of COCO results records per head (``results_<head>.json``)."""
        out: dict[str, list[dict]] = {}
        for head in self.heads:
            if head == "detect":
                out[head] = results_from_predictions(
                    [{"image_id": p["image_id"], **p["detect"]} for p in predictions]
                )
            else:
                out[head] = [record for p in predictions for record in p.get(head, [])]
        return out

    def to_results(self, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``results.json``: the detections (COCO bbox records), or the first head's records."""
        by_head = self.head_results(predictions)
        return by_head.get("detect", by_head[self.heads[0]])

    # ---- tools/predict.py -----------------------------------------------------------------------
    def predict_sample(self, image: np.ndarray) -> dict[str, Any]:
        """Letterbox and normalise one RGB image."""
        return letterbox_sample(image, self.hparams.image_size)
