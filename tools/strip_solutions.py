"""Write the student edition of the notebooks: copies without the cells tagged ``solution``.

    python tools/strip_solutions.py notebooks/*.md --out student          # MyST markdown
    python tools/strip_solutions.py notebooks/09_exercises.md --out student --format ipynb

Every cell (code or markdown) whose metadata tags include ``solution`` is removed; every other
cell is copied unchanged, outputs dropped. The copies keep the notebooks' jupytext header, so
Jupyter with jupytext opens a ``.md`` copy as a notebook. ``make student`` runs this on
``notebooks/*.md``. Exit status 2, with one line naming the file, when a notebook cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

SOLUTION_TAG = "solution"
FORMATS = {"md": ("md:myst", ".md"), "ipynb": ("ipynb", ".ipynb")}


def is_solution(cell) -> bool:
    """True when the cell's metadata tags include ``solution``."""
    return SOLUTION_TAG in (cell.get("metadata", {}).get("tags") or [])


def strip_notebook(notebook):
    """A copy of ``notebook`` (an ``nbformat.NotebookNode``) without solution cells and without
    outputs; returns ``(copy, number of cells removed)``."""
    import copy

    out = copy.deepcopy(notebook)
    kept = [cell for cell in out.cells if not is_solution(cell)]
    removed = len(out.cells) - len(kept)
    for cell in kept:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    out.cells = kept
    return out, removed


def strip_file(source: Path, out_dir: Path, fmt: str = "md") -> tuple[Path, int]:
    """Write the student copy of ``source`` (any format jupytext reads) into ``out_dir``;
    returns ``(path written, cells removed)``."""
    import jupytext

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {sorted(FORMATS)}")
    try:
        notebook = jupytext.read(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"{source}: cannot be read as a notebook ({error})") from error
    stripped, removed = strip_notebook(notebook)
    jupytext_format, suffix = FORMATS[fmt]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (source.stem + suffix)
    jupytext.write(stripped, target, fmt=jupytext_format)
    return target, removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebook sources (.md or .ipynb)")
    parser.add_argument("--out", type=Path, default=Path("student"),
                        help="output directory (default student/)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="md",
                        help="format of the copies (default md: jupytext MyST markdown)")
    args = parser.parse_args(argv)
    for source in args.notebooks:
        try:
            target, removed = strip_file(source, args.out, args.format)
        except ValueError as error:
            print(f"strip_solutions: {error}", file=sys.stderr)
            return 2
        print(f"{target}: {removed} solution cell(s) removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
