#!/usr/bin/env python
"""Instance segmentation quality under a wall budget, beside detect and segment given the same.

On the synthetic default, one after another, each a ``tools/train.py`` subprocess ended by the
budget (``--trainer.max_time``; the epoch cap is lifted, the LR cosine follows the clock):

- ``instance``: ``--task instance`` as configured: mask AP, box AP and the semantic view (its
  masks merged by class, mIoU at the original resolution);
- ``detect``: ``--task detect`` at the same budget and precision (bf16, as the instance config
  trains): the box AP the instance model's must stay within 5% of;
- ``segment``: ``--task segment`` at the same budget: the mIoU to set beside the semantic view;
- ``cocomini`` (``--only cocomini``, needs ``../shared/data/real``): ``--task instance`` on
  COCO-MINI's instances files (crowd regions, RLE), 320 px, no colour shift.

Figures go to ``benchmarks/instance.json`` and the table of ``docs/instance.md``, each row with
its command; the targets of issue #25 (mask AP >= 0.6, box AP >= 95% of detect's) are checked.

    python benchmarks/instance.py                       # 3 x 15 minutes on the synthetic default
    python benchmarks/instance.py --only cocomini       # COCO-MINI, 15 minutes
    python benchmarks/instance.py --only instance --instance-args "--data.image_size 256"
    python benchmarks/instance.py --budget-min 0.5 --only instance --no-doc --output /tmp/x.json
    python benchmarks/instance.py --ceiling 192 224 256     # mask AP of perfect prototypes
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_data import REAL, Job, run_job  # noqa: E402  (one subprocess runner for both)

from vision_tasks.benchmark import environment  # noqa: E402
from vision_tasks.utils import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "instance.json"
DOC = ROOT / "docs" / "instance.md"
TABLE_START, TABLE_END = "<!-- instance table -->", "<!-- end of instance table -->"
MASK_AP_TARGET = 0.6
BOX_AP_SHARE = 0.95  # the instance model's box AP against detect's at the same budget
# As vision_tasks/configs/instance.yaml trains.
SAME_PRECISION = ["--trainer.precision", "bf16-mixed"]


def jobs(minutes: float, instance_args: list[str]) -> list[Job]:
    """The runs, each given ``minutes`` of training; ``instance_args`` go to the instance runs."""
    coco = REAL / "cocomini"
    notes = coco / "annotations"
    instances = [
        *("--data.train_json", str(notes / "instances_train2017.json")),
        *("--data.train_images", str(coco / "train2017")),
        *("--data.val_json", str(notes / "instances_val2017.json")),
        *("--data.val_images", str(coco / "val2017")),
    ]
    return [
        Job("instance", "instance", "synthetic default", "mask_AP", minutes, instance_args),
        Job("detect", "detect", "synthetic default", "AP", minutes, SAME_PRECISION),
        Job("segment", "segment", "synthetic default", "miou", minutes, []),
        Job(
            "cocomini",
            "instance",
            "COCO-MINI",
            "mask_AP",
            minutes,
            [*instances, "--data.image_size", "320", "--data.colour_shift", "0", *instance_args],
        ),
    ]


def verdict(done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets checked on the synthetic runs (None where a run is missing)."""
    instance = done.get("instance", {}).get("headline", {})
    detect = done.get("detect", {}).get("headline", {})
    segment = done.get("segment", {}).get("headline", {})
    mask_ap, box_ap, detect_ap = instance.get("mask_AP"), instance.get("box_AP"), detect.get("AP")
    share = box_ap / detect_ap if box_ap is not None and detect_ap else None
    return {
        "mask_AP": mask_ap,
        "mask_AP_ok": None if mask_ap is None else mask_ap >= MASK_AP_TARGET,
        "box_AP": box_ap,
        "detect_AP": detect_ap,
        "box_AP_share_of_detect": share,
        "box_AP_ok": None if share is None else share >= BOX_AP_SHARE,
        "semantic_miou": instance.get("semantic_miou"),
        "segment_miou": segment.get("miou"),
        "panoptic_PQ": instance.get("panoptic_PQ"),
    }


