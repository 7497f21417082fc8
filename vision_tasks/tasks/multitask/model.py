"""Joint model: one backbone + neck forward feeding every configured head (losses: losses.py).

Backbone (c2..c5) -> PAN neck over c3..c5. Dense heads read the shared maps: detection
(``detect.DetectHead`` on the pyramid), segmentation (``segment.SegmentHead`` on the backbone
dict), image classification (``classify.ClassifyHead`` on c5), instance masks (the instance
task's prototype branch on p3 and c2, its coefficient branch on the pyramid: each detection's
mask is its coefficients times the prototypes, cropped to its box). Per-box heads (keypoints,
re-ID) read features cut from the same maps with ``torchvision.ops`` RoI-Align: ``roi_heads.py``.

Partial labels: each loss is taken over the samples / instances that carry its labels only
(see ``data.py``); a head with no labelled sample in a batch adds no term at all. Loss
weighting: fixed weights, or learned homoscedastic uncertainty (Kendall et al. 2018):
``sum_h exp(-s_h) L_h + s_h`` with one learned ``s_h = log sigma_h^2`` per head.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign

from vision_tasks.evaluation.coco_eval import CocoBoxMetric
from vision_tasks.evaluation.metrics import KeypointMetric, ReidMetric, SegmentationMetric
from vision_tasks.layers import ConvBNAct, HeatmapHead, PANNeck
from vision_tasks.tasks.base import BaseTask
from vision_tasks.tasks.classify import ClassifyHead, classification_metrics
from vision_tasks.tasks.detect import LEVELS, DetectHead, grid_points
from vision_tasks.tasks.instance.evaluation import CocoMaskMetric
from vision_tasks.tasks.instance.model import MASK_LEVEL, MaskCoefficientHead, PrototypeBranch
from vision_tasks.tasks.keypoints import crop_size, keypoint_sigmas
from vision_tasks.tasks.multitask.losses import MultiTaskLosses
from vision_tasks.tasks.multitask.outputs import SCORED_METRIC, HeadMetrics, MultiTaskOutputs
from vision_tasks.tasks.multitask.report import MultiTaskReport
from vision_tasks.tasks.multitask.roi_heads import PYRAMID, MultiTaskRoiHeads
from vision_tasks.tasks.reid import ReidHead
from vision_tasks.tasks.segment import IGNORE_INDEX, SegmentHead

HEADS = ("classify", "detect", "segment", "keypoints", "reid", "instance")


class MultiTaskTask(
    MultiTaskReport, MultiTaskOutputs, MultiTaskLosses, MultiTaskRoiHeads, BaseTask
):
    """Shared backbone + neck; any subset of classify / detect / segment / keypoints / reid /
    instance heads.

    ``best-*.ckpt`` is the epoch with the highest ``val/heads_mean``: the mean of the attached
    heads' detect AP, segment mIoU, keypoint AP (ground-truth boxes), re-ID mAP, classify top-1,
    instance mask AP.

    Args:
        categories: COCO category records (union of the training files); the keypoint category
            carries ``flip_pairs``. Linked from the data module.
        image_size: letterbox side (a multiple of 32).
        heads: heads to attach, any of ``classify``, ``detect``, ``segment``, ``keypoints``,
            ``reid``, ``instance``. Keypoint and re-ID heads at inference need ``detect`` for
            their boxes; ``instance`` always does (its masks are detect's boxes' masks), and
            its loss needs the data's ``instance_masks``.
        loss_weights: fixed weight per head (default 1 each); with ``uncertainty`` weighting
            they are unused.
        loss_weighting: ``fixed`` or ``uncertainty`` (learned, Kendall et al. 2018).
        neck_width: channels of the PAN neck (detection and re-ID features).
        decoder_channels: U-Net block widths of the segmentation head.
        dice_weight: Dice term of the segmentation loss.
        keypoint_crop_height: height of the virtual top-down crop the keypoint head sees
            (multiple of 32; width from ``keypoints.crop_size``).
        keypoint_head_channels: widths of the heatmap head's three decoder blocks.
        keypoint_margin: the box is enlarged by this fraction for the keypoint crop region.
        keypoint_rois: in training, regions per labelled person: its box and
            ``keypoint_rois - 1`` jittered versions of it (``ops.jitter_boxes``), so the
            keypoint head learns from more crops per image (it costs a fraction of the image's
            forward) and from boxes as loose as a detector's.
        keypoint_jitter: the jitter's size, a fraction of the box.
        keypoints_read_segment: with a segmentation head, the keypoint head also reads its
            decoder's stride-4 block (RoI-aligned beside c2): features trained to find the
            person's outline to the pixel, which the detection-shaped backbone levels lack.
        heatmap_sigma: Gaussian sigma of the heatmap targets, in cells.
        oks_sigmas: per-keypoint OKS sigmas (default: COCO's for 17 keypoints).
        num_prototypes: the instance head's prototype masks (its coefficients per point).
        prototype_channels: channels of its prototype branch (at stride 4).
        mask_loss_weight: weight of the instance mask BCE inside the instance loss.
        mask_dice_weight: weight of its Dice term (both as ``--task instance``'s).
        reid_roi_size: (h, w) of the RoI-aligned re-ID features.
        reid_channels: width of two 3x3 ConvBNAct on the RoI features before the re-ID head
            (JDE / FairMOT's embedding branch): capacity of the identity features' own, as the
            PAN is shaped by detection, which wants identities alike; 0: pool the PAN directly.
        embedding_dim: re-ID embedding width (0: the neck width, or ``reid_channels``).
        num_identities: identity classifier classes (0: none); the CLI links it from the
            identities of the training files.
        triplet_margin: margin of the batch-hard triplet loss.
        id_loss_weight: weight of the identity cross-entropy inside the re-ID loss.
        label_smoothing: label smoothing of the identity and image-class cross-entropies.
        score_threshold: detections kept for COCO evaluation.
        nms_iou: IoU of the class-aware NMS.
        max_detections: detections kept per image.
        coco_backend: COCOeval of the detection, keypoint and mask AP: ``pycocotools`` (the
            reference) or ``faster`` (faster-coco-eval, same stats; docs/evaluation.md).
        instance_score_threshold: detections this confident get keypoints and embeddings.
        max_instances: at most this many of them per image.
        (the rest: see :class:`BaseTask`)
    """

    task_name = "multitask"
    monitor_mode = "max"
    num_report_samples = 8
    draw_score_threshold = 0.3
    exportable = False  # tools/export.py: NMS and per-box heads on a data-dependent box count
    # {model argument: data module attribute}, linked by the CLI when it builds both.
    linked_from_data = {"num_identities": "num_train_identities"}

    def __init__(
        self,
        categories: list[dict[str, Any]] | None = None,
        image_size: int = 256,
        heads: list[str] = ("detect", "segment", "keypoints", "reid"),  # noqa: B006 - tuple
        loss_weights: dict[str, float] | None = None,
        loss_weighting: Literal["fixed", "uncertainty"] = "fixed",
        neck_width: int = 64,
        decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16),
        dice_weight: float = 0.5,
        keypoint_crop_height: int = 96,
        keypoint_head_channels: tuple[int, int, int] = (64, 32, 32),
        keypoint_margin: float = 0.25,
        keypoint_rois: int = 1,
        keypoint_jitter: float = 0.1,
        keypoints_read_segment: bool = True,
        heatmap_sigma: float = 2.0,
        oks_sigmas: list[float] | None = None,
        num_prototypes: int = 32,
        prototype_channels: int = 64,
        mask_loss_weight: float = 2.0,
        mask_dice_weight: float = 1.0,
        reid_roi_size: tuple[int, int] = (8, 6),
        reid_channels: int = 0,
        embedding_dim: int = 0,
        num_identities: int = 0,
        triplet_margin: float | None = 0.3,
        id_loss_weight: float = 1.0,
        label_smoothing: float = 0.1,
        score_threshold: float = 0.001,
        nms_iou: float = 0.65,
        max_detections: int = 100,
        coco_backend: Literal["pycocotools", "faster"] = "pycocotools",
        instance_score_threshold: float = 0.3,
        max_instances: int = 20,
        backbone: str = "resnet18",
        backbone_weights: str = "none",
        freeze_at: int = 0,
        lr: float = 2e-3,
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
        self.heads = list(heads)
        self._check_arguments(categories, image_size, loss_weights)
        if keypoint_rois < 1 or not 0 <= keypoint_jitter < 1:
            raise ValueError(
                f"need --model.keypoint_rois >= 1 and 0 <= --model.keypoint_jitter "
                f"< 1, got {keypoint_rois}, {keypoint_jitter}"
            )
        self.categories = categories
        self.class_names = [c["name"] for c in categories]
        self.loss_weights = {h: float((loss_weights or {}).get(h, 1.0)) for h in self.heads}
        self.log_vars = (
            nn.ParameterDict({h: nn.Parameter(torch.zeros(())) for h in self.heads})
            if loss_weighting == "uncertainty"
            else None
        )
        channels = self.backbone.out_channels
        needs_neck = "detect" in self.heads or "reid" in self.heads
        levels = [channels[level] for level in LEVELS]
        self.neck = PANNeck(levels, neck_width) if needs_neck else None
        self.strides = [self.backbone.strides[level] for level in LEVELS]
        self._grid: tuple[tuple, Tensor, Tensor] | None = None
        metrics: dict[str, nn.Module] = {}
        if "detect" in self.heads:
            self.detect_head = DetectHead(neck_width, len(categories), len(LEVELS))
            metrics["detect"] = CocoBoxMetric(backend=coco_backend)
        if "segment" in self.heads:
            self.segment_head = SegmentHead(channels, len(categories) + 1, tuple(decoder_channels))
            metrics["segment"] = SegmentationMetric(len(categories) + 1, IGNORE_INDEX)
        if "classify" in self.heads:
            self.classify_head = ClassifyHead(channels["c5"], len(categories))
            metrics["classify"] = classification_metrics(len(categories))
        if "instance" in self.heads:
            self.mask_stride = self.backbone.strides[MASK_LEVEL]
            self.prototypes = PrototypeBranch(
                neck_width, channels[MASK_LEVEL], prototype_channels, num_prototypes
            )
            self.mask_coefficients = MaskCoefficientHead(neck_width, num_prototypes, len(LEVELS))
            metrics["instance"] = CocoMaskMetric(
                len(categories), self.draw_score_threshold, backend=coco_backend
            )
        # The segmentation decoder's block at c2's stride (stride 4), if it has one.
        self.shared_block = None
        if "segment" in self.heads and keypoints_read_segment:
            levels = self.segment_head.decoder.levels
            self.shared_block = levels.index("c2") if "c2" in levels else None
        if "keypoints" in self.heads:
            keypoint_channels = dict(channels)
            if self.shared_block is not None:
                keypoint_channels["c2"] += int(decoder_channels[self.shared_block])
            self._build_keypoint_head(
                keypoint_channels,
                keypoint_crop_height,
                keypoint_head_channels,
                oks_sigmas,
                coco_backend,
                metrics,
            )
        if "reid" in self.heads:
            self.reid_pool = MultiScaleRoIAlign(list(PYRAMID), list(reid_roi_size), 2)
            self.reid_tower = nn.Identity()
            if reid_channels > 0:
                self.reid_tower = nn.Sequential(
                    ConvBNAct(neck_width, reid_channels), ConvBNAct(reid_channels, reid_channels)
                )
            self.reid_head = ReidHead(reid_channels or neck_width, embedding_dim, "gem")
            self.identity_classifier: nn.Linear | None = None
            if num_identities > 0 and id_loss_weight > 0:
                self.identity_classifier = nn.Linear(
                    self.reid_head.out_channels, num_identities, bias=False
                )
                nn.init.normal_(self.identity_classifier.weight, std=0.001)
            metrics["reid"] = ReidMetric()
        scored = tuple(SCORED_METRIC[h] for h in self.heads)
        self.val_metric = HeadMetrics(metrics, scored)
        self.test_metric = HeadMetrics({k: m.clone() for k, m in metrics.items()}, scored)
        self.monitor = "val/heads_mean"

    def _check_arguments(self, categories: Any, image_size: int, loss_weights: Any) -> None:
        unknown = [h for h in self.heads if h not in HEADS]
        if not self.heads or unknown or len(set(self.heads)) != len(self.heads):
            raise ValueError(
                f"--model.heads: expected distinct names among {list(HEADS)}, got {self.heads}"
            )
        if "instance" in self.heads and "detect" not in self.heads:
            raise ValueError(
                f"--model.heads: instance needs detect (a mask is cut for each detected box), "
                f"got {self.heads}"
            )
        if not categories:
            raise ValueError("MultiTaskTask needs categories (linked from the data module)")
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        extra = sorted(set(loss_weights or {}) - set(self.heads))
        if extra:
            raise ValueError(
                f"--model.loss_weights names heads that are not attached: {extra} "
                f"(heads: {self.heads})"
            )

    def _build_keypoint_head(
        self,
        channels: dict[str, int],
        crop_height: int,
        head_channels: tuple[int, int, int],
        oks_sigmas: list[float] | None,
        coco_backend: str,
        metrics: dict[str, nn.Module],
    ) -> None:
        category = next((c for c in self.categories if "flip_pairs" in c), None)
        if category is None:
            raise ValueError(
                "the keypoints head needs a category with 'keypoints' (and "
                "'flip_pairs', set by MultiTaskData)"
            )
        self.keypoint_category = category
        self.keypoint_index = self.categories.index(category)
        self.skeleton = [(a - 1, b - 1) for a, b in category.get("skeleton") or []]
        self.crop_size = crop_size(crop_height)
        self.keypoint_head = HeatmapHead(channels, len(category["keypoints"]), tuple(head_channels))
        sigmas = keypoint_sigmas(category, oks_sigmas)
        for name in ("keypoints_gt", "keypoints_detected"):
            metrics[name] = KeypointMetric(category["id"], sigmas, backend=coco_backend)

    # ---- forward ------------------------------------------------------------------------------
    def forward(
        self,
        images: Tensor,
        keypoint_boxes: list[Tensor] | None = None,
        reid_boxes: list[Tensor] | None = None,
    ) -> dict[str, Any]:
        """One backbone + neck pass; every head reads its maps.

        Args:
            images: (B, 3, S, S) letterboxed, normalised.
            keypoint_boxes: per image (n_i, 4) xyxy network-pixel boxes to read keypoints in.
            reid_boxes: per image (m_i, 4) boxes to embed. With neither given, an eval-mode
                call takes both from the detector (``on_detections``).

        Returns:
            ``features`` (the backbone dict), ``pyramid`` [p3, p4, p5] (B, width, S/s, S/s);
            with ``detect``: ``cls_logits`` (B, N, C), ``box_regression`` (B, N, 4),
            ``points`` (N, 2), ``strides`` (N, 1); ``segment``: (B, C + 1, S, S) logits (and
            ``segment_c2``, its decoder's stride-4 block, when the keypoint head reads it);
            ``classify``: (B, C) logits; ``instance``: ``mask_coeffs`` (B, N, k) and ``protos``
            (B, k, S/4, S/4); ``keypoints``: ``heatmaps`` (R, K, h/4, w/4) and
            ``regions`` (R, 4) crop regions, ``image_index`` (R,); ``reid``: ``features``,
            ``embedding`` (unit norm), ``logits`` (or None), each (M, ...), ``image_index``
            (M,). Per-box outputs are None where no box was given.
        """
        features = self.backbone(images)
        pyramid = None
        if self.neck is not None:
            pyramid = self.neck([features[level] for level in LEVELS])
        out: dict[str, Any] = {"features": features, "pyramid": pyramid}
        if "detect" in self.heads:
            out["cls_logits"], out["box_regression"] = self.detect_head(pyramid)
            out["points"], out["strides"] = self._grid_for(
                [tuple(p.shape[-2:]) for p in pyramid], images.device
            )
        if "segment" in self.heads:
            logits, blocks = self.segment_head.forward_blocks(features)
            if self.shared_block is not None:
                out["segment_c2"] = blocks[self.shared_block]
            if logits.shape[-2:] != images.shape[-2:]:
                logits = F.interpolate(
                    logits, size=images.shape[-2:], mode="bilinear", align_corners=False
                )
            out["segment"] = logits
        if "classify" in self.heads:
            out["classify"] = self.classify_head(features["c5"])
        if "instance" in self.heads:
            out["mask_coeffs"] = self.mask_coefficients(pyramid)
            out["protos"] = self.prototypes(pyramid[0], features[MASK_LEVEL])
        if keypoint_boxes is None and reid_boxes is None:
            if not self.training and "detect" in self.heads:
                out["on_detections"] = self.on_detections(out, images.shape[-1])
            return out
        out["keypoints"] = self.keypoint_branch(features, keypoint_boxes, out.get("segment_c2"))
        out["reid"] = self.reid_branch(pyramid, reid_boxes, images.shape[-1])
        return out

    def _grid_for(self, shapes: list[tuple], device: torch.device) -> tuple[Tensor, Tensor]:
        key = (tuple(shapes), str(device))
        if self._grid is None or self._grid[0] != key:
            self._grid = (key, *grid_points(shapes, self.strides, device))
        return self._grid[1], self._grid[2]
