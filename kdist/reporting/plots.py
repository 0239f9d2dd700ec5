"""The report's PNGs, drawn with matplotlib (Agg: no display) and written atomically."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from kdist import storage

COLOURS = {"base": "#999999", "student": "#2a7ab9", "teacher": "#e07b39"}
OTHER_COLOURS = ("#6a3d9a", "#33a02c", "#b15928", "#fb9a99", "#1f78b4")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, uri: str) -> str:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    _pyplot().close(fig)
    storage.write_bytes(uri, png.getvalue())
    return uri


def _colour(model: str, index: int) -> str:
    return COLOURS.get(model, OTHER_COLOURS[index % len(OTHER_COLOURS)])


def metric_bars(metrics: dict[str, dict[str, float | None]], chance: dict[str, float], uri: str) -> str:
    """One group of bars per metric, one bar per model; chance dashed where it exists."""
    plt = _pyplot()
    models = list(metrics)
    names = [n for n in next(iter(metrics.values()), {}) if any(metrics[m].get(n) is not None for m in models)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 1.5), 3.2))
    width = 0.8 / max(len(models), 1)
    for index, model in enumerate(models):
        values = [metrics[model].get(n) or 0.0 for n in names]
        ax.bar([i + index * width for i in range(len(names))], values, width, label=model, color=_colour(model, index))
    for i, name in enumerate(names):
        if name in chance:
            ax.hlines(chance[name], i - width / 2, i + width * (len(models) - 0.5), linestyles="--", colors="black",
                      linewidth=0.9, label="chance" if i == next(j for j, n in enumerate(names) if n in chance) else None)  # fmt: skip
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(names))], names)
    ax.set_ylim(0, 1.2 * max(1.0, *(v or 0.0 for m in models for v in metrics[m].values() if isinstance(v, (int, float)))))
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    fig.tight_layout()
    return _save(fig, uri)


def judge_bars(comparisons: dict[str, dict[str, Any]], uri: str) -> str:
    """Win / tie / loss shares of each comparison, as stacked horizontal bars."""
    plt = _pyplot()
    labels = list(comparisons)
    fig, ax = plt.subplots(figsize=(6, 0.6 * len(labels) + 1.4))
    left = [0.0] * len(labels)
    for part, colour in (("wins", "#2a7ab9"), ("ties", "#cccccc"), ("losses", "#e07b39")):
        shares = [_share(comparisons[label], part) for label in labels]
        ax.barh(labels, shares, left=left, color=colour, label=part)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of valid comparisons (both orders; a flip is a tie)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, uri)


def _share(comparison: dict[str, Any], part: str) -> float:
    valid = comparison["wins"] + comparison["ties"] + comparison["losses"]
    return comparison[part] / valid if valid else 0.0


def loss_curves(records: Sequence[dict[str, Any]], uri: str) -> str:
    """Training loss per step and validation loss where it was measured (metrics.jsonl)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if train:
        ax.plot(*zip(*train), label="training loss", color="#2a7ab9", linewidth=1.0)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="#e07b39", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save(fig, uri)


def runs_side_by_side(values: dict[str, dict[str, float | None]], metric: str, uri: str) -> str:
    """One metric across runs: a group per run, a bar per model."""
    plt = _pyplot()
    runs = list(values)
    models = sorted({m for run in values.values() for m in run}, key=lambda m: (m not in COLOURS, list(COLOURS).index(m) if m in COLOURS else 0, m))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(runs) + 1.5), 3.2))
    for index, model in enumerate(models):
        ax.bar([i + index * width for i in range(len(runs))], [values[r].get(model) or 0.0 for r in runs], width,
               label=model, color=_colour(model, index))  # fmt: skip
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(runs))], runs, fontsize=8)
    ax.set_ylabel(metric)
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    fig.tight_layout()
    return _save(fig, uri)
