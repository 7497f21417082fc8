#!/usr/bin/env python
"""Mean corner error of a homography checkpoint against its decoding settings (refinement passes,
the DLT's robust scale), on the synthetic default's validation images cut with ``--pair-seed``
(choose the settings on another seed than the evaluated pairs'):

``python benchmarks/homography_passes.py --ckpt PATH --pair-seed 1 --refine-steps 0 2 4 6 8``
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from vision_tasks.tasks.homography import HomographyData, HomographyTask  # noqa: E402


def corner_errors(model: HomographyTask, batches: list[dict]) -> torch.Tensor:
    """(pairs,) mean corner error of each pair under the model's current hyper-parameters."""
    errors = []
    with torch.no_grad():
        for batch in batches:
            corners = model.estimate_corners(model(batch["image"]), batch["image"])
            errors.append((corners - batch["corners"]).norm(dim=-1).mean(-1))
    return torch.cat(errors)


def main() -> None:
    """Print one line per setting: the swept value, MACE and median (pixels)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--pair-seed", type=int, default=1)
    parser.add_argument("--refine-steps", type=int, nargs="*", default=[0, 1, 2, 4, 6, 8])
    parser.add_argument("--robust-scale", type=float, nargs="*", default=[])
    args = parser.parse_args()
    model = HomographyTask.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    hp = model.hparams
    data = HomographyData(
        image_size=hp.image_size,
        batch_size=40,
        num_workers=0,
        patch_size=hp.patch_size,
        rho=hp.rho,
        pair_seed=args.pair_seed,
    )
    data.prepare_data()
    data.setup("validate")
    batches = list(data.val_dataloader())
    # Each sweep varies one setting; the other keeps the checkpoint's value.
    for key, values in (("refine_steps", args.refine_steps), ("robust_scale", args.robust_scale)):
        default = hp[key]
        for value in values:
            hp[key] = value
            errors = corner_errors(model, batches)
            print(
                f"{key}={value}: mace {errors.mean():.3f} px, median {errors.median():.3f} px "
                f"({len(errors)} pairs, pair_seed {args.pair_seed})"
            )
        hp[key] = default


if __name__ == "__main__":
    main()
