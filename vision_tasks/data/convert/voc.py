"""Pascal VOC XML boxes -> COCO, with Detectron2's reading of the 1-based corners."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vision_tasks.data.coco import CocoDataError
from vision_tasks.data.convert.common import (
    _box_annotation,
    _categories,
    _coco,
)


@dataclass
class _VocObject:
    name: str
    corners: list[float]  # xmin, ymin, xmax, ymax as written: 1-based, inclusive
    difficult: bool


def voc_to_coco(
    root: str | Path,
    split: str | None = None,
    classes: list[str] | None = None,
    difficult: Literal["keep", "ignore", "drop"] = "keep",
) -> dict:
    """Pascal VOC (``Annotations/*.xml``, ``JPEGImages/``) -> COCO boxes.

    Coordinates as Detectron2 reads VOC (``pascal_voc.py``): the XML holds 1-based inclusive
    pixel indices, so pixel ``xmin`` starts at ``xmin - 1`` and pixel ``xmax`` ends at ``xmax``:
    ``x = xmin - 1``, ``w = xmax - xmin + 1`` (a box from 1 to W covers the whole image).
    mmdetection and Ultralytics subtract 1 from all four corners instead (``w = xmax - xmin``,
    one pixel narrower). A box whose corners coincide or are swapped (``xmax <= xmin`` or
    ``ymax <= ymin``: a click of the annotation tool, width 0 for mmdetection / Ultralytics) is
    dropped and counted as degenerate. Boxes crossing the image edge and truncated objects are
    kept as written (the loader's data policy decides). Every annotation gets ``difficult`` 0/1;
    ``difficult`` objects are kept as normal annotations (``keep``), made ``iscrowd: 1``
    (``ignore``: COCOeval neither rewards nor penalises detections on them, the closest COCO
    equivalent of VOC's evaluation) or dropped and counted (``drop``).

    Args:
        root: the VOC folder; ``file_name`` is ``JPEGImages/<filename>`` relative to it.
        split: read the image ids of ``ImageSets/Main/<split>.txt``; None: every XML file.
        classes: category names in id order 1..N; None: the sorted names found in every XML
            file of ``Annotations/`` (so every split of one root gets the same ids).
        difficult: ``keep``, ``ignore`` (iscrowd 1) or ``drop``, as above.

    Raises:
        CocoDataError: a missing file or folder, malformed XML, a missing or zero ``<size>``,
            a missing or non-numeric field, a class not in ``classes``, a missing image file.
    """
    root = Path(root)
    paths = _voc_xml_files(root, split)
    records = [(path, *_read_voc_xml(path)) for path in paths]
    # Names from every XML, not the split's alone: a split lacking a class keeps the same ids.
    names = list(classes) if classes else _voc_class_names(root, records)
    category = {name: i for i, name in enumerate(names, 1)}
    images, annotations, marked, dropped = [], [], Counter(), Counter()
    for path, filename, width, height, objects in records:
        if not (root / "JPEGImages" / filename).is_file():
            msg = f"image JPEGImages/{filename} not found in {root}"
            raise CocoDataError(f"{path}: field 'filename': {msg}")
        images.append(
            {
                "id": len(images) + 1,
                "file_name": f"JPEGImages/{filename}",
                "width": width,
                "height": height,
            }
        )
        for number, obj in enumerate(objects, 1):
            if obj.name not in category:
                msg = f"class {obj.name!r} is not in --classes ({', '.join(names)})"
                raise CocoDataError(f"{path}: object {number}: field 'name': {msg}")
            xmin, ymin, xmax, ymax = obj.corners
            if xmax <= xmin or ymax <= ymin:
                dropped["degenerate boxes"] += 1
            elif obj.difficult and difficult == "drop":
                dropped["difficult objects"] += 1
            else:
                bbox = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
                crowd = int(obj.difficult and difficult == "ignore")
                ann = _box_annotation(
                    len(annotations) + 1, len(images), category[obj.name], bbox, crowd
                )
                annotations.append({**ann, "difficult": int(obj.difficult)})
                marked["difficult as iscrowd" if crowd else "difficult kept"] += obj.difficult
    what = f"Pascal VOC {root.name}" + (f" {split} split" if split else "")
    return _coco(what, images, annotations, _categories(names), marked, dropped)


def _voc_class_names(root: Path, records: list[tuple]) -> list[str]:
    """The sorted object names of ``records`` and of every other XML file under ``root``."""
    names = {o.name for *_, objects in records for o in objects}
    read = {path for path, *_ in records}
    for path in _voc_xml_files(root, None):
        if path not in read:
            names |= {o.name for o in _read_voc_xml(path)[3]}
    return sorted(names)


def _voc_xml_files(root: Path, split: str | None) -> list[Path]:
    """The annotation files of ``split`` (ImageSets/Main/<split>.txt), or all of them."""
    folder = root / "Annotations"
    if not folder.is_dir():
        raise CocoDataError(f"{root}: no folder 'Annotations' (is this a VOC root?)")
    if split is None:
        paths = sorted(folder.glob("*.xml"))
        if not paths:
            raise CocoDataError(f"{folder}: no .xml files")
        return paths
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise CocoDataError(f"{root}: no split list ImageSets/Main/{split}.txt")
    paths = []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if line.strip():
            path = folder / f"{line.split()[0]}.xml"
            if not path.is_file():
                raise CocoDataError(f"{listing}:{number}: no annotation file {path}")
            paths.append(path)
    return paths


def _read_voc_xml(path: Path) -> tuple[str, int, int, list[_VocObject]]:
    """(filename, width, height, objects) of one VOC XML file."""
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise CocoDataError(f"{path}: malformed XML ({exc})") from None
    sizes = []
    for key in ("width", "height"):
        text = (tree.findtext(f"size/{key}") or "").strip()
        if not text.isdigit() or int(text) == 0:
            got = f"got {text!r}" if text else "missing"
            raise CocoDataError(f"{path}: field 'size/{key}': expected a positive integer, {got}")
        sizes.append(int(text))
    filename = (tree.findtext("filename") or "").strip() or f"{path.stem}.jpg"
    objects = []
    for number, obj in enumerate(tree.findall("object"), 1):
        record = f"{path}: object {number}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise CocoDataError(f"{record}: field 'name': missing or empty")
        keys = ("xmin", "ymin", "xmax", "ymax")
        corners = [_xml_number(obj, f"bndbox/{key}", record) for key in keys]
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise CocoDataError(f"{record}: field 'difficult': expected 0 or 1, got {flag!r}")
        objects.append(_VocObject(name, corners, flag == "1"))
    return filename, sizes[0], sizes[1], objects


def _xml_number(element: ET.Element, key: str, record: str) -> float:
    text = (element.findtext(key) or "").strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        got = f"got {text!r}" if text else "missing"
        raise CocoDataError(f"{record}: field '{key}': expected a number, {got}")
    return value
