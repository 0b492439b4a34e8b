"""One figure style for the whole book: colour-blind-safe palette, readable fonts, light grid;
one number format; the book's tables.

Call :func:`use_style` once (every notebook does it in its first code cell), then draw with the
helpers, which label both axes and mark layer indices consistently:

* :func:`layer_profile`: one value per layer as a line with markers (several calls overlay).
* :func:`bar_layers`: one value per layer as bars, optionally highlighting some layers
  (e.g. the pruned or hallucination-prone ones) with a second colour *and* a hatch, so the
  distinction survives greyscale printing and colour-vision deficiency.
* :func:`save`: write a figure atomically (temporary file, then rename).

Layer indices are 0-based everywhere, as in ``avsslib.arch.blocks(model)[i]``.

The helpers live in one module per concern, and every public name is imported here, so
``from avsslib.plots import X`` (or ``plots.X``) is the way to use them:
:mod:`~avsslib.plots.style` (palette, style, :func:`save`), :mod:`~avsslib.plots.formats`
(number formats, :func:`table`), :mod:`~avsslib.plots.layers` (per-layer figures, the pruning
study's and the prone layers' figures) and :mod:`~avsslib.plots.runs` (figures of the
committed runs).
"""

from avsslib.plots.formats import (
    COMPACT_CELL_CHARS,
    DASH,
    VISIBLE_ROWS,
    TableHTML,
    fmt_ci,
    fmt_int,
    fmt_num,
    fmt_pct,
    fmt_value,
    layer_list,
    parse_layers,
    plural,
    shorten,
    table,
    words,
)
from avsslib.plots.layers import (
    bar_layers,
    eavss_layer_profile,
    layer_profile,
    prone_heatmap,
    retention_bars,
    retention_sweep,
    study_layer_profile,
)
from avsslib.plots.runs import (
    glue_figure,
    mitigation_points,
    mode_differences,
    placeholder,
    stage_cost_bars,
    throughput_sweep,
)
from avsslib.plots.style import (
    HIGHLIGHT_HATCH,
    LAYER_AXIS_LABEL,
    PALETTE,
    colors,
    save,
    use_style,
)

__all__ = [
    "COMPACT_CELL_CHARS",
    "DASH",
    "HIGHLIGHT_HATCH",
    "LAYER_AXIS_LABEL",
    "PALETTE",
    "TableHTML",
    "VISIBLE_ROWS",
    "bar_layers",
    "colors",
    "eavss_layer_profile",
    "fmt_ci",
    "fmt_int",
    "fmt_num",
    "fmt_pct",
    "fmt_value",
    "glue_figure",
    "layer_list",
    "layer_profile",
    "mitigation_points",
    "mode_differences",
    "parse_layers",
    "placeholder",
    "plural",
    "prone_heatmap",
    "retention_bars",
    "retention_sweep",
    "save",
    "shorten",
    "stage_cost_bars",
    "study_layer_profile",
    "table",
    "throughput_sweep",
    "use_style",
    "words",
]
