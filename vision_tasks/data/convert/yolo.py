"""YOLO / Ultralytics label files (boxes or polygons) -> COCO."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml
from pycocotools import mask as mask_utils

from vision_tasks.data.coco import CocoDataError
from vision_tasks.data.convert.common import (
    IMAGE_SUFFIXES,
    _box_annotation,
    _categories,
    _coco,
    _files,
    _image_size,
)

# Exporters write normalised values like 1.0000001; more than this is a wrong or pixel value.
YOLO_TOLERANCE = 1e-3


def yolo_to_coco(root: str | Path, names: str | Path, split: str | None = None) -> dict:
    """YOLO / Ultralytics (``images/``, ``labels/*.txt``) -> COCO boxes and polygons.

    Each label line is ``class cx cy w h`` (a box) or ``class x1 y1 x2 y2 x3 y3 ...`` (a polygon
    of >= 3 points; its extent gives the box), values normalised by the image size; the label of
    ``images/a/b.jpg`` is ``labels/a/b.txt``. Category id = YOLO class index + 1 (COCO ids start
    at 1). Image sizes come from the image headers. An image without a label file has no objects
    (kept, counted); a label file without an image is skipped (counted); a box or polygon of
    zero width or height is dropped (counted). Boxes crossing the image edge are kept as written.
    Ultralytics pose labels (box + keypoints) are not read: they look like polygons.

    Args:
        root: the dataset folder; ``file_name`` is ``images/...`` relative to it.
        names: class names: an Ultralytics ``data.yaml`` (``names:`` as a list or an
            ``{index: name}`` mapping) or a text file with one name per line.
        split: read ``images/<split>`` and ``labels/<split>`` (the Ultralytics layout).

    Raises:
        CocoDataError: a missing folder or names file, an unreadable image, or a bad label line
            (wrong number of values, unknown class, non-numeric or out-of-range value), naming
            file:line and the field.
    """
    root, class_names = Path(root), read_yolo_names(names)
    image_dir, label_dir = root / "images", root / "labels"
    if split is not None:
        image_dir, label_dir = image_dir / split, label_dir / split
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise CocoDataError(f"{root}: no folder '{folder.relative_to(root)}'")
    images, annotations, marked, dropped = [], [], Counter(), Counter()
    labels_used = set()
    for path in _files(image_dir):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            dropped["non-image files"] += 1
            continue
        width, height = _image_size(path)
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": path.relative_to(root).as_posix(),
                "width": width,
                "height": height,
            }
        )
        label = (label_dir / path.relative_to(image_dir)).with_suffix(".txt")
        if not label.is_file():
            marked["images without label file"] += 1
            continue
        labels_used.add(label)
        for class_index, bbox, polygon in _read_yolo_label(label, len(class_names), width, height):
            if bbox[2] <= 0 or bbox[3] <= 0:
                dropped["degenerate boxes"] += 1
                continue
            ann = _box_annotation(len(annotations) + 1, image_id, class_index + 1, bbox)
            if polygon is not None:  # COCO's polygon area is that of its rasterised mask
                rle = mask_utils.frPyObjects([polygon], height, width)
                ann.update(segmentation=[polygon], area=float(mask_utils.area(rle)[0]))
            annotations.append(ann)
    dropped["label files without image"] = sum(
        1 for p in _files(label_dir) if p.suffix == ".txt" and p not in labels_used
    )
    what = f"YOLO {root.name}" + (f" {split} split" if split else "")
    return _coco(what, images, annotations, _categories(class_names), marked, dropped)


def read_yolo_names(path: str | Path) -> list[str]:
    """Class names in index order from a ``data.yaml`` (``names:``) or a one-per-line file."""
    path = Path(path)
    if not path.is_file():
        raise CocoDataError(f"{path}: names file not found")
    if path.suffix.lower() not in (".yaml", ".yml"):
        lines = path.read_text().rstrip().splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                raise CocoDataError(f"{path}:{number}: field 'name': empty class name")
        return _unique_names(path, [line.strip() for line in lines])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CocoDataError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            msg = f"class indices must be 0..{len(names) - 1}, got {sorted(names, key=str)}"
            raise CocoDataError(f"{path}: field 'names': {msg}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        msg = "expected a non-empty list or {index: name} mapping"
        raise CocoDataError(f"{path}: field 'names': {msg}, got {names!r:.40}")
    return _unique_names(path, [str(name) for name in names])


def _unique_names(path: Path, names: list[str]) -> list[str]:
    repeated = sorted(name for name, n in Counter(names).items() if n > 1)
    if not names or repeated:
        got = f"{', '.join(repeated)} appear more than once" if repeated else "no names"
        raise CocoDataError(f"{path}: field 'names': {got}")
    return names


def _read_yolo_label(path: Path, num_classes: int, width: int, height: int) -> list[tuple]:
    """``(class index, bbox [x, y, w, h], polygon or None)`` in pixels, one per label line."""
    objects = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        values, record = line.split(), f"{path}:{number}"
        if not values:
            continue
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            msg = (
                f"expected 'class cx cy w h' (5 values) or 'class x1 y1 x2 y2 x3 y3 ...' "
                f"(an odd number >= 7), got {len(values)} values"
            )
            raise CocoDataError(f"{record}: field 'line': {msg}")
        class_index = int(values[0]) if values[0].isdigit() else -1
        if not 0 <= class_index < num_classes:
            msg = f"expected a class index 0..{num_classes - 1} (from the names), got {values[0]!r}"
            raise CocoDataError(f"{record}: field 'class': {msg}")
        keys = (
            ["cx", "cy", "w", "h"]
            if len(values) == 5
            else [f"{'xy'[i % 2]}{i // 2 + 1}" for i in range(len(values) - 1)]
        )
        numbers = [_yolo_number(text, key, record) for text, key in zip(values[1:], keys)]
        if len(values) == 5:
            cx, cy, w, h = numbers
            bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            objects.append((class_index, bbox, None))
            continue
        polygon = [v * (width, height)[i % 2] for i, v in enumerate(numbers)]
        xs, ys = polygon[0::2], polygon[1::2]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        objects.append((class_index, bbox, polygon))
    return objects


def _yolo_number(text: str, key: str, record: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CocoDataError(f"{record}: field '{key}': expected a number, got {text!r}") from None
    if not -YOLO_TOLERANCE <= value <= 1 + YOLO_TOLERANCE:  # also refuses nan and inf
        msg = f"value {text} is outside [0, 1] (YOLO values are normalised by the image size)"
        raise CocoDataError(f"{record}: field '{key}': {msg}")
    return value
