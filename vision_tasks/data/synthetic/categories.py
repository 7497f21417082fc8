"""The categories of the synthetic dataset: persons with the 17 COCO keypoints, three shapes.

Category ids are non-contiguous on purpose, so that every id <-> index map in the toolkit is
exercised.
"""

from __future__ import annotations

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
