"""Figures of the committed runs (:mod:`avsslib.results` frames in, a new figure out): mitigation
changes per run, each mode against random layers, throughput and stage costs; the ``glue``
helper and a placeholder for a missing figure. None writes a file (:func:`avsslib.plots.save`
does)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import pandas

from avsslib.plots.style import colors

# --------------------------------------------------------------------------------------------
# Figures of the committed runs (avsslib.results frames in, a new figure out).


def glue_figure(name: str, fig: Figure) -> None:
    """Glue ``fig`` under ``name`` for a ``{glue:figure}`` directive (myst-nb) and close it, so
    that it is shown once, with its caption, where the directive stands."""
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(name, fig, display=False)
    plt.close(fig)


def placeholder(text: str) -> Figure:
    """A small figure that says what is missing, so that a figure slot is never empty."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 1.4))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def mitigation_points(
    runs: pandas.DataFrame,
    modes: Sequence[str],
    *,  # noqa: F821
    ncols: int = 3,
) -> Figure:
    """Change after minus before of every mitigation run (one point per seed, whisker: its 95%
    interval over questions), one column per mode in ``modes`` order with one colour each, one
    panel per model, dataset, task and metric of ``runs`` (rows of ``mitigation/summary.csv``)."""
    import matplotlib.pyplot as plt

    panels = list(
        dict.fromkeys(
            zip(runs["model"], runs["dataset"], runs["task"], runs["metric"], strict=True)
        )
    )
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.7 * nrows), squeeze=False)
    palette = dict(zip(modes, colors(len(modes)), strict=True))
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (m, d, t, metric) in zip(axes.flat, panels, strict=False):
        rows = runs[
            (runs["model"] == m)
            & (runs["dataset"] == d)
            & (runs["task"] == t)
            & (runs["metric"] == metric)
        ]
        present = [mode for mode in modes if mode in set(rows["mode"])]
        for i, mode in enumerate(present):
            r = rows[rows["mode"] == mode]
            x = i + (np.linspace(-0.15, 0.15, len(r)) if len(r) > 1 else np.zeros(1))
            err = np.clip(
                [r["delta_abs"] - r["abs_ci_low"], r["abs_ci_high"] - r["delta_abs"]], 0, None
            )
            ax.errorbar(
                x, 100 * r["delta_abs"], yerr=100 * err, fmt="o", capsize=2, color=palette[mode]
            )
        ax.axhline(0, color="0.3", linewidth=1)
        ax.set_xticks(range(len(present)), present)
        ax.set_title(f"{m}\n{t} ({metric})", fontsize=10)
        ax.set_ylabel("change (points)")
        ax.grid(axis="x", visible=False)
    return fig


def throughput_sweep(sweep: pandas.DataFrame) -> Figure:  # noqa: F821
    """(a) tokens/s of a bare forward pass (solid) and of ``LayerStats`` (dashed) against the
    sequence length, one colour per batch size; (b) their time ratio. The legend sits below the
    panels, outside the data."""
    import matplotlib.pyplot as plt

    sizes = sorted(sweep["batch_size"].unique())
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(9, 3.8))
    for color, b in zip(colors(len(sizes)), sizes, strict=True):
        g = sweep[sweep["batch_size"] == b].sort_values("seq_len")
        ax_t.plot(g["seq_len"], g["bare_tokens_per_s"], marker="o", color=color, label=f"batch {b}")
        ax_t.plot(
            g["seq_len"], g["layerstats_tokens_per_s"], marker="s", linestyle="--", color=color
        )
        ax_r.plot(g["seq_len"], g["ratio_b_over_a"], marker="o", color=color)
    for ax in (ax_t, ax_r):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens)")
    ax_t.set_ylabel("throughput (tokens/s)")
    ax_t.set_title("(a) bare forward (solid), LayerStats (dashed)")
    ax_r.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
    ax_r.set_ylabel("time ratio (b)/(a)")
    ax_r.set_title("(b) overhead of LayerStats")
    fig.legend(*ax_t.get_legend_handles_labels(), loc="outside lower center", ncols=len(sizes))
    return fig


def stage_cost_bars(costs: pandas.DataFrame) -> Figure:  # noqa: F821
    """Horizontal bars of wall time (minutes) per model and stage, one colour per device
    (``avsslib.results.stage_costs``); the legend sits below the bars."""
    import matplotlib.pyplot as plt

    labels = costs["model"].astype(str) + ": " + costs["stage"]
    devices = list(dict.fromkeys(costs["device"]))
    palette = dict(zip(devices, colors(len(devices)), strict=True))
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.32 * len(costs)))
    y = np.arange(len(costs))
    for device in devices:
        mask = (costs["device"] == device).to_numpy()
        ax.barh(y[mask], costs["minutes"].to_numpy()[mask], color=palette[device], label=device)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("wall time (minutes, summed over runs)")
    ax.grid(axis="y", visible=False)
    fig.legend(loc="outside lower center", ncols=min(3, len(devices)), title="device")
    return fig


def mode_differences(rows: pandas.DataFrame, *, baseline: str = "random layers") -> Figure:  # noqa: F821
    """Dot-and-interval plot of each mode minus ``baseline``, one panel per task and metric.

    ``rows``: one row per mode and task with columns ``label`` (the task and metric in words, one
    panel each), ``name`` (the mode in words, one row of dots each, top to bottom in the frame's
    order), ``mode`` (``full`` is drawn in a second colour and marker: it trains every layer, so
    it is no layer choice), ``vs_random``, ``vs_random_ci_low``, ``vs_random_ci_high`` (fractions;
    drawn in percentage points) and ``n`` (questions, in the title); as
    :func:`avsslib.results.layer_choices` returns them. A vertical line marks zero (no
    difference)."""
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(rows["label"]))
    names = list(dict.fromkeys(rows["name"]))
    fig, axes = plt.subplots(
        1,
        len(labels),
        figsize=(3.6 * len(labels) + 1.6, 0.55 * len(names) + 1.6),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    choice, other = colors(2)
    for ax, label in zip(axes[0], labels, strict=True):
        part = rows[rows["label"] == label]
        for r in part.itertuples():
            y = names.index(r.name)
            value, low, high = (
                100 * float(v) for v in (r.vs_random, r.vs_random_ci_low, r.vs_random_ci_high)
            )
            full = r.mode == "full"
            ax.errorbar(
                value,
                y,
                xerr=[[max(value - low, 0)], [max(high - value, 0)]],
                fmt="s" if full else "o",
                color=other if full else choice,
                capsize=4,
            )
        ax.axvline(0, color="0.3", linewidth=1)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", visible=False)
    fig.supxlabel(f"mode − {baseline} (percentage points)", fontsize=11)
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].set_ylim(len(names) - 0.5, -0.5)
    n = sorted({int(v) for v in rows["n"]})
    paired = f", paired over {n[0]:,} questions" if len(n) == 1 else ", paired over questions"
    fig.suptitle(
        f"Score of each mode minus {baseline}{paired} (dot: mean; bar: 95% interval)",
        fontsize=11,
    )
    return fig
