"""The k-fold mitigation protocol (avsslib.folds): folds partition the questions, no question is
both trained on and evaluated in a run, pooling refuses overlapping folds, and the paired
comparison of modes recovers a known difference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from avsslib.errors import ConfigError, DataError
from avsslib.folds import check_fold, compare_modes, fold_ids, mitigation_questions, pool_runs


def test_fold_ids_partition_and_determinism():
    ids = [f"q{i}" for i in range(11)]
    folds = fold_ids(ids, 2, seed=3)
    assert sorted(len(f) for f in folds) == [5, 6]
    assert sorted(i for f in folds for i in f) == sorted(ids) and not set(folds[0]) & set(folds[1])
    assert folds == fold_ids(ids, 2, seed=3) != fold_ids(ids, 2, seed=4)
    assert len(fold_ids(ids, 3)) == 3
    with pytest.raises(ConfigError):
        fold_ids(ids, 1)
    for bad in ((2, None), (None, 0), (2, 2), (1, 0)):
        with pytest.raises(ConfigError):
            check_fold(*bad)
    check_fold(None, None)


def test_truthfulqa_two_folds_cover_every_question_once_and_never_train_on_it(data_dir):
    from avsslib.data import load_dataset

    tasks = ["truthfulqa_mc1", "truthfulqa_mc2"]
    every = {r.id for r in load_dataset("truthfulqa", "validation")}
    runs = [
        mitigation_questions(
            "truthfulqa",
            "validation",
            tasks,
            n_eval=100,
            eval_seed=0,
            n_train=None,
            seed=0,
            folds=2,
            fold=k,
            fold_seed=0,
        )
        for k in range(2)
    ]
    (eval0, _, train0), (eval1, _, train1) = runs
    assert len(every) == 817
    assert eval0 | eval1 == every and not eval0 & eval1  # each question evaluated once
    assert abs(len(eval0) - len(eval1)) <= 1
    for eval_ids, train in ((eval0, train0), (eval1, train1)):
        train_ids = {r.id for r in train}
        assert train_ids and not train_ids & eval_ids  # never trained on its own fold
    assert {r.id for r in train0} <= eval1 and {r.id for r in train1} <= eval0
    # a sample of the training half, seeded
    _, _, some = mitigation_questions(
        "truthfulqa",
        "validation",
        tasks,
        n_eval=None,
        eval_seed=0,
        n_train=50,
        seed=1,
        folds=2,
        fold=0,
    )
    assert len(some) == 50 and not {r.id for r in some} & eval0


def test_materialise_task_with_ids(tmp_path, data_dir):
    import json

    from avsslib.data import load_dataset
    from avsslib.evaluate import materialise_task

    ids = [r.id for r in load_dataset("truthfulqa", "validation")][:5:2] + ["not-a-question"]
    protocol = materialise_task("truthfulqa_mc1", tmp_path, ids=ids)
    written = [json.loads(line)["id"] for line in (tmp_path / "truthfulqa_mc1.test.jsonl").open()]
    assert written == ids[:3] and protocol["records"] == 3
    with pytest.raises(ConfigError, match="n or ids"):
        materialise_task("truthfulqa_mc1", tmp_path, ids=ids, n=3)
    with pytest.raises(ConfigError, match="none of the 1 given ids"):
        materialise_task("truthfulqa_mc1", tmp_path, ids=["nope"])


def _metrics(ids, before, after):
    def res(values):
        return {
            "tasks": {
                "t": {
                    "ids": list(ids),
                    "protocol": {},
                    "metrics": {
                        "acc": {
                            "value": float(np.mean(values)),
                            "kind": "mean",
                            "higher_is_better": True,
                            "per_example": list(map(float, values)),
                        }
                    },
                }
            }
        }

    return {"before": res(before), "after": res(after)}


def test_pool_runs_refuses_a_question_in_two_folds():
    ok = pool_runs({0: _metrics(["a", "b"], [0, 1], [1, 1]), 1: _metrics(["c"], [0], [0])})
    assert sorted(ok["id"]) == ["a", "b", "c"] and list(ok.groupby("fold").size()) == [2, 1]
    with pytest.raises(DataError, match="folds 0 and 1"):
        pool_runs({0: _metrics(["a", "b"], [0, 1], [1, 1]), 1: _metrics(["b"], [0], [0])})


def test_compare_modes_recovers_a_known_paired_difference():
    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(400)]
    before = rng.random(400)
    frames = []
    for mode, shift in (("random", 0.0), ("probe", 0.05), ("eavss", 0.0)):
        for seed in (0, 1, 2):
            noise = rng.normal(0, 0.01, 400)
            frames.append(
                pd.DataFrame(
                    {
                        "mode": mode,
                        "seed": seed,
                        "task": "t",
                        "metric": "acc",
                        "id": ids,
                        "before": before,
                        "after": before + 0.1 + shift + noise,
                    }
                )
            )
    table = compare_modes(pd.concat(frames), n_boot=500).set_index("mode")
    assert set(table.index) == {"probe", "eavss", "base"}
    assert table.loc["probe", "diff"] == pytest.approx(0.05, abs=0.005)
    assert (
        table.loc["probe", "ci_low"] > 0.04
        and table.loc["eavss", "ci_low"] < 0 < table.loc["eavss", "ci_high"]
    )
    assert table.loc["base", "diff"] == pytest.approx(-0.1, abs=0.005)
    assert table.loc["probe", "seeds"] == 3 and table.loc["probe", "n"] == 400
    assert len(table.loc["probe", "per_seed_diff"].split()) == 3
    with pytest.raises(ConfigError, match="baseline mode"):
        compare_modes(pd.concat(frames), baseline="full")
