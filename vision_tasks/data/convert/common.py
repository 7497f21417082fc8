"""What every converter shares: the COCO dict it builds, its one-line summary, headers."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vision_tasks.data.coco import CocoDataError

# torchvision's IMG_EXTENSIONS (ImageFolder); YOLO folders use the same suffixes.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class Summary:
    """What a conversion produced, left out (``dropped``) and flagged (``marked``), by count."""

    layout: str
    images: int
    boxes: int
    classes: int
    crowd: int = 0
    marked: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        """One line: ``voc: 364 images, 4886 boxes, 3 classes; dropped: degenerate boxes=2``."""
        crowd = f" ({self.crowd} iscrowd)" if self.crowd else ""
        counts = [
            _plural(self.images, "image"),
            _plural(self.boxes, "box") + crowd,
            _plural(self.classes, "class"),
        ]
        parts = [f"{self.layout}: {', '.join(counts)}"]
        # what=count, as CocoIndex logs its counts: labels stay fixed whatever the count
        parts += [f"{what}={n}" for what, n in self.marked.items()]
        dropped = ", ".join(f"{what}={n}" for what, n in self.dropped.items()) or "nothing"
        return "; ".join([*parts, f"dropped: {dropped}"])


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun[-1] in "sx" else "s")


def summarise(layout: str, dataset: dict) -> Summary:
    """The :class:`Summary` of a COCO dict made by one of the ``CONVERTERS``."""
    info = dataset.get("info", {})
    return Summary(
        layout,
        len(dataset["images"]),
        len(dataset["annotations"]),
        len(dataset["categories"]),
        sum(a["iscrowd"] for a in dataset["annotations"]),
        dict(info.get("marked", {})),
        dict(info.get("dropped", {})),
    )


def _coco(
    description: str,
    images: list,
    annotations: list,
    categories: list,
    marked: Counter | None = None,
    dropped: Counter | None = None,
) -> dict:
    """A COCO dict; ``info`` keeps the non-zero counts of what was marked / dropped."""
    info = {"description": f"{description}, converted by vision_tasks"}
    for key, counts in (("marked", marked), ("dropped", dropped)):
        if counts and any(counts.values()):
            info[key] = {what: n for what, n in sorted(counts.items()) if n}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _categories(names: list[str]) -> list[dict]:
    return [{"id": i, "name": name, "supercategory": name} for i, name in enumerate(names, 1)]


def _box_annotation(
    ann_id: int, image_id: int, category_id: int, bbox: list[float], iscrowd: int = 0
) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": float(bbox[2] * bbox[3]),
        "iscrowd": iscrowd,
    }


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, or one CocoDataError naming the file."""
    try:
        with Image.open(path) as image:  # header only
            return image.size
    except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        msg = f"cannot read the image header ({type(exc).__name__})"
        raise CocoDataError(f"{path}: {msg}") from None


def _files(folder: Path) -> list[Path]:
    """Every file below ``folder``, sorted; symlinked folders followed, as torchvision does."""
    walk = os.walk(folder, followlinks=True)
    return sorted(Path(d) / name for d, _, names in walk for name in names)
