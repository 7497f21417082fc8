"""BaseTask: the one LightningModule skeleton every task fills in with a few hooks.

The base owns the training / validation / test / predict steps, logging, the optimiser (with a
separate backbone learning rate for fine-tuning), warm-up + cosine schedule, freezing the backbone
for the first epochs and the evaluation report. A task implements:

- ``forward(images) -> outputs``            raw head tensors
- ``compute_loss(outputs, batch) -> dict``  ``{"loss": total, ...parts}``
- ``update_metric(metric, outputs, batch)`` feed the stage's metric
- ``decode(outputs, batch) -> list[dict]``  COCO-results-form predictions (``predict_step``)
- ``build_report(values, samples) -> Report`` numbers + figure data after ``test``
- ``draw_samples(outputs, batch) -> list``  (image, caption, ok) triples for the report grid

and, for ``tools/predict.py``, ``predict_sample(image) -> dict`` (one file's network input) and
``draw_prediction(image, prediction) -> image``; the base writes the drawings (and the files of
``prediction_files``, such as a label map) as ``write_predictions``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn

from vision_tasks import ops
from vision_tasks.backbone import Backbone
from vision_tasks.data.transforms import normalize_only
from vision_tasks.evaluation.report import Figure, Report, write_report
from vision_tasks.utils import (
    atomic_write_image,
    capture_rng_state,
    remove_stale_temporaries,
    restore_rng_state,
    time_budget_spent,
)

Batch = dict[str, Any]
log = logging.getLogger(__name__)


def letterbox_numbers(batch: Batch, i: int) -> tuple[float, int, int, tuple[int, int]]:
    """Letterbox scale, pad x, pad y and original (h, w) of image ``i`` of a batch: tensors from
    the loaders' collate and plain numbers from ``tools/predict.py`` alike."""
    pad_x, pad_y = (int(round(float(v))) for v in batch["pad"][i])
    height, width = (int(v) for v in batch["orig_size"][i])
    return float(batch["scale"][i]), pad_x, pad_y, (height, width)


def letterbox_sample(image: np.ndarray, size: int) -> dict[str, Any]:
    """One RGB image letterboxed into a ``size`` square and normalised, with the numbers that
    map its predictions back (:func:`letterbox_numbers`): ``predict_sample`` of such tasks."""
    square, scale, pad_x, pad_y = ops.letterbox_image(image, size)
    return {
        "image": normalize_only()(image=square)["image"],
        "scale": scale,
        "pad": (pad_x, pad_y),
        "orig_size": image.shape[:2],
    }


def samples_figure(
    samples: list[tuple[Any, str, bool | None]],
    title: str,
    name: str = "predictions",
    columns: int = 4,
) -> Figure:
    """The report's grid of the test samples :meth:`BaseTask.draw_samples` drew (image,
    caption, ok: a green or red frame, or none)."""
    images, captions, ok = (list(part) for part in zip(*samples)) if samples else ([], [], [])
    data = {"images": images, "captions": captions, "ok": ok, "columns": columns}
    return Figure(name, "image_grid", title, data)


