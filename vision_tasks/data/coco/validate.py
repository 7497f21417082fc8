"""COCO I/O: the one place that reads COCO JSON and image files and writes results JSON.

``CocoIndex`` loads an annotation file once, validates every record and reports bad input as
one ``CocoDataError`` with one line per problem (file, record, field), so a user never sees a
traceback from inside pycocotools or OpenCV. ``read_image`` is the image reader every task uses.

Example:
    >>> index = CocoIndex("annotations/instances_val2017.json", "val2017")
    >>> image = index.load_image(index.image_ids[0])  # (H, W, 3) uint8 RGB
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vision_tasks.jsonsafe import json_safe
from vision_tasks.utils import atomic_write_json

logger = logging.getLogger(__name__)

# Real COCO boxes touch the border with float rounding (x + w = W + 0.01), so allow ~1 px.
BOX_TOLERANCE = 1.0
MAX_LISTED_PROBLEMS = 20
_REQUIRED = ("id", "image_id", "category_id", "bbox")
# strict: any bad record stops the run; skip: bad records are dropped and counted; clip: as
# skip, but boxes crossing the image edge are clipped to it and keypoints outside it unlabelled.
Policy = Literal["strict", "skip", "clip"]
POLICIES = ("strict", "skip", "clip")
_OUTSIDE_BOX, _OUTSIDE_KEYPOINTS = "bbox outside image", "keypoints outside image"
# Ids become int64 tensors and numbers float64 arrays: larger integers overflow them.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class CocoDataError(ValueError):
    """Bad dataset input; the message is user-facing (one line per problem).

    Raised in a DataLoader worker, it reaches the main process re-created by torch with the
    worker's traceback as its message ("Caught CocoDataError in DataLoader worker process 0.
    Original Traceback ...: <message>"); the constructor keeps only ``<message>``, so a user
    reads it once, as if it had been raised in the main process.
    """

    # Tracebacks and pickles name it by its public path, whichever module of the package holds it.
    __module__ = "vision_tasks.data.coco"

    def __init__(self, message: str = "") -> None:
        super().__init__(_worker_message(message, type(self)))


def _worker_message(message: str, kind: type) -> str:
    """The original message inside torch's re-raised worker exception, else ``message``."""
    if not (isinstance(message, str) and message.startswith(f"Caught {kind.__name__} ")):
        return message
    if "\nOriginal Traceback (most recent call last):\n" not in message:
        return message
    # traceback.format_exception's last entry: "<module>.<qualname>: <str(exc)>\n"
    _, found, original = message.rpartition(f"\n{kind.__module__}.{kind.__qualname__}: ")
    return original.rstrip("\n") if found else message


