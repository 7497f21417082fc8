#!/usr/bin/env python
"""Times ``coco_evaluate`` with each backend (pycocotools, faster-coco-eval) on COCO-MINI val.

Detections are made from the ground truth, seeded: up to 4 noisy copies of each object (boxes
jittered by 10% of their size, polygon vertices and keypoints moved likewise) and random false
positives of random categories, 100 per image in all, scores uniform. Each backend evaluates the
same list; the figure is the median of ``--repeats`` full calls (loading the results included),
and the 12 (keypoints: 10) stats of the two backends are compared.

    python benchmarks/coco_eval_backends.py            # writes benchmarks/coco_eval_backends.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing

from vision_tasks.benchmark import environment  # noqa: E402
from vision_tasks.data.coco import CocoIndex  # noqa: E402
from vision_tasks.evaluation.coco_eval import BACKENDS, coco_evaluate  # noqa: E402
from vision_tasks.utils import atomic_write_json  # noqa: E402

COCOMINI = ROOT.parent / "shared" / "data" / "real" / "cocomini"
CASES = (  # iou type, annotation file, categories
    ("bbox", "instances_val2017.json", None),
    ("segm", "instances_val2017.json", None),
    ("keypoints", "person_keypoints_val2017.json", [1]),
)


def detections(index: CocoIndex, iou_type: str, per_image: int, seed: int) -> list[dict]:
    """``per_image`` results per image: noisy copies of the objects, then false positives."""
    rng = np.random.default_rng(seed)
    categories = [1] if iou_type == "keypoints" else index.category_ids
    results = []
    for image_id in index.image_ids:
        image = index.image_info(image_id)
        height, width = image["height"], image["width"]
        objects = [a for a in index.annotations(image_id, include_crowd=False)]
        if iou_type == "keypoints":
            objects = [a for a in objects if a.get("num_keypoints", 0) > 0]
        for k in range(per_image):
            source = objects[k % len(objects)] if k < 4 * len(objects) else None
            if source is not None:
                category = source["category_id"]
                x, y, w, h = source["bbox"]
                dx, dy, dw, dh = rng.normal(0, 0.1, 4)
                box = [x + dx * w, y + dy * h, w * (1 + dw), h * (1 + dh)]
            else:
                category = int(rng.choice(categories))
                w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
                box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            result = {"image_id": image_id, "category_id": category, "score": rng.uniform()}
            result[_field(iou_type)] = _shape(iou_type, source, box, height, width, rng)
            results.append(result)
    return results


def _field(iou_type: str) -> str:
    return {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]


def _shape(iou_type: str, source: dict | None, box: list, height: int, width: int, rng) -> Any:
    """The result's bbox, RLE or keypoints, near ``source`` where there is one."""
    x, y, w, h = box
    if iou_type == "bbox":
        return [float(v) for v in box]
    if iou_type == "segm":
        if source is not None and isinstance(source["segmentation"], list):
            polygons = [
                (np.asarray(p) + rng.normal(0, 0.05 * max(w, h), len(p))).tolist()
                for p in source["segmentation"]
            ]
        else:
            polygons = [[x, y, x + w, y, x + 0.8 * w, y + h, x, y + 0.7 * h]]
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    if source is not None:
        points = np.asarray(source["keypoints"], dtype=np.float64).reshape(-1, 3)
        points[:, :2] += rng.normal(0, 0.05 * max(w, h), (len(points), 2))
    else:
        points = np.stack(
            [rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.ones(17)], axis=1
        )
    return [float(v) for v in points.ravel()]


def measure(repeats: int, per_image: int, seed: int) -> list[dict[str, Any]]:
    """One row per iou type: median seconds per backend, speedup, largest stat difference."""
    rows = []
    for iou_type, name, categories in CASES:
        index = CocoIndex(COCOMINI / "annotations" / name, COCOMINI / "val2017")
        results = detections(index, iou_type, per_image, seed)
        seconds, stats = {}, {}
        for backend in BACKENDS:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                out = coco_evaluate(
                    index, results, iou_type, category_ids=categories, backend=backend
                )
                times.append(time.perf_counter() - start)
            seconds[backend], stats[backend] = statistics.median(times), out.stats
        difference = max(abs(stats["faster"][k] - stats["pycocotools"][k]) for k in stats["faster"])
        rows.append(
            {
                "iou_type": iou_type,
                "images": len(index.image_ids),
                "detections": len(results),
                "seconds": {k: round(v, 4) for k, v in seconds.items()},
                "speedup": round(seconds["pycocotools"] / seconds["faster"], 2),
                "max_stat_difference": difference,
                "stats": stats["pycocotools"],
            }
        )
        print(
            f"{iou_type:9s} {len(results)} detections: pycocotools {seconds['pycocotools']:.3f} s, "
            f"faster {seconds['faster']:.3f} s ({rows[-1]['speedup']}x), "
            f"max stat difference {difference:.1e}"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Measure, print one line per iou type, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-image", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="e.g. what else loaded the machine")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "coco_eval_backends.json"
    )
    args = parser.parse_args(argv)
    if not (COCOMINI / "annotations").is_dir():
        sys.exit(f"COCO-MINI not found at {COCOMINI}")
    versions = {name: version(name) for name in ("pycocotools", "faster-coco-eval")}
    env = {**environment(), **versions, "note": args.note}
    rows = measure(args.repeats, args.per_image, args.seed)
    settings = {"repeats": args.repeats, "per_image": args.per_image, "seed": args.seed}
    atomic_write_json(args.output, {"environment": env, "settings": settings, "results": rows})


if __name__ == "__main__":
    main()
