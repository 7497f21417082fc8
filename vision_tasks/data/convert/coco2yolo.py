"""COCO -> YOLO / Ultralytics: ``labels/``, ``images/`` and ``data.yaml``."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Literal

import yaml

from vision_tasks.data.coco import CocoIndex
from vision_tasks.data.convert.common import (
    Summary,
)
from vision_tasks.utils import atomic_write_text


def coco_to_yolo(
    json_path: str | Path,
    images_root: str | Path,
    output_dir: str | Path,
    segments: bool = False,
    copy_images: bool = False,
    policy: Literal["strict", "skip"] = "strict",
) -> Summary:
    """COCO -> YOLO / Ultralytics: ``labels/``, ``images/`` and ``data.yaml`` in ``output_dir``.

    The label of image ``a/b.jpg`` is ``labels/a/b.txt`` (empty for an image without objects),
    its image ``images/a/b.jpg`` (a symlink, or a copy). Class index = position of the category
    in id order; ``data.yaml`` lists the names in that order. Lines are ``class cx cy w h``
    normalised; with ``segments``, ``class x1 y1 ...`` polygons: an annotation with one polygon
    writes it, one without (a box, an RLE or a multi-part mask) writes its box outline (counted),
    as Ultralytics reads a file either as boxes or as polygons. Values are clipped to [0, 1]
    (counted), since Ultralytics refuses others. Crowd annotations are left out (counted).

    Args:
        json_path: COCO annotation file, read through ``CocoIndex`` (which checks it).
        images_root: the folder its ``file_name`` entries are relative to.
        output_dir: where ``labels/``, ``images/`` and ``data.yaml`` go.
        segments: write polygons instead of boxes.
        copy_images: copy the images instead of symlinking them.
        policy: ``CocoIndex`` policy: ``strict`` refuses bad records, ``skip`` drops them.

    Returns:
        The counts; ``str()`` gives the one-line summary.
    """
    index = CocoIndex(json_path, images_root, policy=policy, keypoint_fields=False)
    output_dir = Path(output_dir)
    summary = Summary("coco2yolo", len(index), 0, index.num_classes)
    marked = Counter()
    dropped = Counter({f"{k} (policy skip)": v for k, v in index.skipped.items()})
    for image_id in index.image_ids:
        info, lines = index.image_info(image_id), []
        for ann in index.annotations(image_id):
            if ann["iscrowd"]:
                dropped["crowd annotations"] += 1
                continue
            points = _yolo_points(ann, info["width"], info["height"], segments, marked)
            if points is None:
                dropped["boxes outside the image"] += 1
                continue
            values = " ".join(f"{v:.10g}" for v in points)
            lines.append(f"{index.cat_to_index[ann['category_id']]} {values}\n")
        relative = Path(info["file_name"])
        label = output_dir / "labels" / relative.with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(lines))  # not atomic: fsync per file is slow on 100k labels
        _place_image(index.image_path(image_id), output_dir / "images" / relative, copy_images)
        summary.boxes += len(lines)
    names = {
        "train": "images",
        "val": "images",
        "nc": index.num_classes,
        "names": index.category_names,
    }
    atomic_write_text(output_dir / "data.yaml", yaml.safe_dump(names, sort_keys=False))
    summary.marked = {k: v for k, v in sorted(marked.items()) if v}
    summary.dropped = {k: v for k, v in sorted(dropped.items()) if v}
    return summary


def _yolo_points(
    ann: dict, width: int, height: int, segments: bool, marked: Counter
) -> list[float] | None:
    """Normalised ``cx cy w h`` (or polygon x y ...) of one annotation; None if outside."""
    x, y, w, h = ann["bbox"]
    seg = ann.get("segmentation")
    if segments and isinstance(seg, list) and len(seg) == 1:
        polygon = [v / (width, height)[i % 2] for i, v in enumerate(seg[0])]
    else:
        if segments:
            marked["written as box outlines"] += 1
        polygon = [x / width, y / height, (x + w) / width, (y + h) / height]
    clipped = [min(max(v, 0.0), 1.0) for v in polygon]
    # x + w = W + 1e-14 from float rounding is not worth a mention
    marked["clipped to the image"] += max(abs(a - b) for a, b in zip(clipped, polygon)) > 1e-9
    xs, ys = clipped[0::2], clipped[1::2]
    if max(xs) <= min(xs) or max(ys) <= min(ys):
        return None
    if segments and len(clipped) > 4:
        return clipped
    x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    if segments:  # a box as its 4-corner outline
        return [x0, y0, x1, y0, x1, y1, x0, y1]
    return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]


def _place_image(source: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()  # a re-run replaces what an earlier run placed
    if copy:
        shutil.copyfile(source, target)
    else:
        target.symlink_to(source.resolve())
