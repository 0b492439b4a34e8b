"""The course kit: exercise checks that never reveal the answer, the student edition and the
instructor's key.

* ``make student`` (tools/strip_solutions.py) writes ``.md`` and ``.ipynb`` copies of every
  chapter without a solution cell; every check of the student edition, run with its blanks
  left, fails with its hint, and nothing printed (hints included) holds a value of the answer.
* ``make answers`` (the same tool with ``--answers``) keeps the solutions; with them every
  check passes.
* Wrong answers fail with a hint that does not contain the reference value.

The exercise cells run in this process (``exec``, with ``notebooks/`` as working directory):
chapter 09 whole, the other chapters from their ``## Exercises`` heading on (those cells are
self-contained and need no model).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

from avsslib import exercises as ex

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.md"))
CHECK_CALL = re.compile(r"^\s*check_\w+\(", re.M)


def _tool():
    spec = importlib.util.spec_from_file_location(
        "strip_solutions", REPO / "tools" / "strip_solutions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags") or [])


def _exercise_cells(notebook) -> list:
    """The cells an exercise run executes: all of chapter 09, else from ``## Exercises`` on."""
    cells = notebook.cells
    start = next(
        (
            i
            for i, c in enumerate(cells)
            if c.cell_type == "markdown" and re.search(r"^## Exercises\s*$", c.source, re.M)
        ),
        None,
    )
    if start is None:
        return list(cells) if "{exercise-start}" in "".join(c.source for c in cells) else []
    return list(cells[start:])


