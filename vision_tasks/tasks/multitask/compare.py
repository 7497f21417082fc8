"""The joint model against single-task models: quality on the same split, and inference time.

``tools/evaluate.py --task multitask --ckpt JOINT --compare detect=CKPT --compare keypoints=CKPT``
evaluates each single-task checkpoint on the joint run's evaluation split (its own data module,
pointed at that split) and times, per image, the joint forward (per-box heads on its own
detections included) against the single-task models run one after another on what they take:
the letterboxed / resized image (detect, segment, classify) and one crop per ground-truth person
(keypoints) or identity-carrying box (re-ID). Crops use ground-truth boxes, which favours the
single-task pipeline: it is spared the detector a real top-down system would run first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vision_tasks import ops
from vision_tasks.data.coco import CocoIndex
from vision_tasks.data.transforms import keypoint_transforms, reid_transforms
from vision_tasks.tasks.base import BaseTask
from vision_tasks.tasks.keypoints import COCO_OFFSET
from vision_tasks.tasks.reid import crop_size as reid_crop_size

# Single-task headline metric -> the joint report's name for the same number.
MATCHING = {
    "detect": [("AP", "detect/AP"), ("AP50", "detect/AP50")],
    "segment": [("miou", "segment/miou")],
    "keypoints": [("AP", "keypoints_gt/AP")],
    "reid": [("rank1", "reid/rank1"), ("mAP", "reid/mAP")],
    "classify": [("top1", "classify/top1")],
    "instance": [("mask_AP", "instance/mask_AP"), ("mask_AP50", "instance/mask_AP50")],
}


def comparison_rows(joint: dict[str, Any], single: dict[str, dict[str, float]]) -> list[dict]:
    """One row per compared metric: joint, single-task and the joint's relative difference."""
    rows = []
    for task, headline in single.items():
        for name, joint_name in MATCHING.get(task, []):
            if name not in headline or joint_name not in joint:
                continue
            ours, theirs = float(joint[joint_name]), float(headline[name])
            relative = (ours - theirs) / abs(theirs) if theirs else float("nan")
            rows.append(
                {
                    "head": task,
                    "metric": name,
                    "joint": ours,
                    "single_task": theirs,
                    "relative": relative,
                }
            )
    return rows


def _instance_crops(
    model: BaseTask, index: CocoIndex, image_id: int, image: np.ndarray
) -> torch.Tensor | None:
    """The single-task crops of one image's boxes, as the task's evaluation builds them."""
    anns = index.annotations(image_id, include_crowd=False)
    if model.task_name == "keypoints":
        boxes = [
            a["bbox"]
            for a in anns
            if a["category_id"] == model.category["id"] and a.get("num_keypoints", 0) > 0
        ]
        size, margin, transform = model.crop_size, 0.25, keypoint_transforms(False)
        offset = COCO_OFFSET
    else:
        boxes = [a["bbox"] for a in anns if isinstance(a.get("track_id"), int)]
        size = reid_crop_size(model.hparams.image_size, model.hparams.crop_aspect_ratio)
        margin, transform, offset = 0.1, reid_transforms(size[1], size[0], False), 0.0
    crops = []
    for x, y, w, h in boxes:
        matrix = ops.box_affine(np.array([x, y, x + w, y + h]) - offset, size, margin)
        crops.append(transform(image=ops.crop_affine(image, matrix, size))["image"])
    return torch.stack(crops) if crops else None


def _timed(network: Callable[[torch.Tensor], Any], inputs: torch.Tensor, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):  # the fastest of a few: least disturbed by other processes
        start = time.perf_counter()
        network(inputs)
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def time_inference(
    joint: BaseTask,
    singles: dict[str, BaseTask],
    index: CocoIndex,
    num_images: int = 8,
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds per image: the joint forward vs the single-task models one after another.

    A single-task model with a flip test (two passes) is timed both as configured and in one
    pass (``*_single_pass``, ``speedup_single_pass``): the joint model makes one pass, so the
    second speed-up compares the same work.
    """
    joint_total, single_totals = 0.0, {task: 0.0 for task in singles}
    flipped = [task for task, model in singles.items() if model.hparams.get("flip_test")]
    single_pass = {task: 0.0 for task in flipped}
    image_ids = index.image_ids[:num_images]
    for image_id in image_ids:
        image = index.load_image(image_id)
        sample = joint.predict_sample(image)["image"][None]
        joint_total += _timed(joint, sample, repeats)
        for task, model in singles.items():
            if task in ("keypoints", "reid"):
                inputs = _instance_crops(model, index, image_id, image)
                if inputs is None:
                    continue
            else:
                inputs = model.predict_sample(image)["image"][None]
            single_totals[task] += _timed(model, inputs, repeats)
            if task in single_pass:
                model.hparams.flip_test = False
                try:
                    single_pass[task] += _timed(model, inputs, repeats)
                finally:
                    model.hparams.flip_test = True
    count = max(len(image_ids), 1)
    joint_s = joint_total / count
    result = {
        "joint_s_per_image": joint_s,
        **{f"{task}_s_per_image": t / count for task, t in single_totals.items()},
    }
    sequential = sum(single_totals.values()) / count
    result["single_tasks_sequential_s_per_image"] = sequential
    result["speedup"] = sequential / joint_s if joint_total else float("nan")
    if single_pass:
        result.update(
            {f"{task}_single_pass_s_per_image": t / count for task, t in single_pass.items()}
        )
        one_pass = sequential + sum(single_pass[t] - single_totals[t] for t in flipped) / count
        result["speedup_single_pass"] = one_pass / joint_s if joint_total else float("nan")
    return result
