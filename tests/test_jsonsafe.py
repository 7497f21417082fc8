"""The one JSON sanitiser, and both files written through it: COCO results and report.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vision_tasks.data.coco import write_results_json
from vision_tasks.evaluation.report import Report, write_report
from vision_tasks.jsonsafe import json_safe


def _strict_json(path: Path) -> object:
    """Parse refusing NaN / Infinity, as browsers and jq do."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.int64(3), 3),
        (np.float32(0.5), 0.5),
        (np.bool_(True), True),
        (np.array([[1, 2], [3, 4]], np.uint8), [[1, 2], [3, 4]]),
        (np.array([1.0, np.nan, -np.inf]), [1.0, None, None]),
        (torch.tensor([0.25, float("nan")]), [0.25, None]),
        (torch.tensor(7), 7),
        (float("inf"), None),
        (math.nan, None),
        (b"PPYo0", "PPYo0"),
        (Path("runs/a/last.ckpt"), "runs/a/last.ckpt"),
        ((1, (2, np.int32(3))), [1, [2, 3]]),
        ({np.int64(1): {"x": np.float64(2.0)}, 2: "s"}, {"1": {"x": 2.0}, "2": "s"}),
        (None, None),
        ("text", "text"),
    ],
)
def test_json_safe_values(value, expected) -> None:
    out = json_safe(value)
    assert out == expected
    json.dumps(out, allow_nan=False)  # plain JSON all the way down


def test_report_json_holds_tensors_nan_and_paths_as_strict_json(tmp_path: Path) -> None:
    report = Report(
        "detect",
        headline={"map": torch.tensor(0.5), "map_small": float("nan")},
        metrics={"per_class": np.array([0.25, np.nan]), "worst": -math.inf},
        tables={"rows": [{"class": "a", "ap": np.float32(0.75)}]},
        meta={"checkpoint": tmp_path / "last.ckpt", "split": "val"},
    )
    data = _strict_json(write_report(report, tmp_path / "out") / "report.json")
    assert data["headline"] == {"map": 0.5, "map_small": None}
    assert data["metrics"] == {"per_class": [0.25, None], "worst": None}
    assert data["tables"] == {"rows": [{"class": "a", "ap": 0.75}]}
    assert data["meta"] == {"checkpoint": str(tmp_path / "last.ckpt"), "split": "val"}


def test_results_json_holds_numpy_tensors_and_rle_bytes(tmp_path: Path) -> None:
    rle = mask_utils.encode(np.asfortranarray(np.ones((4, 5), np.uint8)))
    results = [
        {
            "image_id": np.int64(3),
            "category_id": torch.tensor(2),
            "score": np.float32(0.5),
            "bbox": torch.tensor([1.0, 2.0, 3.0, 4.0]),
        },
        {"image_id": 4, "category_id": 1, "score": 1.0, "segmentation": rle},
    ]
    data = _strict_json(write_results_json(results, tmp_path / "res.json"))
    assert data[0] == {
        "image_id": 3,
        "category_id": 2,
        "score": 0.5,
        "bbox": [1.0, 2.0, 3.0, 4.0],
        "id": 1,
    }
    assert data[1]["segmentation"] == {"size": [4, 5], "counts": rle["counts"].decode()}
    assert data[1]["id"] == 2
