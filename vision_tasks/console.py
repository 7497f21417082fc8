"""What a run prints: Lightning's tips and banners filtered out, a progress bar with the loss and
the task's headline metric, one line per epoch, the closing summary, and user errors in one line.

Each filter names the message it drops, so a new Lightning message still shows; nothing here
turns a logger or a warning category off as a whole. Shared by every command (``vision_tasks.cli``
and ``vision_tasks.tracking.cli``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from tqdm import tqdm

from vision_tasks.backbone import BackboneWeightsError
from vision_tasks.data.coco import CocoDataError
from vision_tasks.data.datamodule import WorkerStartError

if TYPE_CHECKING:
    from vision_tasks.tasks.base import BaseTask

# Errors in what the user gave (data, weights, a diverging run): one line, no traceback.
USER_ERRORS = (CocoDataError, BackboneWeightsError, FloatingPointError, WorkerStartError)

# Logged at INFO by Lightning on every run; none tells the user something to act on.
LIGHTNING_CHATTER = (
    "💡 Tip:",  # advertisements for litlogger / litmodels
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Seed set to",  # the seed is in the run's config.yaml
    "Loading `train_dataloader` to estimate number of stepping batches",
    # Each task replaces the default ModelCheckpoint on purpose (BaseTask.configure_callbacks).
    "The following callbacks returned in `LightningModule.configure_callbacks` will override",
)
CHATTY_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
)
WARNINGS_DROPPED = (
    # tools/train.py passes the command line on without --task, which LightningCLI warns about.
    "LightningCLI's args parameter is intended to run from within Python",
    # Lightning 2.6 calling a torch 2.14 deprecated API; nothing a user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # torchvision's draw_bounding_boxes on an image without predictions (report samples).
    "boxes doesn't contain any box",
)


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


class _DropMessages(logging.Filter):
    """Drop log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().lstrip().startswith(self.prefixes)


_CHATTER_FILTER = _DropMessages(LIGHTNING_CHATTER)


def quiet_lightning() -> None:
    """Filter Lightning's tips and banners and a few known harmless warnings (idempotent)."""
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if _CHATTER_FILTER not in logger.filters:
            logger.addFilter(_CHATTER_FILTER)
    for message in WARNINGS_DROPPED:
        warnings.filterwarnings("ignore", message=message)


@contextlib.contextmanager
def hidden_messages(*prefixes: str) -> Iterator[None]:
    """Drop Lightning INFO lines starting with ``prefixes`` inside the block only."""
    dropped = _DropMessages(prefixes)
    loggers = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    for logger in loggers:
        logger.addFilter(dropped)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(dropped)


def headline_key(pl_module: L.LightningModule) -> str:
    """The metric that picks the best checkpoint (``BaseTask.monitor``), e.g. ``val/AP``."""
    return getattr(pl_module, "monitor", "val/loss")


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class HeadlineProgressBar(TQDMProgressBar):
    """Lightning's bar with two numbers: the step's training loss and the headline metric."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """``{"loss": last step's loss, "<headline>": last validation value}`` where known."""
        logged = super().get_metrics(trainer, pl_module)
        shown: dict[str, Any] = {}
        loss = logged.get("train/loss_step", logged.get("train/loss"))
        if loss is not None:
            shown["loss"] = loss
        key = headline_key(pl_module)
        value = _number(trainer.callback_metrics.get(key))
        if value is not None:
            shown[key] = value
        return shown


class EpochSummary(Callback):
    """After each training epoch, one line: ``epoch 3/10  loss 1.234  val/AP 0.456  12.3s``.

    Shows the epoch's mean training loss, the validation loss and the headline metric (those of
    this epoch only: an epoch without validation shows none), and the epoch's wall time.
    """

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._validated = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the epoch's clock."""
        self._start, self._validated = time.perf_counter(), False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Note that this epoch's validation numbers are fresh (not the sanity check's)."""
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the epoch's line on rank zero, above the progress bar if one is shown."""
        if trainer.is_global_zero:
            tqdm.write(self.line(trainer, pl_module))

    def line(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        """The summary line of the epoch that just ended."""
        metrics = trainer.callback_metrics
        total = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        parts = [f"epoch {trainer.current_epoch + 1}" + (f"/{total}" if total else "")]
        keys = [("loss", "train/loss_epoch")]
        if self._validated:
            keys += [(key, key) for key in dict.fromkeys(("val/loss", headline_key(pl_module)))]
        for label, key in keys:
            value = _number(metrics.get(key))
            if value is not None:
                parts.append(
                    f"{label} {value:.4f}" if abs(value) < 1000 else f"{label} {value:.1f}"
                )
        parts.append(f"{time.perf_counter() - self._start:.1f}s")
        return "  ".join(parts)
