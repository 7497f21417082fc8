"""``evaluate``: score a checkpoint on a split and write its report, from the file alone.

The model and its data module are rebuilt from what the checkpoint saved (``--data.*`` options
override the data, e.g. another ``--data.test_json``). Without ``--output`` the report goes to a
fresh folder ``eval-<split>`` in the checkpoint's run folder (``eval-<split>-2``, ... when taken),
so the report written after training, and any earlier evaluation, stay as they were. With
``--task multitask --compare TASK=CKPT`` single-task checkpoints are scored on the same split and
timed against the joint model.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser

from vision_tasks.checkpoint import load_task_checkpoint, read_checkpoint
from vision_tasks.cli.train import linked_from_data
from vision_tasks.console import print_summary, quiet_lightning, user_errors
from vision_tasks.tasks import TASKS
from vision_tasks.tasks.base import BaseTask


def evaluate_main(argv: list[str] | None = None) -> dict[str, Any]:
    """``tools/evaluate.py --task NAME --ckpt PATH [--output DIR] [--data.* ...]``."""
    parser = argparse.ArgumentParser(description=evaluate_main.__doc__)
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument(
        "--output",
        type=Path,
        help="report folder (default: a new eval-SPLIT folder in the checkpoint's run folder, "
        "or in the current one; an earlier report is never overwritten)",
    )
    parser.add_argument(
        "--split",
        metavar="NAME",
        help="what the report calls the split it scores (default: the test JSON's "
        "file name); the split is --data.test_json, else the one trained "
        "with as validation",
    )
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="TASK=CKPT",
        help="multitask: also evaluate this single-task checkpoint on the same "
        "split and time it against the joint model (repeatable)",
    )
    parser.add_argument(
        "--timing-images",
        type=int,
        default=8,
        help="multitask --compare: images the inference times are taken on",
    )
    args, overrides = parser.parse_known_args(argv)
    quiet_lightning()
    with user_errors():
        return _evaluate(args, overrides)


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    compare = _parse_compare(args.compare, args.task)
    model = load_task_checkpoint(args.ckpt, args.task)
    data = _data_from_checkpoint(args.task, args.ckpt, overrides)
    _check_linked_values(model, data)
    data.adopt_categories(model.categories)  # reads the test split only
    if args.split:
        data.split_labels["test"] = args.split
    # Same memory format as the report written after training (NCHW): NHWC would be faster on
    # CPU, but its float rounding moved homography's corner error in the 7th digit, and a
    # re-evaluated checkpoint must reproduce the training report's numbers exactly.
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False
    )
    with _report_folder(args, data) as report_dir:
        model.report_dir = str(report_dir)
        trainer.test(model, datamodule=data, verbose=False)
    print_summary(model, str(args.ckpt))
    if compare:
        _compare_with_single_tasks(model, data, compare, trainer, args.timing_images)
    return model.test_report.headline if model.test_report else {}


@contextlib.contextmanager
def _report_folder(args: argparse.Namespace, data: Any) -> Iterator[Path]:
    """``--output``, else a new folder that :func:`fresh_report_dir` claims, removed again if
    the evaluation fails before writing into it."""
    if args.output is not None:
        yield args.output
        return
    run = args.ckpt.parent.parent if args.ckpt.parent.name == "checkpoints" else Path(".")
    paths = data.splits.get("test")
    split = args.split or (Path(paths[0]).stem if paths else "test")
    folder = fresh_report_dir(run, split)
    try:
        yield folder
    except BaseException:
        with contextlib.suppress(OSError):  # not empty: the failure came after writing
            folder.rmdir()
        raise


def fresh_report_dir(parent: Path, split: str) -> Path:
    """Create and return ``parent/eval-<split>``, or ``eval-<split>-2``, ... if that exists.

    ``mkdir`` without ``exist_ok`` is atomic, so two evaluations started at once get two
    folders and neither overwrites a report already there (the one training wrote is in
    ``report/``).
    """
    name = "eval-" + (re.sub(r"[^\w.-]+", "_", split).strip("._") or "test")
    parent.mkdir(parents=True, exist_ok=True)
    folder, n = parent / name, 1
    while True:
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1
            folder = parent / f"{name}-{n}"


def _data_from_checkpoint(task: str, checkpoint: Path, overrides: list[str]) -> Any:
    """The data module as trained, with ``--data.*`` overrides from the command line."""
    saved = read_checkpoint(checkpoint, mmap=True)
    # LightningCLI adds private entries such as "_instantiator"; only constructor arguments count.
    hparams = {
        k: v
        for k, v in saved.get("datamodule_hyper_parameters", {}).items()
        if not k.startswith("_")
    }
    parser = ArgumentParser(prog=f"evaluate --task {task}")
    parser.add_class_arguments(TASKS[task].data, "data")
    parser.set_defaults({f"data.{k}": v for k, v in hparams.items()})
    config = parser.parse_args(overrides)
    return TASKS[task].data(**config.data.as_dict())


def _check_linked_values(model: BaseTask, data: Any) -> None:
    """Refuse ``--data.*`` overrides that contradict what training linked into the model.

    Only values the data module was given are compared (``patch_size``, ``aspect_ratio``);
    counted ones such as the training identities are not: evaluating reads no training split.
    """
    for model_arg, data_attr in linked_from_data(type(model)).items():
        if data_attr not in data.hparams:
            continue
        trained, given = model.hparams[model_arg], getattr(data, data_attr)
        if trained != given:
            raise SystemExit(
                f"--data.{data_attr} {given} differs from the {trained} the checkpoint's model "
                f"was trained with (model.{model_arg})"
            )


def _parse_compare(items: list[str], task: str) -> dict[str, Path]:
    if items and task != "multitask":
        raise SystemExit("--compare is for --task multitask")
    pairs = {}
    for item in items:
        name, _, path = item.partition("=")
        if name not in TASKS or name in ("multitask", "homography") or not path:
            raise SystemExit(
                f"--compare {item!r}: expected TASK=CKPT with TASK one of classify, "
                f"detect, keypoints, reid, segment"
            )
        pairs[name] = Path(path)
    return pairs


def _compare_with_single_tasks(
    model: BaseTask,
    data: Any,
    checkpoints: dict[str, Path],
    trainer: L.Trainer,
    timing_images: int,
) -> None:
    """Evaluate each single-task checkpoint on the joint run's split, time both, and add the
    comparison and timing tables to the joint report (rewritten in place)."""
    from vision_tasks.evaluation.report import write_report
    from vision_tasks.tasks.multitask.compare import comparison_rows, time_inference

    json_path, images = data.splits["test"]
    split = ["--data.test_json", json_path, "--data.test_images", images]
    singles, headlines = {}, {}
    for task, checkpoint in checkpoints.items():
        single = load_task_checkpoint(checkpoint, task)
        single_data = _data_from_checkpoint(task, checkpoint, split)
        single.report_dir = str(Path(model.report_dir) / f"single_{task}")
        trainer.test(single, datamodule=single_data, verbose=False)
        singles[task], headlines[task] = single.eval(), single.test_report.headline
    timing = time_inference(model.eval().float(), singles, data.index("test"), timing_images)
    report = model.test_report
    report.tables["single_task_comparison"] = comparison_rows(report.metrics, headlines)
    report.tables["inference_time"] = [
        {"model": k.removesuffix("_s_per_image"), "value": v} for k, v in timing.items()
    ]
    report.metrics.update({f"time/{k}": v for k, v in timing.items()})
    write_report(report, model.report_dir)
    print(f"  joint vs single-task models one after another: {timing['speedup']:.2f}x faster")
    if "speedup_single_pass" in timing:
        print(
            f"  ... with their flip tests off (one pass, as the joint model): "
            f"{timing['speedup_single_pass']:.2f}x"
        )
