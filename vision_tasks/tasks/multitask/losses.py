"""Joint model losses: each head's single-task loss over the samples / instances labelled for it,
and their weighting (fixed, or learned homoscedastic uncertainty, Kendall et al. 2018).

A mixin of :class:`~vision_tasks.tasks.multitask.MultiTaskTask` (kept apart so each file reads
at once); it uses the model's heads, hyper-parameters and loss weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vision_tasks import ops
from vision_tasks.data.coco import CocoDataError
from vision_tasks.tasks.classify import classification_loss
from vision_tasks.tasks.detect import Assignment, assign_points, detection_loss, pad_targets
from vision_tasks.tasks.instance.masks import prototype_grid_masks
from vision_tasks.tasks.instance.model import mask_loss, pad_masks
from vision_tasks.tasks.keypoints import encode_heatmaps, heatmap_loss
from vision_tasks.tasks.reid import batch_hard_triplet_loss, identity_loss
from vision_tasks.tasks.segment import segmentation_loss


def weighted_total(
    losses: dict[str, Tensor], weights: dict[str, float], log_vars: nn.ParameterDict | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sum of the heads' losses: fixed ``weights``, or ``exp(-s) L + s`` with learned ``log_vars``.

    Returns the total and, per head, the weight it got (for logging).
    """
    total, used = None, {}
    for head, loss in losses.items():
        if log_vars is None:
            weight = loss.new_tensor(weights[head])
            term = weight * loss
        else:
            weight = torch.exp(-log_vars[head])
            term = weight * loss + log_vars[head]
        total = term if total is None else total + term
        used[head] = weight.detach()
    return total, used


class MultiTaskLosses:
    """Per-head masked losses and their weighted total (see the module docstring)."""

    def head_losses(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Each head's loss over the samples / instances labelled for it; absent when none is."""
        hp, losses = self.hparams, {}
        detect_assignment: tuple[list[int], Assignment] | None = None
        if "detect" in self.heads:
            rows = batch["class_mask"].any(dim=1)
            if rows.any():
                pick = rows.nonzero().squeeze(1).tolist()
                targets = pad_targets(
                    [batch["boxes_xyxy"][i] for i in pick],
                    [batch["label"][i] for i in pick],
                    [batch["crowd"][i] for i in pick],
                )
                head = (outputs["cls_logits"][rows], outputs["box_regression"][rows])
                assignment = assign_points(*head, outputs["points"], outputs["strides"], targets)
                detect_assignment = (pick, assignment)
                losses["detect"] = detection_loss(
                    *head,
                    outputs["points"],
                    outputs["strides"],
                    targets,
                    class_mask=batch["class_mask"][rows],
                    assignment=assignment,
                )["loss"]
        if "segment" in self.heads and batch["has_mask"].any():
            rows = batch["has_mask"]
            losses["segment"] = segmentation_loss(
                outputs["segment"][rows], batch["mask"][rows], None, hp.dice_weight
            )["loss"]
        if "classify" in self.heads and (batch["image_label"] >= 0).any():
            rows = batch["image_label"] >= 0
            losses["classify"] = classification_loss(
                outputs["classify"][rows], batch["image_label"][rows], hp.label_smoothing
            )
        if "instance" in self.heads:
            instance = self.instance_loss(outputs, batch, detect_assignment)
            if instance is not None:
                losses["instance"] = instance
        if outputs.get("keypoints") is not None:
            losses["keypoints"] = self.keypoint_loss(outputs["keypoints"], outputs["truth"])
        if outputs.get("reid") is not None:
            losses["reid"] = self.reid_loss(outputs["reid"], outputs["truth"])
        return losses

    def instance_loss(
        self,
        outputs: dict[str, Any],
        batch: dict[str, Any],
        detect_assignment: tuple[list[int], Assignment] | None = None,
    ) -> Tensor | None:
        """The instance task's mask BCE and Dice on detection's positives, over the images
        with an object mask (None without one): ``mask_loss_weight * bce + mask_dice_weight *
        dice``. ``detect_assignment`` (the detect loss's rows and assignment) is reused when it
        covers those images, so both losses train the same positives from one assigner run."""
        if "instance_masks" not in batch:
            raise CocoDataError(
                "the instance head's loss needs one mask per object: build the data with "
                "instance_masks=True (the command line does when --model.heads lists instance)"
            )
        pick = [i for i, flags in enumerate(batch["instance_has_mask"]) if flags.any()]
        if not pick:
            return None
        hp = self.hparams
        targets = pad_targets(
            [batch["boxes_xyxy"][i] for i in pick],
            [batch["label"][i] for i in pick],
            [batch["crowd"][i] for i in pick],
        )
        detect_rows, assignment = detect_assignment or ([], None)
        if assignment is not None and set(pick) <= set(detect_rows):
            at = torch.tensor(
                [detect_rows.index(i) for i in pick], device=assignment.foreground.device
            )
            foreground, objects = assignment.foreground[at], assignment.object_index[at]
        else:
            head = (outputs["cls_logits"][pick], outputs["box_regression"][pick])
            foreground, _, _, objects = assign_points(
                *head, outputs["points"], outputs["strides"], targets
            )
        protos = outputs["protos"][pick]
        h, w = protos.shape[-2:]
        masks, has_mask = pad_masks(
            [batch["instance_masks"][i] for i in pick],
            [batch["instance_has_mask"][i] for i in pick],
            targets["boxes"].shape[1],
        )
        grid = prototype_grid_masks(masks.flatten(0, 1), h, w, self.mask_stride)
        mask = mask_loss(
            outputs["mask_coeffs"][pick],
            protos,
            foreground,
            objects,
            grid.view(*masks.shape[:2], h, w),
            targets["boxes"] / self.mask_stride,
            has_mask,
        )
        return hp.mask_loss_weight * mask["bce"] + hp.mask_dice_weight * mask["dice"]

    def keypoint_loss(self, predicted: dict[str, Tensor], truth: dict[str, Any]) -> Tensor:
        """Single-task heatmap MSE, targets drawn in each box's crop pixels."""
        keypoints = torch.cat(truth["keypoints"])
        crop = ops.to_region_pixels(keypoints[..., :2], predicted["regions"], self.crop_size)
        heatmaps = predicted["heatmaps"]
        targets, weights = encode_heatmaps(
            torch.cat([crop, keypoints[..., 2:]], dim=-1),
            heatmaps.shape[-2:],
            self.hparams.heatmap_sigma,
        )
        return heatmap_loss(heatmaps, targets, weights)

    def reid_loss(self, predicted: dict[str, Any], truth: dict[str, Any]) -> Tensor:
        """Single-task batch-hard triplet + identity cross-entropy."""
        hp = self.hparams
        loss = batch_hard_triplet_loss(predicted["features"], truth["identity"], hp.triplet_margin)
        if predicted["logits"] is not None:
            loss = loss + hp.id_loss_weight * identity_loss(
                predicted["logits"], truth["identity_label"], hp.label_smoothing
            )
        return loss

    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Weighted sum of the present heads' losses (``loss``), each loss and its weight."""
        losses = self.head_losses(outputs, batch)
        if not losses:  # no label of any configured kind in this batch: nothing to learn
            zero = outputs["features"]["c5"].sum() * 0.0
            return {"loss": zero}
        total, weights = weighted_total(losses, self.loss_weights, self.log_vars)
        logged = {f"loss_{h}": v.detach() for h, v in losses.items()}
        logged |= {f"weight_{h}": w for h, w in weights.items()}
        return {"loss": total, **logged}
