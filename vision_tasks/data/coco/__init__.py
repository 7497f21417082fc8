"""COCO I/O: the one place that reads COCO JSON and image files and writes results JSON."""

from vision_tasks.data.coco.validate import (
    BOX_TOLERANCE,
    INT64_MAX,
    INT64_MIN,
    MAX_LISTED_PROBLEMS,
    POLICIES,
    CocoDataError,
    CocoIndex,
    Policy,
    _load_json,
    check_image_file,
    is_integer,
    load_results,
    read_image,
    rle_string_counts,
    write_results_json,
)

__all__ = [
    "BOX_TOLERANCE",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_LISTED_PROBLEMS",
    "POLICIES",
    "CocoDataError",
    "CocoIndex",
    "Policy",
    "_load_json",
    "check_image_file",
    "is_integer",
    "load_results",
    "read_image",
    "rle_string_counts",
    "write_results_json",
]
