"""Joint model predictions -> drawings (every head on one image) and the one report.

A mixin of :class:`~vision_tasks.tasks.multitask.MultiTaskTask` (kept apart so each file reads
at once); it uses the model's heads, categories and ``decode`` (``outputs.py``).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

from vision_tasks import ops
from vision_tasks.evaluation.report import Figure, Report
from vision_tasks.tasks.base import letterbox_numbers, samples_figure
from vision_tasks.tasks.instance.evaluation import decode_rle
from vision_tasks.tasks.segment import PALETTE, overlay

HEADLINE = {
    "detect": ("AP", "AP50"),
    "segment": ("miou",),
    "keypoints_gt": ("AP",),
    "keypoints_detected": ("AP",),
    "reid": ("rank1", "mAP"),
    "classify": ("top1",),
    "instance": ("mask_AP", "mask_AP50"),
}


class MultiTaskReport:
    """Drawings of the joint model's predictions and its report."""

    # ---- drawing --------------------------------------------------------------------------------
    def draw_prediction(self, image: np.ndarray, prediction: dict[str, Any]) -> np.ndarray:
        """(H, W, 3) uint8 RGB with mask overlay, boxes (name, score, identity) and skeletons."""
        if "label_map" in prediction:
            image = overlay(image, prediction["label_map"])
        drawn = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        name_of = {c["id"]: c["name"] for c in self.categories}
        masked = [
            r for r in prediction.get("instance", []) if r["score"] >= self.draw_score_threshold
        ]
        if masked:
            colour_of = {
                c["id"]: tuple(int(v) for v in PALETTE[k + 1])
                for k, c in enumerate(self.categories)
            }
            masks = decode_rle([r["segmentation"] for r in masked], image.shape[:2])
            colours = [colour_of[r["category_id"]] for r in masked]
            drawn = draw_segmentation_masks(drawn, masks, alpha=0.5, colors=colours)
        instances = prediction.get("reid") or []
        if not instances and "detect" in prediction:
            det = prediction["detect"]
            instances = [
                {"bbox": b, "score": s, "category_id": c, "identity": -1}
                for b, s, c in zip(
                    det["bbox"].tolist(), det["score"].tolist(), det["category_id"].tolist()
                )
            ]
        shown = [r for r in instances if r["score"] >= self.draw_score_threshold]
        if shown:
            boxes = ops.xywh_to_xyxy(torch.tensor([r["bbox"] for r in shown]))
            labels = [
                f"{name_of[r['category_id']]} {r['score']:.2f}"
                + (f" id{r['identity']}" if r["identity"] >= 0 else "")
                for r in shown
            ]
            drawn = draw_bounding_boxes(drawn, boxes, labels, colors="red", width=1)
        for record in prediction.get("keypoints") or []:
            if record["score"] < self.draw_score_threshold:
                continue
            points = torch.tensor(record["keypoints"]).reshape(1, -1, 3)
            drawn = draw_keypoints(
                drawn,
                points[..., :2],
                self.skeleton,
                colors="yellow",
                radius=1,
                width=1,
                visibility=points[..., 2] > 0.2,
            )
        return drawn.permute(1, 2, 0).numpy()

    def draw_samples(self, outputs: dict[str, Any], batch: dict[str, Any]) -> list:
        """Original-size images with every head's predictions drawn (the report grid)."""
        predictions = self.decode(outputs, batch)
        images = ops.denormalize(batch["image"].detach().cpu()).permute(0, 2, 3, 1).numpy()
        drawn = []
        for i, prediction in enumerate(predictions):
            scale, pad_x, pad_y, (height, width) = letterbox_numbers(batch, i)
            new_w, new_h = ops.letterbox_size(height, width, scale)
            original = cv2.resize(
                np.ascontiguousarray(images[i, pad_y : pad_y + new_h, pad_x : pad_x + new_w]),
                (width, height),
            )
            drawn.append(
                (
                    self.draw_prediction(original, prediction),
                    f"image {prediction['image_id']}",
                    None,
                )
            )
        return drawn

    # ---- report ---------------------------------------------------------------------------------
    def build_report(self, values: dict[str, Any], samples: list) -> Report:
        """Every head's numbers in one report: headline, all scalars, per-head tables, figures."""
        if values.get("keypoints_detected/instances") == 0 and "keypoints_gt/AP" in values:
            values = {**values, "keypoints_detected/AP": 0.0}  # no person detected: nothing found
        headline = {
            f"{head}/{key}": float(values[f"{head}/{key}"])
            for head, keys in HEADLINE.items()
            for key in keys
            if f"{head}/{key}" in values
        }
        metrics = {
            k: float(v)
            for k, v in values.items()
            if isinstance(v, (int, float)) or (isinstance(v, Tensor) and v.numel() == 1)
        }
        tables, figures = {}, []
        if "detect/result" in values:
            result = values["detect/result"]
            tables["detect_per_category_AP"] = result.per_category
            figures.append(
                Figure(
                    "detect_pr_curves",
                    "curves",
                    "Detection: precision-recall at IoU 0.5",
                    {"series": result.pr_curves, "xlabel": "recall", "ylabel": "precision"},
                )
            )
        if "instance/segm" in values:
            tables["instance_per_category_mask_AP"] = values["instance/segm"].per_category
        if "segment/iou" in values:
            names = ["background", *self.class_names]
            tables["segment_per_class"] = [
                {"class": n, "iou": float(i), "accuracy": float(a)}
                for n, i, a in zip(
                    names, values["segment/iou"].tolist(), values["segment/accuracy"].tolist()
                )
            ]
            figures.append(
                Figure(
                    "segment_confusion",
                    "confusion_matrix",
                    "Segmentation: pixel confusion matrix",
                    {"matrix": values["segment/confusion"].cpu().numpy(), "names": names},
                )
            )
        if "keypoints_gt/pck_per_keypoint" in values:
            tables["keypoints_per_keypoint_gt_boxes"] = [
                {"keypoint": n, "PCK": float(p)}
                for n, p in zip(
                    self.keypoint_category["keypoints"],
                    values["keypoints_gt/pck_per_keypoint"].tolist(),
                )
            ]
        if "reid/cmc" in values:
            cmc = [float(v) for v in values["reid/cmc"]]
            figures.append(
                Figure(
                    "reid_cmc",
                    "curves",
                    "Re-ID: CMC (ground-truth boxes)",
                    {
                        "series": [{"label": "CMC", "x": list(range(1, len(cmc) + 1)), "y": cmc}],
                        "xlabel": "rank",
                        "ylabel": "matching rate",
                    },
                )
            )
        if samples:
            figures.append(samples_figure(samples, "Joint predictions", columns=2))
        meta = {
            "heads": ", ".join(self.heads),
            "loss_weighting": self.hparams.loss_weighting,
            "keypoints_gt": "keypoint AP with the ground-truth person boxes",
            "keypoints_detected": "keypoint AP with the detector's boxes",
        }
        return Report("multitask", headline, metrics, tables, figures, meta)