def resolution_ceiling(sizes: list[int]) -> list[dict[str, Any]]:
    """Mask AP of perfect prototypes at each input size: every validation object's own mask,
    letterboxed, averaged onto the stride-4 grid and pasted back with its true box, as the model's
    masks are. What the mask resolution alone allows, before any training."""
    import torch

    from vision_tasks import ops
    from vision_tasks.data.coco import CocoIndex
    from vision_tasks.data.synthetic import synthetic_dataset
    from vision_tasks.tasks.instance.data import instance_masks, letterbox_masks
    from vision_tasks.tasks.instance.evaluation import CocoMaskMetric, encode_masks
    from vision_tasks.tasks.instance.masks import paste_masks, prototype_grid_masks

    paths = synthetic_dataset()
    index = CocoIndex(paths.val_json, paths.val_images)
    rows = []
    for size in sizes:
        metric = CocoMaskMetric(index.num_classes)
        metric.index = index
        for image_id in index.image_ids:
            info, anns = index.image_info(image_id), index.annotations(image_id)
            hw = (info["height"], info["width"])
            masks = letterbox_masks(instance_masks(index.coco, anns, *hw), size)
            side = -(-size // 4)
            grid = prototype_grid_masks(torch.from_numpy(masks), side, side, 4)
            scale, pad_x, pad_y = ops.letterbox_params(*hw, size)
            boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            pasted = paste_masks(grid - 0.5, ops.xywh_to_xyxy(boxes), scale, (pad_x, pad_y), hw, 4)
            prediction = {
                "image_id": image_id,
                "bbox": boxes,
                "score": torch.ones(len(anns)),
                "category_id": torch.tensor([a["category_id"] for a in anns], dtype=torch.long),
                "segmentation": encode_masks(pasted),
            }
            metric.update([prediction], torch.tensor([image_id]))
        values = metric.compute()
        per_category = {r["category"]: r["AP"] for r in values["segm"].per_category}
        rows.append({"image_size": size, "mask_AP": values["mask_AP"], **per_category})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per run: its headline figures, wall time, epochs and command."""
    lines = [
        "| run | data | mask AP | AP50 | AP75 | box AP | mIoU | PQ | wall | epochs | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['name']} | {r.get('dataset', '')} | failed: "
                f"{r['error'].splitlines()[-1][:80]} | | | | | | | | |"
            )
            continue
        h = r.get("headline", {})
        box = h.get("box_AP", h.get("AP"))
        miou = h.get("semantic_miou", h.get("miou"))
        lines.append(
            f"| {r['name']} | {r['dataset']} | {_number(h.get('mask_AP'))} | "
            f"{_number(h.get('mask_AP50'))} | {_number(h.get('mask_AP75'))} | {_number(box)} | "
            f"{_number(miou)} | {_number(h.get('panoptic_PQ'))} | {r['wall_s'] / 60:.1f} min | "
            f"{r['epochs']} | `{r['command']}` |"
        )
    return "\n".join(lines)


def write_doc(results: list[dict[str, Any]], checks: dict[str, Any], env: dict[str, Any]) -> None:
    """Replace the table between the markers of ``docs/instance.md`` (the prose stays)."""
    share = checks["box_AP_share_of_detect"]
    summary = (
        f"Targets: mask AP {_number(checks['mask_AP'])} (>= {MASK_AP_TARGET}: "
        f"{checks['mask_AP_ok']}); box AP {_number(checks['box_AP'])} against detect's "
        f"{_number(checks['detect_AP'])} ({'n/a' if share is None else f'{share:.1%}'}, >= "
        f"{BOX_AP_SHARE:.0%}: {checks['box_AP_ok']}); semantic view mIoU "
        f"{_number(checks['semantic_miou'])} beside segment's {_number(checks['segment_miou'])}; "
        f"panoptic quality (things) {_number(checks['panoptic_PQ'])}."
    )
    table = (
        f"{TABLE_START}\nMeasured {env['measured_at']} on {env['cpus']} CPU cores "
        f"({env['processor']}), torch {env['torch']}, `python benchmarks/instance.py`. "
        f"mIoU: the semantic view for instance rows, the model's own for segment. PQ: the "
        f"panoptic view (masks scoring >= 0.5 fused, panopticapi's PQ).\n\n"
        f"{markdown_table(results)}\n\n{summary}\n{TABLE_END}"
    )
    text = DOC.read_text() if DOC.is_file() else f"# Instance\n\n{TABLE_START}\n{TABLE_END}\n"
    before, _, rest = text.partition(TABLE_START)
    _, _, after = rest.partition(TABLE_END)
    atomic_write_text(DOC, before + table + after)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen jobs one after another; write JSON (and the docs table)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=15.0, help="minutes per run")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        default=["instance", "detect", "segment"],
        help="runs: instance, detect, segment, cocomini (default: the three synthetic ones)",
    )
    parser.add_argument(
        "--instance-args",
        default="",
        metavar="OPTIONS",
        help="extra tools/train.py options for the instance runs, e.g. '--data.image_size 256'",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--ceiling",
        nargs="+",
        type=int,
        metavar="SIZE",
        help="only measure the mask AP perfect stride-4 prototypes allow at these input sizes",
    )
    parser.add_argument(
        "--no-doc", action="store_true", help="leave docs/instance.md alone (smoke runs)"
    )
    args = parser.parse_args(argv)
    if args.ceiling:
        return {"resolution_ceiling": resolution_ceiling(args.ceiling)}
    all_jobs = jobs(args.budget_min, shlex.split(args.instance_args))
    names = [j.name for j in all_jobs]
    unknown = set(args.only) - set(names)
    if unknown:
        raise SystemExit(f"unknown run(s) {sorted(unknown)}; choose from {names}")
    if "cocomini" in args.only and not REAL.is_dir():
        raise SystemExit(f"no real data at {REAL}: the cocomini run needs ../shared/data/real")
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    done = {r["name"]: r for r in previous.get("results", [])}
    for job in (j for j in all_jobs if j.name in args.only):
        print(f"{job.name}: {job.task} on {job.dataset}, {job.minutes:g} min", flush=True)
        done[job.name] = run_job(job, done, 1.0)
        shown = done[job.name].get("headline") or done[job.name].get("error", "")[-300:]
        print(f"  -> {shown}", flush=True)
    env = environment()
    results = [done[n] for n in names if n in done]
    checks = verdict(done)
    atomic_write_json(args.output, {"environment": env, "checks": checks, "results": results})
    if not args.no_doc:
        write_doc(results, checks, env)
    print(json.dumps(checks, indent=1))
    return checks


if __name__ == "__main__":
    main()
