"""One figure style for the whole book: colour-blind-safe palette, readable fonts, light grid.

Call :func:`use_style` once (every notebook does it in its first code cell), then draw with the
helpers, which label both axes and mark layer indices consistently:

* :func:`layer_profile`: one value per layer as a line with markers (several calls overlay).
* :func:`bar_layers`: one value per layer as bars, optionally highlighting some layers
  (e.g. the pruned or hallucination-prone ones) with a second colour *and* a hatch, so the
  distinction survives greyscale printing and colour-vision deficiency.
* :func:`save`: write a figure atomically (temporary file, then rename).

Layer indices are 0-based everywhere, as in ``avsslib.arch.blocks(model)[i]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    import pandas

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


# --------------------------------------------------------------------------------------------
# One number format for the whole book (tables, glued prose, the README's findings).

DASH = "\u2013"
"""What an undefined value (NaN, an infinite ratio, a missing entry) shows as."""

VISIBLE_ROWS = 15
"""Rows a table shows on the page; the rest sit in a dropdown (and in the CSV download)."""


def _missing(x: object) -> bool:
    if x is None:
        return True
    try:
        return not np.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _decimals(*values: float, pct: bool = True) -> int:
    """Decimals that give the largest magnitude among ``values`` 2-3 significant digits."""
    finite = [abs(v) for v in values if v is not None and np.isfinite(v)]
    top = max(finite, default=0.0)
    if top >= 10 or top == 0:
        return 0
    if top >= 1:
        return 1
    return 2 if top >= 0.1 or pct else 3


def _no_negative_zero(text: str) -> str:
    """``"-0.00"`` (a tiny negative rounded away) as ``"0.00"``; ``"+0.0"`` as ``"0.0"``."""
    return text.lstrip("+-") if float(text) == 0 else text


def fmt_int(x: object) -> str:
    """An integer with thousands separators (``"1,234"``); ``DASH`` if undefined."""
    return DASH if _missing(x) else f"{int(round(float(x))):,}"  # type: ignore[arg-type]


def fmt_num(x: object, sig: int = 3) -> str:
    """A number with ``sig`` significant digits, integers as integers, large numbers with
    thousands separators and no exponent below 10^9 (``"0.123"``, ``"24"``, ``"224,971"``)."""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if _missing(x):
        return DASH
    v = float(x)  # type: ignore[arg-type]
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 10**sig and abs(v) < 1e9:
        return f"{v:,.0f}"
    if abs(v) < 1e-3 or abs(v) >= 1e9:
        return f"{v:.{sig - 1}e}"
    text = f"{v:.{sig}g}"
    return f"{float(text):,}" if "e" in text else text


def fmt_pct(x: object, *, sign: bool = False) -> str:
    """A fraction as a percentage with 2-3 significant digits: 0.812 -> ``"81%"``, 0.0523 ->
    ``"5.2%"``, 0.0033 -> ``"0.33%"``; ``sign=True`` prefixes ``+`` to positive values."""
    if _missing(x):
        return DASH
    v = 100 * float(x)  # type: ignore[arg-type]
    return f"{v:{'+' if sign else ''}.{_decimals(v)}f}%"


def fmt_ci(value: object, low: object, high: object, *, kind: str = "pct") -> str:
    """A value with its interval in one format: ``kind="pct"`` ``"81% [76, 86]"`` (fractions),
    ``"pp"`` ``"+5.2 pp [2.3, 8.1]"`` (changes of a fraction, in percentage points),
    ``"rel"`` ``"+20% [8, 33]"`` (relative changes), ``"num"`` ``"0.41 [0.38, 0.44]"``.
    An undefined value gives ``DASH``; an undefined interval leaves the brackets out."""
    if _missing(value):
        return DASH
    scale = 1.0 if kind == "num" else 100.0
    v = float(value) * scale  # type: ignore[arg-type]
    bounds = [float(b) * scale for b in (low, high) if not _missing(b)]  # type: ignore[arg-type]
    if kind == "num":
        body = fmt_num(v)
        inner = ", ".join(fmt_num(b) for b in bounds)
    else:
        d = _decimals(v, *bounds)
        signed = kind in ("pp", "rel")
        body = _no_negative_zero(f"{v:{'+' if signed else ''}.{d}f}") + (
            " pp" if kind == "pp" else "%"
        )
        inner = ", ".join(_no_negative_zero(f"{b:.{d}f}") for b in bounds)
    return body + (f" [{inner}]" if len(bounds) == 2 else "")


def fmt_value(x: object) -> str:
    """The default cell format of every table: integers as integers, other numbers with three
    significant digits, booleans as yes/no, undefined values as ``DASH``, text unchanged."""
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, float, np.integer, np.floating)) or x is None:
        return fmt_num(x)
    try:
        if _missing(x):
            return DASH
    except (TypeError, ValueError):
        pass
    return str(x)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 dataset"``, ``"3 datasets"``, ``"no dataset"``; ``many`` is the irregular plural."""
    n = int(n)
    if n == 0:
        return f"no {word}"
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def words(items: Iterable[object], conjunction: str = "and") -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``; ``"none"`` for no item."""
    texts = [str(i) for i in items]
    if not texts:
        return "none"
    return texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} {conjunction} {texts[-1]}"


def shorten(text: str, width: int = 70) -> str:
    """``text`` cut to ``width`` characters with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def layer_list(layers: Iterable[int]) -> str:
    """Layer indices as ranges, ``"0\u20133, 5, 7"``, or ``"none"`` (0-based, sorted)."""
    values = sorted({int(i) for i in layers})
    if not values:
        return "none"
    parts, start = [], values[0]
    for prev, cur in zip(values, [*values[1:], None], strict=True):
        if cur is not None and cur == prev + 1:
            continue
        if prev - start >= 2:
            parts.append(f"{start}\u2013{prev}")
        else:
            parts.extend(str(i) for i in range(start, prev + 1))
        start = cur if cur is not None else start
    return ", ".join(parts)


