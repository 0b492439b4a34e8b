"""Readers of the runs that go beyond the two papers: scale-aware scores, healing after pruning,
and the k-fold layer-choice controls of mitigation. Like :mod:`avsslib.results`, functions here
only read committed files and run no model; :mod:`avsslib.results` turns their frames into verdict
rows and sentences, the chapters into figures and tables.

Files read, per model folder ``results/<model>/``:

* ``scale_scores/retention.csv`` and ``agreement.csv``: the pruning study of the scale-aware
  scores beside the baselines (``avss study --scores ...``);
* ``healing/healing.csv``: retention before and after LoRA healing (``avss heal``);
* ``mitigation-<K>fold/<dataset>/<mode>-seed<s>-fold<k>/metrics.json``: the k-fold mitigation
  runs (``avss reproduce --folds K``), pooled here question by question.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from avsslib.bootstrap import percentile_interval, resample_indices
from avsslib.folds import compare_modes, folds_of, pool_runs
from avsslib.protocol import is_sweep
from avsslib.study import primary_metric_rows

BASELINE_SCORES = ("avss", "block_influence", "angular", "random", "tail")
"""Scores of the main study; every other score of a ``scale_scores`` study is a scale-aware
variant."""

REFERENCE_SCORES = ("block_influence", "angular")
"""The scores that compare a block's input with its output: the bar a repaired score must reach."""

LAYER_CHOICES = ("eavss", "probe", "avss")
"""Mitigation modes that choose which layers to train (``random`` is their control, ``full``
trains everything)."""
LAYER_CHOICE_ALPHA = 0.05 / len(LAYER_CHOICES)
"""The level of each layer choice's comparison with random layers when the claim is "some
layer choice beats random layers" (Bonferroni over :data:`LAYER_CHOICES`)."""

_RUN = re.compile(r"(.+)-seed(\d+)-fold(\d+)")


def _model_dirs(root: Path, marker: str) -> list[Path]:
    """Model folders ``root/<model>`` that hold ``marker``."""
    return sorted(root / p.relative_to(root).parts[0] for p in root.glob(f"*/{marker}"))


def scale_scores(root: str | Path, fraction: float = 0.25) -> pd.DataFrame:
    """Per model, the retention of every score of its ``scale_scores`` study at ``fraction``
    (count rule, each task's primary metric, the sweep left out), with ``kind`` ``"baseline"``
    or ``"scale-aware"``. Columns: model, score, kind, task, metric, n_pruned, retention, ci_low,
    ci_high, n."""
    rows = []
    for folder in _model_dirs(Path(root), "scale_scores/retention.csv"):
        r = pd.read_csv(folder / "scale_scores" / "retention.csv")
        if "stats" not in r:  # written before the faithful mode existed: all fixed
            r = r.assign(stats="fixed")
        r = r[
            (r["fraction"] == fraction)
            & r["score"].notna()
            & ~is_sweep(r["config"])
            & (r["rule"].fillna("count") == "count")
            & (r["stats"].fillna("fixed") == "fixed")
        ]
        r = primary_metric_rows(r)
        kind = ["baseline" if s in BASELINE_SCORES else "scale-aware" for s in r["score"]]
        rows.append(r.assign(model=folder.name, kind=kind))
    cols = ["model", "score", "kind", "task", "metric", "n_pruned", "retention", "ci_low"]
    cols += ["ci_high", "n"]
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.concat(rows, ignore_index=True)[cols].reset_index(drop=True)


def best_repair(root: str | Path, task: str = "sciq_mc", fraction: float = 0.25) -> pd.DataFrame:
    """Per model: the scale-aware score with the highest ``task`` retention at ``fraction``, the
    better of :data:`REFERENCE_SCORES`, AVSS and random layers on the same task, and whether the
    variant's 95% interval reaches the reference's retention (``reaches``). Columns: model, task,
    metric, n, score, retention, ci_low, ci_high, reference, reference_retention,
    reference_ci_low, reference_ci_high, avss, random (with random_ci_low, random_ci_high), reaches, spearman_block_influence,
    spearman_angular (rank agreement of the variant with each reference over all blocks)."""
    table = scale_scores(root, fraction)
    rows = []
    for model, g in table[table["task"] == task].groupby("model", sort=True):
        g = g.set_index("score")
        variants = g[g["kind"] == "scale-aware"]
        refs = g.loc[[s for s in REFERENCE_SCORES if s in g.index]]
        if variants.empty or refs.empty:
            continue
        best = variants.loc[variants["retention"].idxmax()]
        ref = refs.loc[refs["retention"].idxmax()]
        agreement = _agreement(Path(root) / str(model) / "scale_scores" / "agreement.csv")
        rows.append(
            {
                "model": model,
                "task": task,
                "metric": best["metric"],
                "n": int(best["n"]),
                "score": best.name,
                "retention": best["retention"],
                "ci_low": best["ci_low"],
                "ci_high": best["ci_high"],
                "reference": ref.name,
                "reference_retention": ref["retention"],
                "reference_ci_low": ref["ci_low"],
                "reference_ci_high": ref["ci_high"],
                "avss": g["retention"].get("avss", math.nan),
                "random": g["retention"].get("random", math.nan),
                "random_ci_low": g["ci_low"].get("random", math.nan),
                "random_ci_high": g["ci_high"].get("random", math.nan),
                "reaches": bool(best["ci_high"] >= ref["retention"]),
                **{
                    f"spearman_{r}": agreement.get(frozenset((str(best.name), r)), math.nan)
                    for r in REFERENCE_SCORES
                },
            }
        )
    return pd.DataFrame(rows)


