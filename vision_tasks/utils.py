"""Small helpers shared across the package: atomic file writes and checkpoints, RNG state,
the callbacks a config can add (weight averaging, channels-last)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, Timer, WeightAveraging
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

# atomic_write_bytes' temporaries: ".<name>.<8 characters of mkstemp>.tmp" beside <name>.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so a crash never leaves a half-written file behind.

    A process killed mid-write (SIGKILL runs no cleanup) leaves its temporary beside ``path``:
    :func:`remove_stale_temporaries` deletes those.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | Path, suffix: str = "") -> list[Path]:
    """Delete the temporaries :func:`atomic_write_bytes` left in ``folder`` for files named
    ``*suffix`` (a killed checkpoint save leaves one as large as the checkpoint); return them.

    Call it only where no other process is writing into ``folder`` (a run's own folder, as the
    run starts): a temporary being written looks the same as an abandoned one.
    """
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.fullmatch(path.name)
        if match and match["name"].endswith(suffix) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_write_image(path: str | Path, rgb: np.ndarray) -> Path:
    """Encode an (H, W, 3) RGB uint8 image by the suffix of ``path`` and write it atomically."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    try:
        ok, encoded = cv2.imencode(Path(path).suffix, bgr)
    except cv2.error:  # an unknown suffix raises; cv2.imwrite would just return False
        ok = False
    if not ok:
        raise ValueError(
            f"{path}: OpenCV cannot write a {Path(path).suffix!r} image; use .jpg or .png"
        )
    return atomic_write_bytes(path, encoded.tobytes())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temporary file and renames it into place.

    Lightning's own save streams into the final path, so a kill during the write leaves a
    truncated ``last.ckpt`` and the run cannot resume; a rename is all-or-nothing.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        """Serialise in memory, then write atomically."""
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def time_budget_spent(trainer: L.Trainer) -> float | None:
    """Share of ``--trainer.max_time`` spent (0..1), the same on every process; ``None``: no budget.

    Rank zero's clock is broadcast: each process reading its own could, at a boundary such as a
    learning-rate step or an input-size switch, see a different side of it.
    """
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is None:
        return None
    elapsed = timer.time_elapsed()
    fraction = min(1.0, elapsed / max(elapsed + remaining, 1e-9))
    if trainer.world_size > 1:
        fraction = trainer.strategy.broadcast(fraction)
    return fraction


def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU), NumPy and Python generator states, as checkpoint-safe plain values."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": [version, list(python_state), gauss],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))


class _ContinuingWriter(ExperimentWriter):
    """CSV writer that keeps a resumed run's rows up to its checkpoint's epoch."""

    def __init__(self, log_dir: str, resume_epoch: int | None) -> None:
        self._resume_epoch = resume_epoch
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return  # the TensorBoard files beside it are no reason for Lightning's warning
        if self._resume_epoch is None:
            return super()._check_log_dir_exists()
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("epoch") and int(r["epoch"]) <= self._resume_epoch]
        # Rows past the checkpoint belong to the interrupted epoch, which the resumed run redoes.
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, text.getvalue())
        self.metrics_keys = header


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that continues ``metrics.csv`` on resume (Lightning's deletes it), flushing often.

    Args:
        resume_epoch: epoch of the checkpoint the run resumes from (``None``: a new run).
        *args, **kwargs: as :class:`lightning.pytorch.loggers.CSVLogger`.
    """

    def __init__(self, *args: Any, resume_epoch: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("flush_logs_every_n_steps", 1)  # a killed run keeps what it logged
        super().__init__(*args, **kwargs)
        self._resume_epoch = resume_epoch

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (created on first use, as Lightning's)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self._resume_epoch)
        return self._experiment


class ChannelsLast(Callback):
    """Run the model and its input images in channels-last memory format (NHWC).

    On CPU, oneDNN convolutions run natively in NHWC: ``tools/benchmark.py --channels-last``
    measures the gain per task. ``--trainer.callbacks+=vision_tasks.utils.ChannelsLast``.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Convert the parameters once (4-D weights change layout; others are unaffected)."""
        pl_module.to(memory_format=torch.channels_last)

    def _convert(self, batch: Any) -> None:
        if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
            if batch["image"].dim() == 4:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, *args: Any) -> None:
        """Training images to NHWC."""
        self._convert(batch)

    def on_validation_batch_start(self, trainer: Any, module: Any, batch: Any, *args: Any) -> None:
        """Validation images to NHWC."""
        self._convert(batch)

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, *args: Any) -> None:
        """Test images to NHWC."""
        self._convert(batch)


class ModelEMA(WeightAveraging):
    """Exponential moving average of the weights and BatchNorm statistics (Polyak averaging).

    Lightning's ``WeightAveraging`` does the bookkeeping: validation runs on the average, the
    checkpoints' ``state_dict`` is the average (so ``tools/evaluate.py`` and ``predict.py`` use
    it) and the raw weights travel beside it for resuming. The decay ramps up as
    ``decay * (1 - exp(-updates / warmup_steps))`` (Ultralytics' ModelEMA), so early
    validation is not dominated by the random initial weights.
    ``--trainer.callbacks+=vision_tasks.utils.ModelEMA``.

    Args:
        decay: the decay once ramped up; ``1 / (1 - decay)`` steps is the averaging window.
        warmup_steps: optimizer steps of the ramp's time constant.
    """

    def __init__(self, decay: float = 0.998, warmup_steps: int = 200) -> None:
        if not 0.0 < decay < 1.0 or warmup_steps < 0:
            raise ValueError(
                f"ModelEMA: need 0 < decay < 1 and warmup_steps >= 0, got {decay}, {warmup_steps}"
            )
        super().__init__(use_buffers=True, multi_avg_fn=self._average)
        self.decay, self.warmup_steps = decay, warmup_steps

    def _average(self, averaged: list[Tensor], current: list[Tensor], count: Tensor) -> None:
        if not averaged[0].is_floating_point():  # BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        ramp = 1.0 - math.exp(-int(count) / self.warmup_steps) if self.warmup_steps else 1.0
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay * ramp)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Resuming a fit restores both weights; evaluating a checkpoint keeps its average.

        (Lightning's version also swaps the raw weights in when ``trainer.test`` reloads the
        best checkpoint after a fit, which would report the raw model, not the average.)
        """
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
