"""Write the student edition of the notebooks (copies without the cells tagged ``solution``),
or the instructor's key (``--answers``: every cell kept).

    python tools/strip_solutions.py notebooks/*.md --out student          # MyST markdown
    python tools/strip_solutions.py notebooks/09_exercises.md --out student --format ipynb
    python tools/strip_solutions.py notebooks/*.md --out answers --format both --answers

Every cell (code or markdown) whose metadata tags include ``solution`` is removed; every other
cell is copied unchanged, outputs dropped. The copies keep the notebooks' jupytext header, so
Jupyter with jupytext opens a ``.md`` copy as a notebook. ``make student`` and ``make answers``
run this on ``notebooks/*.md``. A cell that opens or closes a ``solution`` directive must itself
be tagged ``solution`` (otherwise half a solution would reach the students): such a notebook is
refused. Exit status 2, with one line naming the file, when a notebook cannot be read or is
refused.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

SOLUTION_TAG = "solution"
FORMATS = {"md": ("md:myst", ".md"), "ipynb": ("ipynb", ".ipynb")}
CHOICES = (*FORMATS, "both")
SOLUTION_DIRECTIVE = re.compile(r"\{solution(-start|-end)?\}")


def is_solution(cell) -> bool:
    """True when the cell's metadata tags include ``solution``."""
    return SOLUTION_TAG in (cell.get("metadata", {}).get("tags") or [])


def untagged_solution_cells(notebook) -> list[int]:
    """Indices of cells that hold a ``solution`` directive but are not tagged ``solution``."""
    return [
        i
        for i, cell in enumerate(notebook.cells)
        if SOLUTION_DIRECTIVE.search(cell.source) and not is_solution(cell)
    ]


def strip_notebook(notebook, keep_solutions: bool = False):
    """A copy of ``notebook`` (an ``nbformat.NotebookNode``) without solution cells (all kept
    with ``keep_solutions``) and without outputs; returns ``(copy, number of cells removed)``."""
    import copy

    out = copy.deepcopy(notebook)
    kept = [cell for cell in out.cells if keep_solutions or not is_solution(cell)]
    removed = len(out.cells) - len(kept)
    for cell in kept:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    out.cells = kept
    return out, removed


def strip_file(
    source: Path, out_dir: Path, fmt: str = "md", keep_solutions: bool = False
) -> tuple[Path, int]:
    """Write the student copy (or with ``keep_solutions`` the instructor's copy) of ``source``
    (any format jupytext reads) into ``out_dir``; returns ``(path written, cells removed)``."""
    import jupytext

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {sorted(FORMATS)}")
    try:
        notebook = jupytext.read(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"{source}: cannot be read as a notebook ({error})") from error
    untagged = untagged_solution_cells(notebook)
    if untagged:
        raise ValueError(
            f"{source}: cells {untagged} hold a solution directive but are not "
            "tagged 'solution'; tag them so the student edition drops them"
        )
    stripped, removed = strip_notebook(notebook, keep_solutions)
    jupytext_format, suffix = FORMATS[fmt]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (source.stem + suffix)
    jupytext.write(stripped, target, fmt=jupytext_format)
    return target, removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebook sources (.md or .ipynb)")
    parser.add_argument(
        "--out", type=Path, default=Path("student"), help="output directory (default student/)"
    )
    parser.add_argument(
        "--format",
        choices=CHOICES,
        default="md",
        help="format of the copies (default md: jupytext MyST markdown; both: .md and .ipynb)",
    )
    parser.add_argument(
        "--answers", action="store_true", help="keep the solutions: the instructor's key"
    )
    args = parser.parse_args(argv)
    formats = list(FORMATS) if args.format == "both" else [args.format]
    for source in args.notebooks:
        for fmt in formats:
            try:
                target, removed = strip_file(source, args.out, fmt, args.answers)
            except ValueError as error:
                print(f"strip_solutions: {error}", file=sys.stderr)
                return 2
            print(
                f"{target}: "
                + ("with its solutions" if args.answers else f"{removed} solution cell(s) removed")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