def _agreement(path: Path) -> dict[frozenset[str], float]:
    if not path.is_file():
        return {}
    a = pd.read_csv(path)
    a = a[a["kind"] == "scores"]
    return {
        frozenset((x, y)): float(s) for x, y, s in zip(a["a"], a["b"], a["spearman"], strict=True)
    }


def healing(root: str | Path) -> pd.DataFrame:
    """Every model's ``healing/healing.csv`` (primary metric per task) with a ``model`` column:
    retention before and after healing with their 95% intervals and the share of the lost score
    that healing recovers (``recovered``, with its interval)."""
    parts = [
        primary_metric_rows(pd.read_csv(folder / "healing" / "healing.csv")).assign(
            model=folder.name
        )
        for folder in _model_dirs(Path(root), "healing/healing.csv")
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def fold_runs(folder: Path, folds: int) -> pd.DataFrame:
    """The per-question scores of every mode and seed of one ``mitigation-<K>fold/<dataset>``
    folder whose ``folds`` runs all finished, pooled over the folds (:func:`pool_runs`), with
    columns ``mode`` and ``seed`` added; empty when none is complete."""
    runs: dict[tuple[str, int], dict[int, Path]] = {}
    for metrics in folder.glob("*-seed*-fold*/metrics.json"):
        match = _RUN.fullmatch(metrics.parent.name)
        if match:
            runs.setdefault((match[1], int(match[2])), {})[int(match[3])] = metrics.parent
    frames = [
        pool_runs(by_fold).assign(mode=mode, seed=seed)
        for (mode, seed), by_fold in sorted(runs.items())
        if sorted(by_fold) == list(range(folds))
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _changes(pooled: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Per task, metric and mode of :func:`fold_runs` frames: the mode's score after minus the
    base model's before, each question's ``after`` averaged over the mode's seeds, with a
    percentile bootstrap interval over questions (the resampling of
    :func:`avsslib.folds.compare_modes`). Columns task, metric, mode, seeds, n, score,
    baseline_score (before), diff, ci_low, ci_high."""
    rows = []
    for (task, metric), part in pooled.groupby(["task", "metric"], sort=True):
        per_mode = part.groupby(["mode", "id"])["after"].mean().unstack("mode")
        before = part.drop_duplicates("id").set_index("id")["before"]
        seeds = part.groupby("mode")["seed"].nunique()
        for mode in per_mode.columns:
            after = per_mode[mode].dropna()
            diff = (after - before.loc[after.index]).to_numpy()
            low, high = (math.nan, math.nan)
            if len(diff) >= 2:
                boot = diff[resample_indices(len(diff), n_boot, seed)].mean(1)
                low, high = percentile_interval(boot, 0.05)
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "mode": mode,
                    "seeds": int(seeds[mode]),
                    "n": len(diff),
                    "score": float(after.mean()),
                    "baseline_score": float(before.loc[after.index].mean()),
                    "diff": float(diff.mean()) if len(diff) else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)


def fold_comparison(
    root: str | Path, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> pd.DataFrame:
    """Per model, dataset, task and metric of every ``mitigation-<K>fold`` folder: each mode's
    change (after minus before) and its difference from random layers
    (:func:`avsslib.folds.compare_modes`), both averaged over seeds per question and paired over
    all questions; the differences from random with ``1 - alpha`` intervals (the changes always
    95%). Columns:
    model, dataset, folds, task, metric, mode, seeds, n, before, after, change, change_ci_low,
    change_ci_high, vs_random, vs_random_ci_low, vs_random_ci_high, per_seed_vs_random."""
    root = Path(root)
    rows = []
    for folder in sorted(root.glob("*/mitigation-*fold/*/")) if root.is_dir() else []:
        folds = folds_of(folder.parent.name)
        if folds is None:
            continue
        pooled = fold_runs(folder, folds)
        if pooled.empty or "random" not in set(pooled["mode"]):
            continue
        vs_random = compare_modes(pooled, n_boot=n_boot, seed=seed, alpha=alpha)
        merged = _changes(pooled, n_boot, seed).merge(
            vs_random[vs_random["mode"] != "base"],
            on=["task", "metric", "mode"],
            how="left",
            suffixes=("", "_r"),
        )
        for r in merged.itertuples():
            rows.append(
                {
                    "model": folder.parent.parent.name,
                    "dataset": folder.name,
                    "folds": folds,
                    "task": r.task,
                    "metric": r.metric,
                    "mode": r.mode,
                    "seeds": int(r.seeds),
                    "n": int(r.n),
                    "before": r.baseline_score,
                    "after": r.score,
                    "change": r.diff,
                    "change_ci_low": r.ci_low,
                    "change_ci_high": r.ci_high,
                    "vs_random": 0.0 if r.mode == "random" else r.diff_r,
                    "vs_random_ci_low": 0.0 if r.mode == "random" else r.ci_low_r,
                    "vs_random_ci_high": 0.0 if r.mode == "random" else r.ci_high_r,
                    "per_seed_vs_random": "" if r.mode == "random" else r.per_seed_diff,
                }
            )
    return pd.DataFrame(rows)