# --- image files ---------------------------------------------------------------------------


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3) with OpenCV, converting gray/alpha/16-bit."""
    path = Path(path)
    # IMREAD_UNCHANGED ignores EXIF orientation, like the PIL header size checked by CocoIndex.
    return _to_rgb(_decode(_read_bytes(path), path, cv2.IMREAD_UNCHANGED), path)


def _to_rgb(image: np.ndarray, path: Path) -> np.ndarray:
    """A decoded image (any depth / channels OpenCV gives) as RGB uint8 (H, W, 3)."""
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v*255/65535)
    elif image.dtype != np.uint8:
        raise CocoDataError(f"{path}: unsupported pixel type {image.dtype} (not 8 or 16 bit)")
    if image.ndim == 3 and image.shape[2] in (1, 2):
        image = np.ascontiguousarray(image[:, :, 0])  # gray (+ alpha, dropped)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] not in (3, 4):
        raise CocoDataError(f"{path}: unsupported number of channels ({image.shape[2]})")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGB)


def check_image_file(path: str | Path) -> None:
    """Decode an image file once, as validation does, raising what :func:`read_image` would.

    A JPEG is decoded at 1/8 scale: libjpeg still reads every byte of the scan, so damage is
    found, at about half the cost of a full decode (1.3 against 2.3 ms for a COCO image).
    """
    path = Path(path)
    data = _read_bytes(path)
    if _is_jpeg(data):
        _decode(data, path, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    else:
        _to_rgb(_decode(data, path, cv2.IMREAD_UNCHANGED), path)


def _read_bytes(path: Path) -> np.ndarray:
    try:  # fromfile + imdecode: non-ASCII paths work and we get the bytes to check
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise CocoDataError(f"{path}: image file not found") from None
    except OSError as exc:
        raise CocoDataError(f"{path}: cannot read image file ({exc.strerror})") from None
    if data.size == 0:
        raise CocoDataError(f"{path}: image file is empty (0 bytes)")
    return data


def _is_jpeg(data: np.ndarray) -> bool:
    return data[:2].tobytes() == b"\xff\xd8"


def _decode(data: np.ndarray, path: Path, flags: int) -> np.ndarray:
    """``cv2.imdecode`` that refuses truncated or damaged JPEG data and undecodable files."""
    damage: list[str] = []
    if _is_jpeg(data):
        # libjpeg only warns on a truncated JPEG and OpenCV returns a half-grey image.
        if _jpeg_truncated(data.tobytes()):
            raise CocoDataError(f"{path}: JPEG file is truncated (no end-of-image marker)")
        image, damage = _imdecode_jpeg(data, flags)
    else:
        image = cv2.imdecode(data, flags)
    if damage:
        raise CocoDataError(f"{path}: JPEG data is damaged (libjpeg: {damage[0]})")
    if image is None:
        raise CocoDataError(f"{path}: cannot decode image (unsupported format or corrupt file)")
    return image


# libjpeg decodes damaged scan data on (OpenCV returns a smeared picture) and says so only in a
# warning it prints on stderr, with no file name: these warnings mean the data is damaged.
_JPEG_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file")
_STDERR_LOCK = threading.Lock()
# A fork (DataLoader workers) waits for a decode in another thread to give stderr back: the child
# would otherwise inherit the pipe as its stderr, and a held lock it could never release.
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=_STDERR_LOCK.acquire,
        after_in_parent=_STDERR_LOCK.release,
        after_in_child=_STDERR_LOCK.release,
    )


def _imdecode_jpeg(data: np.ndarray, flags: int) -> tuple[np.ndarray | None, list[str]]:
    """``cv2.imdecode`` of JPEG bytes, and libjpeg's damage warnings, read from stderr.

    File descriptor 2 is pointed at a pipe for the call (3 us; the decode takes 1-3 ms). Other
    output caught meanwhile (another thread's) is written back to stderr. libjpeg prints only
    its first warning, so the pipe's 64 KiB buffer cannot fill and block the decoder.
    """
    with _STDERR_LOCK:
        read_end, write_end = os.pipe()
        saved = os.dup(2)
        try:
            os.dup2(write_end, 2)
            try:
                image = cv2.imdecode(data, flags)
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
            os.close(write_end)
        printed = _drain(read_end).decode("utf-8", "replace")
    lines = printed.splitlines(keepends=True)
    damage = [line.strip() for line in lines if line.startswith(_JPEG_DAMAGE)]
    other = "".join(line for line in lines if not line.startswith(_JPEG_DAMAGE))
    if other:
        os.write(2, other.encode())
    return image, damage


def _drain(fd: int) -> bytes:
    """Everything written so far to the read end ``fd`` of a pipe, which it then closes.

    Non-blocking: a process forked meanwhile may hold the write end open, so EOF may never come.
    """
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    return b"".join(chunks)


def _jpeg_truncated(raw: bytes) -> bool:
    """True if walking the JPEG markers runs off the end of the data before end-of-image."""
    # Walking (not searching for FFD9) skips EXIF thumbnails and ignores trailing data.
    pos, size = 2, len(raw)
    while pos + 1 < size:
        if raw[pos] != 0xFF:
            return False  # corrupt rather than truncated: OpenCV gives the verdict
        marker = raw[pos + 1]
        if marker == 0xD9:
            return False
        if marker in (0xFF, 0x01) or 0xD0 <= marker <= 0xD7:  # fill byte / no length field
            pos += 1 if marker == 0xFF else 2
            continue
        if pos + 4 > size:
            return True
        pos += 2 + int.from_bytes(raw[pos + 2 : pos + 4], "big")
        while marker == 0xDA:  # entropy-coded data: skip stuffed FF00 and restart markers
            pos = raw.find(b"\xff", pos)
            if pos == -1 or pos + 1 >= size:
                return True
            following = raw[pos + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                pos += 2
            elif following == 0xFF:
                pos += 1
            else:
                break
    return True


# --- problems ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    """One user-facing problem; ``reason`` is its key in ``CocoIndex.skipped``."""

    record: str
    field: str | None
    message: str
    reason: str = ""
    fatal: bool = False

    def line(self, source: str) -> str:
        """Format as ``<file>: <record>: field '<field>': <message>``."""
        parts = [source, self.record, f"field '{self.field}'" if self.field else ""]
        return ": ".join([p for p in parts if p] + [self.message])


def _fatal(message: str, record: str = "", field: str | None = None) -> _Problem:
    return _Problem(record, field, message, fatal=True)


def _error(source: Path, problems: list[_Problem], hint: bool = False) -> CocoDataError:
    """Build the single multi-line error for ``problems`` found in ``source``."""
    lines = [p.line(source.name) for p in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    if hint:
        lines.append(
            "(fix the file, or pass --data.policy skip to drop the bad records and count them)"
        )
        if any(p.reason in (_OUTSIDE_BOX, _OUTSIDE_KEYPOINTS) for p in problems):
            lines.append(
                "(--data.policy clip keeps boxes that cross the image edge, clipped to "
                "it, and unlabels keypoints outside it)"
            )
    header = f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {source}:"
    return CocoDataError("\n".join([header, *lines]))


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and not _fits_int64(value):
        return f"an integer of {value.bit_length()} bits (beyond 64)"  # its repr may be huge
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fits_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


def is_integer(value: Any) -> bool:
    """An ``int`` (not ``bool``) that fits in int64, as every id and count must."""
    return isinstance(value, int) and not isinstance(value, bool) and _fits_int64(value)


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


# --- record checks: each yields (field, message[, reason]) ------------------------------------


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


# --- validation ----------------------------------------------------------------------------


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


def _load_json(path: Path) -> Any:
    """Parse a JSON file, turning OS / JSON errors into a one-problem CocoDataError."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        msg = "file not found"
    except json.JSONDecodeError as exc:
        msg = f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    except UnicodeDecodeError as exc:
        msg = f"not UTF-8 text (byte {exc.start}: {exc.reason})"
    except ValueError as exc:  # int() refuses more than sys.get_int_max_str_digits() digits
        limit = sys.get_int_max_str_digits()
        msg = f"unreadable JSON: a number has more than {limit} digits ({exc})".split(";")[0]
    except RecursionError:
        msg = "unreadable JSON: arrays or objects nested too deeply"
    except OSError as exc:
        msg = f"cannot read file ({exc.strerror})"
    raise _error(path, [_fatal(msg)])


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


def _complete(ann: dict, img: dict, cat: dict, keypoint_fields: bool, filled: Counter) -> None:
    """Fill the optional fields COCOeval reads: iscrowd, area, keypoints, num_keypoints."""
    if "iscrowd" not in ann:
        ann["iscrowd"] = 0
        filled["iscrowd"] += 1
    if "area" not in ann:
        seg, (h, w) = ann.get("segmentation"), (img["height"], img["width"])
        if isinstance(seg, list) and seg:
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and isinstance(seg["counts"], list):
            seg = mask_utils.frPyObjects(seg, h, w)
        area = mask_utils.area(seg) if seg else ann["bbox"][2] * ann["bbox"][3]
        ann["area"] = float(area)
        filled["area"] += 1
    if keypoint_fields and cat.get("keypoints"):
        if "keypoints" not in ann:  # unlabelled: COCOeval ignores num_keypoints == 0
            ann["keypoints"] = [0] * (3 * len(cat["keypoints"]))
            filled["keypoints (as unlabelled)"] += 1
        if "num_keypoints" not in ann:
            ann["num_keypoints"] = sum(1 for v in ann["keypoints"][2::3] if v > 0)
            filled["num_keypoints"] += 1


def _build_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


# --- index ---------------------------------------------------------------------------------


class CocoIndex:
    """A validated COCO annotation file plus its image folder.

    Args:
        json_path: COCO annotation JSON.
        image_root: folder that the images' ``file_name`` entries are relative to.
        policy: ``"strict"`` raises on any bad record; ``"skip"`` drops bad annotations and
            images (counted in ``skipped``, logged); ``"clip"`` clips boxes that cross the image
            edge to it and unlabels keypoints outside it (counted in ``clipped``, logged), and
            drops the rest as ``skip`` does. Structural problems are always fatal.
        check_images: check each image file exists, its header matches width/height and it
            decodes (damaged JPEG data included: about 1.3 ms per 640x480 JPEG, once).
        keypoint_fields: check (and complete) keypoints of categories that define
            ``keypoints``; False ignores keypoint fields (e.g. boxes from a keypoint file).

    Raises:
        CocoDataError: one message listing every problem (file, record, field).
    """

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path,
        policy: Policy = "strict",
        check_images: bool = True,
        keypoint_fields: bool = True,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.json_path, self.image_root, self.policy = Path(json_path), Path(image_root), policy
        data = _load_json(self.json_path)
        problems = [_fatal(msg) for msg in _top_level_issues(data)]
        if problems:
            raise _error(self.json_path, problems)
        report = _validate(data, self.image_root, check_images, keypoint_fields)
        self.clipped: dict[str, int] = {}
        if policy == "clip":
            data, self.clipped = _clip_annotations(data, report)
        fatal = [p for p in report.problems if p.fatal]
        if fatal and policy != "strict":
            raise _error(self.json_path, fatal)
        if report.problems and policy == "strict":
            raise _error(self.json_path, report.problems, hint=not fatal)
        dataset, self.skipped = _apply_policy(data, report)
        if not dataset["images"]:
            msg = f"no usable images remain after skipping ({self.skipped})"
            raise _error(self.json_path, [_fatal(msg, field="images")])
        self._index(dataset, keypoint_fields)
        self.coco = _build_coco(dataset)
        self._log_summary()

    def _index(self, dataset: dict, keypoint_fields: bool) -> None:
        self.categories: list[dict] = dataset["categories"]
        self.category_ids: list[int] = [c["id"] for c in self.categories]
        self.category_names: list[str] = [c["name"] for c in self.categories]
        self.cat_to_index: dict[int, int] = {c: i for i, c in enumerate(self.category_ids)}
        self.index_to_cat: list[int] = list(self.category_ids)
        self._images = {img["id"]: img for img in dataset["images"]}
        self.image_ids: list[int] = sorted(self._images)
        self._anns: dict[int, list[dict]] = {i: [] for i in self.image_ids}
        cats, filled = {c["id"]: c for c in self.categories}, Counter()
        for ann in sorted(dataset["annotations"], key=lambda a: a["id"]):
            img = self._images[ann["image_id"]]
            _complete(ann, img, cats[ann["category_id"]], keypoint_fields, filled)
            self._anns[ann["image_id"]].append(ann)
        if filled:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(filled.items()))
            logger.info("%s: filled missing optional fields: %s", self.json_path.name, counts)

    def _log_summary(self) -> None:
        name = self.json_path.name
        if self.clipped:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.clipped.items()))
            logger.warning("%s: policy='clip' clipped to the image: %s", name, counts)
        if self.skipped:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
            total = sum(self.skipped.values())
            logger.warning(
                "%s: policy=%r dropped %d record(s): %s", name, self.policy, total, counts
            )
        used = {a["category_id"] for anns in self._anns.values() for a in anns}
        empty = [f"{c['name']!r} (id={c['id']})" for c in self.categories if c["id"] not in used]
        if empty:
            listed = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
            logger.warning("%s: %d category(ies) without annotations: %s", name, len(empty), listed)

    @property
    def num_classes(self) -> int:
        """Number of categories (contiguous indices 0..C-1)."""
        return len(self.categories)

    def __len__(self) -> int:
        """Number of usable images."""
        return len(self.image_ids)

    def __repr__(self) -> str:
        """Summary: file, images, classes, policy."""
        return (
            f"CocoIndex({str(self.json_path)!r}, images={len(self)}, "
            f"classes={self.num_classes}, policy={self.policy!r})"
        )

    def image_info(self, image_id: int) -> dict:
        """The image record (id, file_name, width, height, ...) of ``image_id``."""
        if image_id not in self._images:
            raise KeyError(f"image id={image_id} is not a usable image of {self.json_path.name}")
        return self._images[image_id]

    def annotations(self, image_id: int, include_crowd: bool = True) -> list[dict]:
        """Valid annotations of ``image_id`` sorted by annotation id (crowd ones optional)."""
        self.image_info(image_id)
        anns = self._anns[image_id]
        return list(anns) if include_crowd else [a for a in anns if not a["iscrowd"]]

    def image_path(self, image_id: int) -> Path:
        """Path of the image file of ``image_id``."""
        return self.image_root / self.image_info(image_id)["file_name"]

    def load_image(self, image_id: int) -> np.ndarray:
        """Read the image of ``image_id`` as RGB uint8 (H, W, 3), checking its size."""
        info, path = self.image_info(image_id), self.image_path(image_id)
        image = read_image(path)
        if image.shape[:2] != (info["height"], info["width"]):
            size = f"{image.shape[1]}x{image.shape[0]}"
            raise CocoDataError(
                f"{self.json_path.name}: image id={image_id}: field 'width/height': file {path} "
                f"decodes to {size} (WxH) but the record says {info['width']}x{info['height']}"
            )
        return image


