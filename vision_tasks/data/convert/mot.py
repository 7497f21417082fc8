"""MOTChallenge ground truth (sequence folder or video) -> COCO with ``track_id``, and the
way back for TrackEval (:func:`write_mot`)."""

from __future__ import annotations

import configparser
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2

from vision_tasks.data.coco import CocoDataError
from vision_tasks.data.convert.common import (
    _box_annotation,
    _categories,
    _coco,
    _image_size,
)
from vision_tasks.utils import atomic_write_text

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
