"""One figure style for the whole book: colour-blind-safe palette, readable fonts, light grid.

Call :func:`use_style` once (every notebook does it in its first code cell), then draw with the
helpers, which label both axes and mark layer indices consistently:

* :func:`layer_profile`: one value per layer as a line with markers (several calls overlay).
* :func:`bar_layers`: one value per layer as bars, optionally highlighting some layers
  (e.g. the pruned or hallucination-prone ones) with a second colour *and* a hatch, so the
  distinction survives greyscale printing and colour-vision deficiency.
* :func:`save`: write a figure atomically (temporary file, then rename).

Layer indices are 0-based everywhere, as in ``avsslib.models.blocks(model)[i]``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PALETTE = "colorblind"
"""The seaborn palette used for every figure (Wong/Okabe-Ito-like, colour-blind-safe)."""

HIGHLIGHT_HATCH = "//"
LAYER_AXIS_LABEL = "layer index (0 = first block)"


def colors(n: int = 10) -> list[tuple[float, float, float]]:
    """The first ``n`` colours of the book's palette, as RGB tuples in [0, 1]."""
    return sns.color_palette(PALETTE, n)


def use_style(dpi: int = 110) -> None:
    """Set the book's matplotlib style for the rest of the session.

    Seaborn's ``colorblind`` palette as the colour cycle, font sizes readable in the HTML book
    at 100% zoom, a light grid behind the data, no top/right spines, and ``dpi`` dots per inch
    for inline figures (saved figures use 150 dpi).
    """
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    mpl.rcParams.update(
        {
            "figure.dpi": dpi,
            "savefig.dpi": 150,
            "figure.figsize": (7.0, 3.6),
            "figure.constrained_layout.use": True,
            "font.size": 11,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "xtick.labelsize": 10,
            "ytick.labelsize": 10,
            "legend.fontsize": 10,
            "legend.frameon": False,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "grid.color": "0.88",
            "grid.linewidth": 0.8,
            "lines.linewidth": 1.8,
            "lines.markersize": 5,
            "hatch.linewidth": 0.8,
        }
    )


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
    **line_kwargs: object,
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
            x[~plain], y[~plain], color=accent, hatch=HIGHLIGHT_HATCH, edgecolor="white",
            label=highlight_label, width=0.8,
        )
    _layer_axis(ax, len(y), xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="x", visible=False)
    if logy:
        ax.set_yscale("log")
    if label is not None or (marked and highlight_label is not None):
        ax.legend()
    return ax


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix: .png, .pdf, .svg), creating parent
    directories; written to a temporary file first and renamed, so a crash never leaves a
    half-written figure. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

