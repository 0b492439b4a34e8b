"""avsslib.beyond on small synthetic result folders whose answers are known by hand."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avsslib import beyond as B


def _metrics(ids, before, after):
    block = lambda v: {"ids": ids, "metrics": {"acc": {"kind": "mean", "per_example": v}}}  # noqa: E731
    return {"before": {"tasks": {"t": block(before)}}, "after": {"tasks": {"t": block(after)}}}


def _write(folder: Path, name: str, data: dict) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "metrics.json").write_text(json.dumps(data))


@pytest.fixture
def folds_root(tmp_path):
    """Two folds of two questions; random adds 0.1 to every question, eavss 0.3 (seed 0) and
    0.5 (seed 1), so eavss minus random is 0.3 on every question; probe misses fold 1."""
    folder = tmp_path / "m" / "mitigation-2fold" / "ds"
    ids = {0: ["a", "b"], 1: ["c", "d"]}
    before = {0: [0.0, 1.0], 1: [0.5, 0.5]}
    for fold in (0, 1):
        b = before[fold]
        _write(folder, f"random-seed0-fold{fold}", _metrics(ids[fold], b, [x + 0.1 for x in b]))
        for seed, add in ((0, 0.3), (1, 0.5)):
            _write(
                folder, f"eavss-seed{seed}-fold{fold}", _metrics(ids[fold], b, [x + add for x in b])
            )
    _write(folder, "probe-seed0-fold0", _metrics(ids[0], before[0], before[0]))
    return tmp_path


def test_fold_comparison_known_answer(folds_root):
    table = B.fold_comparison(folds_root, n_boot=200).set_index("mode")
    assert set(table.index) == {"random", "eavss"}  # probe has an unfinished fold set
    e, r = table.loc["eavss"], table.loc["random"]
    assert (e.n, e.seeds, e.folds, r.seeds) == (4, 2, 2, 1)
    assert e.before == pytest.approx(0.5) and e.after == pytest.approx(0.9)
    assert e.change == pytest.approx(0.4) and r.change == pytest.approx(0.1)
    # every question differs by the same amount: the paired interval collapses onto it
    assert (e.vs_random, e.vs_random_ci_low, e.vs_random_ci_high) == pytest.approx((0.3,) * 3)
    assert (r.vs_random, r.vs_random_ci_low) == (0.0, 0.0)


def test_fold_runs_refuses_a_question_in_two_folds(folds_root):
    folder = folds_root / "m" / "mitigation-2fold" / "ds"
    _write(folder, "full-seed0-fold0", _metrics(["a", "b"], [0, 1], [0, 1]))
    _write(folder, "full-seed0-fold1", _metrics(["a", "d"], [0, 1], [0, 1]))
    with pytest.raises(Exception, match="folds"):
        B.fold_runs(folder, 2)


def _row(config: str, retention: float, ci_low: float, ci_high: float, **keys) -> dict:
    """One SciQ accuracy row of ``retention.csv`` (ten questions, two layers pruned at 25%)."""
    score, _, rule = config.removeprefix("sweep-").rpartition("-")
    row = dict(config=config, score=score, rule=rule, fraction=0.25, task="sciq_mc")
    row.update(metric="acc", retention=retention, ci_low=ci_low, ci_high=ci_high, n=10)
    return row | dict(n_pruned=2) | keys


@pytest.fixture
def scale_scores_root(tmp_path):
    """Writes ``<tmp>/m/scale_scores/retention.csv`` for ``{score: (retention, low, high)}`` (the
    original model and a sweep row of AVSS at 0.99 added) and, when given, ``agreement.csv``
    from ``{(a, b): spearman}``; returns the results root."""

    def write(scores: dict, agreement: dict | None = None) -> Path:
        folder = tmp_path / "m" / "scale_scores"
        folder.mkdir(parents=True)
        rows = [
            _row("original", 1, 1, 1, score=np.nan, rule=np.nan, fraction=0, n_pruned=0),
            *(_row(f"{s}-count", *v) for s, v in scores.items()),
            _row("sweep-avss-count-0.25", 0.99, 0.9, 1, score="avss", rule="count"),
        ]
        pd.DataFrame(rows).to_csv(folder / "retention.csv", index=False)
        if agreement is not None:
            pd.DataFrame(
                [dict(kind="scores", a=a, b=b, spearman=v) for (a, b), v in agreement.items()]
            ).to_csv(folder / "agreement.csv", index=False)
        return tmp_path

    return write


def test_best_repair_picks_the_best_variant_and_compares_with_the_better_reference(
    scale_scores_root,
):
    root = scale_scores_root(
        {
            "avss": (0.3, 0.2, 0.4),
            "block_influence": (0.8, 0.7, 0.9),
            "angular": (0.9, 0.85, 0.95),
            "random": (0.5, 0.4, 0.6),
            "var_ratio": (0.35, 0.3, 0.4),
            "update_avss_0.01": (0.86, 0.8, 0.91),
        },
        {("update_avss_0.01", "angular"): 0.7, ("block_influence", "update_avss_0.01"): 0.6},
    )
    r = B.best_repair(root).iloc[0]
    assert (r.score, r.reference, r.avss, r.random) == ("update_avss_0.01", "angular", 0.3, 0.5)
    assert r.reaches  # 0.91 >= 0.90
    assert (r.spearman_angular, r.spearman_block_influence) == (0.7, 0.6)
    table = B.scale_scores(root)
    assert set(table["kind"]) == {"baseline", "scale-aware"}
    assert (table["retention"] < 0.99).all()  # the sweep row is not part of the main table


def test_best_repair_below_the_reference(scale_scores_root):
    root = scale_scores_root(
        {
            "angular": (0.9, 0.85, 0.95),
            "block_influence": (0.8, 0.7, 0.9),
            "var_ratio": (0.3, 0.2, 0.4),
        }
    )
    r = B.best_repair(root).iloc[0]
    assert (r.score, bool(r.reaches)) == ("var_ratio", False)
    assert np.isnan(r.spearman_angular)  # no agreement file


def test_nothing_committed_gives_empty_frames(tmp_path):
    assert B.fold_comparison(tmp_path).empty and B.best_repair(tmp_path).empty
    assert B.healing(tmp_path).empty and B.scale_scores(tmp_path).empty


# ------------------------------------------------- layer choices against random layers (chapter 6)


@pytest.fixture
def choices_root(folds_root):
    """``folds_root`` with probe finished (no change: probe − random = −0.1 on every question)
    and full fine-tuning (+0.2: full − random = +0.1)."""
    folder = folds_root / "m" / "mitigation-2fold" / "ds"
    _write(folder, "probe-seed0-fold1", _metrics(["c", "d"], [0.5, 0.5], [0.5, 0.5]))
    for fold, ids, b in ((0, ["a", "b"], [0.0, 1.0]), (1, ["c", "d"], [0.5, 0.5])):
        _write(folder, f"full-seed0-fold{fold}", _metrics(ids, b, [x + 0.2 for x in b]))
    return folds_root


def test_layer_choices_known_answer(choices_root):
    from avsslib import results as R

    rows = R.layer_choices(choices_root, "m")
    assert list(rows["mode"]) == ["eavss", "probe", "full"]  # choices first, random left out
    assert rows["vs_random"].to_numpy() == pytest.approx([0.3, -0.1, 0.1])
    assert rows["vs_random_ci_low"].to_numpy() == pytest.approx([0.3, -0.1, 0.1])
    assert set(rows["label"]) == {"t accuracy"} and rows["why"].isna().all()
    assert R.layer_choices(choices_root, "other").empty
    table = R.layer_choice_table(choices_root, "m")
    assert list(table["mode"]) == [R.MODE_NAMES[m] for m in ("eavss", "probe", "full")]
    assert list(table["t accuracy − random [95% CI]"]) == [
        "+30 pp [30, 30]",
        "-10 pp [-10, -10]",
        "+10 pp [10, 10]",
    ]


def test_layer_choice_sentence_known_answer(choices_root, tmp_path_factory):
    from avsslib import results as R

    text = R.layer_choice_sentence(choices_root, "m")
    assert text.startswith("Evaluated on all 4 questions (2-fold, seeds 1 and 2 per mode)")
    assert "1 of 2 comparisons of a layer choice with random layers has a paired" in text
    assert "above zero: prone layers on t accuracy (+30 pp [30, 30])" in text
    assert "1 lies below zero (worse than random layers): probe-selected layers" in text
    assert "0 straddle zero." in text
    # a constant difference keeps its interval at any level: still above zero after Bonferroni
    assert "(Bonferroni, 98.3%), it stays above zero." in text
    assert text.endswith("differs from random layers by +10 pp [10, 10] on t accuracy.")
    empty = tmp_path_factory.mktemp("empty")
    assert R.layer_choice_sentence(empty, "m").startswith("No finished k-fold")


def test_fold_table_is_computed_once_per_set_of_files(choices_root, monkeypatch):
    import os

    from avsslib import results as R

    calls = []
    real = B.fold_comparison
    monkeypatch.setattr(
        B, "fold_comparison", lambda root, **kw: calls.append(root) or real(root, **kw)
    )
    first = R.fold_table(choices_root)
    first.loc[:, "change"] = 99.0  # a copy: the cache is not changed through it
    assert (R.fold_table(choices_root)["change"] < 1).all() and len(calls) == 1
    run = choices_root / "m" / "mitigation-2fold" / "ds" / "full-seed0-fold0" / "metrics.json"
    stat = run.stat()
    os.utime(run, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    R.fold_table(choices_root)
    assert len(calls) == 2  # a changed run file is read again
    R.fold_table(choices_root, alpha=0.01)
    assert len(calls) == 3  # another interval level is another table


def test_mode_differences_draws_every_mode_around_zero(choices_root):
    import matplotlib.pyplot as plt

    from avsslib import plots
    from avsslib import results as R

    rows = R.layer_choices(choices_root, "m")
    rows = pd.concat([rows, rows.assign(label="t again")], ignore_index=True)
    fig = plots.mode_differences(rows)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["t accuracy", "t again"]
    assert "minus random layers, paired over 4 questions" in fig.get_suptitle()
    assert fig.get_supxlabel() == "mode − random layers (percentage points)"
    for ax in axes:
        dots = [line for line in ax.lines if line.get_marker() in ("o", "s")]
        assert sorted(float(d.get_xdata()[0]) for d in dots) == pytest.approx([-10, 10, 30])
        zero = [line for line in ax.lines if list(line.get_xdata()) == [0, 0]]
        assert zero, "no zero line"
    assert [t.get_text() for t in axes[0].get_yticklabels()] == list(rows["name"][:3])
    plt.close(fig)
