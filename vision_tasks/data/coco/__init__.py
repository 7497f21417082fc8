"""COCO I/O: the one place that reads COCO JSON and image files and writes results JSON.

``CocoIndex`` loads an annotation file once, validates every record and reports bad input as
one ``CocoDataError`` with one line per problem (file, record, field), so a user never sees a
traceback from inside pycocotools or OpenCV. ``read_image`` is the image reader every task uses.

One module per job; import from here, not from them:

- ``errors``: ``CocoDataError`` and the one-line-per-problem format;
- ``images``: reading and decode-checking image files (``read_image``, ``check_image_file``);
- ``validate``: record and field checks and the data policies (strict / skip / clip);
- ``index``: ``CocoIndex``, loading a file and indexing it by image;
- ``results``: results JSON out (``write_results_json``) and back in (``load_results``).

Example:
    >>> index = CocoIndex("annotations/instances_val2017.json", "val2017")
    >>> image = index.load_image(index.image_ids[0])  # (H, W, 3) uint8 RGB
"""

from vision_tasks.data.coco.errors import (
    INT64_MAX,
    INT64_MIN,
    MAX_LISTED_PROBLEMS,
    CocoDataError,
    is_integer,
)
from vision_tasks.data.coco.images import check_image_file, read_image
from vision_tasks.data.coco.index import CocoIndex, _load_json
from vision_tasks.data.coco.results import load_results, write_results_json
from vision_tasks.data.coco.validate import BOX_TOLERANCE, POLICIES, Policy, rle_string_counts

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
