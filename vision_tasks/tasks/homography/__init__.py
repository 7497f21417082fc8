"""Homography estimation between patch pairs: pairs -> heads -> losses -> task.

A pair is cut from any COCO image (annotations ignored): the image is made grey and resized
(320x240 by default), a random ``patch_size`` square is taken, its 4 corners are moved by up to
``rho`` pixels each, and the quadrilateral they span is warped back onto a square: the second
patch. Two architectures: ``regression`` (HomographyNet, DeTone et al. 2016) sees both patches
stacked (2 channels) and regresses the 8 corner offsets (divided by ``rho``); ``correlation``
(in the spirit of IHN, Cao et al. 2022) matches every feature cell of A in B and fits the
homography to the matches (see :class:`HomographyTask`). Corners are (x, y) in pixels of the
first patch, clockwise from top-left (``ops.square_corners``); the homography of a pair maps the
square onto the moved corners, and patch B at pixel ``q`` shows what the image shows at ``H q``
(in patch-A pixels).

Evaluation compares, on the same seeded validation pairs, the network with two baselines: the
identity (zero offsets) and ORB + RANSAC (OpenCV), where a failed estimate counts as identity.
"""

from vision_tasks.tasks.homography.data import (
    HomographyData,
    HomographyDataset,
    random_pair,
    to_gray,
)
from vision_tasks.tasks.homography.heads import (
    CorrelationHead,
    HomographyHead,
    correlation_loss,
    homography_loss,
    true_matches,
    windowed_soft_argmax,
)
from vision_tasks.tasks.homography.model import (
    HomographyTask,
    draw_pair,
    orb_ransac_batch,
    orb_ransac_corners,
)

__all__ = [
    "CorrelationHead",
    "HomographyData",
    "HomographyDataset",
    "HomographyHead",
    "HomographyTask",
    "correlation_loss",
    "draw_pair",
    "homography_loss",
    "orb_ransac_batch",
    "orb_ransac_corners",
    "random_pair",
    "to_gray",
    "true_matches",
    "windowed_soft_argmax",
]
