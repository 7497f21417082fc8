"""Deterministic synthetic COCO dataset: the toolkit's embedded default.

Every task trains on this data when no dataset is given, so it is small (320x240 JPEGs), quick to
write (seconds) and carries every annotation kind the six tasks need: textured backgrounds (for
homography), shapes with exact polygons (segmentation, detection), articulated stick figures with
the 17 COCO keypoints (keypoints), and recurring identities (``track_id``) seen by several cameras
(``camera_id``, each with its own colour cast, brightness and blur) for re-identification.

Objects are painted through the pycocotools rasterisation of the very polygons written to the
JSON, so the painted pixels equal ``COCO.annToMask`` exactly (``cv2.fillPoly`` disagrees with
pycocotools on about 5% of object pixels along the borders).

Example:
    >>> paths = synthetic_dataset()  # generated once into the cache, then reused
    >>> coco = pycocotools.coco.COCO(str(paths.train_json))
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from vision_tasks.utils import atomic_write_json

log = logging.getLogger(__name__)

SYNTHETIC_VERSION = 1

KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
SKELETON = (
    (16, 14),
    (14, 12),
    (17, 15),
    (15, 13),
    (12, 13),
    (6, 12),
    (7, 13),
    (6, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (9, 11),
    (2, 3),
    (1, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
    (5, 7),
)
# Non-contiguous on purpose: exercises the id <-> index maps everywhere.
PERSON, CIRCLE, SQUARE, TRIANGLE = 1, 3, 5, 7
CATEGORIES = (
    {
        "id": PERSON,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [list(pair) for pair in SKELETON],
    },
    {"id": CIRCLE, "name": "circle", "supercategory": "shape"},
    {"id": SQUARE, "name": "square", "supercategory": "shape"},
    {"id": TRIANGLE, "name": "triangle", "supercategory": "shape"},
)

# Identities per category; train ids come first, val ids after them, so the splits are disjoint.
_TRAIN_POOL = {PERSON: 16, CIRCLE: 8, SQUARE: 8, TRIANGLE: 8}
_VAL_POOL = {PERSON: 8, CIRCLE: 4, SQUARE: 4, TRIANGLE: 4}
# RGB, far apart, so that no camera's colour cast turns one into another.
_PALETTE = np.array(
    [
        (220, 40, 40),
        (245, 140, 30),
        (235, 220, 50),
        (50, 170, 60),
        (40, 200, 210),
        (40, 70, 220),
        (135, 50, 190),
        (245, 120, 190),
        (235, 235, 235),
        (30, 30, 30),
        (125, 75, 40),
        (0, 110, 110),
    ],
    dtype=np.float32,
)
_SKIN = np.array([(240, 200, 170), (215, 165, 120), (160, 110, 75), (95, 65, 45)], np.float32)
_PATTERNS = ("solid", "stripes", "checks")
# Camera "looks" (the re-ID domain shift): RGB gain, brightness offset, blur sigma, noise std.
_CAMERAS = {
    1: ((1.00, 1.00, 1.00), 0.0, 0.0, 3.0),
    2: ((1.12, 1.00, 0.85), 12.0, 0.8, 4.0),
    3: ((0.88, 0.97, 1.12), -22.0, 0.0, 6.0),
    4: ((0.80, 0.80, 0.80), 45.0, 1.2, 2.0),
}
_EMPTY_FRACTION = 0.03  # images without objects: valid negatives for detection
_PROFILE_FRACTION = 0.15  # persons turned sideways: their far eye and ear are occluded (v=1)
_BORDER_FRACTION = 0.10  # persons pushed over the image border
_INFO = {
    "description": "vision_tasks synthetic dataset",
    "url": "",
    "version": str(SYNTHETIC_VERSION),
    "year": 2024,
    "contributor": "vision_tasks",
    "date_created": "",  # no time stamp: the same seed gives the same bytes
}
_LICENSE = {"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0"}


@dataclass(frozen=True)
class SyntheticPaths:
    """Where a generated dataset lives."""

    root: Path
    train_json: Path  # root/annotations/instances_train.json
    train_images: Path  # root/train/ (file_name in the JSON is relative to it)
    val_json: Path  # root/annotations/instances_val.json
    val_images: Path  # root/val/

    @classmethod
    def at(cls, root: str | Path) -> SyntheticPaths:
        """Return the paths of a dataset rooted at ``root``."""
        root = Path(root)
        train, val = (root / "annotations" / f"instances_{s}.json" for s in ("train", "val"))
        return cls(root, train, root / "train", val, root / "val")


def default_cache_dir() -> Path:
    """Return $VISION_TASKS_CACHE, else $XDG_CACHE_HOME/vision_tasks, else ~/.cache/vision_tasks."""
    if os.environ.get("VISION_TASKS_CACHE"):
        return Path(os.environ["VISION_TASKS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vision_tasks"


def synthetic_dataset(
    seed: int = 0,
    num_train: int = 600,
    num_val: int = 120,
    width: int = 320,
    height: int = 240,
    cache_dir: str | Path | None = None,
) -> SyntheticPaths:
    """Return the cached dataset, generating it once (atomically) if absent.

    The dataset is written into a temporary sibling folder and renamed into place at the end, so
    concurrent callers (DDP ranks, pytest-xdist workers) and interrupted runs never expose a
    half-written dataset; the loser of a race discards its copy.

    Args:
        seed: Seed of the generator.
        num_train: Number of training images.
        num_val: Number of validation images.
        width: Image width in pixels.
        height: Image height in pixels.
        cache_dir: Parent folder; defaults to :func:`default_cache_dir`.

    Returns:
        The paths of the dataset folder, named after the version and every parameter.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"synthetic-v{SYNTHETIC_VERSION}-seed{seed}-{width}x{height}-{num_train}-{num_val}"
    final = cache_dir / name
    if final.is_dir():
        return SyntheticPaths.at(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate(tmp, seed, num_train, num_val, width, height)
        try:
            os.rename(tmp, final)
            log.info("Synthetic dataset written to %s", final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real error
                raise
            log.info("Another process wrote %s first; using it", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SyntheticPaths.at(final)


def generate(
    out_dir: str | Path,
    seed: int = 0,
    num_train: int = 600,
    num_val: int = 120,
    width: int = 320,
    height: int = 240,
) -> SyntheticPaths:
    """Write the dataset into out_dir (deterministic from seed).

    Image ``i`` of a split depends only on (seed, split, image size, the images before it), so a
    smaller dataset is a prefix of a larger one with the same seed and size.

    Args:
        out_dir: Folder to write (created; existing files are overwritten).
        seed: Seed of the generator: the same seed gives byte-identical files.
        num_train: Number of training images.
        num_val: Number of validation images.
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        The paths of the written dataset.
    """
    paths = SyntheticPaths.at(out_dir)
    identities = _make_identities(seed)
    first_val = sum(_TRAIN_POOL.values()) + 1
    for code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        folder, json_path = getattr(paths, f"{split}_images"), getattr(paths, f"{split}_json")
        pool = {k: v for k, v in identities.items() if (k >= first_val) == (split == "val")}
        images, annotations = _write_images(folder, seed, code, count, (width, height), pool)
        info = {**_INFO, "seed": seed, "split": split}
        coco = {"info": info, "licenses": [_LICENSE], "images": images}
        coco |= {"annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}
        atomic_write_json(json_path, coco, indent=None)
        log.info("Wrote %d images, %d annotations to %s", count, len(annotations), folder)
    return paths


def _write_images(
    folder: Path, seed: int, code: int, count: int, size: tuple[int, int], pool: dict[int, dict]
) -> tuple[list[dict], list[dict]]:
    """Render and save one split's images; return their COCO ``images`` and ``annotations``."""
    folder.mkdir(parents=True, exist_ok=True)
    dealer = _Dealer(pool, np.random.Generator(np.random.PCG64([seed, code, 1])))
    images, annotations = [], []
    for index in range(count):
        rng = np.random.Generator(np.random.PCG64([seed, code, 0, index]))
        image, camera, objects = _render_image(rng, dealer, pool, size)
        name = f"{index + 1:06d}.jpg"
        ok, jpeg = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {name}")
        (folder / name).write_bytes(jpeg.tobytes())
        entry = {"id": index + 1, "file_name": name, "width": size[0], "height": size[1]}
        images.append({**entry, "camera_id": camera})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **obj})
    return images, annotations


# ----------------------------------------------------------------------------------- identities


def _make_identities(seed: int) -> dict[int, dict]:
    """Draw every identity's appearance; ids 1..N are train, N+1.. are val."""
    rng = np.random.Generator(np.random.PCG64([seed, 2]))
    identities: dict[int, dict] = {}
    for pool in (_TRAIN_POOL, _VAL_POOL):
        keys: dict[bool, list[tuple]] = {True: [], False: []}  # persons, shapes
        for category, size in pool.items():
            taken = keys[category == PERSON]
            for _ in range(size):
                # Two persons, or two shapes even of different kinds, of a split differ in two
                # attributes or more, so that colour and pattern alone tell identities apart.
                while True:
                    look = _draw_look(rng, category)
                    key = (look["primary"], look["pattern"], look["secondary"], look["trousers"])
                    if all(sum(a != b for a, b in zip(key, k, strict=True)) >= 2 for k in taken):
                        break
                taken.append(key)
                identities[len(identities) + 1] = {"category_id": category, **look}
    return identities


def _draw_look(rng: np.random.Generator, category: int) -> dict:
    """Draw one appearance; colours come from the same palette for every category."""
    primary, secondary, trousers = (int(i) for i in rng.choice(len(_PALETTE), 3, replace=False))
    pattern = _PATTERNS[int(rng.integers(len(_PATTERNS)))]
    person = category == PERSON
    return {
        "primary": primary,
        "secondary": primary if pattern == "solid" else secondary,
        "pattern": pattern,
        "trousers": trousers if person else -1,
        "skin": int(rng.integers(len(_SKIN))) if person else -1,
        "long_sleeves": bool(rng.random() < 0.5) if person else False,
    }


class _Dealer:
    """Hands out identities in shuffled rounds, preferring ones this camera has not seen yet.

    Rounds keep the appearance counts balanced; the camera preference shows every identity to a
    second camera as soon as it appears a second time.
    """

    def __init__(self, identities: dict[int, dict], rng: np.random.Generator) -> None:
        self.rng = rng
        self.pools: dict[int, list[int]] = {}
        for k, v in identities.items():
            self.pools.setdefault(v["category_id"], []).append(k)
        self.rounds: dict[int, list[int]] = {c: [] for c in self.pools}
        self.cameras: dict[int, set[int]] = {k: set() for k in identities}

    def deal(self, category: int, camera: int, exclude: set[int]) -> int:
        """Return an identity of ``category`` not in ``exclude`` for an image from ``camera``."""
        queue = self.rounds[category]
        if all(k in exclude for k in queue):
            queue.extend(int(k) for k in self.rng.permutation(self.pools[category]))
        candidates = [k for k in queue if k not in exclude]
        pick = next((k for k in candidates if camera not in self.cameras[k]), candidates[0])
        queue.remove(pick)
        self.cameras[pick].add(camera)
        return pick


# ------------------------------------------------------------------------------------- geometry


def _clip_polygon(poly: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Clip a polygon (N, 2) to the image (Sutherland-Hodgman); may return (0, 2)."""
    for axis, limit, sign in ((0, 0.0, 1), (0, size[0], -1), (1, 0.0, 1), (1, size[1], -1)):
        inside = sign * (poly[:, axis] - limit) >= 0
        out = []
        for i in range(len(poly)):
            a, b = poly[i - 1], poly[i]
            if inside[i - 1] != inside[i]:  # the edge crosses the clip line: keep the crossing
                out.append(a + (limit - a[axis]) / (b[axis] - a[axis]) * (b - a))
            if inside[i]:
                out.append(b)
        poly = np.array(out, dtype=np.float64).reshape(-1, 2)
    return poly


def _polygon_area(poly: np.ndarray) -> float:
    """Return the shoelace area of a polygon (N, 2)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _ngon(center: np.ndarray, radius: float, n: int, phase: float) -> np.ndarray:
    """Return a regular n-gon (n, 2)."""
    angles = phase + 2 * np.pi * np.arange(n) / n
    return center + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _limb(a: np.ndarray, b: np.ndarray, half_width: float) -> np.ndarray:
    """Return a thick segment a->b as a quadrilateral (4, 2), lengthened to cover the joints."""
    axis = (b - a) / max(float(np.linalg.norm(b - a)), 1e-6)
    normal = np.array([-axis[1], axis[0]]) * half_width
    a, b = a - axis * half_width, b + axis * half_width
    return np.stack([a + normal, b + normal, b - normal, a - normal])


def _shape(rng: np.random.Generator, category: int, scale: float) -> list[tuple[np.ndarray, str]]:
    """Draw a shape's polygon around the origin, as a one-part list."""
    size = rng.uniform(24, 70) * scale
    phase = rng.uniform(0, 2 * np.pi)
    if category == CIRCLE:
        poly = _ngon(np.zeros(2), size / 2, 32, phase)
    elif category == SQUARE:  # half of them axis-aligned
        poly = _ngon(np.zeros(2), 0.6 * size, 4, np.pi / 4 if rng.random() < 0.5 else phase)
    else:
        poly = _ngon(np.zeros(2), 0.6 * size, 3, phase) * rng.uniform(0.85, 1.15, (3, 1))
    return [(poly, "primary")]


def _person(rng: np.random.Generator, scale: float) -> tuple[list, np.ndarray, np.ndarray]:
    """Draw a stick figure in a random pose, its hip centre on the origin.

    Returns:
        parts: (polygon (N, 2), colour role) in drawing order; keypoints: (17, 2) in COCO order;
        occluded: (17,) bool, true for face points on the far side of the head.
    """
    u = rng.uniform(70, 150) * scale / 7.65  # body unit, about a head's height
    lean = rng.uniform(-0.2, 0.2)
    down, side = np.array([np.sin(lean), np.cos(lean)]), np.array([np.cos(lean), -np.sin(lean)])
    profile = rng.random() < _PROFILE_FRACTION
    yaw = rng.choice([-1, 1]) * rng.uniform(1.2, 1.9) if profile else rng.uniform(-0.45, 0.45)
    breadth = max(abs(np.cos(yaw)), 0.2)  # a figure in profile shows a narrow chest
    hip, neck = np.zeros(2), -down * 2.6 * u
    head = neck - down * 0.85 * u
    shoulders = [neck + down * 0.15 * u + s * side * 0.85 * u * breadth for s in (1, -1)]
    hips = [s * side * 0.55 * u * breadth for s in (1, -1)]
    top, bottom = (side * (max(w * breadth, 0.45) + 0.15) * u for w in (0.85, 0.55))
    base, seat = neck + down * 0.1 * u, hip + down * 0.2 * u
    torso = np.stack([base + top, seat + bottom, seat - bottom, base - top])
    legs, arms, joints = [], [], []
    for sign, shoulder, hip_point in zip((1, -1), shoulders, hips, strict=True):
        # Angles from "down", positive outwards: upper arm, elbow bend, thigh, knee bend.
        bends = rng.uniform((-0.3, -0.5, -0.15, -0.9), (2.6, 2.0, 0.6, 0.15)).reshape(2, 2)
        angles = np.cumsum(bends, axis=1).ravel()
        reach = np.outer(np.cos(angles), down) + sign * np.outer(np.sin(angles), side)  # (4, 2)
        elbow = shoulder + reach[0] * 1.45 * u
        wrist = elbow + reach[1] * 1.3 * u
        knee = hip_point + reach[2] * 1.9 * u
        ankle = knee + reach[3] * 1.8 * u
        joints.append((elbow, wrist, knee, ankle))
        legs += [(_limb(hip_point, knee, 0.3 * u), "trousers")]
        legs += [(_limb(knee, ankle, 0.24 * u), "trousers")]
        arms += [(_limb(shoulder, elbow, 0.2 * u), "primary")]
        arms += [(_limb(elbow, wrist, 0.17 * u), "sleeve")]
    face, occluded = _face(head, 0.5 * u, yaw, lean)
    (le, lw, lk, la), (re, rw, rk, ra) = joints
    keypoints = np.array([*face, *shoulders, le, re, lw, rw, *hips, lk, rk, la, ra])
    neck_part, head_part = _limb(base, head, 0.18 * u), _ngon(head, 0.5 * u, 24, rng.uniform(0, 1))
    parts = [*legs, (torso, "primary"), (neck_part, "skin"), (head_part, "head"), *arms]
    return parts, keypoints, occluded


def _face(head: np.ndarray, radius: float, yaw: float, roll: float) -> tuple[list, np.ndarray]:
    """Place nose, eyes and ears on a spherical head; the ones facing away are occluded."""
    # (azimuth, elevation) on the head; positive azimuth is the person's left (the image right).
    spots = ((0.0, -0.2), (0.5, 0.2), (-0.5, 0.2), (1.3, 0.0), (-1.3, 0.0))
    rotation = np.array([[np.cos(roll), np.sin(roll)], [-np.sin(roll), np.cos(roll)]])
    points, occluded = [], []
    for azimuth, elevation in spots:
        offset = np.array([np.sin(azimuth + yaw) * np.cos(elevation), -np.sin(elevation)])
        points.append(head + rotation @ offset * 0.85 * radius)  # 0.85: inside the 24-gon
        occluded.append(np.cos(azimuth + yaw) * np.cos(elevation) < 0)
    return points, np.array(occluded + [False] * 12)


# ------------------------------------------------------------------------------------ rendering


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Return a textured RGB background (H, W, 3) float32, different for every image."""
    colour = rng.uniform(30, 225, (3, 4, 3)).astype(np.float32)
    colour = cv2.resize(colour, size, interpolation=cv2.INTER_CUBIC)
    grey = colour.mean(axis=2, keepdims=True)
    image = grey + 0.5 * (colour - grey)  # muted, so the coloured objects stand out
    for cell, amplitude in ((16, 18.0), (4, 8.0)):  # mid and fine grain: texture to track
        grain = rng.standard_normal((size[1] // cell + 2, size[0] // cell + 2)).astype(np.float32)
        image += amplitude * cv2.resize(grain, size, interpolation=cv2.INTER_CUBIC)[:, :, None]
    image = np.clip(image, 0, 255).astype(np.uint8)
    blobs = image.copy()
    for _ in range(int(rng.integers(4, 10))):
        centre = tuple(int(v) for v in rng.uniform(0, 1, 2) * size)
        axes = tuple(int(v) for v in rng.uniform(0.02, 0.12, 2) * size)
        tone = (float(rng.uniform(20, 235)),) * 3
        cv2.ellipse(blobs, centre, axes, float(rng.uniform(0, 180)), 0, 360, tone, -1)
    # Faint, so a blob is texture rather than an unlabelled look-alike of a circle.
    image = cv2.addWeighted(blobs, 0.35, image, 0.65, 0)
    for _ in range(int(rng.integers(8, 20))):
        p, q = (tuple(int(v) for v in rng.uniform(-0.1, 1.1, 2) * size) for _ in range(2))
        tone = tuple(float(v) for v in rng.uniform(0, 255) + rng.uniform(-30, 30, 3))
        cv2.line(image, p, q, tone, int(rng.integers(1, 4)), cv2.LINE_AA)
    return image.astype(np.float32)


def _mask(poly: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Return the pycocotools rasterisation of a polygon (N, 2): what ``annToMask`` will give."""
    rle = mask_utils.frPyObjects([poly.ravel().tolist()], *image.shape[:2])
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def _paint(
    image: np.ndarray, poly: np.ndarray, colours: tuple, pattern: str, period: float
) -> None:
    """Paint a polygon with a solid, striped or checked fill, through its pycocotools mask."""
    x0, y0 = np.maximum(np.floor(poly.min(axis=0)).astype(int) - 1, 0)
    x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + 1
    mask = _mask(poly, image)[y0:y1, x0:x1]  # the box only: faster
    window = image[y0:y1, x0:x1]  # a view: writing into it paints the image
    if pattern == "solid":
        window[mask] = colours[0]
        return
    ys, xs = np.nonzero(mask)
    # Absolute image coordinates, so a shirt's stripes run on from the torso into the sleeves.
    second = ((ys + y0) // period).astype(int) % 2 == 1
    if pattern == "checks":
        second ^= ((xs + x0) // period).astype(int) % 2 == 1
    window[ys, xs] = np.where(second[:, None], colours[1], colours[0])


def _paint_face(
    image: np.ndarray, head: np.ndarray, face: list, dot: float, skin: np.ndarray
) -> None:
    """Mark the visible nose, eyes and ears (``face``: their COCO triplets) inside the head."""
    inside = _mask(head, image).astype(np.uint8)
    dark = np.full(3, 25.0, np.float32)
    colours = (skin * 0.6, dark, dark, skin * 0.75, skin * 0.75)  # nose, eyes, ears
    for (x, y, v), colour in zip(np.reshape(face, (5, 3)), colours, strict=True):
        if v != 2:  # occluded or off the image
            continue
        disc = np.zeros(inside.shape, np.uint8)
        # cv2 puts pixel centres on integers, COCO on half-integers; shift=4: 1/16 px precision.
        centre = (round((x - 0.5) * 16), round((y - 0.5) * 16))
        cv2.circle(disc, centre, max(16, round(dot * 16)), 1, -1, cv2.LINE_8, 4)
        image[(disc & inside).astype(bool)] = colour  # never outside the head's mask


def _camera_look(image: np.ndarray, camera: int, rng: np.random.Generator) -> np.ndarray:
    """Apply the camera's colour cast, brightness, blur and sensor noise; return uint8 RGB."""
    gain, offset, blur, noise = _CAMERAS[camera]
    image = image * np.array(gain, np.float32) + offset
    if blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    # Uniform noise of the wanted std: a third of the cost of Gaussian noise, looks the same.
    image += (rng.random(image.shape, dtype=np.float32) - 0.5) * (noise * 12**0.5)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- one image


def _render_image(
    rng: np.random.Generator, dealer: _Dealer, identities: dict[int, dict], size: tuple[int, int]
) -> tuple[np.ndarray, int, list[dict]]:
    """Draw one image; return it (H, W, 3) uint8 RGB, its camera id and its annotations."""
    camera = int(rng.integers(1, 5))
    image = _background(rng, size)
    scale = min(size[0] / 320, size[1] / 240)
    plan = []
    if rng.random() >= _EMPTY_FRACTION:
        plan = [(PERSON, *_person(rng, scale)) for _ in range(1 + int(rng.random() < 0.4))]
        for _ in range(int(rng.integers(2, 5))):
            category = int(rng.choice([CIRCLE, SQUARE, TRIANGLE]))
            plan.append((category, _shape(rng, category, scale), None, None))
    boxes: list[np.ndarray] = []
    objects, used = [], set()
    for category, parts, keypoints, occluded in plan:
        # Patterns scale with the object, so an identity looks alike near and far.
        extent = np.ptp(np.concatenate([p for p, _ in parts]), axis=0)
        period = max(2.0, extent[1] / (12 if category == PERSON else 6))
        border = category == PERSON and rng.random() < _BORDER_FRACTION
        placed = _place(rng, parts, size, boxes, border)
        if placed is None:
            continue
        clipped, shift = placed
        track_id = dealer.deal(category, camera, used)  # after placing: only drawn objects count
        used.add(track_id)
        look = identities[track_id]
        for poly, role in clipped:
            _paint(image, poly, *_colours(look, role), period)
        objects.append(_annotation(clipped, category, track_id, size))
        if keypoints is not None:
            objects[-1].update(_keypoints(keypoints + shift, occluded, size))
            head = next((p for p, role in clipped if role == "head"), None)
            if head is not None:  # else clipped away
                dot = 0.09 * np.ptp(next(p for p, r in parts if r == "head")[:, 0])
                face = objects[-1]["keypoints"][:15]
                _paint_face(image, head, face, dot, _SKIN[look["skin"]])
    return _camera_look(image, camera, rng), camera, objects


def _place(
    rng: np.random.Generator, parts: list, size: tuple[int, int], boxes: list, cross_border: bool
) -> tuple[list, np.ndarray] | None:
    """Find a spot whose box keeps clear of ``boxes`` (appended to); None after 30 tries.

    Returns:
        The parts moved there and clipped to the image, and the translation (2,).
    """
    points = np.concatenate([p for p, _ in parts])
    low, extent, limit = points.min(axis=0), np.ptp(points, axis=0), np.array(size, float)
    if np.any(extent >= limit):
        return None
    for _ in range(30):
        corner = rng.uniform(0, limit - extent)
        if cross_border:  # over one randomly chosen edge, by 15-50% of its size
            axis, over = int(rng.integers(2)), rng.uniform(0.15, 0.5) * extent
            beyond = limit[axis] - extent[axis] + over[axis]
            corner[axis] = -over[axis] if rng.random() < 0.5 else beyond
        box = np.concatenate([np.maximum(corner, 0), np.minimum(corner + extent, limit)])
        if any(np.all(box[:2] <= b[2:] + 2) and np.all(box[2:] >= b[:2] - 2) for b in boxes):
            continue
        clipped = _clip_parts(parts, corner - low, size)
        if clipped is not None:
            boxes.append(box)
            return clipped, corner - low
    return None


def _clip_parts(parts: list, shift: np.ndarray, size: tuple[int, int]) -> list | None:
    """Move parts by ``shift`` and clip them to the image; None if under 40% stays visible."""
    moved = [(np.round(p + shift, 2), role) for p, role in parts]
    points = np.concatenate([p for p, _ in moved])
    if points.min() >= 0 and np.all(points.max(axis=0) <= size):
        return moved  # fully inside: nothing to clip
    clipped = [(np.round(_clip_polygon(p, size), 2), role) for p, role in moved]
    # pycocotools reads a 4-number "polygon" as a box: keep only real polygons.
    clipped = [(p, role) for p, role in clipped if len(p) >= 3 and _polygon_area(p) > 0.5]
    visible = sum(_polygon_area(p) for p, _ in clipped)
    return clipped if visible >= 0.4 * sum(_polygon_area(p) for p, _ in moved) else None


def _colours(look: dict, role: str) -> tuple[tuple, str]:
    """Return a part's (first, second) fill colours and its pattern."""
    if role in ("skin", "head") or (role == "sleeve" and not look["long_sleeves"]):
        return (_SKIN[look["skin"]],), "solid"
    if role == "trousers":
        return (_PALETTE[look["trousers"]],), "solid"
    return (_PALETTE[look["primary"]], _PALETTE[look["secondary"]]), look["pattern"]


def _annotation(parts: list, category: int, track_id: int, size: tuple[int, int]) -> dict:
    """Return the COCO fields of an object made of polygons (N, 2) in image coordinates."""
    segmentation = [p.ravel().tolist() for p, _ in parts]
    area = mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(segmentation, *size[::-1])))
    points = np.concatenate([p for p, _ in parts])
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    box = [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]
    return {
        "category_id": category,
        "segmentation": segmentation,
        "area": float(area),  # as in COCO's own files: the area of the mask
        "bbox": box,
        "iscrowd": 0,
        "track_id": track_id,
    }


def _keypoints(points: np.ndarray, occluded: np.ndarray, size: tuple[int, int]) -> dict:
    """Return COCO ``keypoints`` (17 * 3) and ``num_keypoints``; points off the image get 0,0,0."""
    values: list[float] = []
    for (x, y), hidden in zip(points, occluded, strict=True):
        if 0 <= x < size[0] and 0 <= y < size[1]:
            values += [round(float(x), 2), round(float(y), 2), 1 if hidden else 2]
        else:
            values += [0, 0, 0]
    return {"keypoints": values, "num_keypoints": sum(v > 0 for v in values[2::3])}
