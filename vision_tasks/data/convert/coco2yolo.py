"""COCO -> YOLO / Ultralytics: ``labels/``, ``images/`` and ``data.yaml``.

One COCO file is one split. With ``split`` it goes to ``images/<split>`` and ``labels/<split>``
(the Ultralytics layout, which ``yolo_to_coco(split=...)`` reads back) and ``data.yaml`` gains
that one entry, so converting train and val into one folder gives a data.yaml naming both.
Without ``split`` the layout is flat and ``data.yaml``'s ``train`` and ``val`` both name the one
folder (Ultralytics needs both keys): fine for scoring it, not for training with validation.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Literal

import yaml

from vision_tasks.data.coco import CocoDataError, CocoIndex
from vision_tasks.data.convert.common import Summary
from vision_tasks.utils import atomic_write_text


def coco_to_yolo(
    json_path: str | Path,
    images_root: str | Path,
    output_dir: str | Path,
    segments: bool = False,
    copy_images: bool = False,
    policy: Literal["strict", "skip"] = "strict",
    split: str | None = None,
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
        split: the split this file is (``train``, ``val``, ...): written under
            ``images/<split>``, ``labels/<split>`` and named so in ``data.yaml``, whose other
            splits (from earlier conversions into ``output_dir``) are kept. None: a flat layout
            whose ``data.yaml`` names it as both ``train`` and ``val`` (see the module notes).

    Returns:
        The counts; ``str()`` gives the one-line summary.
    """
    if split is not None and (Path(split).name != split or split in ("", ".", "..")):
        raise CocoDataError(f"--split {split!r}: expected a folder name such as train or val")
    index = CocoIndex(json_path, images_root, policy=policy, keypoint_fields=False)
    output_dir = Path(output_dir)
    images_dir, labels_dir = output_dir / "images", output_dir / "labels"
    if split is not None:
        images_dir, labels_dir = images_dir / split, labels_dir / split
    layout = "coco2yolo" if split is None else f"coco2yolo {split}"
    summary = Summary(layout, len(index), 0, index.num_classes)
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
        label = labels_dir / relative.with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(lines))  # not atomic: fsync per file is slow on 100k labels
        _place_image(index.image_path(image_id), images_dir / relative, copy_images)
        summary.boxes += len(lines)
    _write_data_yaml(output_dir / "data.yaml", split, index.category_names)
    summary.marked = {k: v for k, v in sorted(marked.items()) if v}
    summary.dropped = {k: v for k, v in sorted(dropped.items()) if v}
    return summary


def _write_data_yaml(path: Path, split: str | None, names: list[str]) -> None:
    """``data.yaml``: this split's folder (earlier splits of the same classes kept), the names."""
    splits = {"train": "images", "val": "images"}
    if split is not None:
        earlier = _read_data_yaml(path)
        if earlier.get("names", names) != names:
            msg = f"names {earlier['names']} differ from this file's categories {names}"
            raise CocoDataError(f"{path}: field 'names': {msg} (write to another folder)")
        splits = {k: v for k, v in earlier.items() if v == f"images/{k}"}
        splits[split] = f"images/{split}"
    data = {**splits, "nc": len(names), "names": names}
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def _read_data_yaml(path: Path) -> dict:
    """An existing ``data.yaml`` as a dict (empty if there is none)."""
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CocoDataError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    return data if isinstance(data, dict) else {}


def describe_data_yaml(output_dir: str | Path) -> str:
    """One line on what ``<output_dir>/data.yaml`` names, and what Ultralytics still lacks."""
    data = _read_data_yaml(Path(output_dir) / "data.yaml")
    splits = {k: v for k, v in data.items() if k not in ("nc", "names", "path")}
    if splits.get("train") == splits.get("val") == "images":
        return (
            "data.yaml: train and val are the same images (one split converted; "
            "--split NAME keeps splits apart)"
        )
    text = "data.yaml: " + ", ".join(f"{k}={v}" for k, v in splits.items())
    missing = [k for k in ("train", "val") if k not in splits]
    if missing:
        text += f"; no {' or '.join(missing)} yet (Ultralytics needs both: convert it with"
        text += f" --split {missing[0]} into the same folder)"
    return text


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
