"""A Lightning callback for the toolkit side of ``benchmarks/peers.py``: training images/s.

Given to ``tools/train.py`` as ``--trainer.callbacks+=`` with ``benchmarks/peers`` on
``PYTHONPATH``. It counts what the peers' loops count: the images of every training batch and
the time from an epoch's start (or the previous batch's end) to each batch's end, so data
loading is in and validation is out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch


class TrainSpeed(L.Callback):
    """Writes ``{"train_images", "train_s", "train_images_per_s", "epochs", "threads_seen"}``
    to ``output`` when training ends.

    Args:
        output: the JSON file to write.
    """

    def __init__(self, output: str) -> None:
        self.output = Path(output)
        self.images, self.seconds, self.epochs = 0, 0.0, 0
        self.threads_seen: set[int] = set()
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs += 1
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        now = time.perf_counter()
        self.seconds += now - self._start
        self._start = now
        self.images += len(batch["image"])
        self.threads_seen.add(torch.get_num_threads())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        speed = self.images / max(self.seconds, 1e-9)
        summary = {
            "train_images": self.images,
            "train_s": self.seconds,
            "train_images_per_s": speed,
            "epochs": self.epochs,
            "threads_seen": sorted(self.threads_seen),
        }
        self.output.write_text(json.dumps(summary, indent=1))
