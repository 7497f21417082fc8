"""One JSON sanitiser for every file the package writes (COCO results, reports).

Imports nothing from the package, so the data layer and the evaluation layer both use it.
"""

from __future__ import annotations

import math
import os
from typing import Any


def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON values: containers rebuilt, everything else made JSON-native.

    numpy arrays and scalars and torch tensors become lists and numbers (``tolist``), bytes
    (pycocotools' RLE counts) ASCII text, paths strings, mapping keys strings, tuples lists.
    NaN and infinities become ``None`` (JSON ``null``): ``json.dumps`` would write ``NaN`` /
    ``Infinity``, which are not JSON and which strict readers (browsers, jq) refuse.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.decode("ascii")
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return json_safe(obj.tolist())
    return obj
