"""Results of the benchmark: the plain-text table, the machine they came from, and the JSON
file that keeps other tasks' entries when one task is measured again."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


def format_table(results: list[dict[str, Any]], baseline: dict[str, Any] | None) -> str:
    """A plain-text table of the speed results, with changes against ``baseline``."""

    def plain(entry: dict) -> bool:
        options = entry.get("options") or {}
        return not (options.get("channels_last") or options.get("fuse") or options.get("grad_mode"))

    old: dict[tuple, dict] = {}  # (task, input) -> entry, preferring one without speed-ups
    for entry in (baseline or {}).get("speed", []):
        key = (entry.get("task"), tuple(entry.get("input", ())))
        if key not in old or plain(entry) or not plain(old[key]):
            old[key] = entry
    lines = [
        f"{'task':<11}{'input':<14}{'train img/s':>12}{'b1 ms':>9}{'b16 img/s':>10}"
        f"{'out/step':>9}{'out/b1':>8}{'RSS MiB':>9}{'loader/train':>13}"
    ]
    for r in results:
        train, b1 = r.get("train"), r.get("latency_b1")
        if "error" in r:
            lines.append(f"{r['task']:<11}error: {r['error']}")
            continue
        row = (
            f"{r['task']:<11}{'x'.join(map(str, r['input'])):<14}"
            f"{train['images_per_s']:>12.1f}{b1['median_ms']:>9.1f}"
            f"{r['throughput_b16']['images_per_s']:>10.1f}"
            f"{train['outside_backbone_share']:>9.0%}"
            f"{b1['outside_backbone_share']:>8.0%}{r['peak_rss_mib']:>9.0f}"
            f"{_loader_ratio(r):>13}"
        )
        before = old.get((r["task"], tuple(r["input"])), {})
        if "train" in before:
            train_change = _change(before["train"]["images_per_s"], train["images_per_s"])
            b1_change = _change(before["latency_b1"]["median_ms"], b1["median_ms"])
            row += f"   (train img/s {train_change}, b1 ms {b1_change})"
        lines.append(row)
        if train.get("without_head"):  # the joint model: what each head costs a step
            lines.append(
                " " * 11
                + "train step share of each head (the step without it): "
                + ", ".join(
                    f"{head} {cost['saved_share']:.0%}"
                    for head, cost in train["without_head"].items()
                )
            )
    return "\n".join(lines)


def _loader_ratio(result: dict[str, Any]) -> str:
    """Default-worker loader images/s over training images/s ("3.1x"): >= 2 means no starving."""
    from vision_tasks.data.datamodule import default_num_workers

    loader = result.get("loader", {}).get("images_per_s", {})
    rate = loader.get(f"workers_{default_num_workers()}")
    return f"{rate / result['train']['images_per_s']:.1f}x" if rate else "-"


def _change(before: float, after: float) -> str:
    return f"{(after - before) / before:+.0%}"


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }


def merge_results(
    path: Path, env: dict[str, Any], speed: list[dict], quality: list[dict]
) -> dict[str, Any]:
    """The JSON at ``path`` with these entries replacing those of the same task (and options)."""
    old = json.loads(path.read_text()) if path.is_file() else {}

    def key(entry: dict) -> str:
        return json.dumps([entry.get("task"), entry.get("options")], sort_keys=True)

    def merged(before: list[dict], new: list[dict]) -> list[dict]:
        by_key = {key(e): e for e in before}
        by_key.update({key(e): {**e, "environment": env} for e in new})
        return list(by_key.values())

    return {
        "speed": merged(old.get("speed", []), speed),
        "quality": merged(old.get("quality", []), quality),
    }
