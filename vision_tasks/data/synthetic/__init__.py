"""Deterministic synthetic COCO dataset: the toolkit's embedded default.

Every task trains on this data when no dataset is given, so it is small (320x240 JPEGs), quick to
write (seconds) and carries every annotation kind the six tasks need: textured backgrounds (for
homography), shapes with exact polygons (segmentation, detection), articulated stick figures with
the 17 COCO keypoints (keypoints), and recurring identities (``track_id``) seen by several cameras
(``camera_id``, each with its own colour cast, brightness and blur) for re-identification.

Objects are painted through the pycocotools rasterisation of the very polygons written to the
JSON, so the painted pixels equal ``COCO.annToMask`` exactly (``cv2.fillPoly`` disagrees with
pycocotools on about 5% of object pixels along the borders).

One module per job; import from here, not from them:

- ``categories``: the category records, keypoint names and skeleton;
- ``identities``: each identity's look and the dealer that hands them to images and cameras;
- ``figures``: shapes and stick figures as polygons, polygon clipping and area;
- ``render``: one image (background, placing, painting, the camera's look) and its annotations;
- ``files``: ``SyntheticPaths``, ``generate`` (a dataset into a folder) and the cache
  (``synthetic_dataset``, ``default_cache_dir``).

Example:
    >>> paths = synthetic_dataset()  # generated once into the cache, then reused
    >>> coco = pycocotools.coco.COCO(str(paths.train_json))
"""

from vision_tasks.data.synthetic.categories import (
    CATEGORIES,
    CIRCLE,
    KEYPOINT_NAMES,
    PERSON,
    SKELETON,
    SQUARE,
    TRIANGLE,
)
from vision_tasks.data.synthetic.files import (
    SYNTHETIC_VERSION,
    SyntheticPaths,
    default_cache_dir,
    generate,
    synthetic_dataset,
)

__all__ = [
    "CATEGORIES",
    "CIRCLE",
    "KEYPOINT_NAMES",
    "PERSON",
    "SKELETON",
    "SQUARE",
    "SYNTHETIC_VERSION",
    "TRIANGLE",
    "SyntheticPaths",
    "default_cache_dir",
    "generate",
    "synthetic_dataset",
]
