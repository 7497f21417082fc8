"""Bad-input reporting for COCO files: ``CocoDataError`` and its one-line-per-problem format.

Every problem names file, record and field (``<file>: image id=3: field 'width': ...``);
:func:`_error` gathers the problems of one file into one ``CocoDataError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_LISTED_PROBLEMS = 20
# Reasons (keys of CocoIndex.skipped) that the clip policy repairs instead of dropping.
_OUTSIDE_BOX, _OUTSIDE_KEYPOINTS = "bbox outside image", "keypoints outside image"
# Ids become int64 tensors and numbers float64 arrays: larger integers overflow them.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class CocoDataError(ValueError):
    """Bad dataset input; the message is user-facing (one line per problem).

    Raised in a DataLoader worker, it reaches the main process re-created by torch with the
    worker's traceback as its message ("Caught CocoDataError in DataLoader worker process 0.
    Original Traceback ...: <message>"); the constructor keeps only ``<message>``, so a user
    reads it once, as if it had been raised in the main process.
    """

    # Tracebacks and pickles name it by its public path, whichever module of the package holds it.
    __module__ = "vision_tasks.data.coco"

    def __init__(self, message: str = "") -> None:
        super().__init__(_worker_message(message, type(self)))


def _worker_message(message: str, kind: type) -> str:
    """The original message inside torch's re-raised worker exception, else ``message``."""
    if not (isinstance(message, str) and message.startswith(f"Caught {kind.__name__} ")):
        return message
    if "\nOriginal Traceback (most recent call last):\n" not in message:
        return message
    # traceback.format_exception's last entry: "<module>.<qualname>: <str(exc)>\n"
    _, found, original = message.rpartition(f"\n{kind.__module__}.{kind.__qualname__}: ")
    return original.rstrip("\n") if found else message


@dataclass(frozen=True)
class _Problem:
    """One user-facing problem; ``reason`` is its key in ``CocoIndex.skipped``."""

    record: str
    field: str | None
    message: str
    reason: str = ""
    fatal: bool = False

    def line(self, source: str) -> str:
        """Format as ``<file>: <record>: field '<field>': <message>``."""
        parts = [source, self.record, f"field '{self.field}'" if self.field else ""]
        return ": ".join([p for p in parts if p] + [self.message])


def _fatal(message: str, record: str = "", field: str | None = None) -> _Problem:
    return _Problem(record, field, message, fatal=True)


def _error(source: Path, problems: list[_Problem], hint: bool = False) -> CocoDataError:
    """Build the single multi-line error for ``problems`` found in ``source``."""
    lines = [p.line(source.name) for p in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    if hint:
        lines.append(
            "(fix the file, or pass --data.policy skip to drop the bad records and count them)"
        )
        if any(p.reason in (_OUTSIDE_BOX, _OUTSIDE_KEYPOINTS) for p in problems):
            lines.append(
                "(--data.policy clip keeps boxes that cross the image edge, clipped to "
                "it, and unlabels keypoints outside it)"
            )
    header = f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {source}:"
    return CocoDataError("\n".join([header, *lines]))


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and not _fits_int64(value):
        return f"an integer of {value.bit_length()} bits (beyond 64)"  # its repr may be huge
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fits_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


def is_integer(value: Any) -> bool:
    """An ``int`` (not ``bool``) that fits in int64, as every id and count must."""
    return isinstance(value, int) and not isinstance(value, bool) and _fits_int64(value)
