"""Validation of a COCO dataset dict: every record and field checked, then the data policy.

:func:`_validate` checks categories, images (and their files) and annotations and returns a
:class:`_Report` of problems; :func:`_clip_annotations` (policy ``clip``) repairs what crosses
the image edge and :func:`_apply_policy` drops what is bad. ``CocoIndex`` runs these in turn.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from vision_tasks.data.coco.errors import (
    _OUTSIDE_BOX,
    _OUTSIDE_KEYPOINTS,
    CocoDataError,
    _fatal,
    _fits_int64,
    _Problem,
    _show,
    is_integer,
)
from vision_tasks.data.coco.images import check_image_file

# Real COCO boxes touch the border with float rounding (x + w = W + 0.01), so allow ~1 px.
BOX_TOLERANCE = 1.0
_REQUIRED = ("id", "image_id", "category_id", "bbox")
# strict: any bad record stops the run; skip: bad records are dropped and counted; clip: as
# skip, but boxes crossing the image edge are clipped to it and keypoints outside it unlabelled.
Policy = Literal["strict", "skip", "clip"]
POLICIES = ("strict", "skip", "clip")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return _fits_int64(value) if isinstance(value, int) else math.isfinite(value)


def _all_finite(values: list) -> bool:
    try:  # sum() runs in C (fast on ~1M polygons); str/None/list raise, NaN/inf propagate
        return math.isfinite(sum(values))
    except (TypeError, OverflowError):  # OverflowError: an int beyond any float
        return False


def _record(kind: str, item: Any, pos: int) -> str:
    if isinstance(item, dict) and is_integer(item.get("id")):
        return f"{kind} id={item['id']}"
    return f"{kind} #{pos} (no valid id)"


def _top_level_issues(data: Any) -> Iterator[str]:
    """Top level must be an object with list-valued images / annotations / categories."""
    if not isinstance(data, dict):
        yield f"top level is a {type(data).__name__}, expected an object"
        return
    for key in ("images", "annotations", "categories"):
        if key not in data:
            yield f"missing top-level key '{key}'"
        elif not isinstance(data[key], list):
            yield f"top-level '{key}' is a {type(data[key]).__name__}, expected a list"


def _category_issues(cat: dict, keypoint_fields: bool) -> Iterator[tuple[str, str]]:
    """Category types; with ``keypoint_fields`` also its keypoint names and 1-based skeleton."""
    if not is_integer(cat.get("id")):
        yield "id", f"expected an integer, got {_show(cat.get('id'))}"
    if not isinstance(cat.get("name"), str) or not cat["name"]:
        yield "name", f"expected a non-empty string, got {_show(cat.get('name'))}"
    names, skeleton = cat.get("keypoints"), cat.get("skeleton")
    if not keypoint_fields or names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        yield "keypoints", "expected a list of keypoint names"
    elif skeleton is not None and not (
        isinstance(skeleton, list)
        and all(isinstance(e, list) and len(e) == 2 for e in skeleton)
        and all(is_integer(i) and 1 <= i <= len(names) for e in skeleton for i in e)
    ):
        yield "skeleton", f"expected pairs of 1-based keypoint indices in 1..{len(names)}"


def _image_issues(img: dict) -> Iterator[tuple[str, str]]:
    """Image record types, and a file_name that stays inside the image root."""
    if not is_integer(img.get("id")):
        yield "id", f"expected an integer, got {_show(img.get('id'))}"
    for key in ("width", "height"):
        if not is_integer(img.get(key)) or img[key] <= 0:
            yield key, f"expected a positive integer, got {_show(img.get(key))}"
    name = img.get("file_name")
    if not isinstance(name, str) or not name:
        yield "file_name", f"expected a non-empty string, got {_show(name)}"
    elif os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
        # Lexical check: a symlinked folder inside the root is legitimate, '..' is not.
        yield "file_name", f"{name!r} points outside the image root (refused for safety)"


def _annotation_issues(ann: dict, img: dict, cat: dict | None, kps: bool) -> Iterator[tuple]:
    """Checks of an annotation whose keys/types are fine and whose image exists."""
    if cat is None:
        msg = f"no category with id={ann['category_id']}"
        yield "category_id", msg, "unknown category_id"
    yield from _bbox_issues(ann["bbox"], img["width"], img["height"])
    if "iscrowd" in ann and not (is_integer(ann["iscrowd"]) and ann["iscrowd"] in (0, 1)):
        yield "iscrowd", f"expected 0 or 1, got {_show(ann['iscrowd'])}", "invalid iscrowd"
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
        msg = f"expected a non-negative number, got {_show(ann['area'])}"
        yield "area", msg, "invalid area"
    if ann.get("segmentation") not in (None, []):
        for msg, reason in _segmentation_issues(ann["segmentation"], img["height"], img["width"]):
            yield "segmentation", msg, reason
    if kps and cat is not None and cat.get("keypoints"):
        issues = list(_keypoint_issues(ann, cat))
        for key, msg in issues:
            yield key, msg, "invalid keypoints"
        outside = (
            [] if issues or "keypoints" not in ann else _keypoints_outside(ann["keypoints"], img)
        )
        if outside:
            i, x, y = outside[0]
            msg = (
                f"{len(outside)} labelled keypoint(s) outside the {img['width']}x{img['height']} "
                f"image (first: keypoint {i} at ({x:g}, {y:g}))"
            )
            yield "keypoints", msg, _OUTSIDE_KEYPOINTS


def _bbox_issues(bbox: Any, width: int, height: int) -> Iterator[tuple[str, str, str]]:
    """``[x, y, w, h]``: four finite numbers, positive size, inside the image (+- 1 px)."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        yield "bbox", f"expected [x, y, width, height], got {_show(bbox)}", "invalid bbox"
        return
    bad = [v for v in bbox if not _is_number(v)]
    if bad:
        yield "bbox", f"value {_show(bad[0])} is not a finite number", "invalid bbox"
        return
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        name, value = ("width", w) if w <= 0 else ("height", h)
        yield "bbox", f"{name} {value:g} is not positive", "invalid bbox"
    elif min(x, y) < -BOX_TOLERANCE or max(x + w - width, y + h - height) > BOX_TOLERANCE:
        msg = f"box [{x:g}, {y:g}, {w:g}, {h:g}] extends outside the {width}x{height} image"
        yield "bbox", msg, _OUTSIDE_BOX


