"""Which network ``predict`` and ``track`` run: PyTorch, or ONNX Runtime on a cached export.

``--engine auto`` (the default) runs ONNX Runtime when it is installed and the task exports (the
joint multitask model does not: NMS and per-box heads on a data-dependent box count), else torch.
The export is made once and cached beside the checkpoint as ``CKPT.onnx`` (the file
``tools/export.py`` writes); where that folder is read-only, in ``<cache>/onnx/``
(:func:`~vision_tasks.data.synthetic.default_cache_dir`, ``~/.cache/vision_tasks`` by default).
A cached file is used only while its metadata still describes the checkpoint: size, modification
time or SHA-256, opset, network input shape. Anything else is exported again, atomically.

Each export is checked against torch before it is cached (:func:`~vision_tasks.export.graph.
check_against_torch`); one that differs is cached as refused, so it is not exported again on
every run, and torch runs instead, with one log line saying why. ``--engine onnx`` turns each of
these fallbacks into a one-line error. ``--onnx FILE`` runs the given file as it is (an int8
model from ``tools/export.py --int8``, say).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vision_tasks.export.graph import (
    CHECK_TOLERANCE,
    OnnxRunner,
    example_input,
    export_bytes,
    read_metadata,
)
from vision_tasks.tasks.base import BaseTask
from vision_tasks.utils import atomic_write_bytes

DEFAULT_OPSET = 17
CACHE_FORMAT = 1  # bump when the export changes in a way the recorded source cannot show
ENGINES = ("auto", "torch", "onnx")
log = logging.getLogger(__name__)


class OnnxUnavailable(Exception):
    """Why ONNX Runtime cannot run a checkpoint; ``level``: how loudly ``auto`` says so."""

    def __init__(self, reason: str, level: int = logging.WARNING) -> None:
        super().__init__(reason)
        self.level = level


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's content."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checkpoint_source(checkpoint: str | Path, model: BaseTask, opset: int) -> dict[str, Any]:
    """What an export of ``checkpoint`` is keyed by (kept in its metadata as ``source``)."""
    stat = Path(checkpoint).stat()
    return {
        "format": CACHE_FORMAT,
        "opset": opset,
        "input_shape": list(example_input(model, 1).shape[1:]),
        "checkpoint_bytes": stat.st_size,
        "checkpoint_mtime_ns": stat.st_mtime_ns,
        "checkpoint_sha256": sha256_of(checkpoint),
    }


def same_checkpoint(recorded: Any, checkpoint: Path) -> bool:
    """Whether ``recorded`` (an export's ``source``) describes ``checkpoint`` as it is now."""
    if not isinstance(recorded, dict):
        return False
    stat = checkpoint.stat()
    if recorded.get("checkpoint_bytes") != stat.st_size:
        return False
    # Same size and time: the same file, unhashed; a copy (a new time) is compared by content.
    if recorded.get("checkpoint_mtime_ns") == stat.st_mtime_ns:
        return True
    return recorded.get("checkpoint_sha256") == sha256_of(checkpoint)


def _same_source(recorded: Any, checkpoint: Path, model: BaseTask, opset: int) -> bool:
    if not isinstance(recorded, dict):
        return False
    shape = list(example_input(model, 1).shape[1:])
    expected = {"format": CACHE_FORMAT, "opset": opset, "input_shape": shape}
    if any(recorded.get(key) != value for key, value in expected.items()):
        return False
    return same_checkpoint(recorded, checkpoint)


def cache_paths(checkpoint: Path) -> list[Path]:
    """Where the export of ``checkpoint`` is cached, in order: beside it, then the user cache."""
    from vision_tasks.data.synthetic import default_cache_dir

    resolved = checkpoint.resolve()
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]  # one file per checkpoint path
    return [
        checkpoint.with_suffix(".onnx"),
        default_cache_dir() / "onnx" / f"{resolved.stem}-{key}.onnx",
    ]


def _recorded(path: Path) -> dict[str, Any] | None:
    """The metadata of a cached export; ``None`` if absent or unreadable (exported again)."""
    if not path.is_file():
        return None
    import onnx

    try:
        return read_metadata(onnx.load(str(path), load_external_data=False))
    except Exception:  # a damaged file (the protobuf decoder raises its own error types)
        return None


