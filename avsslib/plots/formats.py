"""One number format for the whole book (tables, glued prose, the README's findings) and the
book's tables (:func:`table`: the visible rows, the rest in a dropdown, a CSV download). Writes
no file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


# --------------------------------------------------------------------------------------------
# One number format for the whole book (tables, glued prose, the README's findings).

DASH = "\u2013"
"""What an undefined value (NaN, an infinite ratio, a missing entry) shows as."""

VISIBLE_ROWS = 15
"""Rows a table shows on the page; the rest sit in a dropdown (and in the CSV download)."""

COMPACT_CELL_CHARS = 24
"""A table whose cells after the first column are all this short (text without markup) is
*compact*: on a phone those cells keep to one line (``book/_static/avss.css``), so a row is as
tall as its first cell while the table scrolls sideways; tables of prose keep wrapping."""


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
    expression of a cell (``_repr_html_``). ``compact``: see :data:`COMPACT_CELL_CHARS`."""

    def __init__(
        self,
        visible: str,
        full: str | None,
        csv: str,
        name: str,
        n_rows: int,
        note: str | None = None,
        compact: bool = False,
    ) -> None:
        self.visible, self.full, self.csv, self.name = visible, full, csv, name
        self.n_rows, self.note, self.compact = n_rows, note, compact

    def _repr_html_(self) -> str:
        import base64
        import html

        scroll = '<div class="avss-table-scroll" style="overflow-x:auto;max-width:100%">{}</div>'
        kind = "avss-table avss-table-compact" if self.compact else "avss-table"
        parts = [f'<div class="{kind}">{scroll.format(self.visible)}']
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
        compact = False
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
        compact = _short_cells(shown.iloc[:, 0 if index else 1 :], plain=escape)
    n = len(frame)
    keep = (
        [int(i) for i in np.flatnonzero(np.asarray(show, dtype=bool))]
        if show is not None
        else list(range(min(n, visible)))
    )
    full = None if len(keep) == n else full_html
    visible_html = full_html if full is None else _styler_rows(full_html, keep)
    return TableHTML(visible_html, full, csv_frame.to_csv(index=index), name, n, note, compact)


def _short_cells(frame: pd.DataFrame, *, plain: bool) -> bool:
    """Whether every cell of ``frame`` reads as at most :data:`COMPACT_CELL_CHARS` characters
    (its tags removed unless the cells are ``plain`` text)."""
    import re

    for value in frame.to_numpy().ravel():
        text = str(value) if plain else re.sub(r"<[^>]*>", "", str(value))
        if len(text) > COMPACT_CELL_CHARS:
            return False
    return True
