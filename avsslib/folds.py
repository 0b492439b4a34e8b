"""K-fold evaluation of mitigation: every question evaluated once, by a model never trained on it.

With ``folds = K`` the questions of an evaluation task (all records of its dataset split, e.g.
the 817 TruthfulQA questions) are split into ``K`` folds by :func:`fold_ids` (a seeded
permutation cut into equal parts, :func:`avsslib.labels.split_ids`). Run ``k`` evaluates fold
``k`` and trains on questions of the other folds (:func:`mitigation_questions`); the layer
choices of a run (EAVSS prone layers, probe layers) come from labelled answers outside fold
``k`` (``avss hallucination --folds``). Pooling the ``K`` runs of one mode and seed gives one
score per question of the whole set (:func:`pool_runs`), and :func:`compare_modes` compares each
mode with a baseline mode (``random``) question by question: the per-question score averaged
over seeds, the mode's minus the baseline's, with a paired percentile bootstrap over questions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avsslib.errors import ConfigError, DataError
from avsslib.labels import split_ids

__all__ = [
    "check_fold",
    "compare_modes",
    "fold_ids",
    "folds_of",
    "mitigation_folder",
    "mitigation_questions",
    "pool_runs",
    "task_fold_ids",
]


def mitigation_folder(folds: int) -> str:
    """The name of a model's folder of k-fold mitigation runs, ``mitigation-<K>fold``."""
    return f"mitigation-{folds}fold"


def folds_of(name: str) -> int | None:
    """``K`` of a folder named by :func:`mitigation_folder`; ``None`` for any other name."""
    match = re.fullmatch(r"mitigation-(\d+)fold", name)
    return int(match[1]) if match else None


def check_fold(folds: int | None, fold: int | None) -> None:
    """``ConfigError`` unless both are unset, or ``folds >= 2`` and ``0 <= fold < folds``."""
    if folds is None and fold is None:
        return
    if folds is None or fold is None:
        raise ConfigError(
            "--folds and --fold go together: e.g. --folds 2 --fold 0 (then --fold 1)."
        )
    if folds < 2 or not 0 <= fold < folds:
        raise ConfigError(f"--folds {folds} --fold {fold}: need folds >= 2 and 0 <= fold < folds.")