def _segmentation_issues(seg: Any, height: int, width: int) -> Iterator[tuple[str, str]]:
    """Polygons with >= 3 points and an even length inside the image (+- 1 px), or an RLE of the
    image's [h, w] whose runs cover it exactly; yields (message, reason)."""
    if isinstance(seg, dict):
        yield from ((msg, "invalid segmentation") for msg in _rle_issues(seg, height, width))
        return
    if not isinstance(seg, list):
        yield (
            f"expected a list of polygons or an RLE object, got {_show(seg)}",
            "invalid segmentation",
        )
        return
    for i, poly in enumerate(seg):
        if not isinstance(poly, list) or not _all_finite(poly):
            yield f"polygon {i} is not a list of finite numbers", "invalid segmentation"
        elif len(poly) % 2:
            msg = f"polygon {i} has an odd number of coordinates ({len(poly)})"
            yield msg, "invalid segmentation"
        elif len(poly) < 6:
            msg = f"polygon {i} has {len(poly) // 2} point(s); at least 3 are needed"
            yield msg, "invalid segmentation"
        elif _outside(poly[0::2], width) or _outside(poly[1::2], height):
            # pycocotools rasterises a polygon over its whole extent: 1e7 px cost 5.6 s and
            # 1.5 GB per mask, 3e9 px crashed the process.
            xs, ys = poly[0::2], poly[1::2]
            msg = (
                f"polygon {i} reaches outside the {width}x{height} image (x {min(xs):g}.."
                f"{max(xs):g}, y {min(ys):g}..{max(ys):g})"
            )
            yield msg, "segmentation outside image"


