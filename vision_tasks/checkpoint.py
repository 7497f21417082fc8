"""Reading a vision_tasks checkpoint and rebuilding its task model from the file alone.

Below both ``cli`` (evaluate, predict, resume) and ``export``, which each need it, so neither
imports the other. Every way a file can be wrong ends in one ``SystemExit`` line naming it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from vision_tasks.tasks import TASKS
from vision_tasks.tasks.base import BaseTask


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a vision_tasks checkpoint (weights only), each way it can fail said in one line.

    Raises:
        SystemExit: missing, empty, truncated, not a checkpoint of this package, or holding
            Python objects that a weights-only load refuses (a pickle can run code).
    """
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        raise SystemExit(f"{path}: empty file (0 bytes), not a checkpoint")
    zipped = head == b"PK\x03\x04"  # torch.save writes a zip archive
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError:
        detail = (
            "it holds Python objects other than tensors and plain values, which are not "
            "loaded for safety"
            if zipped
            else "not a PyTorch file"
        )
        raise SystemExit(f"{path}: not a vision_tasks checkpoint ({detail})") from None
    except Exception:  # torch.load raises RuntimeError, EOFError, ... on damaged input
        if zipped:
            raise SystemExit(
                f"{path}: checkpoint is truncated or damaged (an incomplete zip "
                f"archive); was its copy or save interrupted?"
            ) from None
        raise SystemExit(f"{path}: not a vision_tasks checkpoint (not a PyTorch file)") from None
    saved = checkpoint.get("vision_tasks") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict) or saved.get("task") not in TASKS:
        raise SystemExit(f"{path}: not a vision_tasks checkpoint (no task recorded in it)")
    return checkpoint


def check_task(path: str | Path, checkpoint: dict[str, Any], task: str | None) -> None:
    """Refuse a checkpoint of another task than ``task`` (``None`` accepts any)."""
    saved_task = checkpoint["vision_tasks"]["task"]
    if task is not None and saved_task != task:
        raise SystemExit(f"{path}: this is a {saved_task} checkpoint; use --task {saved_task}")


def load_task_checkpoint(path: str | Path, task: str | None = None) -> BaseTask:
    """Rebuild a task model from a checkpoint alone (``task`` checks it is the expected one)."""
    path = Path(path)
    checkpoint = read_checkpoint(path, mmap=True)
    check_task(path, checkpoint, task)
    saved_task = checkpoint["vision_tasks"]["task"]
    model = TASKS[saved_task].model.load_from_checkpoint(
        path, map_location="cpu", weights_only=True
    )
    model.eval()
    return model
