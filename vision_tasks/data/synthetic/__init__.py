"""Deterministic synthetic COCO dataset: the toolkit's embedded default (see ``files.py``).

Every name stays importable from here, as from the single ``synthetic.py`` this package was.
"""

from vision_tasks.data.synthetic.files import (
    CATEGORIES,
    CIRCLE,
    KEYPOINT_NAMES,
    PERSON,
    SKELETON,
    SQUARE,
    SYNTHETIC_VERSION,
    TRIANGLE,
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