def _outside(values: list, size: int) -> bool:
    """Any coordinate beyond ``[0, size]`` by more than ``BOX_TOLERANCE``."""
    return min(values) < -BOX_TOLERANCE or max(values) > size + BOX_TOLERANCE


def _rle_issues(seg: dict, height: int, width: int) -> Iterator[str]:
    """An RLE of the image's [h, w] whose runs (a list, or COCO's compressed string) sum to h*w."""
    size, counts = seg.get("size"), seg.get("counts")
    if size != [height, width]:
        yield f"RLE size {_show(size)} differs from the image's [height, width] {[height, width]}"
        return
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
        if runs is None:
            yield f"RLE counts string {_show(counts)} is not COCO's compressed RLE"
            return
        counts = runs
    elif not isinstance(counts, list):
        yield "RLE counts must be a string or a list of non-negative integers"
        return
    if not all(is_integer(c) and c >= 0 for c in counts):
        yield "RLE counts must be a string or a list of non-negative integers"
    elif sum(counts) != height * width:
        yield f"RLE counts sum to {sum(counts)}, expected height*width = {height * width}"


def rle_string_counts(text: str) -> list[int] | None:
    """Decode COCO's compressed RLE string to its run lengths; ``None`` if it is not one.

    The format of pycocotools' ``rleFrString``: each number in 5-bit groups (characters 48..111,
    bit 0x20: more groups follow, bit 0x10 of the last group: negative), from the third on
    stored as the difference to the number two before. pycocotools itself checks nothing (it
    reads past the end of a string that stops inside a number), so this is done here first.
    """
    runs: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos == len(text):
                return None  # stops inside a number
            group = ord(text[pos]) - 48
            if not 0 <= group < 64:
                return None
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos, shift = pos + 1, shift + 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return runs


def _keypoint_issues(ann: dict, cat: dict) -> Iterator[tuple[str, str]]:
    """``keypoints``: 3 x K finite numbers with visibility 0/1/2; ``num_keypoints`` >= 0."""
    num = ann.get("num_keypoints", 0)
    if not (is_integer(num) and num >= 0):
        yield "num_keypoints", f"expected a non-negative integer, got {_show(num)}"
    values, k = ann.get("keypoints"), len(cat["keypoints"])
    if values is None:
        return
    if not isinstance(values, list) or not _all_finite(values):
        yield "keypoints", "expected a list of finite numbers"
    elif len(values) != 3 * k:
        msg = f"has {len(values)} values, expected {3 * k} (3 x {k} keypoints of {cat['name']!r})"
        yield "keypoints", msg
    elif set(values[2::3]) - {0, 1, 2}:
        flag = min(set(values[2::3]) - {0, 1, 2})
        yield "keypoints", f"visibility flag {_show(flag)} is not 0, 1 or 2"
    elif is_integer(num) and num >= 0 and "num_keypoints" in ann:
        # COCOeval ignores instances with num_keypoints == 0, and the keypoint data takes only
        # those with num_keypoints > 0: a wrong count silently drops or keeps an instance.
        labelled = sum(1 for v in values[2::3] if v > 0)
        if num != labelled:
            msg = f"is {num}, but {labelled} keypoint(s) are labelled (visibility > 0)"
            yield "num_keypoints", msg


def _keypoints_outside(values: list, img: dict) -> list[tuple[int, float, float]]:
    """(index, x, y) of each labelled keypoint beyond the image (+- ``BOX_TOLERANCE``)."""
    width, height, tol = img["width"], img["height"], BOX_TOLERANCE
    return [
        (i, x, y)
        for i, (x, y, v) in enumerate(zip(values[0::3], values[1::3], values[2::3]))
        if v > 0 and not (-tol <= x <= width + tol and -tol <= y <= height + tol)
    ]


