"""Dataset layouts <-> COCO JSON: one function per layout, picked by name from ``CONVERTERS``.

Each converter returns a COCO dict whose ``file_name`` entries are relative to the folder it
read (for MOT frames taken from a video: to the frames folder), so the written JSON is used with
``--data.*_images`` set to that folder. What a converter leaves out or marks by design is counted
in the dict's ``info`` (``dropped``, ``marked``) and said in one line by :func:`summarise`;
nothing is dropped silently. Bad input raises one ``CocoDataError`` line naming file, record and
field. The ways back: :func:`coco_to_yolo` and :func:`write_mot` (tracker output for TrackEval).

Example:
    >>> convert("market1501", "Market-1501-v15.09.15", "market_train.json", {"split": "train"})
    >>> convert("voc", "BCCD", "bccd_trainval.json", {"split": "trainval"})
"""

from __future__ import annotations

import configparser
import math
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from vision_tasks.data.coco import CocoDataError, CocoIndex
from vision_tasks.utils import atomic_write_json, atomic_write_text

# torchvision's IMG_EXTENSIONS (ImageFolder); YOLO folders use the same suffixes.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Exporters write normalised values like 1.0000001; more than this is a wrong or pixel value.
YOLO_TOLERANCE = 1e-3


# --- shared pieces -------------------------------------------------------------------------


@dataclass
class Summary:
    """What a conversion produced, left out (``dropped``) and flagged (``marked``), by count."""

    layout: str
    images: int
    boxes: int
    classes: int
    crowd: int = 0
    marked: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        """One line: ``voc: 364 images, 4886 boxes, 3 classes; dropped: degenerate boxes=2``."""
        crowd = f" ({self.crowd} iscrowd)" if self.crowd else ""
        counts = [
            _plural(self.images, "image"),
            _plural(self.boxes, "box") + crowd,
            _plural(self.classes, "class"),
        ]
        parts = [f"{self.layout}: {', '.join(counts)}"]
        # what=count, as CocoIndex logs its counts: labels stay fixed whatever the count
        parts += [f"{what}={n}" for what, n in self.marked.items()]
        dropped = ", ".join(f"{what}={n}" for what, n in self.dropped.items()) or "nothing"
        return "; ".join([*parts, f"dropped: {dropped}"])


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun[-1] in "sx" else "s")


def summarise(layout: str, dataset: dict) -> Summary:
    """The :class:`Summary` of a COCO dict made by one of the ``CONVERTERS``."""
    info = dataset.get("info", {})
    return Summary(
        layout,
        len(dataset["images"]),
        len(dataset["annotations"]),
        len(dataset["categories"]),
        sum(a["iscrowd"] for a in dataset["annotations"]),
        dict(info.get("marked", {})),
        dict(info.get("dropped", {})),
    )


def _coco(
    description: str,
    images: list,
    annotations: list,
    categories: list,
    marked: Counter | None = None,
    dropped: Counter | None = None,
) -> dict:
    """A COCO dict; ``info`` keeps the non-zero counts of what was marked / dropped."""
    info = {"description": f"{description}, converted by vision_tasks"}
    for key, counts in (("marked", marked), ("dropped", dropped)):
        if counts and any(counts.values()):
            info[key] = {what: n for what, n in sorted(counts.items()) if n}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _categories(names: list[str]) -> list[dict]:
    return [{"id": i, "name": name, "supercategory": name} for i, name in enumerate(names, 1)]


