"""Dataset layouts <-> COCO JSON: one module per layout, picked by name from ``CONVERTERS``.

Each converter returns a COCO dict whose ``file_name`` entries are relative to the folder it
read (for MOT frames taken from a video: to the frames folder), so the written JSON is used with
``--data.*_images`` set to that folder. What a converter leaves out or marks by design is counted
in the dict's ``info`` (``dropped``, ``marked``) and said in one line by :func:`summarise`;
nothing is dropped silently. Bad input raises one ``CocoDataError`` line naming file, record and
field. The ways back: :func:`coco_to_yolo` and :func:`write_mot` (tracker output for TrackEval).

Modules: ``common`` (the COCO dict, ``Summary``), ``market1501``, ``voc``, ``yolo``,
``imagefolder``, ``mot`` (and ``write_mot``), ``coco2yolo``; import from here. The command line
(``vision-tasks convert``) is ``cli.convert_main``.

Example:
    >>> convert("market1501", "Market-1501-v15.09.15", "market_train.json", {"split": "train"})
    >>> convert("voc", "BCCD", "bccd_trainval.json", {"split": "trainval"})
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vision_tasks.data.convert.coco2yolo import coco_to_yolo, describe_data_yaml
from vision_tasks.data.convert.common import IMAGE_SUFFIXES, Summary, summarise
from vision_tasks.data.convert.imagefolder import imagefolder_to_coco
from vision_tasks.data.convert.market1501 import (
    MARKET1501_FOLDERS,
    MARKET1501_NAME,
    market1501_to_coco,
)
from vision_tasks.data.convert.mot import MOT_DISTRACTORS, MOT_PEDESTRIAN, mot_to_coco, write_mot
from vision_tasks.data.convert.voc import voc_to_coco
from vision_tasks.data.convert.yolo import YOLO_TOLERANCE, read_yolo_names, yolo_to_coco
from vision_tasks.utils import atomic_write_json

__all__ = [
    "CONVERTERS",
    "IMAGE_SUFFIXES",
    "MARKET1501_FOLDERS",
    "MARKET1501_NAME",
    "MOT_DISTRACTORS",
    "MOT_PEDESTRIAN",
    "YOLO_TOLERANCE",
    "Summary",
    "coco_to_yolo",
    "convert",
    "convert_dataset",
    "default_frames_dir",
    "describe_data_yaml",
    "imagefolder_to_coco",
    "market1501_to_coco",
    "mot_to_coco",
    "read_yolo_names",
    "summarise",
    "voc_to_coco",
    "write_mot",
    "yolo_to_coco",
]


CONVERTERS: dict[str, Callable[..., dict]] = {
    "market1501": market1501_to_coco,
    "voc": voc_to_coco,
    "yolo": yolo_to_coco,
    "imagefolder": imagefolder_to_coco,
    "mot": mot_to_coco,
}


def default_frames_dir(output: str | Path) -> Path:
    """Where the frames of a video go by default: ``<output stem>_frames/`` beside the JSON."""
    output = Path(output)
    return output.with_name(f"{output.stem}_frames")


def convert_dataset(
    layout: str, source: str | Path, output: str | Path, options: dict[str, Any] | None = None
) -> dict:
    """Convert the dataset at ``source`` in ``layout``, write it to ``output``, return the dict.

    ``options`` are the converter's keyword arguments (e.g. ``split`` for ``voc``).
    """
    if layout not in CONVERTERS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(CONVERTERS)}")
    dataset = CONVERTERS[layout](source, **(options or {}))
    atomic_write_json(output, dataset, indent=None)
    return dataset


def convert(
    layout: str, source: str | Path, output: str | Path, options: dict[str, Any] | None = None
) -> Path:
    """Convert the dataset at ``source`` in ``layout`` to a COCO JSON file ``output``.

    ``options`` are the converter's keyword arguments (e.g. ``split`` for ``market1501``).
    """
    convert_dataset(layout, source, output, options)
    return Path(output)
