"""Readers of the hallucination and mitigation stages of every model: labels and prone layers
(``results/<model>/eavss/``), the contrastive-training runs (``mitigation/summary.csv``,
``summary_modes.csv`` and each run's ``metrics.json``, per-question scores averaged over seeds)
and the k-fold layer-choice controls (``mitigation-<K>fold/``, through
:func:`avsslib.beyond.fold_comparison`, cached per results root). Writes nothing."""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from avsslib.errors import DataError
from avsslib.results.base import (
    BOOT,
    MODE_NAMES,
    MODES,
    NEAR_ZERO,
    SEED,
    _boot_idx,
    _interval,
    _read_json,
    models,
    primary_mask,
    task_name,
    uninformative,
)

# ---------------------------------------------------------------------------- hallucination


def label_summaries(root: str | Path) -> pd.DataFrame:
    """Every model's ``label_summary.csv`` (hallucination rates with 95% intervals)."""
    root = Path(root)
    parts = [
        pd.read_csv(root / m / "eavss" / "label_summary.csv").assign(model=m)
        for m in models(root)
        if (root / m / "eavss" / "label_summary.csv").is_file()
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def prone_layers(root: str | Path) -> pd.DataFrame:
    """One row per model, dataset and score family: the prone layers, the score they are ranked
    by, and ``profile`` (the per-layer values of that score, a Series) for heatmaps."""
    root = Path(root)
    rows = []
    for m in models(root):
        path = root / m / "eavss" / "prone_layers.json"
        if not path.is_file():
            continue
        data = _read_json(path)
        for dataset, families in data.get("prone", {}).items():
            for family, entry in families.items():
                profile_path = root / m / "eavss" / "profiles" / f"{dataset}_{family}.csv"
                profile = (
                    pd.read_csv(profile_path, index_col="layer")[entry["by"]]
                    if profile_path.is_file()
                    else None
                )
                rows.append(
                    {
                        "model": m,
                        "dataset": dataset,
                        "family": family,
                        "by": entry["by"],
                        "k": entry["k"],
                        "layers": [int(i) for i in entry["layers"]],
                        "profile": profile,
                    }
                )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- mitigation


def mitigation_runs(root: str | Path) -> pd.DataFrame:
    """Every model's ``mitigation/summary.csv``: one row per run (model, dataset, mode, seed) and
    metric, with before, after, the change and its 95% interval over questions."""
    root = Path(root)
    parts = [
        pd.read_csv(p)
        for m in models(root)
        if (p := root / m / "mitigation" / "summary.csv").is_file()
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def mitigation_modes(root: str | Path) -> pd.DataFrame:
    """Every model's ``mitigation/summary_modes.csv`` (mean, sd, min and max over seeds per mode;
    ``seeds`` is the real number of seeds of each row), with ``why`` a metric is uninformative."""
    root = Path(root)
    parts = [
        pd.read_csv(p)
        for m in models(root)
        if (p := root / m / "mitigation" / "summary_modes.csv").is_file()
    ]
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    return out.assign(
        why=[
            uninformative(t, m, b)
            for t, m, b in zip(out["task"], out["metric"], out["before"], strict=True)
        ]
    )


@lru_cache(maxsize=512)
def _run_scores(
    path: str, task: str, metric: str
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    data = _read_json(Path(path))
    before, after = data["before"]["tasks"][task], data["after"]["tasks"][task]
    if list(before["ids"]) != list(after["ids"]):
        raise DataError(
            f"{path}: {task} was scored on different questions before and after; "
            "rerun this mitigation run."
        )
    return (
        tuple(map(str, before["ids"])),
        np.asarray(before["metrics"][metric]["per_example"], float),
        np.asarray(after["metrics"][metric]["per_example"], float),
    )


def question_scores(
    root: str | Path, model: str, dataset: str, mode: str, task: str, metric: str
) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Per-question scores of ``mode`` on ``task``: ``(ids, before (n,), after (n,) averaged over
    the mode's seeds, seeds)``. Every seed must have scored the same questions."""
    folder = Path(root) / model / "mitigation" / dataset
    paths = sorted(folder.glob(f"{mode}-seed*/metrics.json"))
    paths = [p for p in paths if re.fullmatch(rf"{re.escape(mode)}-seed\d+", p.parent.name)]
    if not paths:
        raise DataError(
            f"{folder}: no finished run of mode {mode!r} (no {mode}-seed*/metrics.json)"
        )
    runs = [_run_scores(str(p), task, metric) for p in paths]
    ids, before = runs[0][0], runs[0][1]
    for p, (i, b, _) in zip(paths, runs, strict=True):
        if i != ids or not np.array_equal(b, before):
            raise DataError(
                f"{p}: scored other questions (or another base model) than "
                f"{paths[0]}; rerun it with the same --eval-seed and --n-eval."
            )
    after = np.mean([a for _, _, a in runs], axis=0)
    return list(ids), before, after, len(paths)


def _change_boot(
    before: np.ndarray, after: np.ndarray, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    b, a = before[idx].mean(axis=1), after[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return a - b, a / b - 1


def mitigation_changes(root: str | Path, n_boot: int = BOOT, seed: int = SEED) -> pd.DataFrame:
    """Per model, dataset, task, metric and mode: the change after minus before (absolute and
    relative), each with a 95% bootstrap interval over questions, seeds averaged per question;
    ``seeds`` is the number of seeds behind the row, ``why`` says when the metric is
    uninformative. The relative change is undefined (NaN) on a base under :data:`NEAR_ZERO`."""
    runs = mitigation_runs(root)
    rows = []
    if runs.empty:
        return pd.DataFrame()
    for (m, d, t, metric), g in runs.groupby(["model", "dataset", "task", "metric"], sort=True):
        modes = [mode for mode in MODES if mode in set(g["mode"])]
        for mode in modes:
            _, before, after, seeds = question_scores(root, m, d, mode, t, metric)
            idx = _boot_idx(len(before), n_boot, seed)
            boot_abs, boot_rel = _change_boot(before, after, idx)
            base = float(before.mean())
            why = uninformative(t, metric, base)
            rel = float(after.mean() / base - 1) if base >= NEAR_ZERO else math.nan
            rel_ci = _interval(boot_rel) if base >= NEAR_ZERO else (math.nan, math.nan)
            rows.append(
                {
                    "model": m,
                    "dataset": d,
                    "task": t,
                    "metric": metric,
                    "mode": mode,
                    "seeds": seeds,
                    "n": len(before),
                    "before": base,
                    "after": float(after.mean()),
                    "delta_abs": float(after.mean() - base),
                    "abs_ci_low": _interval(boot_abs)[0],
                    "abs_ci_high": _interval(boot_abs)[1],
                    "delta_rel": rel,
                    "rel_ci_low": rel_ci[0],
                    "rel_ci_high": rel_ci[1],
                    "why": why,
                }
            )
    return pd.DataFrame(rows)


def prone_minus_random(
    root: str | Path, n_boot: int = BOOT, seed: int = SEED, other: str = "random"
) -> pd.DataFrame:
    """Per model, dataset, task and metric: the change with the prone layers (mode ``eavss``)
    minus the change with ``other`` layers (default random), both averaged over their seeds per
    question, with a paired 95% bootstrap interval (one resample of questions for both)."""
    runs = mitigation_runs(root)
    rows = []
    if runs.empty:
        return pd.DataFrame()
    for (m, d, t, metric), g in runs.groupby(["model", "dataset", "task", "metric"], sort=True):
        if not {"eavss", other} <= set(g["mode"]):
            continue
        ids_e, before, after_e, seeds_e = question_scores(root, m, d, "eavss", t, metric)
        ids_r, before_r, after_r, seeds_r = question_scores(root, m, d, other, t, metric)
        if ids_e != ids_r:
            raise DataError(
                f"{root}/{m}/mitigation/{d}: modes eavss and {other} were evaluated "
                "on different questions; rerun one of them with the same --eval-seed."
            )
        diff = after_e - after_r
        idx = _boot_idx(len(diff), n_boot, seed)
        low, high = _interval(diff[idx].mean(axis=1))
        rows.append(
            {
                "model": m,
                "dataset": d,
                "task": t,
                "metric": metric,
                "other": other,
                "difference": float(diff.mean()),
                "ci_low": low,
                "ci_high": high,
                "seeds_eavss": seeds_e,
                "seeds_other": seeds_r,
                "n": len(diff),
                "before": float(before.mean()),
                "why": uninformative(t, metric, float(before.mean())),
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------- k-fold layer-choice controls


def _fold_signature(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Every k-fold run file under ``root`` with its modification time and size: a change of
    any of them changes the key of the cached comparison."""
    files = sorted(root.glob("*/mitigation-*fold/*/*-seed*-fold*/metrics.json"))
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)


@lru_cache(maxsize=8)
def _fold_table(
    root: str, signature: tuple[tuple[str, int, int], ...], alpha: float
) -> pd.DataFrame:
    from avsslib.beyond import fold_comparison

    return fold_comparison(root, alpha=alpha)


def fold_table(root: str | Path, alpha: float = 0.05) -> pd.DataFrame:
    """:func:`avsslib.beyond.fold_comparison` of ``root`` (its default resamples and seed; the
    differences from random with ``1 - alpha`` intervals), computed once per results root, set
    of run files (keyed by resolved path, modification times and sizes) and ``alpha``, and
    returned as a copy: the verdicts, findings and chapters read it many times and its
    bootstrap takes most of a second."""
    root = Path(root).resolve()
    return _fold_table(str(root), _fold_signature(root), alpha).copy()


def layer_choices(root: str | Path, model: str) -> pd.DataFrame:
    """Every mode of ``model``'s k-fold mitigation runs against random layers on each task's
    primary metric (:data:`PRIMARY`): the rows of :func:`fold_table` without ``random`` itself,
    layer choices (:data:`avsslib.beyond.LAYER_CHOICES`) first, then full fine-tuning, with
    ``name`` (the mode in words), ``label`` (task and metric in words) and ``why`` (the base
    score is uninformative, else ``None``) added."""
    from avsslib.beyond import LAYER_CHOICES

    table = fold_table(root)
    if table.empty:
        return table
    order = {m: i for i, m in enumerate((*LAYER_CHOICES, "full"))}
    table = table[(table["model"] == model) & (table["mode"] != "random") & primary_mask(table)]
    table = table.assign(
        name=[MODE_NAMES.get(m, m) for m in table["mode"]],
        label=[task_name(t, m) for t, m in zip(table["task"], table["metric"], strict=True)],
        why=[
            uninformative(t, m, b)
            for t, m, b in zip(table["task"], table["metric"], table["before"], strict=True)
        ],
        _order=[order.get(m, len(order)) for m in table["mode"]],
    )
    return (
        table.sort_values(["dataset", "task", "metric", "_order"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def layer_choice_table(root: str | Path, model: str) -> pd.DataFrame:
    """:func:`layer_choices` for the page: one row per mode (in words, with its seeds), one
    column per task and metric with the difference from random layers and its paired 95%
    interval in percentage points."""
    from avsslib.plots import fmt_ci

    rows = layer_choices(root, model)
    if rows.empty:
        return pd.DataFrame(columns=["mode", "seeds"])
    rows = rows.assign(
        cell=[
            fmt_ci(r.vs_random, r.vs_random_ci_low, r.vs_random_ci_high, kind="pp")
            for r in rows.itertuples()
        ],
        column=[f"{label} − random [95% CI]" for label in rows["label"]],
    )
    wide = rows.pivot_table(
        index=["name", "seeds"], columns="column", values="cell", aggfunc="first", sort=False
    )
    return wide.reset_index().rename(columns={"name": "mode"}).rename_axis(columns=None)


def layer_choice_sentence(root: str | Path, model: str) -> str:
    """What ``model``'s k-fold runs say about choosing layers, in sentences: how many
    comparisons of a layer choice with random layers have a paired 95% interval above zero,
    below zero or across it (each named with its value), and what full fine-tuning of every
    layer gains over random layers. Every number comes from :func:`layer_choices`."""
    from avsslib.beyond import LAYER_CHOICE_ALPHA, LAYER_CHOICES
    from avsslib.plots import fmt_ci, plural, words

    rows = layer_choices(root, model)
    if rows.empty:
        return f"No finished k-fold mitigation run of {model} under {root}."
    rows = rows[rows["why"].isna()]
    seeds = sorted(set(rows["seeds"]))

    def named(part: pd.DataFrame) -> str:
        return words(
            f"{r.name.split(' (')[0]} on {r.label} "
            f"({fmt_ci(r.vs_random, r.vs_random_ci_low, r.vs_random_ci_high, kind='pp')})"
            for r in part.itertuples()
        )

    choices = rows[rows["mode"].isin(LAYER_CHOICES)]
    above = choices[choices["vs_random_ci_low"] > 0]
    below = choices[choices["vs_random_ci_high"] < 0]
    across = choices.drop(index=[*above.index, *below.index])
    first = rows.iloc[0]
    text = (
        f"Evaluated on all {first.n:,} questions ({first.folds}-fold, "
        f"{plural(seeds[0], 'seed') if len(seeds) == 1 else 'seeds ' + words(seeds)} per mode), "
        f"{len(above)} of {plural(len(choices), 'comparison')} of a layer choice with random "
        f"layers {'has' if len(above) == 1 else 'have'} a paired 95% interval above zero"
        + (f": {named(above)}" if len(above) else "")
        + f". {len(below)} {'lies' if len(below) == 1 else 'lie'} below zero (worse than random "
        "layers)"
        + (f": {named(below)}" if len(below) else "")
        + f"; {len(across)} {'straddles' if len(across) == 1 else 'straddle'} zero"
        + (f": {named(across)}" if len(across) else "")
        + "."
    )
    if len(above):
        alpha = LAYER_CHOICE_ALPHA
        adjusted = fold_table(root, alpha=alpha).set_index(["model", "task", "metric", "mode"])
        kept = sum(
            adjusted.loc[(model, r.task, r.metric, r.mode), "vs_random_ci_low"] > 0
            for r in above.itertuples()
        )
        text += (
            f" With the interval widened for the {len(LAYER_CHOICES)} layer choices (Bonferroni, "
            f"{1 - alpha:.1%}), "
            + (
                f"it {'stays' if kept else 'no longer lies'} above zero."
                if len(above) == 1
                else f"{kept} of them {'stays' if kept == 1 else 'stay'} above zero."
            )
        )
    full = rows[rows["mode"] == "full"]
    if len(full):
        text += (
            " Full fine-tuning of every layer (language-model loss only) differs from random "
            "layers by "
            + words(
                f"{fmt_ci(r.vs_random, r.vs_random_ci_low, r.vs_random_ci_high, kind='pp')} on "
                f"{r.label}"
                for r in full.itertuples()
            )
            + "."
        )
    return text
