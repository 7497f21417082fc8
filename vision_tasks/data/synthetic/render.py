"""One image: background, placed figures painted through their pycocotools masks, the
camera's look, and the COCO annotation of each object drawn."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from vision_tasks.data.synthetic.categories import CIRCLE, PERSON, SQUARE, TRIANGLE
from vision_tasks.data.synthetic.figures import _clip_polygon, _person, _polygon_area, _shape
from vision_tasks.data.synthetic.identities import _PALETTE, _SKIN, _Dealer

# Camera "looks" (the re-ID domain shift): RGB gain, brightness offset, blur sigma, noise std.
_CAMERAS = {
    1: ((1.00, 1.00, 1.00), 0.0, 0.0, 3.0),
    2: ((1.12, 1.00, 0.85), 12.0, 0.8, 4.0),
    3: ((0.88, 0.97, 1.12), -22.0, 0.0, 6.0),
    4: ((0.80, 0.80, 0.80), 45.0, 1.2, 2.0),
}
_EMPTY_FRACTION = 0.03  # images without objects: valid negatives for detection
_BORDER_FRACTION = 0.10  # persons pushed over the image border


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