# --- results -------------------------------------------------------------------------------


def write_results_json(results: list[dict], path: str | Path) -> Path:
    """Write a COCO results list atomically (1-based ``id`` filled where absent)."""
    safe = json_safe(list(results))
    for i, item in enumerate(safe):
        if not isinstance(item, dict) or "image_id" not in item:
            raise ValueError(f"result #{i} is not an object with an 'image_id': {_show(item)}")
        item.setdefault("id", i + 1)
    return atomic_write_json(path, safe, indent=None)


def load_results(index: CocoIndex, results: list[dict] | str | Path) -> COCO:
    """Load results as a COCO object via ``COCO.loadRes``, with ``[]`` handled, prints silenced."""
    if isinstance(results, (str, Path)):
        source, anns = Path(results), _load_json(Path(results))
    else:
        source, anns = Path("<results>"), list(results)
    _check_results(anns, index, source)
    if not anns:  # loadRes reads anns[0]
        gt = index.coco.dataset
        return _build_coco(
            {
                "info": copy.deepcopy(gt.get("info", {})),
                "images": list(gt["images"]),
                "categories": copy.deepcopy(gt["categories"]),
                "annotations": [],
            }
        )
    with contextlib.redirect_stdout(io.StringIO()):
        return index.coco.loadRes([dict(a) for a in anns])  # loadRes mutates its input


def _check_results(anns: Any, index: CocoIndex, source: Path) -> None:
    """Replace loadRes's bare asserts with a CocoDataError naming the bad results."""
    if not isinstance(anns, list):
        raise _error(source, [_fatal(f"expected a list of results, got {type(anns).__name__}")])
    problems, name = [], index.json_path.name
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            problems.append(_fatal(f"expected an object, got {_show(ann)}", f"result #{i}"))
            continue
        for key, known in (("image_id", index._images), ("category_id", index.cat_to_index)):
            value = ann.get(key)
            if (key == "image_id" or key in ann) and not _is_known(value, known):
                msg = f"{key.replace('_', ' ')} {_show(value)} is not in {name}"
                problems.append(_fatal(msg, f"result #{i}", key))
    if problems:
        raise _error(source, problems)


def _is_known(value: Any, ids: dict) -> bool:
    try:
        return value in ids
    except TypeError:  # unhashable
        return False
