"""Command-line entry points: ``train`` (LightningCLI), ``evaluate`` and ``predict``.

``train``: ``--task NAME`` picks the model and data classes from ``TASKS``; ``configs/trainer.yaml``
and ``configs/NAME.yaml`` are the parser's default config files, so ``--help`` and
``--print_config`` show their values, a further ``--config`` overrides them and the command line
overrides both (``--model.lr 0.01``, ``--data.train_json my.json``). A fit ends with a test on the
test split (the validation split unless ``--data.test_json`` is given) that writes the report.
The run folder ``runs/NAME/<time stamp>`` is claimed once the command line parsed, so ``--help``
or a typo leaves none behind, and a run that fails before it logged anything removes its own.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vision_tasks.backbone import BackboneWeightsError
from vision_tasks.checkpoint import check_task, load_task_checkpoint, read_checkpoint
from vision_tasks.console import EpochSummary, HeadlineProgressBar, hidden_messages, quiet_lightning
from vision_tasks.data.coco import CocoDataError
from vision_tasks.export import OnnxRunner
from vision_tasks.tasks import TASKS
from vision_tasks.tasks.base import BaseTask

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
LIGHTNING_CKPT_NAMES = ("best", "hpc", "registry")
# Errors in what the user gave (data, weights, a diverging run): one line, no traceback.
USER_ERRORS = (CocoDataError, BackboneWeightsError, FloatingPointError)
# What loggers write into a run folder as it starts; a failed run holding only these is removed.
STARTUP_FILES = ("events.out.tfevents.*", "hparams.yaml", "config.yaml")
# LightningCLI's --optimizer / --lr_scheduler would replace BaseTask.configure_optimizers.
OPTIMISER_OPTIONS = ("--optimizer", "--lr_scheduler")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn :data:`USER_ERRORS` raised inside into ``SystemExit("error: <message>")``.

    A ``CocoDataError`` raised in a DataLoader worker arrives with its own message only (see
    :class:`CocoDataError`), so it too reads as one message.
    """
    try:
        yield
    except USER_ERRORS as error:
        raise SystemExit(f"error: {error}") from None


class RunFolder:
    """``runs/TASK/<version>``: claimed after parsing, removed again if the run fails unused.

    Args:
        task: the task name (the folder's parent is ``runs/TASK``).
        version: an existing run's folder name (resuming it), or ``None`` for a new one.
    """

    def __init__(self, task: str, version: str | None) -> None:
        self.root = f"runs/{task}"
        self.version = version
        self.claimed: list[Path] = []  # created by this process, so ours to remove

    def logger_args(self) -> dict[str, Any]:
        """``init_args`` shared by the run's loggers (``version`` filled in by :meth:`claim`)."""
        return {"save_dir": self.root, "name": "", "version": self.version}

    def claim(self, loggers: Any) -> None:
        """Create a new run's folder and name it in the parsed ``loggers`` that log into it."""
        entries = loggers if isinstance(loggers, list) else [loggers]
        ours = [
            entry.init_args
            for entry in entries
            if isinstance(entry, Namespace)
            and isinstance(entry.get("init_args"), Namespace)
            and entry.init_args.get("save_dir") == self.root
            and entry.init_args.get("version") is None
        ]
        if self.version is not None or not ours:
            return  # resuming, or the user chose other loggers
        parents = [Path(self.root), Path(self.root).parent]
        created = [p for p in parents if not p.exists()]
        self.version = _new_version(Path(self.root).name)
        if not _is_ddp_worker():
            self.claimed = [Path(self.root, self.version), *created]
        for init_args in ours:
            init_args.version = self.version

    def discard_if_unused(self) -> None:
        """Remove the claimed folder if it holds nothing but what loggers write at start."""
        if not self.claimed or not self.claimed[0].is_dir():
            return
        folder, *parents = self.claimed
        files = [p for p in folder.rglob("*") if p.is_file()]
        if not all(any(p.match(pattern) for pattern in STARTUP_FILES) for p in files):
            return
        shutil.rmtree(folder, ignore_errors=True)
        for parent in parents:  # runs/TASK and runs/, where this run made them
            with contextlib.suppress(OSError):  # another run's folder appeared in it
                parent.rmdir()


