"""Figures of the runs beyond the two papers (the chapter "Why AVSS fails, and what works
instead"): the per-block statistics against depth, the near-zero counts with their Poisson
intervals, retention of the scale-aware scores and of healing, and retention against model size.

Each function takes the frames of :mod:`avsslib.why_avss` (or :mod:`avsslib.beyond`) and returns
a new matplotlib figure in the book's style (:func:`avsslib.plots.use_style`); with nothing to
draw it returns :func:`avsslib.plots.placeholder` saying what is missing. Nothing is written
(save a figure with :func:`avsslib.plots.save`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from avsslib.plots import colors, fmt_int, fmt_num, placeholder, retention_bars

DEPTH_COLUMNS = {
    "variance": "variance",
    "rms": "RMS",
    "avss": "AVSS",
    "sparsity": "sparsity (ε = 1e-5)",
}
"""Columns of ``layer_stats.csv`` drawn against depth, and their legend labels."""


def fmt_params(n: object) -> str:
    """A parameter count in short words: 134,515,008 -> ``"135M"``, 1,777,088,000 ->
    ``"1.78B"``; a dash when unknown."""
    try:
        v = float(n)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return fmt_num(None)
    if not np.isfinite(v):
        return fmt_num(None)
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if v >= size:
            return fmt_num(v / size, 3) + unit
    return fmt_int(v)


def _panels(n: int, width: float, height: float):
    import matplotlib.pyplot as plt

    return plt.subplots(1, n, figsize=(width * n, height), squeeze=False)


def depth_trend(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """One panel per model: variance, RMS, AVSS and sparsity of every block (``layer_stats.csv``
    indexed by layer), each divided by its median over blocks, on a log axis against the block
    index. Zero values (a clamped sparsity) are left out."""
    if not tables:
        return placeholder("no layer_stats.csv under results/<model>/avss")
    fig, axes = _panels(len(tables), 5.2, 3.2)
    for ax, (model, t) in zip(axes[0], tables.items(), strict=True):
        for column, label in DEPTH_COLUMNS.items():
            v = t[column].to_numpy(dtype=float)
            v = np.where(v > 0, v, np.nan)
            ax.plot(t.index, v / np.nanmedian(v), marker=".", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("block")
        ax.set_ylabel("value / median over blocks")
        ax.set_title(model)
    axes[0][0].legend(fontsize=8)
    return fig


def near_zero_counts(sparsity: Mapping[str, pd.DataFrame], eps: float = 1e-5) -> Figure:
    """One panel per model: each block's near-zero count at ``eps`` (``diagnosis/sparsity.csv``)
    with its exact Poisson 95% interval, fixed and faithful statistics side by side; red
    triangles mark the upper end of the interval of a count of zero (the clamped blocks)."""
    if not sparsity:
        return placeholder("no diagnosis/sparsity.csv yet")
    fig, axes = _panels(len(sparsity), 5.2, 3.0)
    for ax, (model, sp) in zip(axes[0], sparsity.items(), strict=True):
        for mode, marker in (("fixed", "o"), ("faithful", "s")):
            g = sp[(sp["mode"] == mode) & np.isclose(sp["eps"], eps)]
            if g.empty:
                continue
            ax.errorbar(
                g["layer"] + (0.15 if mode == "faithful" else 0),
                g["count"],
                yerr=[g["count"] - g["count_low"], g["count_high"] - g["count"]],
                fmt=marker,
                ms=3,
                capsize=2,
                label=mode,
            )
            zero = g[g["count"] == 0]
            ax.scatter(zero["layer"], zero["count_high"], marker="v", color="crimson", zorder=3)
        ax.set_xlabel("block")
        ax.set_ylabel(f"elements with |h| < {eps:g}")
        ax.set_title(model)
        ax.legend(fontsize=8)
    return fig


def scale_score_bars(rows: pd.DataFrame) -> Figure:
    """Retention bars of every score of the ``scale_scores`` studies
    (:func:`avsslib.why_avss.scale_score_rows`), one panel per task."""
    if rows.empty:
        return placeholder("no scale_scores study yet")
    return retention_bars(rows, label="label")


def healing_bars(rows: pd.DataFrame) -> Figure:
    """Retention before and after healing per selection and task
    (:func:`avsslib.why_avss.healing_rows`)."""
    if rows.empty:
        return placeholder("no healing run yet")
    return retention_bars(rows, label="label")


SIZE_MARKERS = {
    "avss": "o",
    "block_influence": "s",
    "angular": "D",
    "random": "^",
    "tail": "v",
    "best repair": "*",
}


def _wrap_name(name: str, width: int = 13) -> str:
    """A model name broken after a hyphen into lines of at most about ``width`` characters, so
    that the tick labels of neighbouring models on the log axis do not run into each other."""
    lines = [""]
    for part in str(name).split("-"):
        piece = part if not lines[-1] else f"-{part}"
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines[-1] += "-"
            lines.append(part)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def retention_by_size(frame: pd.DataFrame, *, threshold: float | None = 0.9) -> Figure:
    """Retention against the model's parameter count (log axis, ticks named after the models),
    one series per score with its 95% interval, plus the best scale-aware repair where a model
    has one (:func:`avsslib.why_avss.retention_by_size`; models without a parameter count are
    left out). The points of one model are spread a little sideways so that their intervals
    do not hide each other; dashed: full retention, dotted: ``threshold``."""
    from avsslib import results as R

    frame = frame[frame["parameters"].notna()] if len(frame) else frame
    if frame.empty:
        return placeholder("no pruning study with a parameter count under results/<model>/avss")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    series = [s for s in SIZE_MARKERS if s != "best repair"]
    keys = frame["score"].where(frame["kind"] == "baseline", "best repair")
    palette = dict(zip(SIZE_MARKERS, colors(len(SIZE_MARKERS)), strict=True))
    offsets = np.linspace(-0.06, 0.06, len(SIZE_MARKERS))  # in decades of the log axis
    for i, key in enumerate([*series, "best repair"]):
        rows = frame[keys == key].sort_values("parameters")
        if rows.empty:
            continue
        x = rows["parameters"].to_numpy(dtype=float) * 10 ** offsets[i]
        y = rows["retention"].to_numpy(dtype=float)
        err = np.clip(np.stack([y - rows["ci_low"], rows["ci_high"] - y]), 0, None)
        label = "best scale-aware repair" if key == "best repair" else R.SCORE_NAMES.get(key, key)
        repair = key == "best repair"
        ax.errorbar(
            x,
            y,
            yerr=err,
            fmt=SIZE_MARKERS[key],
            color=palette[key],
            capsize=2,
            ms=10 if repair else 5,
            label=label,
            linestyle="none" if repair else "-",
            linewidth=0.8,
        )
        for xi, yi, score in zip(x, y, rows["score"], strict=True):
            if repair:
                ax.annotate(score, (xi, yi), xytext=(7, -3), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    models = frame.drop_duplicates("model").sort_values("parameters")
    ticks = [
        f"{_wrap_name(n)}\n({fmt_params(p)})"
        for n, p in zip(models["name"], models["parameters"], strict=True)
    ]
    ax.set_xticks(models["parameters"].to_numpy(dtype=float), ticks, fontsize=8)
    ax.minorticks_off()
    lo, hi = models["parameters"].min(), models["parameters"].max()
    ax.set_xlim(lo / 10**0.35, hi * 10**0.35)
    ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
    if threshold is not None:
        ax.axhline(threshold, color="0.3", linestyle=":", linewidth=1)
    ax.set_xlabel("model (parameters, log axis)")
    task = str(frame["task"].iloc[0])
    ax.set_ylabel(f"{R.task_name(task, R.PRIMARY.get(task))} retention\n(1 = no loss)")
    fig.legend(title="score", loc="outside right upper", fontsize=9)
    return fig
