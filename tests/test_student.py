"""The student edition: tools/strip_solutions.py removes every cell tagged ``solution``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXERCISES = REPO / "notebooks" / "09_exercises.md"


def _tool():
    spec = importlib.util.spec_from_file_location(
        "strip_solutions", REPO / "tools" / "strip_solutions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags") or [])


@pytest.mark.parametrize("fmt", ["md", "ipynb"])
def test_exercises_lose_every_solution_and_still_parse(tmp_path, fmt):
    import jupytext

    tool = _tool()
    original = jupytext.read(EXERCISES)
    solutions = [c for c in original.cells if "solution" in _tags(c)]
    assert len(solutions) >= 5, "the exercises should tag their solution cells 'solution'"
    assert {c.cell_type for c in solutions} == {"code", "markdown"}

    assert tool.main([str(EXERCISES), "--out", str(tmp_path), "--format", fmt]) == 0
    written = tmp_path / f"09_exercises.{fmt}"
    student = jupytext.read(written)  # still a notebook
    assert not [c for c in student.cells if "solution" in _tags(c)]
    assert len(student.cells) == len(original.cells) - len(solutions)
    # everything else is kept, in order: the parameters cell, the answer cells, the checks
    kept = [c.source for c in original.cells if "solution" not in _tags(c)]
    assert [c.source for c in student.cells] == kept
    assert any("parameters" in _tags(c) for c in student.cells)
    assert "NotImplementedError" in "".join(c.source for c in student.cells)
    for solution in solutions:  # no solution text leaks
        assert solution.source not in "\n".join(c.source for c in student.cells)
    if fmt == "ipynb":
        import nbformat

        nbformat.validate(nbformat.read(written, as_version=4))


def test_unreadable_notebook_exits_2(tmp_path, capsys):
    bad = tmp_path / "broken.ipynb"
    bad.write_text("{not json", encoding="utf-8")
    assert _tool().main([str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "broken.ipynb" in capsys.readouterr().err
