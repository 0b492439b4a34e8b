"""Figures with one value per layer: :func:`layer_profile` (a line with markers, several calls
overlay) and :func:`bar_layers` (bars, some layers highlighted with a second colour *and* a
hatch, so the distinction survives greyscale printing and colour-vision deficiency), and the
figures of the pruning study and of the hallucination-prone layers built on them. Each returns
a figure; none writes a file. Layer indices are 0-based, as in ``avsslib.arch.blocks(model)[i]``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    import pandas

from avsslib.plots.style import HIGHLIGHT_HATCH, LAYER_AXIS_LABEL, colors


def _as_1d(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``values`` (a sequence, array or CPU tensor of shape ``(n_layers,)``) as a float array."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"expected one value per layer (a 1-D array), got shape {array.shape}")
    return array


def _layer_axis(ax: Axes, n_layers: int, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_xlim(-0.7, n_layers - 0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_layers, 16)))


def layer_profile(
    ax: Axes,
    values: Sequence[float] | np.ndarray,
    label: str | None = None,
    ylabel: str = "",
    *,
    xlabel: str = LAYER_AXIS_LABEL,
    marker: str = "o",
    logy: bool = False,
    **line_kwargs: Any,
) -> Axes:
    """Plot one value per layer (shape ``(n_layers,)``) against the layer index.

    ``ylabel`` should name the quantity and its unit, e.g. ``"RMS of block output (a.u.)"``.
    Several calls on the same ``ax`` overlay profiles; the legend appears when labels are given.
    Returns ``ax``.
    """
    y = _as_1d(values)
    ax.plot(np.arange(len(y)), y, marker=marker, label=label, **line_kwargs)
    _layer_axis(ax, len(y), xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if label is not None:
        ax.legend()
    return ax


def bar_layers(
    ax: Axes,
    values: Sequence[float] | np.ndarray,
    ylabel: str = "",
    *,
    highlight: Iterable[int] = (),
    label: str | None = None,
    highlight_label: str | None = None,
    xlabel: str = LAYER_AXIS_LABEL,
    logy: bool = False,
) -> Axes:
    """Bar chart of one value per layer (shape ``(n_layers,)``).

    Layers in ``highlight`` (0-based indices) get the palette's second colour and a hatch;
    ``label`` and ``highlight_label`` name the two groups in the legend. Returns ``ax``.
    """
    y = _as_1d(values)
    marked = {int(i) for i in highlight}
    if any(not 0 <= i < len(y) for i in marked):
        raise ValueError(f"highlight indices {sorted(marked)} outside 0..{len(y) - 1}")
    base, accent = colors(2)
    x = np.arange(len(y))
    plain = np.array([i not in marked for i in x])
    ax.bar(x[plain], y[plain], color=base, label=label, width=0.8)
    if marked:
        ax.bar(
            x[~plain],
            y[~plain],
            color=accent,
            hatch=HIGHLIGHT_HATCH,
            edgecolor="white",
            label=highlight_label,
            width=0.8,
        )
    _layer_axis(ax, len(y), xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="x", visible=False)
    if logy:
        ax.set_yscale("log")
    if label is not None or (marked and highlight_label is not None):
        ax.legend()
    return ax


# --------------------------------------------------------------------------------------------
# Figures of the pruning study (avsslib.study); each takes the study's tables and returns a
# new figure, so notebooks draw exactly what `pruning_study` saves.


def study_layer_profile(
    table: pandas.DataFrame,  # noqa: F821 - pandas is imported by the caller
    *,
    pruned: Iterable[int] = (),
    variance: str = "variance",
    sparsity: str = "sparsity",
    score: str = "avss",
) -> Figure:
    """Three stacked panels over the layers of a ``layer_scores`` table (one row per layer):
    activation variance, sparsity (near-zero fraction) and the AVSS score on a log scale, with
    the ``pruned`` layers (0-based) highlighted. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(7.0, 7.2), sharex=True)
    layer_profile(axes[0], table[variance].to_numpy(), ylabel="variance V (a.u.²)", xlabel="")
    layer_profile(axes[1], table[sparsity].to_numpy(), ylabel="sparsity S (fraction)", xlabel="")
    bar_layers(
        axes[2],
        table[score].to_numpy(),
        ylabel=f"{score.upper()} (log scale)",
        highlight=pruned,
        label="kept",
        highlight_label="pruned",
        logy=True,
    )
    return fig


def _finite(values: pandas.Series) -> np.ndarray:  # noqa: F821
    """As floats, with infinities (x/0 ratios) turned into NaN so they are not drawn."""
    array = np.asarray(values, dtype=float)
    return np.where(np.isfinite(array), array, np.nan)