class VisionCLI(LightningCLI):
    """LightningCLI that links data-derived values into the model and evaluates after fit.

    Args:
        run: the run folder to claim once the command line parsed.
        *args, **kwargs: as :class:`LightningCLI`.
    """

    def __init__(self, *args: Any, run: RunFolder | None = None, **kwargs: Any) -> None:
        self.run = run
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Categories and the task's ``linked_from_data`` values come from the data module; the
        input size is one value for both."""
        parser.link_arguments("data.categories", "model.categories", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size")
        for model_arg, data_attr in linked_from_data(self.model_class).items():
            parser.link_arguments(f"data.{data_attr}", f"model.{model_arg}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Claim the run folder now that the command line parsed (not for ``fast_dev_run``,
        which logs nothing)."""
        trainer = self.config[self.subcommand].trainer
        if self.run is not None and not trainer.fast_dev_run:
            self.run.claim(trainer.logger)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, with :class:`HeadlineProgressBar` unless the bar is off or chosen."""
        config = self.config_init[self.subcommand].trainer
        callbacks = config.callbacks or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if config.enable_progress_bar is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            kwargs.setdefault("callbacks", [*callbacks, HeadlineProgressBar()])
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """Test the best checkpoint on the test split and print where everything is."""
        trainer = self.trainer
        if trainer.fast_dev_run or trainer.interrupted:
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        # print_summary names the checkpoint; Lightning's two lines about loading it repeat it.
        with hidden_messages("Restoring states from the checkpoint", "Loaded model weights"):
            trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False
            )
        if trainer.is_global_zero:
            print_summary(self.model, best or "(none)")


def linked_from_data(model_class: type) -> dict[str, str]:
    """A task's model arguments that the data module sets: ``{model argument: data attribute}``."""
    return dict(getattr(model_class, "linked_from_data", {}))


def print_summary(model: BaseTask, checkpoint: str) -> None:
    """Print the headline numbers and the paths a user looks for next."""
    report = model.test_report
    split = report.meta.get("split", "the test split") if report is not None else "no split"
    print()
    print(f"== {model.task_name}: evaluation on {split} ==")
    if report is not None:
        for key, value in report.headline.items():
            print(f"  {key:>12}: {value:.4f}")
    print(f"  checkpoint: {checkpoint}")
    print(f"  report:     {getattr(model, 'report_dir', '(not written)')}/report.md")


def log_to_console() -> None:
    """Show vision_tasks' own INFO lines (weights loaded, records skipped or clipped) on stderr.

    Lightning configures only its own logger, so without a handler these lines would be lost.
    """
    logger = logging.getLogger("vision_tasks")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _pop_option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def _default_config_files(task: str) -> list[str]:
    files = [CONFIG_DIR / "trainer.yaml", CONFIG_DIR / f"{task}.yaml"]
    return [str(f) for f in files if f.is_file()]


def _refuse_optimiser_options(argv: list[str]) -> None:
    for arg in argv:
        name = arg.split("=", 1)[0].split(".", 1)[0]
        if name in OPTIMISER_OPTIONS:
            raise SystemExit(
                f"{name} is not supported: every task trains with AdamW, warm-up and a cosine "
                f"schedule (BaseTask.configure_optimizers); set --model.lr, "
                f"--model.weight_decay, --model.backbone_lr_mult, --model.warmup_epochs or "
                f"--model.min_lr_ratio instead"
            )


def _resolve_resume(task: str, argv: list[str]) -> tuple[str, int] | None:
    """Turn ``--ckpt_path last`` into the newest run's last.ckpt; return its version and epoch."""
    for i, arg in enumerate(argv):
        if arg == "--ckpt_path" and i + 1 < len(argv):
            value = argv[i + 1]
            if value == "last":
                candidates = sorted(
                    Path("runs", task).glob("*/checkpoints/last.ckpt"),
                    key=lambda p: p.stat().st_mtime,
                )
                if not candidates:
                    raise SystemExit(f"--ckpt_path last: no runs/{task}/*/checkpoints/last.ckpt")
                value = argv[i + 1] = str(candidates[-1])
            if value in LIGHTNING_CKPT_NAMES or value.startswith("registry:"):
                return None  # Lightning resolves these itself
            path = Path(value)
            saved = read_checkpoint(path, mmap=True)
            check_task(path, saved, task)
            if path.parent.name == "checkpoints":
                # keep logging into the interrupted run's folder
                return path.parent.parent.name, int(saved.get("epoch", -1))
    return None