def _clipped(ann: dict, img: dict, reasons: set[str]) -> dict | None:
    """A copy of ``ann`` with its box clipped to the image and its outside keypoints unlabelled
    (x = y = v = 0: COCOeval counts v = 1 in OKS, and no prediction can reach them); ``None``
    where no part of the box lies in the image."""
    ann = dict(ann)
    if _OUTSIDE_BOX in reasons:
        x, y, w, h = ann["bbox"]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, img["width"]), min(y + h, img["height"])
        if x1 <= x0 or y1 <= y0:
            return None
        ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        if "area" in ann and not ann.get("segmentation"):
            ann["area"] = float((x1 - x0) * (y1 - y0))
    if _OUTSIDE_KEYPOINTS in reasons:
        values = list(ann["keypoints"])
        for i, _, _ in _keypoints_outside(values, img):
            values[3 * i : 3 * i + 3] = [0, 0, 0]
        ann["keypoints"] = values
        if "num_keypoints" in ann:
            ann["num_keypoints"] = sum(1 for v in values[2::3] if v > 0)
    return ann


def _image_file_issue(img: dict, root: Path) -> tuple[str, str, str] | None:
    """The image file exists, is non-empty, its header size matches the record, and it decodes."""
    path = root / img["file_name"]
    if not path.is_file():
        return "file_name", f"file not found: {path}", "image file missing"
    if path.stat().st_size == 0:
        return "file_name", f"file is empty (0 bytes): {path}", "image file empty"
    try:
        with Image.open(path) as pil:  # lazy: reads the header only
            width, height = pil.size
    except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        msg = f"cannot read image header of {path} ({type(exc).__name__})"
        return "file_name", msg, "image unreadable"
    if (width, height) != (img["width"], img["height"]):
        msg = f"file {path.name} is {width}x{height} (WxH) but the record says "
        return "width/height", msg + f"{img['width']}x{img['height']}", "image size mismatch"
    try:  # a sound header can front damaged data, which would stop training mid-epoch
        check_image_file(path)
    except CocoDataError as exc:
        return "file_name", str(exc), "image undecodable"
    return None


@dataclass
class _Report:
    """What validation found: problems, the valid records, what ``skip`` drops and why."""

    keypoint_fields: bool
    problems: list[_Problem] = field(default_factory=list)
    categories: dict[int, dict] = field(default_factory=dict)
    images: dict[int, dict] = field(default_factory=dict)
    broken_image_ids: set[int] = field(default_factory=set)  # already fatal problems
    bad_annotations: dict[int, str] = field(default_factory=dict)  # list position -> reason
    annotation_problems: dict[int, list[_Problem]] = field(default_factory=dict)  # position ->
    bad_images: dict[int, str] = field(default_factory=dict)  # image id -> reason


def _validate_records(records: list, kind: str, report: _Report) -> None:
    """Check category or image records (problems always fatal) and index them by id."""
    seen = report.categories if kind == "category" else report.images
    names: dict[str, Any] = {}
    check = partial(_category_issues, keypoint_fields=report.keypoint_fields)
    for pos, item in enumerate(records):
        rec = _record(kind, item, pos)
        if not isinstance(item, dict):
            report.problems.append(_fatal(f"expected an object, got {_show(item)}", rec))
            continue
        issues = check(item) if kind == "category" else _image_issues(item)
        problems = [_fatal(msg, rec, key) for key, msg in issues]
        if is_integer(item.get("id")) and item["id"] in seen:
            problems.append(_fatal(f"duplicate {kind} id {item['id']}", rec, "id"))
        name = item.get("name")
        if kind == "category" and isinstance(name, str) and name in names:
            # Results, reports and --data.category name categories: one name, one category.
            msg = f"name {name!r} is already used by category id={names[name]}"
            problems.append(_fatal(msg, rec, "name"))
        elif kind == "category" and isinstance(name, str):
            names[name] = item.get("id")
        if is_integer(item.get("id")) and problems and kind == "image":
            report.broken_image_ids.add(item["id"])
        elif is_integer(item.get("id")):
            seen.setdefault(item["id"], item)
        report.problems += problems