class BaseTask(L.LightningModule):
    """Shared steps, optimisation and reporting for all tasks (see the module docstring)."""

    task_name: ClassVar[str] = ""
    monitor: ClassVar[str] = "val/loss"  # the metric that picks the best checkpoint
    monitor_mode: ClassVar[str] = "min"
    num_report_samples: ClassVar[int] = 16
    # {model argument: data module attribute} the CLI links when it builds both, for values the
    # data decides (re-ID's identity count): they are saved with the model's hyper-parameters,
    # so no setup hook reads trainer.datamodule and a checkpoint alone rebuilds the model.
    linked_from_data: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        backbone: str = "resnet18",
        backbone_weights: str = "none",
        in_channels: int = 3,
        freeze_at: int = 0,
        lr: float = 1e-3,
        backbone_lr_mult: float = 1.0,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 1.0,
        freeze_backbone_epochs: int = 0,
        min_lr_ratio: float = 0.05,
    ) -> None:
        super().__init__()
        # Records the whole subclass signature too (Lightning walks the __init__ frames), so a
        # checkpoint alone rebuilds the model: Task.load_from_checkpoint(path).
        self.save_hyperparameters()
        self.backbone = Backbone(backbone, backbone_weights, in_channels, freeze_at)
        self.val_metric: nn.Module | None = None
        self.test_metric: nn.Module | None = None
        self.test_report: Report | None = None
        self.report_dir: str | None = None
        self._report_samples: list[tuple[Any, str, bool | None]] = []

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> BaseTask:
        """Rebuild from a checkpoint alone: its weights replace the backbone's initial ones, so
        the file or ImageNet weights it was started from are not read (nor needed) again."""
        kwargs.setdefault("backbone_weights", "none")
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # ---- hooks a task implements -------------------------------------------------------
    def compute_loss(self, outputs: Any, batch: Batch) -> dict[str, Tensor]:
        """Losses for one batch; ``"loss"`` is the total that is optimised."""
        raise NotImplementedError

    def update_metric(self, metric: nn.Module, outputs: Any, batch: Batch) -> None:
        """Feed one batch of outputs to ``metric``."""
        raise NotImplementedError

    def decode(self, outputs: Any, batch: Batch) -> list[dict[str, Any]]:
        """Turn raw outputs into per-image predictions in COCO results form."""
        raise NotImplementedError

    def build_report(self, values: dict[str, Any], samples: list) -> Report:
        """Make the evaluation report from the test metric's values and drawn samples."""
        raise NotImplementedError

    def forward_batch(self, batch: Batch) -> Any:
        """The outputs the steps feed to the other hooks; a task whose heads need more of the
        batch than its images (the joint model's per-box heads read its boxes) overrides it."""
        return self(batch["image"])

    def backbone_input(self, images: Tensor) -> Tensor:
        """What the backbone sees of a batch's images (a Siamese task splits its pairs)."""
        return images

    @property
    def backbone_passes(self) -> int:
        """Backbone runs of one evaluation forward (2 for a flip test; benchmarks count them)."""
        return 2 if self.hparams.get("flip_test", False) else 1

    def draw_samples(self, outputs: Any, batch: Batch) -> list[tuple[Any, str, bool | None]]:
        """Images with predictions drawn, for the report grid."""
        return []

    # ---- hooks for tools/predict.py (raw image files, no annotations) ------------------------
    prediction_suffix: ClassVar[str] = ".jpg"  # the drawing of ``<stem>.png`` is <stem><suffix>

    def predict_sample(self, image: np.ndarray) -> dict[str, Any]:
        """One RGB uint8 (H, W, 3) image -> a sample dict (``image`` tensor + what decode needs)."""
        raise NotImplementedError(f"tools/predict.py does not support task {self.task_name!r}")

    def to_results(self, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Decoded predictions -> the records of ``results.json`` (COCO results form)."""
        return predictions

    def draw_prediction(self, image: np.ndarray, prediction: dict[str, Any]) -> np.ndarray:
        """One image (H, W, 3) uint8 RGB with its decoded prediction drawn (H', W', 3)."""
        raise NotImplementedError(f"tools/predict.py does not support task {self.task_name!r}")

    def prediction_files(
        self, image: np.ndarray, prediction: dict[str, Any], name: str, out_dir: Path
    ) -> list[Path]:
        """Files of one image written before its drawing (a label map, a JSON record): none."""
        return []

    def write_predictions(
        self,
        predictions: list[dict[str, Any]],
        images: list[np.ndarray],
        names: list[str],
        out_dir: Path,
    ) -> list[Path]:
        """Per image: its :meth:`prediction_files`, then its :meth:`draw_prediction` saved as
        ``<stem><prediction_suffix>`` in ``out_dir``; returns the paths written."""
        written = []
        for prediction, image, name in zip(predictions, images, names):
            written += self.prediction_files(image, prediction, name, Path(out_dir))
            path = Path(out_dir) / f"{Path(name).stem}{self.prediction_suffix}"
            written.append(atomic_write_image(path, self.draw_prediction(image, prediction)))
        return written

    # ---- steps --------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One optimisation step."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Loss and metric update on one validation batch."""
        self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Loss, metric update and report samples on one test batch."""
        self._shared_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """Predictions in COCO results form."""
        with self._full_precision():
            return self.decode(self.forward_batch(batch), batch)

    def _full_precision(self) -> torch.autocast:
        """Autocast switched off: evaluation and prediction run in float32 whatever the
        trainer's ``precision``, so the reported numbers are those of ``tools/evaluate.py`` and
        do not move with a mixed-precision training setting (``bf16-mixed`` trains faster)."""
        return torch.autocast(self.device.type, enabled=False)

    def _shared_step(self, batch: Batch, stage: str) -> Tensor:
        if stage == "train":
            return self._step(batch, stage)
        with self._full_precision():
            return self._step(batch, stage)

    def _step(self, batch: Batch, stage: str) -> Tensor:
        outputs = self.forward_batch(batch)
        losses = self.compute_loss(outputs, batch)
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(
                f"{stage} loss is {losses['loss'].item()} at epoch {self.current_epoch}, "
                f"step {self.global_step}: lower --model.lr or check the data; the last good "
                f"checkpoint is kept"
            )
        training = stage == "train"
        self.log_dict(
            {f"{stage}/{name}": value.detach() for name, value in losses.items()},
            batch_size=batch["image"].shape[0],
            on_step=training,
            on_epoch=True,
            prog_bar=training,
            sync_dist=not training,
        )
        if not training:
            metric = self.val_metric if stage == "val" else self.test_metric
            self.update_metric(metric, outputs, batch)
            if stage == "test" and len(self._report_samples) < self.num_report_samples:
                self._report_samples += self.draw_samples(outputs, batch)
        return losses["loss"]

    def on_validation_epoch_end(self) -> None:
        """Log the validation metric."""
        self._log_metric(self.val_metric, "val")

    def on_test_epoch_start(self) -> None:
        """Start collecting report samples afresh."""
        self._report_samples = []

    def on_test_epoch_end(self) -> None:
        """Log the test metric and build the report (written by :class:`ReportWriter`)."""
        values = self._log_metric(self.test_metric, "test")
        samples = self._report_samples[: self.num_report_samples]
        self.test_report = self.build_report(values, samples)

    def _log_metric(self, metric: nn.Module, stage: str) -> dict[str, Any]:
        values = metric.compute()
        metric.reset()
        scalars = {
            f"{stage}/{k}": float(v)
            for k, v in values.items()
            if isinstance(v, (int, float)) or (isinstance(v, Tensor) and v.numel() == 1)
        }
        # Already global (torchmetrics gathered the states): the sync only averages equal values.
        self.log_dict(scalars, prog_bar=stage == "val", sync_dist=True)
        return values

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task (evaluate/predict refuse a wrong one) and the random state."""
        checkpoint["vision_tasks"] = {
            "task": self.task_name,
            "format": 1,
            "rng": capture_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the saved random state for :meth:`on_train_start` (resuming)."""
        self._resume_rng = checkpoint.get("vision_tasks", {}).get("rng")

    def on_train_start(self) -> None:
        """A resumed run continues the saved random streams, so it ends as an uninterrupted one.

        Restored here rather than on load: the sanity-check validation in between draws from
        the generators too, which the uninterrupted run did not do at this point.
        """
        if getattr(self, "_resume_rng", None) is not None:
            restore_rng_state(self._resume_rng)
            self._resume_rng = None

    # ---- optimisation -------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        """Keep the backbone frozen for the first ``freeze_backbone_epochs`` epochs."""
        if self.hparams.freeze_backbone_epochs <= 0:
            return
        trainable = self.current_epoch >= self.hparams.freeze_backbone_epochs
        for param in self.backbone.parameters():
            param.requires_grad_(trainable)
        self.backbone.freeze(self.backbone.freeze_at)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with a backbone group at ``lr * backbone_lr_mult``; warm-up then cosine."""
        hp = self.hparams
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        # Runs before on_train_epoch_start, so requires_grad is False only for freeze_at layers
        # (frozen for good); layers frozen for the first epochs get no gradient: AdamW skips them.
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            # Norm weights and biases are not decayed: decay would only shrink them.
            key = (name.startswith("backbone."), param.ndim > 1)
            groups.setdefault(key, []).append(param)
        param_groups = [
            {
                "params": params,
                "lr": hp.lr * (hp.backbone_lr_mult if in_backbone else 1.0),
                "weight_decay": hp.weight_decay if decayed else 0.0,
            }
            for (in_backbone, decayed), params in groups.items()
        ]
        # The fused kernel updates every tensor in one pass: on a 2-core CPU the per-tensor loop
        # of the default implementation took 12% of a segmentation step (45 ms against 16 ms).
        fused = all(
            p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
            for group in param_groups
            for p in group["params"]
        )
        optimizer = torch.optim.AdamW(param_groups, lr=hp.lr, fused=fused or None)
        self._time_fraction = 0.0
        schedule = warmup_cosine(
            self._total_steps(),
            self._warmup_steps(),
            hp.min_lr_ratio,
            time_fraction=lambda: self._time_fraction,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        schedule_config = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule_config}

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """Track the share of ``--trainer.max_time`` spent, which the LR schedule follows.

        A budgeted run then ends annealed whatever the machine's speed: on a machine slower
        than the one its ``max_epochs`` was chosen on, the time limit would otherwise cut the
        cosine half-way, at a high learning rate (Ultralytics' ``time=`` re-plans for the same
        reason). Rank zero's clock is broadcast so that every DDP process uses the same rate.
        """
        fraction = time_budget_spent(self.trainer)
        if fraction is not None:
            self._time_fraction = fraction

    def _total_steps(self) -> float:
        return float(self.trainer.estimated_stepping_batches)

    def _warmup_steps(self) -> float:
        max_epochs = self.trainer.max_epochs or 0
        total = self._total_steps()
        if max_epochs <= 0 or not math.isfinite(total):
            return 0.0
        return min(total, self.hparams.warmup_epochs * total / max_epochs)

    def configure_callbacks(self) -> list[Callback]:
        """Best + last checkpoints on the task's monitored metric, and the report writer."""
        best = BestAndLastCheckpoint(
            filename="best-{epoch:03d}",
            monitor=self.monitor,
            mode=self.monitor_mode,
            save_last=True,
            auto_insert_metric_name=False,
        )
        return [best, ReportWriter()]


def warmup_cosine(
    total_steps: float,
    warmup_steps: float,
    min_ratio: float,
    time_fraction: Callable[[], float] | None = None,
) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine down to ``min_ratio`` at ``total_steps``.

    With ``time_fraction`` (the share of a time budget spent, 0..1), the cosine runs at the
    pace of whichever is further along, the steps or the clock, so a run that the budget ends
    early still ends at ``min_ratio``.
    """

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = 0.0
        if math.isfinite(total_steps) and total_steps > warmup_steps:
            progress = (step - warmup_steps) / (total_steps - warmup_steps)
        if time_fraction is not None:
            progress = max(progress, time_fraction())
        elif not math.isfinite(total_steps) or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, progress)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


class BestAndLastCheckpoint(ModelCheckpoint):
    """``best-*.ckpt`` by the monitored metric, and ``last.ckpt`` after every epoch.

    Lightning (>= 2.5) rewrites ``last.ckpt`` only on epochs that also saved a best checkpoint,
    so a run whose metric stalls would resume from its last improvement, not its last epoch.
    A run starting or resuming in its folder first deletes the temporaries of saves that a kill
    interrupted (``AtomicCheckpointIO``): nothing else would, and each is a checkpoint's size.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resolve the folder (Lightning), then clear stale temporary checkpoints from it."""
        super().setup(trainer, pl_module, stage)
        if stage != "fit" or not trainer.is_global_zero or self.dirpath is None:
            return
        removed = remove_stale_temporaries(self.dirpath, suffix=self.FILE_EXTENSION)
        if removed:
            log.info(
                "%s: removed %d temporary file(s) of interrupted checkpoint saves: %s",
                self.dirpath,
                len(removed),
                ", ".join(p.name for p in removed),
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save best (if improved), then last, where Lightning saves at validation end."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The same where it saves at the end of the training epoch (the usual case)."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        # _should_skip_saving_checkpoint is true once anything was saved at this global step.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class ReportWriter(Callback):
    """Writes the task's test report (``report.json``, ``report.md``, PNGs) after ``test``."""

    def on_test_end(self, trainer: L.Trainer, pl_module: BaseTask) -> None:
        """Write the report on rank zero, into ``pl_module.report_dir`` or the run folder."""
        report = getattr(pl_module, "test_report", None)
        if report is not None and hasattr(trainer.datamodule, "split_label"):
            report.meta.setdefault("split", trainer.datamodule.split_label("test"))
        # trainer.log_dir is a collective under DDP: every rank asks, only rank zero writes.
        out_dir = pl_module.report_dir or _default_report_dir(trainer)
        if report is None or not trainer.is_global_zero:
            return
        pl_module.report_dir = str(write_report(report, out_dir))


def _default_report_dir(trainer: L.Trainer) -> str:
    base = trainer.log_dir or trainer.default_root_dir
    return str(Path(base) / "report")
