"""Figures as polygons: shapes, articulated stick figures with their keypoints, and the
polygon clipping and area they are placed with."""

from __future__ import annotations

import numpy as np

from vision_tasks.data.synthetic.categories import CIRCLE, SQUARE

_PROFILE_FRACTION = 0.15  # persons turned sideways: their far eye and ear are occluded (v=1)


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