def _box_annotation(
    ann_id: int, image_id: int, category_id: int, bbox: list[float], iscrowd: int = 0
) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": float(bbox[2] * bbox[3]),
        "iscrowd": iscrowd,
    }


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, or one CocoDataError naming the file."""
    try:
        with Image.open(path) as image:  # header only
            return image.size
    except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        msg = f"cannot read the image header ({type(exc).__name__})"
        raise CocoDataError(f"{path}: {msg}") from None


def _files(folder: Path) -> list[Path]:
    """Every file below ``folder``, sorted; symlinked folders followed, as torchvision does."""
    walk = os.walk(folder, followlinks=True)
    return sorted(Path(d) / name for d, _, names in walk for name in names)


# --- Market-1501 ---------------------------------------------------------------------------

# 0002_c1s1_000451_03.jpg: identity 0002, camera 1, sequence 1, frame 451, box 3 of the frame.
MARKET1501_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d+)_(\d+)\.jpg$")
MARKET1501_FOLDERS = {"train": ("bounding_box_train",), "test": ("query", "bounding_box_test")}
_SPLIT_OF_FOLDER = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}


def market1501_to_coco(root: str | Path, split: Literal["train", "test"] = "train") -> dict:
    """Market-1501 (Zheng et al. 2015) crops -> COCO: one image and one full-image box per crop.

    The identity goes to the annotation's ``track_id``, the camera to the image's ``camera_id``,
    the folder to the image's ``split`` (``train``, or ``query`` / ``gallery`` for ``test``).
    Identities as Market-1501 defines them: ``-1`` (junk) stays -1, which the re-ID task reads as
    "no identity" and leaves out, just as the protocol drops junk from the ranking; ``0000``
    (distractors) stays 0, a gallery-only identity that no query matches.

    Args:
        root: the Market-1501 folder (holding ``bounding_box_train``, ``query``, ...).
        split: ``train`` (bounding_box_train) or ``test`` (query + bounding_box_test).

    Raises:
        CocoDataError: a folder is missing or empty, or a file name breaks the naming scheme.
    """
    root = Path(root)
    images, annotations, bad = [], [], []
    for folder in MARKET1501_FOLDERS[split]:
        if not (root / folder).is_dir():
            raise CocoDataError(f"{root}: no folder '{folder}' (is this the Market-1501 root?)")
        for path in sorted((root / folder).glob("*.jpg")):
            match = MARKET1501_NAME.match(path.name)
            if match is None:
                bad.append(f"{folder}/{path.name}")
                continue
            identity, camera = int(match[1]), int(match[2])
            width, height = _image_size(path)
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{folder}/{path.name}",
                    "width": width,
                    "height": height,
                    "camera_id": camera,
                    "split": _SPLIT_OF_FOLDER[folder],
                }
            )
            annotations.append(
                {
                    "id": image_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [0, 0, width, height],
                    "area": float(width * height),
                    "iscrowd": 0,
                    "track_id": identity,
                }
            )
    if bad:
        listed = ", ".join(bad[:5]) + (f" ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise CocoDataError(f"{root}: file names not of the form 0002_c1s1_000451_03.jpg: {listed}")
    if not images:
        raise CocoDataError(f"{root}: no .jpg files in {', '.join(MARKET1501_FOLDERS[split])}")
    return {
        "info": {"description": f"Market-1501 {split} split, converted by vision_tasks"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }


# --- Pascal VOC ----------------------------------------------------------------------------


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


# --- YOLO ----------------------------------------------------------------------------------


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


# --- ImageFolder ---------------------------------------------------------------------------


def imagefolder_to_coco(root: str | Path) -> dict:
    """ImageFolder (``<root>/<class>/<images>``) -> image-level classification COCO.

    One annotation per image: the full image ``[0, 0, W, H]`` with its folder's category, which
    is what the classify task's ``--data.mode image`` reads (exactly one annotation per image).
    Classes as torchvision's ``ImageFolder`` finds them: every sub-folder, sorted, ids 1..N; its
    image files (torchvision's suffixes) at any depth. Other files are dropped (counted).

    Raises:
        CocoDataError: ``root`` has no class folders, a class folder holds no image (torchvision
            refuses that too), or an image header cannot be read.
    """
    root = Path(root)
    if not root.is_dir():
        raise CocoDataError(f"{root}: not a folder")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise CocoDataError(f"{root}: no class folders (expected <root>/<class>/<images>)")
    images, annotations, dropped = [], [], Counter()
    dropped["files outside class folders"] = sum(1 for e in os.scandir(root) if not e.is_dir())
    for category_id, name in enumerate(classes, 1):
        files = _files(root / name)
        pictures = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
        dropped["non-image files"] += len(files) - len(pictures)
        if not pictures:
            raise CocoDataError(f"{root / name}: class folder '{name}' holds no image files")
        for path in pictures:
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
            bbox = [0, 0, width, height]
            annotations.append(_box_annotation(image_id, image_id, category_id, bbox))
    return _coco(
        f"ImageFolder {root.name}", images, annotations, _categories(classes), dropped=dropped
    )


# --- MOTChallenge --------------------------------------------------------------------------

# MOT16/17/20 gt classes (TrackEval's mot_challenge_2d_box.py): 1 is the target; detections on
# these distractors are neither rewarded nor penalised. MOT20 adds 6 (non_mot_vehicle): left out.
MOT_PEDESTRIAN = 1
MOT_DISTRACTORS = {2: "person_on_vehicle", 7: "static_person", 8: "distractor", 12: "reflection"}


@dataclass
class _MotRow:
    line: int
    frame: int
    track_id: int
    bbox: list[float]
    conf: float
    cls: int  # MOT_PEDESTRIAN where the line has no class column (MOT15, short lines)
    visibility: float | None


def mot_to_coco(
    source: str | Path,
    gt: str | Path | None = None,
    frames: str | Path | None = None,
    chunks: int = 1,
    min_visibility: float = 0.0,
) -> dict:
    """MOTChallenge ground truth -> COCO boxes with ``track_id``, for detection, tracking, re-ID.

    Lines ``frame,id,x,y,w,h,conf[,class,visibility]`` (MOT16/17/20: 9 columns) or
    ``frame,id,x,y,w,h,conf,wx,wy,wz`` (MOT15: 10 columns, every row a pedestrian), read as
    TrackEval reads them: class 1 (pedestrian) is the target; the distractor classes 2, 7, 8, 12
    become ``iscrowd: 1`` (COCOeval ignores detections on them, as TrackEval removes tracker boxes
    matched to them); other classes (vehicles, occluders, ...) are dropped (counted). Rows with
    ``conf == 0`` (TrackEval's "zero_marked": not evaluated) and pedestrians whose visibility is
    below ``min_visibility`` also become ``iscrowd: 1`` (TrackEval removes zero-marked rows,
    so a detection there is a false positive for it but ignored here). Boxes crossing the image
    edge are kept as written (normal in MOT); boxes of zero size are dropped (counted).

    Every image gets ``frame`` (1-based), ``sequence`` and ``camera_id``: the sequence is cut
    into ``chunks`` consecutive time segments, camera 1..chunks. The re-ID task counts a match
    from the same camera as junk (Market-1501 protocol), so one camera per video would leave no
    valid match; with chunks, re-ID matches a person across time segments instead of cameras.

    Args:
        source: a MOTChallenge sequence folder (``seqinfo.ini``, ``img1/``, ``gt/gt.txt``) or a
            video file (then ``gt`` and ``frames`` are needed).
        gt: the ground-truth file; default ``<source>/gt/gt.txt``.
        frames: folder for the frames, saved as ``<frames>/<sequence>/000001.jpg`` (the image
            root then); None for a sequence folder: its images are referenced in place
            (image root = the sequence folder, ``file_name`` ``img1/000001.jpg``).
        chunks: number of time segments, one ``camera_id`` each.
        min_visibility: pedestrians less visible than this become ``iscrowd: 1`` (9 columns).

    Raises:
        CocoDataError: a bad gt line (naming file:line and field), an identity twice in a frame,
            a frame beyond the sequence, an unreadable video or missing frame files.
    """
    source = Path(source)
    if not source.exists():
        raise CocoDataError(f"{source}: no such sequence folder or video file")
    gt = Path(gt) if gt is not None else source / "gt" / "gt.txt"
    rows = _read_mot_gt(gt)
    if source.is_dir():
        name, width, height, file_names = _mot_sequence(source, frames)
    elif frames is None:
        raise CocoDataError(f"{source}: frames of a video need a frames folder (--frames)")
    else:
        name = source.stem
        width, height, file_names = _extract_frames(source, Path(frames) / name)
    count = len(file_names)
    if not 1 <= chunks <= count:
        raise CocoDataError(f"{source}: chunks must be in 1..{count} (frames), got {chunks}")
    images = [
        {
            "id": frame,
            "file_name": file_name,
            "width": width,
            "height": height,
            "frame": frame,
            "sequence": name,
            "camera_id": (frame - 1) * chunks // count + 1,
        }
        for frame, file_name in enumerate(file_names, 1)
    ]
    annotations, marked, dropped = _mot_annotations(rows, gt, count, min_visibility)
    what = f"MOTChallenge {name}" + (f" in {chunks} time chunks (camera_id)" if chunks > 1 else "")
    return _coco(what, images, annotations, _categories(["person"]), marked, dropped)


def _mot_annotations(
    rows: list[_MotRow], gt: Path, count: int, min_visibility: float
) -> tuple[list[dict], Counter, Counter]:
    """Annotations of the rows (sorted by frame, then identity) and the marked/dropped counts."""
    annotations, marked, dropped = [], Counter(), Counter()
    for row in sorted(rows, key=lambda r: (r.frame, r.track_id)):
        if row.frame > count:
            msg = f"frame {row.frame} is beyond the sequence's {count} frames"
            raise CocoDataError(f"{gt}:{row.line}: field 'frame': {msg}")
        if row.cls != MOT_PEDESTRIAN and row.cls not in MOT_DISTRACTORS:
            dropped["non-pedestrian classes"] += 1
            continue
        if row.bbox[2] <= 0 or row.bbox[3] <= 0:
            dropped["degenerate boxes"] += 1
            continue
        if row.cls in MOT_DISTRACTORS:
            reason = "distractors as iscrowd"
        elif row.conf == 0:
            reason = "zero-marked as iscrowd"
        elif row.visibility is not None and row.visibility < min_visibility:
            reason = "below min visibility as iscrowd"
        else:
            reason = ""
        marked[reason] += bool(reason)
        ann = _box_annotation(len(annotations) + 1, row.frame, 1, row.bbox, int(bool(reason)))
        ann["track_id"] = row.track_id
        if row.visibility is not None:
            ann["visibility"] = row.visibility
        annotations.append(ann)
    return annotations, marked, dropped


def _read_mot_gt(path: Path) -> list[_MotRow]:
    """Parse a MOTChallenge gt file; one CocoDataError naming file:line and field if bad."""
    if not path.is_file():
        raise CocoDataError(f"{path}: ground-truth file not found")
    rows, seen = [], {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields, record = [f.strip() for f in line.split(",")], f"{path}:{number}"
        if not line.strip():
            continue
        if len(fields) < 6:
            msg = "expected at least 6 comma-separated fields (frame,id,x,y,w,h,...)"
            raise CocoDataError(f"{record}: {msg}, got {len(fields)}")
        keys = ["frame", "id", "x", "y", "w", "h", "conf", "class", "visibility"]
        if len(fields) >= 10:  # MOT15: conf, then world x, y, z (no class, no visibility)
            keys[7:] = ["world x", "world y", "world z"]
        values = [_mot_number(text, key, record) for text, key in zip(fields, keys)]
        frame, track_id = _mot_int(values[0], "frame", record), _mot_int(values[1], "id", record)
        if frame < 1:
            raise CocoDataError(f"{record}: field 'frame': frames count from 1, got {frame}")
        if (frame, track_id) in seen:
            msg = f"identity {track_id} is already in frame {frame} (line {seen[frame, track_id]})"
            raise CocoDataError(f"{record}: field 'id': {msg}")
        seen[frame, track_id] = number
        has_class = len(fields) in (8, 9)
        rows.append(
            _MotRow(
                number,
                frame,
                track_id,
                values[2:6],
                values[6] if len(values) > 6 else 1.0,
                _mot_int(values[7], "class", record) if has_class else MOT_PEDESTRIAN,
                values[8] if len(fields) == 9 else None,
            )
        )
    return rows


def _mot_number(text: str, key: str, record: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CocoDataError(f"{record}: field '{key}': expected a number, got {text!r}")
    return value


def _mot_int(value: float, key: str, record: str) -> int:
    if not value.is_integer():
        raise CocoDataError(f"{record}: field '{key}': expected an integer, got {value:g}")
    return int(value)


def _mot_sequence(folder: Path, frames: str | Path | None) -> tuple[str, int, int, list[str]]:
    """(name, width, height, file names) of a sequence folder, copying frames to ``frames``."""
    seq = _seqinfo(folder)
    name, image_dir, suffix = seq["name"], folder / seq["imdir"], seq["imext"]
    length = int(seq["seqlength"]) or len(list(image_dir.glob(f"*{suffix}")))
    paths = [image_dir / f"{frame:06d}{suffix}" for frame in range(1, length + 1)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing or not paths:
        listed = ", ".join(missing[:3]) + (f" ... ({len(missing)} in all)" if missing else "")
        raise CocoDataError(f"{image_dir}: frames missing: {listed or 'no frames at all'}")
    width, height = int(seq["imwidth"]), int(seq["imheight"])
    if not width or not height:
        width, height = _image_size(paths[0])
    if frames is None:
        return name, width, height, [p.relative_to(folder).as_posix() for p in paths]
    target = Path(frames) / name
    target.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copyfile(path, target / path.name)
    return name, width, height, [f"{name}/{p.name}" for p in paths]


def _seqinfo(folder: Path) -> dict[str, str]:
    """``[Sequence]`` of ``seqinfo.ini`` (lower-case keys); MOT15-style defaults where absent."""
    seq = {
        "name": folder.name,
        "imdir": "img1",
        "imext": ".jpg",
        "seqlength": "0",
        "imwidth": "0",
        "imheight": "0",
    }
    path, parser = folder / "seqinfo.ini", configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise CocoDataError(f"{path}: malformed ({str(exc).splitlines()[0]})") from None
    if parser.has_section("Sequence"):
        seq.update(parser["Sequence"])
    for key in ("seqlength", "imwidth", "imheight"):
        if not seq[key].strip().isdigit():
            raise CocoDataError(f"{path}: field '{key}': expected an integer, got {seq[key]!r}")
    return seq


def _extract_frames(video: Path, target: Path) -> tuple[int, int, list[str]]:
    """Decode every frame of ``video`` to ``target/000001.jpg ...``; (width, height, names)."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise CocoDataError(f"{video}: cannot open the video (missing file or unknown format)")
    target.mkdir(parents=True, exist_ok=True)
    names, size = [], None
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            name = f"{len(names) + 1:06d}.jpg"
            if not cv2.imwrite(str(target / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise CocoDataError(f"{target / name}: cannot write the frame")
            names.append(f"{target.name}/{name}")
            size = size or (frame.shape[1], frame.shape[0])
    finally:
        capture.release()
    if not names:
        raise CocoDataError(f"{video}: no frame could be decoded")
    return size[0], size[1], names


def write_mot(images: list[dict], boxes: list[dict], path: str | Path) -> Path:
    """Boxes with ``track_id`` (COCO annotations or tracker results) -> a MOTChallenge text file.

    The way back for TrackEval: lines ``frame,id,x,y,w,h,conf,-1,-1,-1`` sorted by frame and
    identity, ``frame`` from the image's ``frame`` field, ``conf`` from the box's ``score`` (1
    for ground truth). ``iscrowd`` boxes are left out: MOT text has no ignore regions.

    Raises:
        CocoDataError: a box without an integer ``track_id``, or of an image without ``frame``.
    """
    frame_of = {image["id"]: image.get("frame") for image in images}
    rows = []
    for box in boxes:
        if box.get("iscrowd"):
            continue
        frame, track_id = frame_of.get(box["image_id"]), box.get("track_id")
        if not isinstance(frame, int) or not isinstance(track_id, int):
            field_name = "track_id" if isinstance(frame, int) else "image_id"
            msg = "needs an integer track_id and an image with a 'frame'"
            raise CocoDataError(f"box id={box.get('id')}: field '{field_name}': {msg}")
        numbers = [*box["bbox"], box.get("score", 1)]
        rows.append((frame, track_id, ",".join(f"{v:.10g}" for v in numbers)))
    lines = [f"{frame},{track_id},{values},-1,-1,-1\n" for frame, track_id, values in sorted(rows)]
    return atomic_write_text(path, "".join(lines))


# --- COCO -> YOLO --------------------------------------------------------------------------


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


# --- registry ------------------------------------------------------------------------------

CONVERTERS: dict[str, Callable[..., dict]] = {
    "market1501": market1501_to_coco,
    "voc": voc_to_coco,
    "yolo": yolo_to_coco,
    "imagefolder": imagefolder_to_coco,
    "mot": mot_to_coco,
}


def default_frames_dir(output: str | Path) -> Path:
    """Where the frames of a video go by default: ``<output stem>_frames/`` beside the JSON."""
    output = Path(output)
    return output.with_name(f"{output.stem}_frames")


def convert_dataset(
    layout: str, source: str | Path, output: str | Path, options: dict[str, Any] | None = None
) -> dict:
    """Convert the dataset at ``source`` in ``layout``, write it to ``output``, return the dict.

    ``options`` are the converter's keyword arguments (e.g. ``split`` for ``voc``).
    """
    if layout not in CONVERTERS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(CONVERTERS)}")
    dataset = CONVERTERS[layout](source, **(options or {}))
    atomic_write_json(output, dataset, indent=None)
    return dataset


def convert(
    layout: str, source: str | Path, output: str | Path, options: dict[str, Any] | None = None
) -> Path:
    """Convert the dataset at ``source`` in ``layout`` to a COCO JSON file ``output``.

    ``options`` are the converter's keyword arguments (e.g. ``split`` for ``market1501``).
    """
    convert_dataset(layout, source, output, options)
    return Path(output)