def _accepted(path: Path, meta: dict[str, Any]) -> Path:
    check = meta.get("check") or {}
    if not check.get("passed"):
        difference = float(check.get("max_abs_diff", "nan"))
        scale = float(check.get("max_abs_output", "nan"))
        raise OnnxUnavailable(
            f"its ONNX export {path} differs from torch by {difference:.3g} (outputs up to "
            f"{scale:.3g}; tolerance {CHECK_TOLERANCE:g} of max(1, that))"
        )
    return path


def cached_onnx(model: BaseTask, checkpoint: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """The checked ONNX export of ``checkpoint``, from the cache or exported now (module doc).

    Raises:
        OnnxUnavailable: the export fails, differs from torch, or has nowhere to be written.
    """
    checkpoint = Path(checkpoint)
    places = cache_paths(checkpoint)
    for path in places:
        meta = _recorded(path)
        if meta is not None and _same_source(meta.get("source"), checkpoint, model, opset):
            return _accepted(path, meta)
    try:
        data = export_bytes(model, opset, checkpoint_source(checkpoint, model, opset))
    except Exception as error:  # the exporter's errors have no common type
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise OnnxUnavailable(f"ONNX export failed ({type(error).__name__}: {first})") from error
    unwritable = []
    for path in places:
        try:
            atomic_write_bytes(path, data)
        except OSError as error:
            unwritable.append(f"{path.parent} ({error.strerror or error})")
            continue
        log.info("%s: exported for onnxruntime to %s (once per checkpoint)", checkpoint.name, path)
        return _accepted(path, _recorded(path) or {})
    raise OnnxUnavailable("nowhere to cache its ONNX export: " + ", ".join(unwritable))


def inference_network(
    model: BaseTask,
    checkpoint: str | Path,
    engine: str = "auto",
    onnx_file: str | Path | None = None,
    threads: int | None = None,
) -> tuple[Callable[..., Any], str]:
    """The network that predict / track run for ``engine``, and a few words naming it.

    Args:
        model: the task model of ``checkpoint`` (returned as is for torch).
        checkpoint: its file (the ONNX cache is keyed by it).
        engine: ``auto``, ``torch`` or ``onnx`` (module docstring).
        onnx_file: run this ``.onnx`` file instead of the cached export.
        threads: onnxruntime intra-op threads.

    Raises:
        SystemExit: ONNX Runtime was asked for (``onnx``, ``--onnx FILE``) and cannot run it.
    """
    checkpoint = Path(checkpoint)
    if engine == "torch":
        return model, "torch"
    try:
        if not getattr(model, "exportable", True):
            raise OnnxUnavailable(
                f"a {model.task_name} model has no ONNX export (NMS and per-box heads on a "
                f"data-dependent box count)",
                logging.INFO,
            )
        if onnx_file is not None:
            return _given_file(Path(onnx_file), checkpoint, threads)
        path = _onnx_for(model, checkpoint)
    except OnnxUnavailable as why:
        if engine == "onnx" or onnx_file is not None:
            raise SystemExit(f"{checkpoint}: {why}; use --engine torch") from None
        log.log(why.level, "%s: running in torch: %s", checkpoint.name, why)
        return model, "torch"
    return OnnxRunner(path, threads), f"onnxruntime ({path})"


def _onnx_for(model: BaseTask, checkpoint: Path) -> Path:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise OnnxUnavailable(f"{error.name} is not installed", logging.INFO) from None
    return cached_onnx(model, checkpoint)


def _given_file(path: Path, checkpoint: Path, threads: int | None) -> tuple[OnnxRunner, str]:
    if not path.is_file():
        raise SystemExit(f"{path} not found: run tools/export.py --ckpt {checkpoint} first")
    try:
        runner = OnnxRunner(path, threads)
    except ImportError:
        raise SystemExit("onnxruntime is not installed: pip install onnxruntime") from None
    except Exception as error:  # onnxruntime's own error types, or no vision_tasks metadata
        raise SystemExit(
            f"{path}: not an ONNX file written by tools/export.py ({type(error).__name__})"
        ) from None
    recorded = runner.meta.get("source")
    if recorded is not None and not same_checkpoint(recorded, checkpoint):
        log.warning(
            "%s was exported from another checkpoint than %s (or an earlier state of it)",
            path,
            checkpoint,
        )
    return runner, f"onnxruntime ({path})"
