"""``train``: LightningCLI over the task registry, run folders, and a fit that ends in a report.

``--task NAME`` picks the model and data classes from ``TASKS``; ``trainer.yaml`` and
``NAME.yaml`` of :mod:`vision_tasks.configs` are the parser's default config files, so
``--help`` and ``--print_config`` show their values, a further ``--config`` overrides them and
the command line overrides both (``--model.lr 0.01``, ``--data.train_json my.json``). A fit
ends with a test on the test split (the validation split unless ``--data.test_json`` is given)
that writes the report into ``<run>/report/``. The run folder ``runs/NAME/<time stamp>`` is
claimed once the command line parsed, so ``--help`` or a typo leaves none behind, and a run that
fails before it logged anything removes its own. What the run prints (filters, the bar, one line
per epoch) is shaped by :mod:`vision_tasks.console`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vision_tasks.checkpoint import check_task, read_checkpoint
from vision_tasks.configs import CONFIG_DIR
from vision_tasks.console import (
    EpochSummary,
    HeadlineProgressBar,
    hidden_messages,
    log_to_console,
    print_summary,
    quiet_lightning,
    user_errors,
)
from vision_tasks.tasks import TASKS

SUBCOMMANDS = ("fit", "validate", "test", "predict")
LIGHTNING_CKPT_NAMES = ("best", "hpc", "registry")
# What loggers write into a run folder as it starts; a failed run holding only these is removed.
STARTUP_FILES = ("events.out.tfevents.*", "hparams.yaml", "config.yaml")
# LightningCLI's --optimizer / --lr_scheduler would replace BaseTask.configure_optimizers.
OPTIMISER_OPTIONS = ("--optimizer", "--lr_scheduler")


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
        if _takes(self.model_class, "heads") and _takes(self.datamodule_class, "instance_masks"):
            # The joint model's data cannot see its heads: the instance head's masks would be a
            # second option a user has to remember, so --model.heads decides them.
            parser.link_arguments("model.heads", "data.instance_masks", compute_fn=_has_instance)

    def before_instantiate_classes(self) -> None:
        """Claim the run folder now that the command line parsed (not for ``fast_dev_run``,
        which logs nothing)."""
        trainer = self.config[self.subcommand].trainer
        if self.run is not None and not trainer.fast_dev_run:
            self.run.claim(trainer.logger)

    def instantiate_classes(self) -> None:
        """Build data, model and trainer; an option the constructors refuse is one line.

        The task and data constructors check their arguments with ``ValueError`` (a patch
        larger than the image, ``instance`` without ``detect``): the message names the option,
        and a traceback through jsonargparse adds nothing for the user.
        """
        try:
            super().instantiate_classes()
        except ValueError as error:
            if os.environ.get("VISION_TASKS_DEBUG"):
                raise
            raise SystemExit(f"error: {error} (VISION_TASKS_DEBUG=1 shows where)") from None

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


def _takes(cls: type, name: str) -> bool:
    """Whether ``cls.__init__`` has a parameter ``name``."""
    return name in inspect.signature(cls.__init__).parameters


def _has_instance(heads: list[str] | None) -> bool:
    """Whether the joint model's heads include ``instance`` (its data then carries masks)."""
    return "instance" in (heads or [])


def linked_from_data(model_class: type) -> dict[str, str]:
    """A task's model arguments that the data module sets: ``{model argument: data attribute}``."""
    return dict(getattr(model_class, "linked_from_data", {}))


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
    "  --task NAME --help lists every option with the values of vision_tasks/configs/NAME.yaml"
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