def retention_bars(
    retention: pandas.DataFrame,  # noqa: F821
    *,
    label: str = "config",
    threshold: float | None = 0.9,
) -> Figure:
    """Horizontal retention bars with bootstrap CIs, one panel per task and metric.

    ``retention``: rows with ``task``, ``metric``, ``retention``, ``ci_low``, ``ci_high`` and
    the bar label column ``label`` (one metric per task, e.g. from
    ``avsslib.study.primary_metric_rows``). A dashed line marks full retention (1.0) and a
    dotted one ``threshold`` (the papers' 90%). Returns the figure.
    """
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(zip(retention["task"], retention["metric"], strict=True)))
    n_bars = max(
        (len(retention[(retention["task"] == t) & (retention["metric"] == m)]) for t, m in panels),
        default=1,
    )
    fig, axes = plt.subplots(
        1,
        max(1, len(panels)),
        figsize=(3.4 * max(1, len(panels)), 0.8 + 0.32 * n_bars),
        sharey=True,
        squeeze=False,
    )
    for ax, (task, metric) in zip(axes[0], panels, strict=False):
        rows = retention[(retention["task"] == task) & (retention["metric"] == metric)]
        y = np.arange(len(rows))
        value = _finite(rows["retention"])
        err = np.clip(
            np.nan_to_num(
                np.stack([value - _finite(rows["ci_low"]), _finite(rows["ci_high"]) - value])
            ),
            0,
            None,
        )
        ax.barh(y, value, xerr=err, color=colors(1)[0], capsize=2)
        ax.set_yticks(y, rows[label].astype(str))
        ax.axvline(1.0, color="0.3", linestyle="--", linewidth=1)
        if threshold is not None:
            ax.axvline(threshold, color="0.3", linestyle=":", linewidth=1)
        ax.set_title(f"{task} ({metric})")
        ax.set_xlabel("retention (1 = no loss)")
        ax.grid(axis="y", visible=False)
    axes[0][0].invert_yaxis()  # first row on top (the y axis is shared by every panel)
    return fig


def retention_sweep(
    sweep: pandas.DataFrame,  # noqa: F821
    *,
    threshold: float | None = 0.9,
) -> Figure:
    """Retention against the pruned fraction, one line (with its bootstrap CI band) per score,
    one panel per task and metric.

    ``sweep``: rows with ``score``, ``fraction``, ``task``, ``metric``, ``retention``,
    ``ci_low``, ``ci_high`` (one metric per task). Returns the figure.
    """
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(zip(sweep["task"], sweep["metric"], strict=True)))
    fig, axes = plt.subplots(
        1,
        max(1, len(panels)),
        figsize=(max(6.5, 3.6 * len(panels)), 3.8),
        sharey=False,
        squeeze=False,
    )
    scores = list(dict.fromkeys(sweep["score"]))
    palette = dict(zip(scores, colors(max(1, len(scores))), strict=True))
    for ax, (task, metric) in zip(axes[0], panels, strict=False):
        rows = sweep[(sweep["task"] == task) & (sweep["metric"] == metric)]
        for score, group in rows.groupby("score", sort=False):
            group = group.sort_values("fraction")
            x = group["fraction"].to_numpy(dtype=float)
            ax.plot(x, _finite(group["retention"]), marker="o", label=score, color=palette[score])
            ax.fill_between(
                x,
                _finite(group["ci_low"]),
                _finite(group["ci_high"]),
                color=palette[score],
                alpha=0.18,
                linewidth=0,
            )
        ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
        if threshold is not None:
            ax.axhline(threshold, color="0.3", linestyle=":", linewidth=1)
        ax.set_title(f"{task} ({metric})")
        ax.set_xlabel("fraction of layers pruned")
        ax.set_ylabel("retention (1 = no loss)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        title="score",
        loc="outside lower center",
        ncols=min(2 * len(panels), 4, max(1, len(labels))),
    )
    return fig


# --------------------------------------------------------------------------------------------
# Figures of the hallucination-prone layer analysis (avsslib.eavss): an eavss_profile table
# (one row per layer) or a layers x datasets matrix in, a new figure out.


