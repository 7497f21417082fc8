"""The synthetic dataset on disk: its folders (``SyntheticPaths``), writing it (``generate``:
deterministic from the seed) and the cache that writes it once (``synthetic_dataset``)."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vision_tasks.data.synthetic.categories import CATEGORIES
from vision_tasks.data.synthetic.identities import _TRAIN_POOL, _Dealer, _make_identities
from vision_tasks.data.synthetic.render import _render_image
from vision_tasks.utils import atomic_write_json

log = logging.getLogger(__name__)

SYNTHETIC_VERSION = 1
_INFO = {
    "description": "vision_tasks synthetic dataset",
    "url": "",
    "version": str(SYNTHETIC_VERSION),
    "year": 2024,
    "contributor": "vision_tasks",
    "date_created": "",  # no time stamp: the same seed gives the same bytes
}
_LICENSE = {"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0"}


@dataclass(frozen=True)
class SyntheticPaths:
    """Where a generated dataset lives."""

    root: Path
    train_json: Path  # root/annotations/instances_train.json
    train_images: Path  # root/train/ (file_name in the JSON is relative to it)
    val_json: Path  # root/annotations/instances_val.json
    val_images: Path  # root/val/

    @classmethod
    def at(cls, root: str | Path) -> SyntheticPaths:
        """Return the paths of a dataset rooted at ``root``."""
        root = Path(root)
        train, val = (root / "annotations" / f"instances_{s}.json" for s in ("train", "val"))
        return cls(root, train, root / "train", val, root / "val")


def default_cache_dir() -> Path:
    """Return $VISION_TASKS_CACHE, else $XDG_CACHE_HOME/vision_tasks, else ~/.cache/vision_tasks."""
    if os.environ.get("VISION_TASKS_CACHE"):
        return Path(os.environ["VISION_TASKS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vision_tasks"


def synthetic_dataset(
    seed: int = 0,
    num_train: int = 600,
    num_val: int = 120,
    width: int = 320,
    height: int = 240,
    cache_dir: str | Path | None = None,
) -> SyntheticPaths:
    """Return the cached dataset, generating it once (atomically) if absent.

    The dataset is written into a temporary sibling folder and renamed into place at the end, so
    concurrent callers (DDP ranks, pytest-xdist workers) and interrupted runs never expose a
    half-written dataset; the loser of a race discards its copy.

    Args:
        seed: Seed of the generator.
        num_train: Number of training images.
        num_val: Number of validation images.
        width: Image width in pixels.
        height: Image height in pixels.
        cache_dir: Parent folder; defaults to :func:`default_cache_dir`.

    Returns:
        The paths of the dataset folder, named after the version and every parameter.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"synthetic-v{SYNTHETIC_VERSION}-seed{seed}-{width}x{height}-{num_train}-{num_val}"
    final = cache_dir / name
    if final.is_dir():
        return SyntheticPaths.at(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate(tmp, seed, num_train, num_val, width, height)
        try:
            os.rename(tmp, final)
            log.info("Synthetic dataset written to %s", final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real error
                raise
            log.info("Another process wrote %s first; using it", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SyntheticPaths.at(final)


def generate(
    out_dir: str | Path,
    seed: int = 0,
    num_train: int = 600,
    num_val: int = 120,
    width: int = 320,
    height: int = 240,
) -> SyntheticPaths:
    """Write the dataset into out_dir (deterministic from seed).

    Image ``i`` of a split depends only on (seed, split, image size, the images before it), so a
    smaller dataset is a prefix of a larger one with the same seed and size.

    Args:
        out_dir: Folder to write (created; existing files are overwritten).
        seed: Seed of the generator: the same seed gives byte-identical files.
        num_train: Number of training images.
        num_val: Number of validation images.
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        The paths of the written dataset.
    """
    paths = SyntheticPaths.at(out_dir)
    identities = _make_identities(seed)
    first_val = sum(_TRAIN_POOL.values()) + 1
    for code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        folder, json_path = getattr(paths, f"{split}_images"), getattr(paths, f"{split}_json")
        pool = {k: v for k, v in identities.items() if (k >= first_val) == (split == "val")}
        images, annotations = _write_images(folder, seed, code, count, (width, height), pool)
        info = {**_INFO, "seed": seed, "split": split}
        coco = {"info": info, "licenses": [_LICENSE], "images": images}
        coco |= {"annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}
        atomic_write_json(json_path, coco, indent=None)
        log.info("Wrote %d images, %d annotations to %s", count, len(annotations), folder)
    return paths


def _write_images(
    folder: Path, seed: int, code: int, count: int, size: tuple[int, int], pool: dict[int, dict]
) -> tuple[list[dict], list[dict]]:
    """Render and save one split's images; return their COCO ``images`` and ``annotations``."""
    folder.mkdir(parents=True, exist_ok=True)
    dealer = _Dealer(pool, np.random.Generator(np.random.PCG64([seed, code, 1])))
    images, annotations = [], []
    for index in range(count):
        rng = np.random.Generator(np.random.PCG64([seed, code, 0, index]))
        image, camera, objects = _render_image(rng, dealer, pool, size)
        name = f"{index + 1:06d}.jpg"
        ok, jpeg = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {name}")
        (folder / name).write_bytes(jpeg.tobytes())
        entry = {"id": index + 1, "file_name": name, "width": size[0], "height": size[1]}
        images.append({**entry, "camera_id": camera})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **obj})
    return images, annotations