def _is_ddp_worker() -> bool:
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK")
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in ranks)


def _new_version(task: str) -> str:
    """A timestamp naming a new run folder, which is created here so that it is claimed.

    ``mkdir`` without ``exist_ok`` is atomic: two runs started in the same second (a sweep
    launched in parallel) get two folders, not one shared ``metrics.csv`` and checkpoints.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if _is_ddp_worker():
        return stamp  # a DDP worker: rank zero names the folder (Lightning broadcasts its path)
    root = Path("runs", task)
    root.mkdir(parents=True, exist_ok=True)
    version, n = stamp, 1
    while True:
        try:
            (root / version).mkdir()
            return version
        except FileExistsError:
            n += 1
            version = f"{stamp}-{n}"


TRAIN_USAGE = (
    "usage: {prog} --task {{{tasks}}} [fit|validate|test|predict] [--config FILE] [options]\n"
    "  --task NAME --help lists every option with the values of configs/NAME.yaml"
)


def train_main(argv: list[str] | None = None) -> VisionCLI | None:
    """``tools/train.py --task NAME [fit|validate|test|predict] [LightningCLI options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    log_to_console()
    quiet_lightning()
    task = _pop_option(argv, "--task")
    if task is None and {"-h", "--help"} & set(argv):
        print(TRAIN_USAGE.format(prog=Path(sys.argv[0]).name, tasks=",".join(TASKS)))
        raise SystemExit(0)
    if task not in TASKS:
        raise SystemExit(f"--task must be one of {', '.join(TASKS)} (got {task!r})")
    _refuse_optimiser_options(argv)
    subcommand = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "fit"
    resumed = _resolve_resume(task, argv)
    run = RunFolder(task, resumed[0] if resumed else None)
    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": run.logger_args(),
        },
        {
            "class_path": "vision_tasks.utils.ResumableCSVLogger",
            "init_args": {**run.logger_args(), "resume_epoch": resumed[1] if resumed else None},
        },
    ]
    spec = TASKS[task]
    defaults = {"default_config_files": _default_config_files(task)}
    try:
        with user_errors():
            return VisionCLI(
                spec.model,
                spec.data,
                args=[subcommand, *argv],
                run=run,
                parser_kwargs={
                    "prog": f"{Path(sys.argv[0]).name} --task {task}",
                    **{name: dict(defaults) for name in SUBCOMMANDS},
                },
                trainer_defaults={
                    "default_root_dir": run.root,
                    "logger": loggers,
                    "plugins": [{"class_path": "vision_tasks.utils.AtomicCheckpointIO"}],
                    "callbacks": [EpochSummary()],
                },
                seed_everything_default=0,
                save_config_kwargs={"overwrite": True},
                auto_configure_optimizers=False,
            )
    except BaseException:
        run.discard_if_unused()
        raise


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


def evaluate_main(argv: list[str] | None = None) -> dict[str, Any]:
    """``tools/evaluate.py --task NAME --ckpt PATH [--output DIR] [--data.* ...]``."""
    parser = argparse.ArgumentParser(description=evaluate_main.__doc__)
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--output", type=Path, help="report folder (default: beside the run)")
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
    default_dir = args.ckpt.parent.parent if args.ckpt.parent.name == "checkpoints" else Path(".")
    model.report_dir = str(args.output or default_dir / "report")
    # Same memory format as the report written after training (NCHW): NHWC would be faster on
    # CPU, but its float rounding moved homography's corner error in the 7th digit, and a
    # re-evaluated checkpoint must reproduce the training report's numbers exactly.
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False
    )
    trainer.test(model, datamodule=data, verbose=False)
    print_summary(model, str(args.ckpt))
    if compare:
        _compare_with_single_tasks(model, data, compare, trainer, args.timing_images)
    return model.test_report.headline if model.test_report else {}


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


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _image_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise SystemExit(f"no such image or folder: {item}")
    if not files:
        raise SystemExit("no image files found in " + ", ".join(map(str, inputs)))
    return files


