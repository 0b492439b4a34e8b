"""Notebook smoke tier: every notebooks/*.md runs end to end through jupytext + papermill with
small parameters and produces at least one figure.

The notebooks are executed with ``notebooks/`` as working directory (as ``make notebooks`` does).
A parameter ``out_dir``, when a notebook has one, is redirected into the test's temporary
directory, so a test run never writes into the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.md"))

# The notebooks' small parameters (TINY_PARAMS) and the session fixture ``run_notebook`` that
# executes each notebook once per test session live in conftest.py (test_book.py uses them too).


def image_outputs(notebook_path: Path) -> int:
    """Number of PNG/SVG outputs in an executed notebook, glued ones included."""
    import nbformat

    notebook = nbformat.read(notebook_path, as_version=4)
    return sum(
        1
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        for mime in output.get("data", {})
        if mime.endswith(("image/png", "image/svg+xml"))
    )


@pytest.mark.slow
@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_draws(source: Path, run_notebook) -> None:
    executed = run_notebook(source.stem)
    assert image_outputs(executed) >= 1, f"{source.name} produced no figure"


def test_every_notebook_has_tiny_parameters_or_none(notebook_params):
    """A TINY_PARAMS entry must name an existing notebook (catches renamed notebooks)."""
    stems = {p.stem for p in NOTEBOOKS}
    assert set(notebook_params) <= stems, (
        f"TINY_PARAMS names missing notebooks: {set(notebook_params) - stems}"
    )