def _check_annotation(ann: Any, pos: int, report: _Report) -> list[_Problem]:
    """All problems of one annotation (each skippable), keys and types first."""
    rec = _record("annotation", ann, pos)
    if not isinstance(ann, dict):
        return [_Problem(rec, None, f"expected an object, got {_show(ann)}", "wrong type")]
    problems = [_Problem(rec, k, "missing", "missing field") for k in _REQUIRED if k not in ann]
    for key in ("id", "image_id", "category_id"):
        if key in ann and not is_integer(ann[key]):
            msg = f"expected an integer, got {_show(ann[key])}"
            problems.append(_Problem(rec, key, msg, "wrong type"))
    if problems or ann["image_id"] in report.broken_image_ids:
        return problems  # the broken image record is reported (fatally) on its own
    img = report.images.get(ann["image_id"])
    if img is None:
        msg = f"no image with id={ann['image_id']}"
        return [_Problem(rec, "image_id", msg, "unknown image_id")]
    cat = report.categories.get(ann["category_id"])
    issues = _annotation_issues(ann, img, cat, report.keypoint_fields)
    return [_Problem(rec, key, msg, reason) for key, msg, reason in issues]


def _validate(data: dict, root: Path, check_images: bool, keypoint_fields: bool) -> _Report:
    """Check every record of a structurally valid dataset."""
    report = _Report(keypoint_fields)
    _validate_records(data["categories"], "category", report)
    if not data["images"]:
        report.problems.append(_fatal("the dataset has no images", field="images"))
    _validate_records(data["images"], "image", report)
    seen: set[int] = set()
    for pos, ann in enumerate(data["annotations"]):
        problems = _check_annotation(ann, pos, report)
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if is_integer(ann_id) and ann_id in seen:
            msg = f"id {ann_id} is already used by an earlier annotation"
            problems.insert(
                0, _Problem(f"annotation id={ann_id}", "id", msg, "duplicate annotation id")
            )
        if is_integer(ann_id):
            seen.add(ann_id)
        if problems:
            report.bad_annotations[pos] = problems[0].reason
            report.annotation_problems[pos] = problems
            report.problems += problems
    if check_images and not root.is_dir():
        report.problems.append(_fatal(f"image root {root} is not a directory"))
    elif check_images:
        for image_id, img in report.images.items():
            issue = _image_file_issue(img, root)
            if issue is not None:
                report.problems.append(_Problem(f"image id={image_id}", *issue))
                report.bad_images[image_id] = issue[2]
    return report


def _clip_annotations(data: dict, report: _Report) -> tuple[dict, dict[str, int]]:
    """Repair the annotations whose only problems are a box or keypoints beyond the image edge
    (the ``clip`` policy); return the data with the repaired copies and what was clipped."""
    clippable, clipped = {_OUTSIDE_BOX, _OUTSIDE_KEYPOINTS}, Counter()
    annotations = list(data["annotations"])
    for pos, problems in report.annotation_problems.items():
        reasons = {p.reason for p in problems}
        if not reasons <= clippable:
            continue
        repaired = _clipped(annotations[pos], report.images[annotations[pos]["image_id"]], reasons)
        if repaired is None:
            continue  # nothing of the box is in the image: skipped and counted as such
        annotations[pos] = repaired
        del report.bad_annotations[pos]
        report.problems = [p for p in report.problems if p not in problems]
        names = {
            _OUTSIDE_BOX: "box crossing the image edge",
            _OUTSIDE_KEYPOINTS: "keypoints outside the image",
        }
        clipped.update(names[r] for r in reasons)
    return {**data, "annotations": annotations}, dict(clipped)


def _apply_policy(data: dict, report: _Report) -> tuple[dict, dict[str, int]]:
    """Drop the annotations and images marked bad; return the kept dataset and the counts."""
    counts = Counter(report.bad_annotations.values()) + Counter(report.bad_images.values())
    annotations = []
    for pos, ann in enumerate(data["annotations"]):
        if pos in report.bad_annotations:
            continue
        if ann["image_id"] in report.bad_images:
            counts["annotation of skipped image"] += 1
        else:
            annotations.append(ann)
    images = [img for img in data["images"] if img["id"] not in report.bad_images]
    categories = sorted(data["categories"], key=lambda c: c["id"])
    dataset = {**data, "images": images, "annotations": annotations, "categories": categories}
    return dataset, dict(counts)
