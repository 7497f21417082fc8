"""Tracking I/O: frames from a video or an image folder, MOTChallenge text files, the drawn video.

MOTChallenge lines are ``frame,id,x,y,w,h,score,-1,-1,-1`` with frames counted from 1 and
``x, y`` the top-left corner in pixels. A detection file (``det.txt``) has ``id = -1``; a
ground-truth file (``gt.txt``) of MOT15 has 10 columns, of MOT16/17/20 9 (class, visibility).
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vision_tasks.tracking.tracker import Detections, TrackedBox
from vision_tasks.utils import atomic_write_text

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
DETECTION_FIELDS = "frame,id,x,y,w,h,score"


@dataclass
class FrameSource:
    """Frames of a video file or a folder of images, read in order.

    Iterating yields ``(frame_number, rgb)`` with frames counted from 1. A read that fails
    part-way (a truncated video, a corrupt image) ends the iteration; ``stopped`` then says
    where and why, and the frames before it stand.
    """

    path: Path
    name: str
    fps: float
    expected: int  # frames announced (video header, or files in the folder); 0 if unknown
    stopped: str | None = None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.path.is_dir():
            yield from self._images()
        else:
            yield from self._video()

    def _images(self) -> Iterator[tuple[int, np.ndarray]]:
        for number, path in enumerate(_image_files(self.path), 1):
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                self.stopped = f"{path}: cannot decode the image (frame {number})"
                return
            yield number, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def _video(self) -> Iterator[tuple[int, np.ndarray]]:
        capture = cv2.VideoCapture(str(self.path))
        number = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                number += 1
                yield number, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()
        if self.expected and number < self.expected:
            self.stopped = (
                f"{self.path}: no frame could be decoded after frame {number} of the "
                f"{self.expected} its header announces (truncated or corrupt)"
            )


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def open_source(path: Path, fps: float | None = None) -> FrameSource:
    """Check a video or image folder can be read; one clear line (SystemExit) if not."""
    path = Path(path)
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise SystemExit(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return FrameSource(path, path.name, fps or 25.0, len(files))
    if not path.is_file():
        raise SystemExit(f"{path}: no such video file or image folder")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened() or not capture.read()[0]:
            raise SystemExit(f"{path}: cannot read the video (not a video, or no decodable frame)")
        announced = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        rate = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return FrameSource(path, path.stem, fps or (rate if rate > 0 else 25.0), announced)


def read_mot_detections(path: Path) -> dict[int, Detections]:
    """A MOTChallenge detection (or ground-truth) file -> detections per frame.

    Reads ``frame,id,x,y,w,h,score`` from each line (further columns are ignored: every box is
    one class). A gt file's ``conf`` column is its score: 1 for boxes to track, 0 for ignored
    ones, which the tracker's low threshold leaves out.

    Raises:
        SystemExit: one line naming file:line and field for the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: detection file not found")
    rows: dict[int, list[list[float]]] = defaultdict(list)
    keys = DETECTION_FIELDS.split(",")
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        record = f"{path}:{number}"
        if len(fields) < len(keys):
            raise SystemExit(
                f"{record}: expected at least {len(keys)} comma-separated fields "
                f"({DETECTION_FIELDS},...), got {len(fields)}"
            )
        values = [_number(text, key, record) for text, key in zip(fields, keys)]
        frame = values[0]
        if frame < 1 or not frame.is_integer():
            raise SystemExit(f"{record}: field 'frame': expected an integer >= 1, got {fields[0]}")
        if values[4] <= 0 or values[5] <= 0:
            raise SystemExit(f"{record}: field 'w'/'h': box of zero or negative size")
        rows[int(frame)].append(values[2:7])
    out = {}
    for frame, boxes in rows.items():
        array = np.asarray(boxes, dtype=np.float64)
        xyxy = np.column_stack([array[:, :2], array[:, :2] + array[:, 2:4]])
        out[frame] = Detections(xyxy, array[:, 4])
    return out


def _number(text: str, key: str, record: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise SystemExit(f"{record}: field '{key}': expected a number, got {text!r}")
    return value


def mot_lines(frame: int, tracks: list[TrackedBox]) -> list[str]:
    """MOTChallenge result lines of one frame's tracks."""
    lines = []
    for track in sorted(tracks, key=lambda t: t.track_id):
        x1, y1, x2, y2 = (float(v) for v in track.box_xyxy)
        lines.append(
            f"{frame},{track.track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
            f"{track.score:.4f},-1,-1,-1\n"
        )
    return lines


def write_mot_results(path: Path, lines: list[str]) -> Path:
    """Write the result lines (already in frame order) atomically."""
    return atomic_write_text(path, "".join(lines))


def colour_of(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour per identity (golden-ratio hues)."""
    hue = int((track_id * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 220, 255]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


class AnnotatedVideo:
    """An MP4 of the frames with each track's box, identity and a short trail of its centre.

    Args:
        path: the ``.mp4`` to write (``mp4v`` codec, which OpenCV always has).
        fps: frame rate of the output.
        trail: frames of centre history drawn behind each track.
    """

    def __init__(self, path: Path, fps: float, trail: int = 20) -> None:
        self.path, self.fps = Path(path), fps
        # Written under a temporary name, renamed when complete: an interrupted run leaves no
        # truncated video under the final name.
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.writer: cv2.VideoWriter | None = None
        self.trails: dict[int, deque] = defaultdict(lambda: deque(maxlen=trail))
        self.frames = 0

    def write(self, rgb: np.ndarray, tracks: list[TrackedBox]) -> None:
        """Draw this frame's tracks and append the frame."""
        if self.writer is None:
            height, width = rgb.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, (width, height))
        canvas = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        for track in tracks:
            x1, y1, x2, y2 = (int(round(v)) for v in track.box_xyxy)
            colour = colour_of(track.track_id)[::-1]  # BGR for OpenCV
            trail = self.trails[track.track_id]
            trail.append(((x1 + x2) // 2, (y1 + y2) // 2))
            points = np.array(trail, dtype=np.int32).reshape(-1, 1, 2)
            cv2.polylines(canvas, [points], False, colour, 2)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(
                canvas,
                str(track.track_id),
                (x1, max(y1 - 4, 10)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                colour,
                2,
            )
        self.writer.write(canvas)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; None if no frame was written."""
        if self.writer is None:
            return None
        self.writer.release()
        self.partial.replace(self.path)
        return self.path
