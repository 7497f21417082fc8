"""ImageFolder class folders -> image-level classification COCO."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from vision_tasks.data.coco import CocoDataError
from vision_tasks.data.convert.common import (
    IMAGE_SUFFIXES,
    _box_annotation,
    _categories,
    _coco,
    _files,
    _image_size,
)


def imagefolder_to_coco(root: str | Path) -> dict:
    """ImageFolder (``<root>/<class>/<images>``) -> image-level classification COCO.

    One annotation per image: the full image ``[0, 0, W, H]`` with its folder's category, which
    is what the classify task's ``--data.mode image`` reads (exactly one annotation per image).
    Classes as torchvision's ``ImageFolder`` finds them: every sub-folder, sorted, ids 1..N; its
    image files (torchvision's suffixes) at any depth. Other files are dropped (counted).

    Raises:
        CocoDataError: ``root`` has no class folders, a class folder holds no image (torchvision
            refuses that too), or an image header cannot be read.
    """
    root = Path(root)
    if not root.is_dir():
        raise CocoDataError(f"{root}: not a folder")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise CocoDataError(f"{root}: no class folders (expected <root>/<class>/<images>)")
    images, annotations, dropped = [], [], Counter()
    dropped["files outside class folders"] = sum(1 for e in os.scandir(root) if not e.is_dir())
    for category_id, name in enumerate(classes, 1):
        files = _files(root / name)
        pictures = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
        dropped["non-image files"] += len(files) - len(pictures)
        if not pictures:
            raise CocoDataError(f"{root / name}: class folder '{name}' holds no image files")
        for path in pictures:
            width, height = _image_size(path)
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": path.relative_to(root).as_posix(),
                    "width": width,
                    "height": height,
                }
            )
            bbox = [0, 0, width, height]
            annotations.append(_box_annotation(image_id, image_id, category_id, bbox))
    return _coco(
        f"ImageFolder {root.name}", images, annotations, _categories(classes), dropped=dropped
    )