def parse_layers(text: object) -> list[int]:
    """``"0 1 2 9"`` (the layer columns of the result files) as a list of ints; ``[]`` if empty."""
    if _missing(text) or not str(text).strip():
        return []
    return [int(float(v)) for v in str(text).replace(",", " ").split()]


class TableHTML:
    """A table ready for the book: at most :data:`VISIBLE_ROWS` rows on the page inside a
    container that scrolls sideways, the full table in a dropdown, a CSV download (a ``data:``
    link, so it works offline) and an optional note. Notebooks display it as the last
    expression of a cell (``_repr_html_``)."""

    def __init__(
        self,
        visible: str,
        full: str | None,
        csv: str,
        name: str,
        n_rows: int,
        note: str | None = None,
    ) -> None:
        self.visible, self.full, self.csv, self.name = visible, full, csv, name
        self.n_rows, self.note = n_rows, note

    def _repr_html_(self) -> str:
        import base64
        import html

        scroll = '<div class="avss-table-scroll" style="overflow-x:auto;max-width:100%">{}</div>'
        parts = [f'<div class="avss-table">{scroll.format(self.visible)}']
        if self.full is not None:
            parts.append(
                f'<details class="avss-table-full"><summary>Full table '
                f"({plural(self.n_rows, 'row')})</summary>{scroll.format(self.full)}"
                "</details>"
            )
        data = base64.b64encode(self.csv.encode("utf-8")).decode("ascii")
        parts.append(
            f'<p class="avss-table-download"><a download="{html.escape(self.name)}.csv" '
            f'href="data:text/csv;charset=utf-8;base64,{data}">Download as CSV</a> '
            f"({plural(self.n_rows, 'row')})</p>"
        )
        if self.note:
            parts.append(f'<p class="avss-table-note">{html.escape(self.note)}</p>')
        parts.append("</div>")
        return "".join(parts)