def _answer_names(source: str) -> list[str]:
    """Positional arguments of the check calls in a cell: by convention, the answers."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "").startswith("check_"):
            names += [a.id for a in node.args if isinstance(a, ast.Name)]
    return names


def _run(cells, out_dir: Path) -> tuple[dict, list[tuple[str, str, BaseException | None]]]:
    """Execute ``cells`` in one namespace; returns it and, per check cell, (source, printed
    text, the exception it raised or None). Any other cell must run without error."""
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict = {"__name__": "__exercise__"}
    checks = []
    cwd = os.getcwd()
    os.chdir(REPO / "notebooks")
    try:
        for cell in cells:
            if cell.cell_type != "code":
                continue
            source = cell.source
            if "parameters" in _tags(cell):
                source = re.sub(
                    r"^out_dir = .*$", f"out_dir = {str(out_dir)!r}", source, flags=re.M
                )
            printed = io.StringIO()
            error = None
            with contextlib.redirect_stdout(printed):
                try:
                    exec(compile(source, "<cell>", "exec"), namespace)
                except Exception as raised:  # noqa: BLE001 - sorted below
                    error = raised
            if CHECK_CALL.search(source):
                checks.append((source, printed.getvalue(), error))
            elif error is not None:
                raise AssertionError(f"a non-check cell failed:\n{source}") from error
    finally:
        os.chdir(cwd)
    return namespace, checks


def _renderings(value) -> set[str]:
    """The ways a printed answer value could look."""
    out: set[str] = set()
    if isinstance(value, bool) or value is None or callable(value):
        return out
    if isinstance(value, int | float | np.floating | np.integer):
        v = float(value)
        if isinstance(value, int | np.integer) and abs(v) < 10:
            return out  # a small index: too common a digit to search for
        for fmt in ("{!r}", "{:.6f}", "{:.4f}", "{:.3f}", "{:g}", "{:.1f}", "{:,.0f}"):
            text = fmt.format(v)
            if len(text.strip("-0.")) >= 2:
                out.add(text)
        return out
    if isinstance(value, set | frozenset | list | tuple | np.ndarray):
        items = np.asarray(sorted(value) if isinstance(value, set | frozenset) else value)
        if items.dtype.kind in "iu":
            out |= {str(sorted(items.tolist())), str(set(items.tolist()))}
        elif items.dtype.kind == "f":
            for v in items.ravel():
                out |= _renderings(float(v))
    return out


@pytest.fixture(scope="module")
def editions(tmp_path_factory) -> dict[str, Path]:
    """``make student`` and ``make answers`` into temporary folders (both formats)."""
    root = tmp_path_factory.mktemp("editions")
    tool = _tool()
    sources = [str(p) for p in NOTEBOOKS]
    assert tool.main([*sources, "--out", str(root / "student"), "--format", "both"]) == 0
    assert (
        tool.main([*sources, "--out", str(root / "answers"), "--format", "both", "--answers"]) == 0
    )
    return {"student": root / "student", "answers": root / "answers"}


def test_every_chapter_has_a_summary_and_exercises():
    import jupytext

    for path in NOTEBOOKS:
        text = path.read_text(encoding="utf-8")
        assert "{exercise-start}" in text or "{exercise}" in text, f"{path.name}: no exercise"
        if path.stem != "09_exercises":
            assert re.search(r"^## Summary\s*$", text, re.M), f"{path.name}: no summary"
            assert _exercise_cells(jupytext.read(path)), f"{path.name}: no ## Exercises section"


def test_student_edition_holds_no_solution(editions):
    import jupytext
    import nbformat

    for path in NOTEBOOKS:
        original = jupytext.read(path)
        solutions = [c.source for c in original.cells if "solution" in _tags(c)]
        for suffix in (".md", ".ipynb"):
            written = editions["student"] / f"{path.stem}{suffix}"
            student = jupytext.read(written)
            text = "\n".join(c.source for c in student.cells)
            assert not [c for c in student.cells if "solution" in _tags(c)], written
            assert "{solution" not in text, f"{written}: a solution directive is left"
            for solution in solutions:
                assert solution.strip() not in text, f"{written}: solution text leaked"
            if suffix == ".ipynb":
                nbformat.validate(nbformat.read(written, as_version=4))
        answers = jupytext.read(editions["answers"] / f"{path.stem}.md")
        assert [c.source for c in answers.cells] == [c.source for c in original.cells]


def test_student_checks_fail_with_hints_and_answers_pass(editions, tmp_path):
    import jupytext

    n_checks = 0
    for path in NOTEBOOKS:
        answers = _exercise_cells(jupytext.read(editions["answers"] / f"{path.stem}.md"))
        student = _exercise_cells(jupytext.read(editions["student"] / f"{path.stem}.md"))
        if not any(CHECK_CALL.search(c.source) for c in answers if c.cell_type == "code"):
            continue
        solved, key_checks = _run(answers, tmp_path / f"{path.stem}-answers")
        for source, printed, error in key_checks:
            assert error is None, (
                f"{path.name}: the instructor's key fails a check:\n{source}\n{error}"
            )
            assert "correct" in printed, source
        _, checks = _run(student, tmp_path / f"{path.stem}-student")
        assert len(checks) == len(key_checks), path.name
        for source, printed, error in checks:
            assert isinstance(error, ex.ExerciseFailed), (
                f"{path.name}: with the blanks left this check did not fail with a hint:\n"
                f"{source}\n{error!r}"
            )
            shown = printed + str(error)
            assert str(error).strip(), source
            for name in _answer_names(source):
                for text in _renderings(solved.get(name)):
                    assert text not in shown, (
                        f"{path.name}: {name}'s value {text} is shown: {shown}"
                    )
            n_checks += 1
    assert n_checks >= 10, f"only {n_checks} checks in the book"


# ------------------------------------------------------------------ wrong answers, no leak
def _fails_without(call, *references: float | str) -> str:
    with pytest.raises(ex.ExerciseFailed) as failure:
        call()
    message = str(failure.value)
    for ref in references:
        texts = _renderings(ref) if not isinstance(ref, str) else {ref}
        for text in texts:
            assert text not in message, f"the hint shows {text}: {message}"
    return message


def test_wrong_numbers_fail_without_the_reference():
    h = np.array(
        [
            [[0.5, -1.0, 0.0, 2.0], [1.5, 0.0, -0.5, 1.0], [-1.0, 2.0, 4e-6, 0.5]],
            [[0.0, 1.0, 1.0, -2.0], [2.0, -3e-6, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    w = np.array([[1, 1, 1], [1, 1, 0]], dtype=float)
    pooled = (h * w[..., None]).sum(1) / w.sum(1, keepdims=True)
    v, s = (
        pooled.var(axis=1, ddof=1).mean(),
        (np.abs(h)[np.broadcast_to(w[..., None] > 0, h.shape)] < 1e-5).mean(),
    )
    ex.check_variance_sparsity(v, s, h=h, mask=w, eps=1e-5)
    msg = _fails_without(
        lambda: ex.check_variance_sparsity(
            pooled.var(axis=1, ddof=0).mean(), s, h=h, mask=w, eps=1e-5
        ),
        v,
    )
    assert "ddof" in msg
    msg = _fails_without(
        lambda: ex.check_variance_sparsity(v, (np.abs(h) < 1e-5).mean(), h=h, mask=w, eps=1e-5), s
    )
    assert "padded" in msg
    _fails_without(lambda: ex.check_variance_sparsity(v * 1.3, s, h=h, mask=w, eps=1e-5), v)
    assert "still None" in _fails_without(
        lambda: ex.check_variance_sparsity(None, s, h=h, mask=w, eps=1e-5)
    )

    n, sigma = 64 * 128 * 576, 0.8
    right = n * np.sqrt(2 / np.pi) * 1e-5 / sigma
    _fails_without(
        lambda: ex.check_expected_count(right * 2, 1e-3, sigma=sigma, n=n, target=1000), right
    )
    _fails_without(
        lambda: ex.check_expected_count(right, 1e-2, sigma=sigma, n=n, target=1000),
        "1e-03",
        "0.001",
    )
    assert "too small" in _fails_without(
        lambda: ex.check_expected_count(right, 1e-5, sigma=sigma, n=n, target=1000), "1e-03"
    )

    ex.check_relative_gain(5.0, 0.1, before=0.5, after=0.55)
    _fails_without(lambda: ex.check_relative_gain(5.0, 10.0, before=0.5, after=0.55), 0.1)
    _fails_without(lambda: ex.check_relative_gain(0.05, 0.1, before=0.5, after=0.55), 5.0)
    tau = ex.check_kendall_tau
    _fails_without(lambda: tau(0.2, [1, 2, 3, 4], [1, 3, 2, 4]), 0.6666666666666666)
    assert "half to even" in _fails_without(lambda: ex.check_layer_counts([7], [26], 0.25))


def test_wrong_functions_and_sets_fail_without_the_reference():
    from avsslib.selection import select_layers

    def half_up(importance, fraction=0.25):  # rounds half up: 0.25 * 10 -> 3
        values = np.asarray(importance, dtype=float)
        k = int(fraction * len(values) + 0.5)
        if k >= len(values):
            raise ValueError("prunes every layer")
        return sorted(int(i) for i in np.argsort(values, kind="stable")[:k])

    def ties_high(importance, fraction=0.25):  # ties go to the higher index
        values = np.asarray(importance, dtype=float)
        k = round(fraction * len(values))
        if k >= len(values):
            raise ValueError("prunes every layer")
        order = len(values) - 1 - np.argsort(values[::-1], kind="stable")
        return sorted(int(i) for i in order[:k])

    message = _fails_without(lambda: ex.check_count_rule(half_up))
    assert "wrong number of layers" in message and "half to even" in message
    assert "tie" in _fails_without(lambda: ex.check_count_rule(ties_high))
    assert "NotImplementedError" in _fails_without(
        lambda: ex.check_count_rule(
            lambda importance, fraction: (_ for _ in ()).throw(NotImplementedError())
        )
    )
    importance = [0.02, 0.03, 0.4, 0.05, 0.5]
    expected = select_layers(importance, 0.1, "code_bug")
    _fails_without(
        lambda: ex.check_code_bug_prediction({4}, importance, 0.1),
        str(sorted(expected)),
        str(set(expected)),
    )
    ex.check_code_bug_prediction(expected, importance, 0.1)
    _fails_without(lambda: ex.check_avss(lambda v, s: v / s))
    _fails_without(lambda: ex.check_retention(lambda o, p, higher: p / o))
    _fails_without(lambda: ex.check_update_ratio(lambda a, b: np.linalg.norm(b - a)))
    _fails_without(lambda: ex.check_rouge_l(lambda a, b: 0.5))
