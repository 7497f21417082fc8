"""One report format for every task: ``report.json`` (every number), ``report.md``, PNG figures.

A task hands over a :class:`Report` holding numbers, tables and figure *data*; all drawing happens
here, so the six tasks share one look and no task carries plotting code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines and in DataLoader-free hooks

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vision_tasks.jsonsafe import json_safe  # noqa: E402
from vision_tasks.utils import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402


@dataclass
class Figure:
    """Data for one PNG: ``kind`` picks the renderer, ``data`` holds its arguments."""

    name: str
    kind: str  # confusion_matrix | curves | histogram | image_grid
    title: str
    data: dict[str, Any]


@dataclass
class Report:
    """Everything an evaluation produced, before it is written to disk."""

    task: str
    headline: dict[str, float]
    metrics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def write_report(report: Report, out_dir: str | Path) -> Path:
    """Write ``report.json``, ``report.md`` and one PNG per figure into ``out_dir``; returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure_files = {}
    for figure in report.figures:
        png = RENDERERS[figure.kind](figure)
        atomic_write_bytes(out_dir / f"{figure.name}.png", png)
        figure_files[figure.name] = f"{figure.name}.png"
    payload = {
        "task": report.task,
        "headline": json_safe(report.headline),
        "metrics": json_safe(report.metrics),
        "tables": json_safe(report.tables),
        "figures": figure_files,
        "meta": json_safe(report.meta),
    }
    atomic_write_json(out_dir / "report.json", payload)
    atomic_write_text(out_dir / "report.md", render_markdown(report, figure_files))
    return out_dir


def render_markdown(report: Report, figure_files: dict[str, str]) -> str:
    """The human-readable page: headline, every metric, tables, figures."""
    lines = [f"# {report.task} evaluation", ""]
    for key, value in report.meta.items():
        lines.append(f"- **{key}**: {value}")
    lines += ["", "## Headline", "", *_markdown_table([json_safe(report.headline)]), ""]
    scalars = {k: v for k, v in report.metrics.items() if isinstance(v, (int, float))}
    if scalars:
        rows = [{"metric": k, "value": v} for k, v in scalars.items()]
        lines += ["## All metrics", "", *_markdown_table(rows), ""]
    for name, rows in report.tables.items():
        lines += [f"## {name.replace('_', ' ').capitalize()}", "", *_markdown_table(rows), ""]
    for figure in report.figures:
        lines += [f"## {figure.title}", "", f"![{figure.title}]({figure_files[figure.name]})", ""]
    return "\n".join(lines)


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(empty)"]
    columns = list(rows[0])
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        out.append("| " + " | ".join(_format(row.get(c, "")) for c in columns) + " |")
    return out


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _to_png(fig: plt.Figure) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def render_confusion_matrix(figure: Figure) -> bytes:
    """Row-normalised confusion matrix with counts; data: ``matrix`` (C, C), ``names``."""
    matrix = np.asarray(figure.data["matrix"], dtype=np.float64)
    names = figure.data["names"]
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 30:
        for i in range(len(names)):
            for j in range(len(names)):
                colour = "white" if rows[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=colour)
    ax.set_title(figure.title)
    return _to_png(fig)


def render_curves(figure: Figure) -> bytes:
    """Line plot; data: ``series`` [{label, x, y}], ``xlabel``, ``ylabel``."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for series in figure.data["series"]:
        ax.plot(series["x"], series["y"], label=series["label"])
    ax.set_xlabel(figure.data.get("xlabel", ""))
    ax.set_ylabel(figure.data.get("ylabel", ""))
    ax.grid(alpha=0.3)
    if len(figure.data["series"]) > 1:
        ax.legend(fontsize=8)
    ax.set_title(figure.title)
    return _to_png(fig)


def render_histogram(figure: Figure) -> bytes:
    """Overlaid histograms; data: ``values`` {label: list}, ``xlabel``, ``bins``."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    values = figure.data["values"]
    finite = [v for vs in values.values() for v in vs if np.isfinite(v)]
    bins = np.linspace(0, max(finite) if finite else 1, figure.data.get("bins", 40))
    for label, vs in values.items():
        ax.hist(vs, bins=bins, alpha=0.5, label=label)
    ax.set_xlabel(figure.data.get("xlabel", ""))
    ax.set_ylabel("count")
    ax.legend()
    ax.set_title(figure.title)
    return _to_png(fig)


def render_image_grid(figure: Figure) -> bytes:
    """Grid of already-drawn images; data: ``images`` [(H, W, 3) uint8], ``captions``, ``ok``."""
    images = figure.data["images"]
    captions = figure.data.get("captions", [""] * len(images))
    ok = figure.data.get("ok", [None] * len(images))
    columns = min(len(images), figure.data.get("columns", 4)) or 1
    rows = max(1, math.ceil(len(images) / columns))
    # Cells follow the images' shape: side-by-side panels (image | truth | prediction) are
    # wide and short, and square cells would shrink them into a column of white space.
    aspect = float(np.median([im.shape[0] / im.shape[1] for im in images])) if images else 1.0
    cell_width = 3.2 if aspect > 0.5 else 6.4
    cell_height = cell_width * aspect + 0.4  # + the caption line
    fig, axes = plt.subplots(
        rows, columns, figsize=(cell_width * columns, cell_height * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption, good in zip(axes.flat, images, captions, ok):
        ax.imshow(image)
        colour = "black" if good is None else ("green" if good else "red")
        mark = "" if good is None else ("\u2713 " if good else "\u2717 ")
        ax.set_title(mark + caption, color=colour, fontsize=8)
    fig.suptitle(figure.title)
    return _to_png(fig)


RENDERERS = {
    "confusion_matrix": render_confusion_matrix,
    "curves": render_curves,
    "histogram": render_histogram,
    "image_grid": render_image_grid,
}