def collate_predict(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``image`` (and ``image_id``); keep every other key as a per-sample list."""
    batch: dict[str, Any] = {k: [s[k] for s in samples] for k in samples[0]}
    batch["image"] = torch.stack(batch["image"])
    batch["image_id"] = torch.as_tensor(batch["image_id"])
    return batch


def predict_main(argv: list[str] | None = None) -> list[Path]:
    """``tools/predict.py --ckpt PATH (IMAGES_OR_FOLDERS... | --coco JSON --images DIR)``."""
    parser = argparse.ArgumentParser(description=predict_main.__doc__)
    parser.add_argument("inputs", nargs="*", type=Path, help="image files or folders")
    parser.add_argument(
        "--coco",
        type=Path,
        help="a COCO JSON instead of IMAGES: results keep its image ids (re-ID: "
        "embeddings of its annotated boxes)",
    )
    parser.add_argument("--images", type=Path, help="folder the --coco file_names are relative to")
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--task", choices=sorted(TASKS), help="check the checkpoint's task")
    parser.add_argument("--output", type=Path, default=Path("predictions"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--engine",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: run the graph written by tools/export.py with onnxruntime",
    )
    parser.add_argument("--onnx", type=Path, help="the .onnx file (default: beside --ckpt)")
    args = parser.parse_args(argv)
    if bool(args.inputs) == bool(args.coco):
        parser.error("give image files / folders, or --coco JSON --images DIR (one of the two)")
    if args.coco and args.images is None:
        parser.error("--coco needs --images: the folder its file_names are relative to")
    quiet_lightning()
    with user_errors():
        return _predict(args)


def _predict(args: argparse.Namespace) -> list[Path]:
    from vision_tasks.data.coco import CocoIndex, read_image, write_results_json
    from vision_tasks.utils import atomic_write_json

    model = load_task_checkpoint(args.ckpt, args.task)
    network = model.to(memory_format=torch.channels_last)  # NHWC: faster inference on CPU
    if args.engine == "onnx":
        onnx_path = args.onnx or args.ckpt.with_suffix(".onnx")
        if not onnx_path.is_file():
            raise SystemExit(f"{onnx_path} not found: run tools/export.py --ckpt {args.ckpt} first")
        network = OnnxRunner(onnx_path)
    index = None
    if args.coco:
        index = CocoIndex(args.coco, args.images)
        if hasattr(model, "predict_coco"):  # per-box outputs (re-ID embeddings)
            saved = read_checkpoint(args.ckpt, mmap=True)
            args.output.mkdir(parents=True, exist_ok=True)
            written = model.predict_coco(
                index,
                network,
                args.output,
                args.batch_size,
                saved.get("datamodule_hyper_parameters", {}),
            )
            print(f"{args.coco} -> {args.output}/ ({', '.join(p.name for p in written)})")
            return written
        image_ids = list(index.image_ids)
        files = [index.image_path(image_id) for image_id in image_ids]
    else:
        files = _image_files(args.inputs)
        image_ids = list(range(1, len(files) + 1))  # 1-based, in file order (see files.json)
    args.output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    records: list[dict[str, Any]] = []
    per_head: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        ids = image_ids[start : start + args.batch_size]
        images = [
            index.load_image(i) if index is not None else read_image(p) for i, p in zip(ids, chunk)
        ]
        samples = [model.predict_sample(image) for image in images]
        for sample, image_id in zip(samples, ids):
            sample["image_id"] = image_id
        batch = collate_predict(samples)
        if args.engine == "torch":
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            predictions = model.decode(network(batch["image"]), batch)
        written += model.write_predictions(
            predictions, images, [p.name for p in chunk], args.output
        )
        records += model.to_results(predictions)
        if hasattr(model, "head_results"):  # the joint model: one results file per head
            for head, head_records in model.head_results(predictions).items():
                per_head.setdefault(head, []).extend(head_records)
    for head, head_records in per_head.items():
        written.append(write_results_json(head_records, args.output / f"results_{head}.json"))
    names = {image_id: str(path) for image_id, path in zip(image_ids, files)}
    written.append(atomic_write_json(args.output / "files.json", names))
    written.append(write_results_json(records, args.output / "results.json"))
    print(
        f"{len(files)} images -> {args.output}/ ({len(written)} files written; results.json "
        f"has {len(records)} records, image ids as in files.json)"
    )
    return written
