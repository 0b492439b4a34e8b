"""Notebook smoke tier: every notebooks/*.md runs end to end through jupytext + papermill with
small parameters and produces at least one figure.

The notebooks are executed with ``notebooks/`` as working directory (as ``make notebooks`` does).
A parameter ``out_dir``, when a notebook has one, is redirected into the test's temporary
directory, so a test run never writes into the repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.md"))
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()

# Small parameters per notebook (file stem -> papermill parameters); a notebook not listed runs
# with its own defaults, which must then be small enough for a CPU smoke run.
TINY_PARAMS: dict[str, dict[str, object]] = {
    "00_setup": {"max_new_tokens": 8},
    "01_avss_first_principles": {"n_calib": 8, "seq_len": 16, "batch_size": 4, "n_boot": 20},
    "03_layer_importance": {"n_calib": 8, "seq_len": 16, "batch_size": 4},
    "04_pruning_retention": {"tasks": ["wikitext2_ppl"], "n_eval": 4, "ppl_window": 32,
                             "n_calib": 8, "seq_len": 16, "scores": ["avss", "random", "tail"],
                             "sweep_fractions": [0.25], "sweep_scores": ["avss"],
                             "n_boot": 20},
    "02_official_code": {"n_calib": 8, "seq_len": 16, "batch_size": 4},
    "05_hallucination_prone_layers": {"datasets": "sciq,truthfulqa", "n": 8, "n_wikiqa": 2,
                                      "max_new_tokens": 6, "batch_size": 8, "n_boot": 20},
    "06_mitigation": {"n_label": 8, "max_new_tokens": 6, "n_train": 4, "n_eval": 4,
                      "kl_texts": 2, "ppl_windows": 1, "n_boot": 20},
    "07_paper_scale": {},
    "08_reproduce_yourself": {},
    "09_exercises": {},
    "10_why_avss_fails": {},
}
CELL_TIMEOUT_S = 900


def execute_notebook(source: Path, workdir: Path) -> Path:
    """Execute the MyST notebook ``source`` with its ``TINY_PARAMS`` into ``workdir``.

    Returns the path of the executed ``.ipynb``; raises papermill's ``PapermillExecutionError``
    (naming the failing cell) when a cell fails.
    """
    import jupytext
    import papermill

    workdir.mkdir(parents=True, exist_ok=True)
    unexecuted = workdir / f"{source.stem}.src.ipynb"
    executed = workdir / f"{source.stem}.ipynb"
    jupytext.write(jupytext.read(source), unexecuted)
    params = dict(TINY_PARAMS.get(source.stem, {}))
    if "out_dir" in papermill.inspect_notebook(str(unexecuted)):
        params["out_dir"] = str(workdir / f"{source.stem}-out")
    papermill.execute_notebook(
        str(unexecuted), str(executed), parameters=params, cwd=str(NOTEBOOK_DIR),
        kernel_name="python3", progress_bar=False, execution_timeout=CELL_TIMEOUT_S,
    )
    return executed


# Executed notebooks by stem (or the error they raised), shared by this module and test_book.py
# so that each notebook runs once per test session.
_RUNS: dict[str, Path | Exception] = {}


@pytest.fixture(scope="session")
def run_notebook(tmp_path_factory) -> Callable[[str], Path]:
    """``run(stem)`` executes ``notebooks/<stem>.md`` once per session and returns the .ipynb."""
    if not os.environ.get("AVSS_DATA_DIR") and (SHARED_DATA / "MANIFEST.json").exists():
        os.environ["AVSS_DATA_DIR"] = str(SHARED_DATA)
    workdir = tmp_path_factory.mktemp("notebooks")

    def run(stem: str) -> Path:
        if stem not in _RUNS:
            try:
                _RUNS[stem] = execute_notebook(NOTEBOOK_DIR / f"{stem}.md", workdir)
            except Exception as error:  # remembered, so a second caller fails the same way
                _RUNS[stem] = error
        result = _RUNS[stem]
        if isinstance(result, Exception):
            raise result
        return result

    return run


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


def test_every_notebook_has_tiny_parameters_or_none():
    """A TINY_PARAMS entry must name an existing notebook (catches renamed notebooks)."""
    stems = {p.stem for p in NOTEBOOKS}
    assert set(TINY_PARAMS) <= stems, f"TINY_PARAMS names missing notebooks: {set(TINY_PARAMS) - stems}"