def eavss_layer_profile(
    table: pandas.DataFrame,  # noqa: F821 - pandas is imported by the caller
    *,
    title: str | None = None,
) -> Figure:
    """Three stacked panels over the layers of an ``avsslib.eavss.eavss_profile`` table: HSAV,
    HSS (log scales; family P also shows the truthful set's ``V_T`` and ``S_T``) and the score
    the prone layers are ranked by (``table.attrs["by"]``: ``delta`` or ``eavss``) as bars, the
    prone layers highlighted. Returns the figure."""
    import matplotlib.pyplot as plt

    family = table.attrs.get("family", "P")
    by = table.attrs.get("by", "delta" if family == "P" else "eavss")
    prone = [int(i) for i in table.index[table["prone"].astype(bool)]]
    fig, axes = plt.subplots(3, 1, figsize=(7.0, 7.2), sharex=True)
    if family == "P":  # each panel: the hallucinated set, then the truthful set dashed
        panels = (
            (axes[0], "HSAV = V_H", "hsav", "V_T", "v_t", "variance (a.u.²)", None),
            (axes[1], "HSS = S_H", "hss", "S_T", "s_t", "sparsity (fraction)", 1e-12),
        )
        for ax, h_label, h_col, t_label, t_col, ylabel, floor in panels:
            hallucinated, truthful = table[h_col].clip(lower=floor), table[t_col].clip(lower=floor)
            layer_profile(
                ax, hallucinated, f"{h_label} (hallucinated)", ylabel, xlabel="", logy=True
            )
            layer_profile(
                ax,
                truthful,
                f"{t_label} (truthful)",
                ylabel,
                xlabel="",
                logy=True,
                marker="s",
                linestyle="--",
            )
    else:
        layer_profile(axes[0], table["hsav"], xlabel="", ylabel="HSAV = V_H / V_T", logy=True)
        layer_profile(axes[1], table["hss"], xlabel="", ylabel="HSS = S_H / S_T", logy=True)
        for ax in axes[:2]:
            ax.axhline(1.0, color="0.3", linestyle=":", linewidth=1)
    ylabel = "Δ = EAVSS~ − AVSS_T~" if by == "delta" else "EAVSS (log scale)"
    bar_layers(
        axes[2],
        table[by].to_numpy(),
        ylabel=ylabel,
        highlight=prone,
        label="other",
        highlight_label=f"prone (top {len(prone)})",
        logy=by == "eavss",
    )
    if by == "delta":
        axes[2].axhline(0.0, color="0.3", linewidth=0.8)
    if title:
        axes[0].set_title(title)
    return fig


def prone_heatmap(
    matrix: pandas.DataFrame,  # noqa: F821
    *,
    prone: dict[str, Iterable[int]] | None = None,
    scale: str = "rank",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Layers x datasets heatmap of a prone score (rows: layers, 0-based; columns: datasets, e.g.
    from ``avsslib.eavss.profiles_matrix``). Each column is scaled to [0, 1] so that datasets
    with different score ranges share one colour scale: ``scale="rank"`` (default) by rank within
    the column (robust to the heavy tails that clamped sparsities give EAVSS), ``"minmax"``
    linearly. NaN cells stay blank. The ``prone`` layers of each column (``{column: layers}``)
    are marked with a ring. ``ax``: draw into this axes (e.g. one panel of a grid) instead of a
    new figure. Returns the figure."""
    import matplotlib.pyplot as plt

    if scale not in ("rank", "minmax"):
        raise ValueError(f"scale={scale!r}: use 'rank' or 'minmax'")
    values = np.asarray(matrix, dtype=float)
    if scale == "rank":
        ranked = matrix.rank(axis=0, method="average").to_numpy(dtype=float) - 1.0
        counts = np.isfinite(values).sum(axis=0)
        scaled = ranked / np.maximum(counts - 1, 1)
    else:
        low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = np.where(high > low, (values - low) / (high - low), 0.5)
    scaled[np.isnan(values)] = np.nan
    n_layers, n_cols = values.shape
    if ax is None:
        fig, ax = plt.subplots(figsize=(2.6 + 1.1 * n_cols, 1.2 + 0.2 * n_layers))
    else:
        fig = cast(Figure, ax.figure)
    image = ax.imshow(
        scaled, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    for j, column in enumerate(matrix.columns):
        rows = [int(i) for i in (prone or {}).get(column, ())]
        if rows:
            ax.scatter(
                [j] * len(rows), rows, s=70, facecolors="none", edgecolors="black", linewidths=2.6
            )
            ax.scatter(
                [j] * len(rows), rows, s=70, facecolors="none", edgecolors="white", linewidths=1.2
            )
    ax.set_xticks(range(n_cols), [str(c) for c in matrix.columns], rotation=30, ha="right")
    ax.set_ylabel(LAYER_AXIS_LABEL)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_layers, 16)))
    ax.grid(False)
    label = (
        "rank within column (1 = most prone)"
        if scale == "rank"
        else "score, min-max scaled per column"
    )
    fig.colorbar(image, ax=ax, label=label)
    if title:
        ax.set_title(title)
    return fig