def fold_ids(ids: Sequence[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Split unique ``ids`` into ``folds`` disjoint parts of equal size (+-1), each in the order
    of ``ids``; a seeded permutation (:func:`avsslib.labels.split_ids`). Same arguments, same
    folds."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds = {folds!r}: need an integer >= 2.")
    if len(ids) < folds:
        raise ConfigError(f"{len(ids)} questions cannot fill {folds} folds.")
    return split_ids(list(ids), [1.0 / folds] * folds, seed)


def task_fold_ids(tasks: Iterable[str], folds: int, fold: int, seed: int = 0) -> set[str]:
    """The ids of fold ``fold`` of every harness task's questions (all records of the task's
    dataset split; WikiQA's answerable ones), united over ``tasks``."""
    from avsslib.data import load_dataset
    from avsslib.evaluate import TASKS

    check_fold(folds, fold)
    out: set[str] = set()
    for task in tasks:
        spec = TASKS[task]
        if spec.runner != "harness":
            continue
        records = load_dataset(spec.dataset, spec.split, answerable_only=spec.answerable_only)
        out |= set(fold_ids([r.id for r in records], folds, seed)[fold])
    return out


def mitigation_questions(
    dataset: str,
    split: str,
    tasks: Sequence[str],
    *,
    n_eval: int | None,
    eval_seed: int,
    n_train: int | None,
    seed: int,
    folds: int | None = None,
    fold: int | None = None,
    fold_seed: int = 0,
) -> tuple[set[str], list[Any], list[Any]]:
    """The evaluation ids and training records of one mitigation run, disjoint by construction.

    Without folds: ``n_eval`` questions per harness task sampled with ``eval_seed`` (as
    ``avss eval`` does). With ``folds``/``fold``: every question of fold ``fold``
    (:func:`task_fold_ids`; ``n_eval`` is ignored). Training records: the records of
    ``dataset:split`` not evaluated, ``n_train`` of those with an answer sampled with ``seed``
    (``None`` = all). Returns ``(eval_ids, every record of dataset:split, training records)``;
    raises ``DataError`` if a training record is evaluated (it cannot be)."""
    from avsslib.data import load_dataset, subsample
    from avsslib.evaluate import TASKS
    from avsslib.mitigate import has_answer

    check_fold(folds, fold)
    if folds is not None:
        eval_ids = task_fold_ids(tasks, folds, fold, fold_seed)  # type: ignore[arg-type]
    else:
        eval_ids = set()
        for task in tasks:
            spec = TASKS[task]
            if spec.runner == "harness":
                eval_ids |= {
                    r.id
                    for r in load_dataset(
                        spec.dataset,
                        spec.split,
                        n=n_eval,
                        seed=eval_seed,
                        answerable_only=spec.answerable_only,
                    )
                }
    every = load_dataset(dataset, split)
    pool = [r for r in every if r.id not in eval_ids and has_answer(dataset, r)]
    records = subsample(pool, n_train, seed) if pool else []
    leaked = {r.id for r in records} & eval_ids
    if leaked:
        raise DataError(f"training questions {sorted(leaked)[:5]} are also evaluated.")
    return eval_ids, every, records


# ---------------------------------------------------------------------- pooling and comparison
def pool_runs(runs: Mapping[int, Path | Mapping[str, Any]]) -> pd.DataFrame:
    """Per-question scores of the ``K`` fold runs of one mode and seed, pooled.

    ``runs``: fold -> a run folder holding ``metrics.json`` (or its parsed content). Returns a
    long frame with columns ``fold``, ``task``, ``metric``, ``id``, ``before``, ``after`` (one
    row per question and metric, only ``mean``-kind metrics). ``DataError`` when a question is
    evaluated in two folds."""
    rows = []
    seen: dict[tuple[str, str], int] = {}
    for fold, run in sorted(runs.items()):
        data = (
            run
            if isinstance(run, Mapping)
            else json.loads((Path(run) / "metrics.json").read_text(encoding="utf-8"))
        )
        for task, before in data["before"]["tasks"].items():
            after = data["after"]["tasks"][task]
            if list(before["ids"]) != list(after["ids"]):
                raise DataError(
                    f"fold {fold}, task {task}: before and after scored different questions."
                )
            for qid in before["ids"]:
                if (task, qid) in seen:
                    raise DataError(
                        f"task {task}: question {qid!r} is evaluated in folds "
                        f"{seen[(task, qid)]} and {fold}; the folds must be disjoint."
                    )
                seen[(task, qid)] = fold
            for metric, mb in before["metrics"].items():
                if mb.get("kind", "mean") != "mean" or metric not in after["metrics"]:
                    continue
                ma = after["metrics"][metric]
                for qid, b, a in zip(
                    before["ids"], mb["per_example"], ma["per_example"], strict=True
                ):
                    rows.append(
                        {
                            "fold": fold,
                            "task": task,
                            "metric": metric,
                            "id": qid,
                            "before": float(b),
                            "after": float(a),
                        }
                    )
    return pd.DataFrame(rows, columns=["fold", "task", "metric", "id", "before", "after"])


def _interval(values: np.ndarray, n_boot: int, seed: int, alpha: float) -> tuple[float, float]:
    if len(values) < 2:
        return math.nan, math.nan
    from avsslib.bootstrap import percentile_interval, resample_indices

    return percentile_interval(values[resample_indices(len(values), n_boot, seed)].mean(1), alpha)


def compare_modes(
    pooled: pd.DataFrame,
    *,
    baseline: str = "random",
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Each mode minus ``baseline``, question by question, with a paired 95% interval.

    ``pooled``: :func:`pool_runs` frames with columns ``mode`` and ``seed`` added. Per task and
    metric, each question's ``after`` score is averaged over the seeds of a mode; the mode's
    mean minus the baseline's on the questions both have, with a percentile bootstrap over
    questions (one resample of questions for both modes). The base model (``before``) appears
    as the mode ``base``. Columns: task, metric, mode, seeds, n, score, baseline_score, diff,
    ci_low, ci_high, per_seed_diff (the difference per common seed, for the spread)."""
    need = {"mode", "seed", "task", "metric", "id", "before", "after"}
    if missing := need - set(pooled.columns):
        raise ConfigError(f"pooled scores lack the columns {sorted(missing)}.")
    if baseline not in set(pooled["mode"]):
        raise ConfigError(
            f"no runs of the baseline mode {baseline!r} (modes: {sorted(set(pooled['mode']))})."
        )
    rows = []
    for (task, metric), part in pooled.groupby(["task", "metric"], sort=True):
        per_mode = part.groupby(["mode", "id"])["after"].mean().unstack("mode")
        per_mode["base"] = part.groupby("id")["before"].mean()
        per_seed = part.pivot_table(index=["id"], columns=["mode", "seed"], values="after")
        seeds = part.groupby("mode")["seed"].nunique()
        for mode in [m for m in per_mode.columns if m != baseline]:
            both = per_mode[[mode, baseline]].dropna()
            diff = (both[mode] - both[baseline]).to_numpy()
            low, high = _interval(diff, n_boot, seed, alpha)
            common = (
                sorted(
                    set(part.loc[part["mode"] == mode, "seed"])
                    & set(part.loc[part["mode"] == baseline, "seed"])
                )
                if mode != "base"
                else []
            )
            per = [float((per_seed[(mode, s)] - per_seed[(baseline, s)]).mean()) for s in common]
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "mode": mode,
                    "seeds": int(seeds.get(mode, 0)),
                    "n": len(both),
                    "score": float(both[mode].mean()),
                    "baseline_score": float(both[baseline].mean()),
                    "diff": float(diff.mean()) if len(diff) else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "per_seed_diff": " ".join(f"{d:+.4f}" for d in per),
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "task",
            "metric",
            "mode",
            "seeds",
            "n",
            "score",
            "baseline_score",
            "diff",
            "ci_low",
            "ci_high",
            "per_seed_diff",
        ],
    )
