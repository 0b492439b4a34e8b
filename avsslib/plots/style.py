"""One figure style for the whole book: colour-blind-safe palette, readable fonts, light grid;
:func:`save` writes a figure atomically (temporary file, then rename) to the path it is given."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib as mpl
import seaborn as sns
from matplotlib.figure import Figure

if TYPE_CHECKING:
    pass

from avsslib.plots.formats import DASH

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
    import pandas as pd

    # pandas Stylers created after this call: three decimals at most, undefined values as a dash
    pd.set_option("styler.format.precision", 3)
    pd.set_option("styler.format.na_rep", DASH)
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


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix: .png, .pdf, .svg), creating parent
    directories; written to a temporary file first and renamed, so a crash never leaves a
    half-written figure. Returns the path."""
    from avsslib.fs import atomic_path

    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, bbox_inches="tight")
    return path
