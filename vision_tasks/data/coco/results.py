"""Results JSON: written with original category ids and 1-based ids, read back via loadRes."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from vision_tasks.data.coco.errors import _error, _fatal, _show
from vision_tasks.data.coco.index import CocoIndex, _build_coco, _load_json
from vision_tasks.jsonsafe import json_safe
from vision_tasks.utils import atomic_write_json


def write_results_json(results: list[dict], path: str | Path) -> Path:
    """Write a COCO results list atomically (1-based ``id`` filled where absent)."""
    safe = json_safe(list(results))
    for i, item in enumerate(safe):
        if not isinstance(item, dict) or "image_id" not in item:
            raise ValueError(f"result #{i} is not an object with an 'image_id': {_show(item)}")
        item.setdefault("id", i + 1)
    return atomic_write_json(path, safe, indent=None)


def load_results(index: CocoIndex, results: list[dict] | str | Path) -> COCO:
    """Load results as a COCO object via ``COCO.loadRes``, with ``[]`` handled, prints silenced."""
    if isinstance(results, (str, Path)):
        source, anns = Path(results), _load_json(Path(results))
    else:
        source, anns = Path("<results>"), list(results)
    _check_results(anns, index, source)
    if not anns:  # loadRes reads anns[0]
        gt = index.coco.dataset
        return _build_coco(
            {
                "info": copy.deepcopy(gt.get("info", {})),
                "images": list(gt["images"]),
                "categories": copy.deepcopy(gt["categories"]),
                "annotations": [],
            }
        )
    with contextlib.redirect_stdout(io.StringIO()):
        return index.coco.loadRes([dict(a) for a in anns])  # loadRes mutates its input


def _check_results(anns: Any, index: CocoIndex, source: Path) -> None:
    """Replace loadRes's bare asserts with a CocoDataError naming the bad results."""
    if not isinstance(anns, list):
        raise _error(source, [_fatal(f"expected a list of results, got {type(anns).__name__}")])
    problems, name = [], index.json_path.name
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            problems.append(_fatal(f"expected an object, got {_show(ann)}", f"result #{i}"))
            continue
        for key, known in (("image_id", index._images), ("category_id", index.cat_to_index)):
            value = ann.get(key)
            if (key == "image_id" or key in ann) and not _is_known(value, known):
                msg = f"{key.replace('_', ' ')} {_show(value)} is not in {name}"
                problems.append(_fatal(msg, f"result #{i}", key))
    if problems:
        raise _error(source, problems)


def _is_known(value: Any, ids: dict) -> bool:
    try:
        return value in ids
    except TypeError:  # unhashable
        return False