def _styler_rows(html_text: str, keep: Sequence[int]) -> str:
    """A Styler's HTML with only the body rows at positions ``keep``."""
    import re

    head, sep, rest = html_text.partition("<tbody>")
    body, sep2, tail = rest.partition("</tbody>")
    rows = [r for r in re.split(r"(?=<tr>)", body) if r.strip()]
    return head + sep + "".join(rows[i] for i in keep if i < len(rows)) + sep2 + tail


def table(
    data,
    *,
    index: bool = True,
    precision: int = 3,
    show: Sequence[bool] | None = None,
    visible: int = VISIBLE_ROWS,
    name: str = "table",
    note: str | None = None,
    escape: bool = True,
    csv_only: Sequence[str] = (),
    **formats,
) -> TableHTML:
    """A DataFrame (or a pandas ``Styler``) as a book table (:class:`TableHTML`).

    ``formats``: column -> format string or callable (DataFrames only); other cells use
    :func:`fmt_value`. ``index=False`` hides the index. ``show``: a boolean mask of the rows a
    reader needs on the page (default: the first ``visible``); the others are only in the
    dropdown and the CSV (``name``.csv). ``csv_only``: columns left off the page (long commands,
    version strings) but kept in the CSV. ``escape=False`` keeps HTML in cells (links).
    ``precision`` is kept for Styler callers."""
    if hasattr(data, "set_table_attributes"):  # a Styler: keep its formats
        styler, frame = data, data.data
        for column in frame.columns:  # integral floats print as integers
            values = frame[column]
            if (
                values.dtype.kind == "f"
                and values.notna().all()
                and (values == values.round()).all()
                and (values.abs() < 1e15).all()
            ):
                frame[column] = values.astype("int64")
        if not index:
            styler = styler.hide(axis="index")
        styler = styler.set_table_attributes('class="dataframe"')
        full_html = styler.to_html()
        csv_frame = frame
    else:
        frame = data
        shown = frame.drop(columns=[c for c in csv_only if c in frame.columns])
        for column in shown.columns:
            fmt = formats.get(column)
            call = fmt if callable(fmt) else (fmt.format if fmt else None)
            render = (lambda v, f=call: DASH if _missing(v) else f(v)) if call else fmt_value
            shown[column] = [render(v) for v in shown[column]]
        full_html = shown.to_html(index=index, border=0, escape=escape, na_rep=DASH)
        csv_frame = frame
    n = len(frame)
    keep = (
        [int(i) for i in np.flatnonzero(np.asarray(show, dtype=bool))]
        if show is not None
        else list(range(min(n, visible)))
    )
    full = None if len(keep) == n else full_html
    visible_html = full_html if full is None else _styler_rows(full_html, keep)
    return TableHTML(visible_html, full, csv_frame.to_csv(index=index), name, n, note)


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


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix: .png, .pdf, .svg), creating parent
    directories; written to a temporary file first and renamed, so a crash never leaves a
    half-written figure. Returns the path."""
    from avsslib.fs import atomic_path

    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, bbox_inches="tight")
    return path


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
    if family == "P":
        layer_profile(
            axes[0],
            table["hsav"],
            label="HSAV = V_H (hallucinated)",
            xlabel="",
            ylabel="variance (a.u.²)",
            logy=True,
        )
        layer_profile(
            axes[0],
            table["v_t"],
            label="V_T (truthful)",
            xlabel="",
            ylabel="variance (a.u.²)",
            logy=True,
            marker="s",
            linestyle="--",
        )
        layer_profile(
            axes[1],
            table["hss"].clip(lower=1e-12),
            xlabel="",
            label="HSS = S_H (hallucinated)",
            ylabel="sparsity (fraction)",
            logy=True,
        )
        layer_profile(
            axes[1],
            table["s_t"].clip(lower=1e-12),
            label="S_T (truthful)",
            xlabel="",
            ylabel="sparsity (fraction)",
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
