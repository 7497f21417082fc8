#!/usr/bin/env python
"""Where a detect training step goes: forward, loss (the assigner inside it), backward + AdamW.

Median milliseconds over ``--steps`` steps after ``--skip`` warm-up steps, in the main process
(no loader workers, so loading is not in the figures; Lightning's ``--trainer.profiler simple``
gives that share). Prints the parts and their share of a step; writes nothing.

    python benchmarks/detect_step.py --train-json runs/real_data/bccd_trainval.json \\
        --images ../shared/data/real/bccd/BCCD --size 320
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing

from vision_tasks.tasks.detect import DetectData, DetectTask, assign_points, pad_targets  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Time the parts of ``--steps`` training steps; print medians and shares."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-json", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip", type=int, default=4)
    args = parser.parse_args(argv)
    data = DetectData(
        train_json=args.train_json,
        train_images=args.images,
        image_size=args.size,
        batch_size=args.batch_size,
        num_workers=0,
        colour_shift=0.0,
    )
    data.setup("fit")
    model = DetectTask(categories=data.categories, image_size=args.size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = iter(data.train_dataloader())
    parts: dict[str, list[float]] = {"forward": [], "loss": [], "assigner": [], "backward": []}
    for step in range(args.skip + args.steps):
        batch = next(batches)
        t0 = time.perf_counter()
        outputs = model(batch["image"])
        t1 = time.perf_counter()
        losses = model.compute_loss(outputs, batch)
        t2 = time.perf_counter()
        # The assigner again, alone: its share of the loss above.
        targets = pad_targets(batch["boxes_xyxy"], batch["label"], batch["crowd"])
        head = (outputs["cls_logits"], outputs["box_regression"], outputs["points"])
        t3 = time.perf_counter()
        assign_points(*head, outputs["strides"], targets)
        t4 = time.perf_counter()
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        t5 = time.perf_counter()
        if step >= args.skip:
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t4 - t3, t5 - t4)):
                parts[name].append(seconds * 1000)
    median = {name: statistics.median(values) for name, values in parts.items()}
    step_ms = median["forward"] + median["loss"] + median["backward"]
    for name, ms in median.items():
        print(f"{name:>9}: {ms:7.1f} ms  {100 * ms / step_ms:5.1f}% of a step")
    print(f"     step: {step_ms:7.1f} ms (forward + loss + backward and AdamW)")
    return median | {"step": step_ms}


if __name__ == "__main__":
    main()
