"""The one reader of committed runs: every table, verdict and summary that the book, the README
and ``tools/`` show about the files under ``results/`` comes from here.

A result folder holds one folder per model (``results/<model>/``) with up to three stages:

* ``avss/``: the pruning study (``retention.csv``, ``sweep.csv``, ``agreement.csv``,
  ``layer_stats.csv``, ``eval/<config>.json``; ``record.json`` when it finished);
* ``eavss/``: hallucination labels and prone layers (``label_summary.csv``, ``prone_layers.json``,
  ``profiles/<dataset>_<family>.csv``);
* ``mitigation/<dataset>/<mode>-seed<k>/``: one contrastive-training run each (``metrics.json``
  with the per-question scores before and after, ``record.json``), summarised in
  ``mitigation/summary.csv`` (one row per run and metric) and ``summary_modes.csv`` (per mode).

Benchmarks sit in ``results/bench/``. Functions here only read; none runs a model.

Conventions of every frame returned: fractions stay fractions (0.81, not 81), retention is
``pruned / original`` (perplexity inverted, so 1 = no loss), changes are ``after - before``;
formatting for the page is :mod:`avsslib.plots`'s job.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avsslib.errors import DataError
from avsslib.protocol import MODES as PROTOCOL_MODES
from avsslib.protocol import is_sweep

STAGES = {
    "avss": "AVSS pruning study",
    "eavss": "hallucination labels and prone layers",
    "mitigation": "contrastive mitigation",
}
"""Stage folder -> what it holds."""

FRACTION = 0.25
"""The pruned fraction of the AVSS claim ("approximately the lowest 25% of layers")."""

THRESHOLD = 0.9
"""The AVSS claim's retention ("over 90%")."""

PAPER_MAX_GAIN = 0.12
"""The EAVSS abstract's "maximum performance improvement" of 12% (read as relative)."""

CHANCE = {("sciq_mc", "acc"): 0.25, ("sciq_mc", "acc_norm"): 0.25, ("sst2", "acc"): 0.5}
"""Score of a uniform guess for tasks with a fixed number of options (SciQ: 4, SST-2: 2)."""

CHANCE_MARGIN = 0.05
"""A metric whose original score is within this of chance (absolute) says nothing."""

NEAR_ZERO = 0.05
"""A metric whose original score is below this (e.g. exact match 1%) says nothing: one or two
right answers more or less make any relative change."""

PRIMARY = {
    "sciq_mc": "acc",
    "sst2": "acc",
    "triviaqa_em": "exact_match",
    "wikitext2_ppl": "token_perplexity",
    "truthfulqa_mc1": "acc",
    "truthfulqa_mc2": "acc",
    "nq_open_em": "exact_match",
    "wikiqa": "map",
}
"""The metric each task is read by in the verdicts and short tables."""

MODES = tuple(m for m in PROTOCOL_MODES if m != "probe")
"""The mitigation modes of the committed runs' tables, in :data:`avsslib.protocol.MODES` order
(probe runs are read separately)."""

MODE_NAMES = {
    "eavss": "prone layers (EAVSS)",
    "random": "random layers",
    "avss": "lowest-AVSS layers",
    "full": "full fine-tuning (LM loss only)",
    "probe": "probe-selected layers",
}
"""What each mitigation mode trains, in words."""

TASK_NAMES = {
    "sciq_mc": "SciQ",
    "sst2": "SST-2",
    "triviaqa_em": "TriviaQA",
    "wikitext2_ppl": "WikiText-2",
    "truthfulqa_mc1": "TruthfulQA MC1",
    "truthfulqa_mc2": "TruthfulQA MC2",
    "nq_open_em": "NQ-Open",
    "wikiqa": "WikiQA",
}
METRIC_NAMES = {
    "acc": "accuracy",
    "acc_norm": "normalised accuracy",
    "exact_match": "exact match",
    "token_perplexity": "perplexity",
    "map": "MAP",
    "mrr": "MRR",
    "map_norm": "normalised MAP",
    "mrr_norm": "normalised MRR",
}
SCORE_NAMES = {
    "avss": "AVSS",
    "block_influence": "block influence",
    "angular": "angular distance",
    "ppl_removal": "perplexity on removal",
    "random": "random layers",
    "tail": "last layers",
}
MODEL_NAMES = {"smollm2-135m": "SmolLM2-135M", "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B"}

AVSS_CLAIM = "Pruning the 25% lowest-AVSS layers keeps over 90%"
PRONE_CLAIM = "Training the prone layers beats training random ones"
GAIN_CLAIM = "Training the prone layers improves up to 12%"
REPAIR_CLAIM = (
    "A scale-aware variance/sparsity score prunes as well as block influence or angular distance"
)
HEAL_CLAIM = "LoRA healing brings the AVSS-pruned model back over 90%"
LAYER_CLAIM = "Some layer choice (EAVSS, probe, lowest AVSS) trains better than random layers"

CHAPTER_TITLES = {
    "06_mitigation": "Contrastive mitigation (chapter 6)",
    "10_why_avss_fails": "Why AVSS fails, and what works instead (chapter 10)",
    "07_paper_scale": "Paper-scale results (chapter 7)",
}
"""Chapter notebook -> its title and number in the book's sidebar."""

BOOT = 1000
SEED = 0


def task_name(task: str, metric: str | None = None) -> str:
    """``"SciQ accuracy"``: a task and metric in words."""
    name = TASK_NAMES.get(task, task)
    return name if metric is None else f"{name} {METRIC_NAMES.get(metric, metric)}"


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def config_name(config: str) -> str:
    """``"avss-count"`` -> ``"AVSS (count rule)"``; sweeps and faithful mode in words."""
    if config == "original":
        return "original model"
    faithful = config.startswith("faithful-")
    core = config.removeprefix("faithful-")
    score, _, rule = core.rpartition("-")
    text = f"{SCORE_NAMES.get(score, score)} ({rule.replace('_', ' ')} rule)"
    return text + (", official-code statistics" if faithful else "")


def uninformative(task: str, metric: str, original: float) -> str | None:
    """Why a metric cannot count as evidence (its original score is at chance or near zero),
    else ``None``."""
    if original is None or not np.isfinite(original):
        return "original score undefined"
    chance = CHANCE.get((task, metric))
    if chance is not None and original <= chance + CHANCE_MARGIN:
        return f"original {original:.1%} is at chance ({chance:.0%})"
    if metric not in ("token_perplexity",) and original < NEAR_ZERO:
        return f"original {original:.1%} is near zero"
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(
            f"{path}: cannot read it as JSON ({err}); restore it from git or rerun "
            "the stage that writes it."
        ) from err


def models(root: str | Path) -> list[str]:
    """Model folders under ``root`` that hold at least one stage folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and any((p / s).is_dir() for s in STAGES)
    )


def _state(folder: Path, marker: str = "record.json") -> str:
    if (folder / marker).is_file():
        return "finished"
    if folder.is_dir() and any(folder.iterdir()):
        return "partial"
    return "missing"


def inventory(root: str | Path) -> pd.DataFrame:
    """One row per model: the state (finished / partial / missing) of each stage and the number
    of finished mitigation runs."""
    root = Path(root)
    rows = []
    for m in models(root):
        runs = list((root / m / "mitigation").glob("*/*-seed*/metrics.json"))
        rows.append(
            {
                "model": m,
                "AVSS study": _state(root / m / "avss"),
                "hallucination": _state(root / m / "eavss"),
                "mitigation": (
                    "finished"
                    if (root / m / "mitigation" / "summary.csv").is_file()
                    else _state(root / m / "mitigation", "summary.csv")
                ),
                "mitigation runs": len(runs),
            }
        )
    return pd.DataFrame(
        rows, columns=["model", "AVSS study", "hallucination", "mitigation", "mitigation runs"]
    )


# ------------------------------------------------------------------------------ pruning study


def study_retention(
    folder: str | Path, n_boot: int = BOOT, seed: int = SEED
) -> tuple[pd.DataFrame | None, str | None]:
    """``retention.csv`` of a finished study, else the same table computed from the evaluations
    a partial study has finished (``eval/<config>.json``, same paired bootstrap); returns
    ``(frame, source)`` or ``(None, None)`` when fewer than two evaluations exist."""
    from avsslib.evaluate import EvalResult
    from avsslib.study import retention_table

    folder = Path(folder)
    if (folder / "retention.csv").is_file():
        return pd.read_csv(folder / "retention.csv"), "retention.csv"
    evals = {p.stem: _read_json(p) for p in sorted((folder / "eval").glob("*.json"))}
    if "original" not in evals or len(evals) < 2:
        return None, None
    results = {k: EvalResult.from_dict(v["result"]) for k, v in evals.items()}
    configs = {
        k: dict(
            stats=v.get("stats"),
            score=v.get("score"),
            rule=v.get("rule"),
            fraction=v.get("fraction", 0.0),
            layers=v.get("pruned_layers", []),
        )
        for k, v in evals.items()
    }
    return retention_table(results, configs, n_boot, seed), f"{len(evals)} eval files"


def primary_mask(frame: pd.DataFrame) -> pd.Series:
    """True on the rows whose metric is their task's :data:`PRIMARY` metric (tasks not listed
    there keep every metric)."""
    return pd.Series(
        [PRIMARY.get(t, m) == m for t, m in zip(frame["task"], frame["metric"], strict=True)],
        index=frame.index,
        dtype=bool,
    )


def _primary(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[primary_mask(frame)]


def retention(
    root: str | Path, fraction: float = FRACTION, *, sweep: bool = False, primary: bool = True
) -> pd.DataFrame:
    """Retention rows of every model's study at ``fraction`` (``sweep=True``: the sweep
    configurations at every fraction instead), one metric per task when ``primary``, with columns
    ``model``, ``source`` and ``informative`` (``None``) or ``why`` it is not."""
    root = Path(root)
    parts = []
    for m in models(root):
        frame, source = study_retention(root / m / "avss")
        if frame is None:
            continue
        sweeps = is_sweep(frame["config"])
        part = (
            frame[sweeps]
            if sweep
            else frame[
                ~sweeps & ((frame["fraction"] == fraction) | (frame["config"] == "original"))
            ]
        )
        parts.append(part.assign(model=m, source=source))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    out = _primary(out) if primary else out
    out = out.assign(
        why=[
            uninformative(t, m, o)
            for t, m, o in zip(out["task"], out["metric"], out["original"], strict=True)
        ]
    )
    return out.reset_index(drop=True)


def _eval_scores(folder: Path, config: str, task: str, metric: str) -> tuple[list[str], np.ndarray]:
    data = _read_json(folder / "eval" / f"{config}.json")["result"]["tasks"][task]
    return list(map(str, data["ids"])), np.asarray(data["metrics"][metric]["per_example"], float)


def _boot_idx(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(boot: np.ndarray) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return math.nan, math.nan
    low, high = np.quantile(boot, [0.025, 0.975])
    return float(low), float(high)


def paired_retention_difference(
    root: str | Path,
    model: str,
    a: str,
    b: str,
    task: str,
    metric: str,
    n_boot: int = BOOT,
    seed: int = SEED,
) -> dict:
    """Retention of configuration ``a`` minus that of ``b`` on the same evaluation examples, with
    a paired bootstrap 95% interval (accuracy-like metrics: means of per-example scores)."""
    folder = Path(root) / model / "avss"
    ids_o, orig = _eval_scores(folder, "original", task, metric)
    ids_a, va = _eval_scores(folder, a, task, metric)
    ids_b, vb = _eval_scores(folder, b, task, metric)
    if not (ids_o == ids_a == ids_b) or orig.ndim != 1:
        raise DataError(
            f"{folder}/eval: {a} and {b} did not score the same {task} examples in "
            "the same order; rerun the study with one --seed and --n-eval."
        )
    idx = _boot_idx(len(orig), n_boot, seed)
    base = orig[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (va[idx].mean(axis=1) - vb[idx].mean(axis=1)) / base
    low, high = _interval(boot)
    return {
        "model": model,
        "a": a,
        "b": b,
        "task": task,
        "metric": metric,
        "difference": float((va.mean() - vb.mean()) / orig.mean()),
        "ci_low": low,
        "ci_high": high,
        "n": len(orig),
    }


def avss_against_random(root: str | Path, fraction: float = FRACTION) -> pd.DataFrame:
    """Per model and informative task (accuracy-like metrics): retention of AVSS (count rule)
    minus that of random layers of the same count, with a paired 95% interval."""
    ret = retention(root, fraction)
    rows = []
    for (m, task, metric), g in ret.groupby(["model", "task", "metric"], sort=True):
        configs = set(g["config"])
        if metric == "token_perplexity" or not {"avss-count", "random-count"} <= configs:
            continue
        if g["why"].notna().any():
            continue
        rows.append(
            paired_retention_difference(root, m, "avss-count", "random-count", task, metric)
        )
    return pd.DataFrame(rows)


def layer_profiles(root: str | Path) -> dict[str, tuple[pd.DataFrame, list[int]]]:
    """Per model: the study's per-layer table (``layer_stats.csv``) and the layers the AVSS count
    rule prunes (fixed statistics)."""
    from avsslib.study import load_study

    root = Path(root)
    out = {}
    for m in models(root):
        folder = root / m / "avss"
        if not (folder / "layer_stats.csv").is_file():
            continue
        study = load_study(folder)
        chosen = study.get("selections")
        pruned: list[int] = []
        if chosen is not None:
            row = chosen[
                (chosen["stats"] == "fixed")
                & (chosen["score"] == "avss")
                & (chosen["rule"] == "count")
            ]
            pruned = [int(i) for i in row["layers"].iloc[0]] if len(row) else []
        out[m] = (study["layer_stats"], pruned)
    return out


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
def _fold_table(root: str, signature: tuple[tuple[str, int, int], ...]) -> pd.DataFrame:
    from avsslib.beyond import fold_comparison

    return fold_comparison(root)


def fold_table(root: str | Path) -> pd.DataFrame:
    """:func:`avsslib.beyond.fold_comparison` of ``root`` (its default resamples and seed),
    computed once per results root and set of run files (keyed by resolved path, modification
    times and sizes) and returned as a copy: the verdicts, findings and chapters read it many
    times and its bootstrap takes most of a second."""
    root = Path(root).resolve()
    return _fold_table(str(root), _fold_signature(root)).copy()


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
    from avsslib.beyond import LAYER_CHOICES
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


# ------------------------------------------------------------------------------------ verdicts


@dataclass(frozen=True)
class Verdict:
    """One row of the verdict table."""

    claim: str
    paper: str
    model: str
    verdict: str  # "holds", "does not hold", "not testable here"
    n: str
    measured: str
    random: str
    best_other: str
    reason: str
    chapter: str


VERDICT_COLUMNS = [
    "claim",
    "verdict",
    "model",
    "n",
    "measured [95% CI]",
    "random layers",
    "best other",
    "why",
    "evidence",
]


def _ci(row: Any, value: str = "retention", *, prefix: str = "", suffix: str = "") -> str:
    """``"81% [76, 86]"``: ``row``'s ``value`` with its interval in the columns
    ``<prefix>ci_low<suffix>`` and ``<prefix>ci_high<suffix>`` (retention-like fractions);
    ``"–"`` for no row."""
    from avsslib.plots import fmt_ci

    if row is None:
        return "–"
    low, high = (getattr(row, f"{prefix}ci_{b}{suffix}") for b in ("low", "high"))
    return fmt_ci(getattr(row, value), low, high)


def _best_config(best: Any, value: str = "retention", suffix: str = "") -> str:
    """``"angular distance 91% [87, 96]"``: the configuration named by ``best``'s index label
    (score only) with :func:`_ci` of its ``value``; ``"–"`` for no row."""
    if best is None:
        return "–"
    return f"{config_name(str(best.name)).split(' (')[0]} {_ci(best, value, suffix=suffix)}"


def _avss_verdicts(root: Path) -> list[Verdict]:

    ret = retention(root, FRACTION)
    out: list[Any] = []
    if ret.empty:
        return out
    for m, g in ret.groupby("model", sort=True):
        avss = g[g["config"] == "avss-count"]
        if avss.empty:
            continue
        informative = avss[avss["why"].isna()]
        skipped = avss[avss["why"].notna()]
        n = int(avss["n"].max())
        head = informative[informative["task"] == "sciq_mc"]
        head = head if len(head) else informative.head(1)
        if informative.empty:
            out.append(
                Verdict(
                    AVSS_CLAIM,
                    "AVSS",
                    m,
                    "not testable here",
                    f"{n}",
                    "–",
                    "–",
                    "–",
                    "every task's original score is at chance or near zero",
                    "07_paper_scale",
                )
            )
            continue
        below = informative[informative["ci_high"] < THRESHOLD]
        above = informative[informative["ci_low"] > THRESHOLD]
        verdict = (
            "does not hold"
            if len(below)
            else "holds"
            if len(above) == len(informative)
            else "not testable here"
        )
        h = head.iloc[0]
        task, metric = h["task"], h["metric"]
        same = g[(g["task"] == task) & (g["metric"] == metric)].set_index("config")
        rand = same.loc["random-count"] if "random-count" in same.index else None
        others = same[
            same.index.str.endswith("-count")
            & ~same.index.isin(["avss-count", "random-count", "faithful-avss-count"])
        ]
        best = others.loc[others["retention"].idxmax()] if len(others) else None
        reason = (
            f"below {THRESHOLD:.0%} on {', '.join(task_name(t) for t in below['task'])}"
            if len(below)
            else f"above {THRESHOLD:.0%} on every informative task"
            if verdict == "holds"
            else "intervals straddle the 90% line"
        )
        if len(skipped):
            reason += "; not counted: " + ", ".join(
                f"{task_name(t)} {'at chance' if 'chance' in w else 'near zero' if 'zero' in w else w}"
                for t, w in zip(skipped["task"], skipped["why"], strict=True)
            )
        out.append(
            Verdict(
                AVSS_CLAIM,
                "AVSS",
                m,
                verdict,
                f"{n} per task",
                f"{task_name(task)} retention {_ci(h)}",
                _ci(rand),
                _best_config(best),
                reason,
                "07_paper_scale",
            )
        )
    return out


def _mitigation_verdicts(root: Path) -> list[Verdict]:
    from avsslib.plots import fmt_ci

    changes = mitigation_changes(root)
    if changes.empty:
        return []
    diffs = prone_minus_random(root)
    out = []
    primary = _primary(changes)
    for (m, d, t, metric), g in primary.groupby(["model", "dataset", "task", "metric"], sort=True):
        by = g.set_index("mode")
        if "eavss" not in by.index:
            continue
        e = by.loc["eavss"]
        r = by.loc["random"] if "random" in by.index else None
        rest = by.drop(index=[i for i in ("eavss", "random") if i in by.index])
        best = rest.loc[rest["delta_abs"].idxmax()] if len(rest) else None
        counts = {k: int(by.loc[k, "seeds"]) for k in MODES if k in by.index}
        n = (
            f"{int(e.n)} questions, {next(iter(counts.values()))} seeds per mode"
            if len(set(counts.values())) == 1
            else f"{int(e.n)} questions; seeds: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        )
        claim = PRONE_CLAIM
        measured = (
            f"{task_name(t, metric)} {fmt_ci(e.delta_abs, e.abs_ci_low, e.abs_ci_high, kind='pp')}"
        )
        rand = "–" if r is None else fmt_ci(r.delta_abs, r.abs_ci_low, r.abs_ci_high, kind="pp")
        other = (
            "–"
            if best is None
            else f"{MODE_NAMES[str(best.name)].split(' (')[0]} "
            f"{fmt_ci(best.delta_abs, best.abs_ci_low, best.abs_ci_high, kind='pp')}"
        )
        if isinstance(e.why, str):
            out.append(
                Verdict(
                    claim,
                    "EAVSS",
                    m,
                    "not testable here",
                    n,
                    measured,
                    rand,
                    other,
                    f"{task_name(t)}: {e.why}",
                    "06_mitigation",
                )
            )
            continue
        row = diffs[
            (diffs["model"] == m)
            & (diffs["dataset"] == d)
            & (diffs["task"] == t)
            & (diffs["metric"] == metric)
        ]
        if row.empty:
            out.append(
                Verdict(
                    claim,
                    "EAVSS",
                    m,
                    "not testable here",
                    n,
                    measured,
                    rand,
                    other,
                    "no random-layer run to compare with",
                    "06_mitigation",
                )
            )
            continue
        dr = row.iloc[0]
        verdict = "holds" if dr.ci_low > 0 else "does not hold"
        reason = f"prone − random {fmt_ci(dr.difference, dr.ci_low, dr.ci_high, kind='pp')}" + (
            ""
            if verdict == "holds"
            else ": worse than random layers"
            if dr.ci_high < 0
            else ": no better than random layers"
        )
        out.append(
            Verdict(claim, "EAVSS", m, verdict, n, measured, rand, other, reason, "06_mitigation")
        )
    return out


def _gain_verdict(root: Path) -> list[Verdict]:
    from avsslib.plots import fmt_ci

    changes = mitigation_changes(root)
    if changes.empty:
        return []
    ok = changes[changes["why"].isna() & np.isfinite(changes["delta_rel"])]
    prone = ok[ok["mode"] == "eavss"]
    if prone.empty:
        return [
            Verdict(
                GAIN_CLAIM,
                "EAVSS",
                "–",
                "not testable here",
                "–",
                "–",
                "–",
                "–",
                "no informative metric",
                "06_mitigation",
            )
        ]
    top = prone.loc[prone["delta_rel"].idxmax()]
    same = ok[
        (ok["model"] == top.model)
        & (ok["dataset"] == top.dataset)
        & (ok["task"] == top.task)
        & (ok["metric"] == top.metric)
    ].set_index("mode")
    rand = same.loc["random"] if "random" in same.index else None
    rest = same.drop(index=[i for i in ("eavss", "random") if i in same.index])
    best = rest.loc[rest["delta_rel"].idxmax()] if len(rest) else None
    verdict = (
        "holds" if top.rel_ci_low > 0 and top.rel_ci_high >= PAPER_MAX_GAIN else "does not hold"
    )
    reason = (
        f"largest relative change of the prone layers over {len(prone)} informative "
        f"model-metric pairs; the paper reports up to {PAPER_MAX_GAIN:.0%}"
    )
    return [
        Verdict(
            GAIN_CLAIM,
            "EAVSS",
            str(top.model),
            verdict,
            f"{int(top.n)} questions; seeds {int(top.seeds)}",
            f"{task_name(top.task, top.metric)} {fmt_ci(top.delta_rel, top.rel_ci_low, top.rel_ci_high, kind='rel')}",
            "–"
            if rand is None
            else fmt_ci(rand.delta_rel, rand.rel_ci_low, rand.rel_ci_high, kind="rel"),
            "–"
            if best is None
            else f"{MODE_NAMES[str(best.name)].split(' (')[0]} "
            f"{fmt_ci(best.delta_rel, best.rel_ci_low, best.rel_ci_high, kind='rel')}",
            reason,
            "06_mitigation",
        )
    ]


def _repair_verdicts(root: Path) -> list[Verdict]:
    from avsslib.beyond import best_repair

    out = []
    for r in best_repair(root, fraction=FRACTION).itertuples():
        out.append(
            Verdict(
                REPAIR_CLAIM,
                "beyond",
                str(r.model),
                "holds" if r.reaches else "does not hold",
                f"{r.n} per task",
                f"{r.score} {task_name(r.task)} retention {_ci(r)}",
                _ci(r, "random", prefix="random_"),
                f"{SCORE_NAMES.get(r.reference, r.reference)} "
                f"{_ci(r, 'reference_retention', prefix='reference_')}",
                f"its interval {'reaches' if r.reaches else 'stays below'} "
                f"{SCORE_NAMES.get(r.reference, r.reference)}'s retention (AVSS: {r.avss:.0%}); "
                f"rank agreement with block influence {r.spearman_block_influence:.2f}, "
                f"angular distance {r.spearman_angular:.2f}",
                "10_why_avss_fails",
            )
        )
    return out


def _heal_verdicts(root: Path) -> list[Verdict]:
    from avsslib.beyond import healing

    table = healing(root)
    out: list[Verdict] = []
    if table.empty:
        return out
    for model, g in table.groupby("model", sort=True):
        sciq = g[g["task"] == "sciq_mc"].set_index("config")
        if "avss-count" not in sciq.index:
            continue
        a = sciq.loc["avss-count"]
        verdict = (
            "holds"
            if a.ci_low_after > THRESHOLD
            else "does not hold"
            if a.ci_high_after < THRESHOLD
            else "not testable here"
        )
        rand = sciq.loc["random-count"] if "random-count" in sciq.index else None
        others = sciq.drop(index=["avss-count"])
        best = others.loc[others["retention_after"].idxmax()] if len(others) else None
        ppl = g[(g["task"] == "wikitext2_ppl") & (g["config"] == "avss-count")]
        reason = (
            f"before healing {_ci(a, 'retention_before', suffix='_before')}; "
            f"healing recovers {_ci(a, 'recovered', prefix='recovered_')} "
            "of the lost accuracy"
        )
        if len(ppl):
            p = ppl.iloc[0]
            reason += (
                f"; WikiText-2 perplexity {p.original:,.0f} unpruned, {p.pruned_before:,.0f} "
                f"pruned, {p.pruned_after:,.0f} after healing"
            )
        out.append(
            Verdict(
                HEAL_CLAIM,
                "beyond",
                str(model),
                verdict,
                f"{int(a.n)} per task",
                f"SciQ retention after healing {_ci(a, 'retention_after', suffix='_after')}",
                _ci(rand, "retention_after", suffix="_after"),
                _best_config(best, "retention_after", suffix="_after"),
                reason,
                "10_why_avss_fails",
            )
        )
    return out


def _layer_choice_verdicts(root: Path) -> list[Verdict]:
    from avsslib.beyond import LAYER_CHOICES
    from avsslib.plots import fmt_ci

    table = fold_table(root)
    out: list[Verdict] = []
    if table.empty:
        return out
    table = table[
        [PRIMARY.get(t) == m for t, m in zip(table["task"], table["metric"], strict=True)]
    ]
    for (m, _, t, metric), g in table.groupby(["model", "dataset", "task", "metric"], sort=True):
        by = g.set_index("mode")
        choices = by.loc[[c for c in LAYER_CHOICES if c in by.index]]
        if choices.empty or "random" not in by.index:
            continue
        r = by.loc["random"]
        top = choices.loc[choices["vs_random"].idxmax()]
        why_not = uninformative(t, metric, float(r.before))
        seeds = sorted(set(g["seeds"]))
        n = f"{int(r.n)} questions, {int(r.folds)}-fold; " + (
            f"{seeds[0]} seeds per mode" if len(seeds) == 1 else f"seeds {seeds}"
        )
        vs = "; ".join(
            f"{MODE_NAMES[str(c)].split(' (')[0]} − random "
            f"{fmt_ci(x.vs_random, x.vs_random_ci_low, x.vs_random_ci_high, kind='pp')}"
            for c, x in choices.iterrows()
        )
        if why_not:
            verdict, reason = "not testable here", f"{task_name(t)}: {why_not}"
        else:
            wins = choices[choices["vs_random_ci_low"] > 0]
            verdict = "holds" if len(wins) else "does not hold"
            reason = vs
        full = by.loc["full"] if "full" in by.index else None
        out.append(
            Verdict(
                LAYER_CLAIM,
                "beyond",
                str(m),
                verdict,
                n,
                f"{task_name(t, metric)}: {MODE_NAMES[str(top.name)].split(' (')[0]} − random "
                f"{fmt_ci(top.vs_random, top.vs_random_ci_low, top.vs_random_ci_high, kind='pp')}",
                f"change {fmt_ci(r.change, r.change_ci_low, r.change_ci_high, kind='pp')}",
                "–"
                if full is None
                else "full fine-tuning − random "
                f"{fmt_ci(full.vs_random, full.vs_random_ci_low, full.vs_random_ci_high, kind='pp')}",
                reason,
                "06_mitigation",
            )
        )
    return out


def verdicts(root: str | Path) -> pd.DataFrame:
    """The verdict table: one row per claim of the papers (and per model and dataset where they
    differ), columns :data:`VERDICT_COLUMNS` plus ``paper`` and ``chapter`` (notebook stem).

    Rules: AVSS holds when every informative task's 95% interval of the retention lies above
    90%, does not hold when one lies below; prone-layer training beats random layers when the
    paired interval of prone minus random lies above 0; the 12% claim holds when the largest
    relative change of the prone layers has an interval above 0 that reaches 12%. A metric whose
    original score is at chance or near zero never counts (:func:`uninformative`)."""
    root = Path(root)
    rows = [
        *_avss_verdicts(root),
        *_mitigation_verdicts(root),
        *_gain_verdict(root),
        *_layer_choice_verdicts(root),
        *_repair_verdicts(root),
        *_heal_verdicts(root),
    ]
    frame = pd.DataFrame(
        [
            {
                "claim": v.claim,
                "verdict": v.verdict,
                "model": model_name(v.model),
                "n": v.n,
                "measured [95% CI]": v.measured,
                "random layers": v.random,
                "best other": v.best_other,
                "why": v.reason,
                "evidence": v.chapter,
                "paper": v.paper,
                "chapter": v.chapter,
            }
            for v in rows
        ]
    )
    return frame


def verdict_markdown(
    frame: pd.DataFrame, *, link: str = "{chapter}.md", columns: Iterable[str] = VERDICT_COLUMNS
) -> str:
    """The verdict table as Markdown; ``link`` formats the evidence column (``{chapter}``)."""
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            value = str(row[c])
            if c == "evidence":
                value = (
                    f"[{CHAPTER_TITLES.get(row['chapter'], row['chapter'])}]"
                    f"({link.format(chapter=row['chapter'])})"
                )
            if c == "verdict":
                value = f"**{value}**"
            cells.append(value.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_table(root: str | Path, *, link: str = "../notebooks/{chapter}.html"):
    """The verdict table for the book's first page (:func:`avsslib.plots.table`): claim; model
    and sample size; the verdict with its reason; the measured value, the random-layer baseline
    and the best other score, each with its 95% interval; a link to the chapter with the
    evidence (``link`` formats ``{chapter}``, relative to the page that shows it)."""
    import html

    from avsslib.plots import table

    frame = verdicts(root)
    esc = html.escape
    shown = pd.DataFrame(
        {
            "claim": frame["claim"].map(esc),
            "model (n)": [
                f"{esc(m)}<br><small>{esc(n)}</small>"
                for m, n in zip(frame["model"], frame["n"], strict=True)
            ],
            "verdict": [
                f"<strong>{esc(v)}</strong><br><small>{esc(w)}</small>"
                for v, w in zip(frame["verdict"], frame["why"], strict=True)
            ],
            "measured [95% CI]": frame["measured [95% CI]"].map(esc),
            "random layers": frame["random layers"].map(esc),
            "best other": frame["best other"].map(esc),
            "evidence": [
                f'<a href="{link.format(chapter=c)}">chapter {int(c[:2])}</a>'
                for c in frame["chapter"]
            ],
        }
    )
    return table(
        shown,
        index=False,
        escape=False,
        name="verdicts",
        note="Intervals: 95% bootstrap over evaluation examples (paired where two models "
        "or modes are compared); pp: percentage points.",
    )


def findings(root: str | Path) -> list[str]:
    """The findings in sentences, each generated from the verdict rows and result files."""
    from avsslib.plots import fmt_ci, plural, words

    root = Path(root)
    v = verdicts(root)
    out = []
    avss = v[v["paper"] == "AVSS"]
    if len(avss):
        fails = avss[avss["verdict"] == "does not hold"]
        out.append(
            f'AVSS\'s "over 90% retained at 25% pruned" does not hold on '
            f"{len(fails)} of {plural(len(avss), 'model')} "
            f"({words(fails['model'])}): "
            + "; ".join(
                f"{r.model} keeps {r['measured [95% CI]'].replace(' retention', '')}, random "
                f"layers {r['random layers']}, {r['best other']}"
                for _, r in avss.iterrows()
            )
            + "."
        )
    worse = avss_against_random(root)
    worse = worse[worse["ci_high"] < 0]
    if len(worse):
        out.append(
            "AVSS prunes worse than random layers of the same count on "
            + words(
                f"{model_name(r.model)} {task_name(r.task)} (retention "
                f"{fmt_ci(r.difference, r.ci_low, r.ci_high, kind='pp')} against random)"
                for r in worse.itertuples()
            )
            + "."
        )
    mit = v[v["claim"] == PRONE_CLAIM]
    tested = mit[mit["verdict"] != "not testable here"]
    if len(tested):
        wins = tested[tested["verdict"] == "holds"]
        out.append(
            f"Prone layers chosen by EAVSS train better than random layers in "
            f"{len(wins)} of {plural(len(tested), 'informative comparison')} "
            f"(paired 95% intervals of prone minus random); "
            f"{plural(len(mit) - len(tested), 'comparison')} with a base score at chance "
            "or near zero cannot tell."
        )
    changes = mitigation_changes(root)
    if len(changes):
        ok = changes[changes["why"].isna()]
        best = ok.loc[ok["delta_abs"].idxmax()] if len(ok) else None
        if best is not None:
            out.append(
                f"The largest gain comes from {MODE_NAMES[best['mode']]}: "
                f"{model_name(best.model)} {task_name(best.task, best.metric)} "
                f"{fmt_ci(best.delta_abs, best.abs_ci_low, best.abs_ci_high, kind='pp')} "
                f"({fmt_ci(best.delta_rel, best.rel_ci_low, best.rel_ci_high, kind='rel')} relative)."
            )
    beyond = v[v["paper"] == "beyond"]
    for _, r in beyond[beyond["claim"] == REPAIR_CLAIM].iterrows():
        out.append(
            f"{'A' if r['verdict'] == 'holds' else 'No'} scale-aware repair of AVSS reaches the "
            f"scores that compare a block's input with its output on {r['model']}: "
            f"{r['measured [95% CI]']} at {FRACTION:.0%} pruned, against {r['best other']} "
            f"and random layers {r['random layers']}."
        )
    for _, r in beyond[beyond["claim"] == HEAL_CLAIM].iterrows():
        out.append(
            f"LoRA healing {'rescues' if r['verdict'] == 'holds' else 'does not rescue'} AVSS "
            f"pruning on {r['model']}: {r['measured [95% CI]']} ({r['why'].split(';')[0]}); "
            f"random layers heal to {r['random layers']}, {r['best other']}."
        )
    layer = beyond[beyond["claim"] == LAYER_CLAIM]
    if len(layer):
        wins = layer[layer["verdict"] == "holds"]
        out.append(
            f"Evaluated on every question ({layer['n'].iloc[0]}), the best layer choice trains "
            f"better than random layers in {len(wins)} of {plural(len(layer), 'comparison')}: "
            + "; ".join(
                f"{r['model']} {r['measured [95% CI]'].replace(': ', ', ', 1)} ({r['best other']})"
                for _, r in layer.iterrows()
            )
            + "."
        )
    return out


def mitigation_sentence(root: str | Path, model: str) -> str:
    """What the committed mitigation runs of ``model`` show, in sentences: the largest relative
    change among informative metrics (any mode) and with the prone layers, each with its 95%
    interval, against the EAVSS abstract's 12%; prone minus random layers per metric (paired);
    and which metrics are left out as uninformative."""
    from avsslib.plots import fmt_ci, plural

    changes = mitigation_changes(root)
    changes = changes[changes["model"] == model] if len(changes) else changes
    diff = prone_minus_random(root)
    diff = diff[(diff["model"] == model) & diff["why"].isna()] if len(diff) else diff
    ok = changes[changes["why"].isna() & changes["delta_rel"].notna()] if len(changes) else changes
    prone = ok[ok["mode"] == "eavss"] if len(ok) else ok
    if not len(prone):
        return f"No committed mitigation run of {model} with an informative metric under {root}."
    best, top = ok.loc[ok["delta_rel"].idxmax()], prone.loc[prone["delta_rel"].idxmax()]
    text = (
        f"On {model_name(model)}, the largest relative change among informative metrics is "
        f"{fmt_ci(best.delta_rel, best.rel_ci_low, best.rel_ci_high, kind='rel')} "
        f"({MODE_NAMES[best['mode']]}, {task_name(best.task, best.metric)}, "
        f"{plural(best.seeds, 'seed')}); with the prone layers it is at most "
        f"{fmt_ci(top.delta_rel, top.rel_ci_low, top.rel_ci_high, kind='rel')} "
        f"({task_name(top.task, top.metric)}). The EAVSS abstract reports up to "
        f"{PAPER_MAX_GAIN:.0%}. Prone minus random layers, paired over the same questions: "
        + "; ".join(
            f"{task_name(r.task, r.metric)} {fmt_ci(r.difference, r.ci_low, r.ci_high, kind='pp')}"
            for r in diff.itertuples()
        )
        + "."
    )
    left_out = changes[changes["why"].notna()].drop_duplicates(["task", "metric"])
    if len(left_out):
        text += (
            " Not counted (base score at chance or near zero): "
            + "; ".join(f"{task_name(r.task, r.metric)} ({r.why})" for r in left_out.itertuples())
            + "."
        )
    return text


# ------------------------------------------------------------------------- records and costs


def _stage_of(path: Path, root: Path) -> tuple[str, str]:
    parts = path.relative_to(root).parts
    model, stage = parts[0], parts[1] if len(parts) > 1 else ""
    if stage == "mitigation" and len(parts) > 3:
        return model, f"mitigation {parts[2]}"
    return model, STAGES.get(stage, stage)


def run_records(root: str | Path) -> pd.DataFrame:
    """One row per run record (``record.json``) under ``root``: folder, model, stage, command,
    the device it ran on, start time, wall time (s), library versions (``avsslib`` version and
    git commit where recorded)."""
    root = Path(root)
    rows = []
    for path in sorted(root.rglob("record.json")) if root.is_dir() else []:
        r = _read_json(path)
        if not isinstance(r, dict) or "command" not in r:
            continue
        versions, timing = r.get("versions", {}), r.get("timing", {})
        model, stage = _stage_of(path.parent, root)
        avsslib = versions.get("avsslib")
        rows.append(
            {
                "folder": str(path.parent.relative_to(root)),
                "model": model,
                "stage": stage,
                "command": r["command"],
                "device": _device(r.get("device")),
                "start (UTC)": str(timing.get("start", ""))[:16].replace("T", " "),
                "wall_s": timing.get("wall_s", math.nan),
                "avsslib": avsslib if avsslib not in (None, "absent") else "not recorded",
                "git commit": versions.get("avsslib_commit", "not recorded"),
                "torch": versions.get("torch"),
                "transformers": versions.get("transformers"),
                "lm_eval": versions.get("lm_eval"),
                "data files": len(r.get("data_files", {})),
            }
        )
    return pd.DataFrame(rows)


def _device(text: Any) -> str:
    """``"cuda: NVIDIA H200"`` -> ``"NVIDIA H200"``; ``"cpu"`` stays."""
    text = str(text or "unknown")
    return text.split(": ", 1)[1] if text.startswith("cuda: ") else text


def stage_costs(root: str | Path) -> pd.DataFrame:
    """Wall time per model, stage and device, summed over runs: the study from its evaluation
    files (``eval_s``, device from the evaluation's protocol) and every other stage from its run
    records. Columns model, stage, device, runs, minutes."""
    root = Path(root)
    rows = []
    for path in sorted(root.glob("*/avss/eval/*.json")):
        e = _read_json(path)
        seconds = (e.get("timing") or {}).get("eval_s")
        if seconds:
            device = e.get("protocol", {}).get("model", {}).get("device", "unknown")
            record = path.parents[1] / "record.json"
            if record.is_file():  # "cuda" -> the GPU's name
                device = _device(_read_json(record).get("device", device))
            rows.append(
                {
                    "model": path.parents[2].name,
                    "stage": "AVSS study (evaluations)",
                    "device": device,
                    "seconds": float(seconds),
                }
            )
    records = run_records(root)
    for r in records.itertuples():
        if r.stage == STAGES["avss"]:
            continue  # counted through its evaluations
        rows.append(
            {"model": r.model, "stage": r.stage, "device": r.device, "seconds": float(r.wall_s)}
        )
    if not rows:
        return pd.DataFrame(columns=["model", "stage", "device", "runs", "minutes"])
    frame = pd.DataFrame(rows)
    out = (
        frame.groupby(["model", "stage", "device"], sort=True)
        .agg(runs=("seconds", "size"), seconds=("seconds", "sum"))
        .reset_index()
    )
    return out.assign(minutes=out["seconds"] / 60).drop(columns="seconds")


# ----------------------------------------------------------------------------------- benchmarks


def bench_stats(root: str | Path) -> pd.DataFrame:
    """``bench/bench_stats_*.json``: device, model, dtype, batch shape, tokens/s of (a) a bare
    forward pass, (b) ``LayerStats``, (c) the official recipe, and the ratios (b)/(a), (c)/(b)."""
    rows = []
    for path in sorted((Path(root) / "bench").glob("bench_stats_*.json")):
        data = _read_json(path)
        env, settings, ratios = data["environment"], data["settings"], data.get("ratios", {})
        row = {
            "file": path.name,
            "device": env.get("device_name"),
            "model": data["model"]["id"],
            "dtype": settings["dtype"],
            "batch": f"{settings['batch_size']} x {settings['seq_len']}",
        }
        for mode, entry in data["modes"].items():
            row[f"({mode}) tokens/s"] = entry["tokens_per_s"]
        row["(b)/(a)"] = ratios.get("b_over_a", math.nan)
        row["(c)/(b)"] = ratios.get("c_over_b", math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def bench_distributed(root: str | Path) -> pd.DataFrame:
    """``bench/bench_distributed_*.json``: one GPU against several in the same run."""
    rows = []
    for path in sorted((Path(root) / "bench").glob("bench_distributed_*.json")):
        data = _read_json(path)
        env = data["environment"]
        rows.append(
            {
                "file": path.name,
                "devices": f"{env['world_size']} x {env['device_name']}",
                "model": data["model"]["id"],
                "dtype": data["settings"]["dtype"],
                "tokens": data["tokens"],
                "1 GPU tokens/s": data["single"]["tokens_per_s"],
                "all GPUs tokens/s": data["parallel"]["tokens_per_s"],
                "speed-up": data["speedup"],
                "ideal": data["ideal_speedup"],
                "same statistics": bool(data["check"]["ok"]),
            }
        )
    return pd.DataFrame(rows)


def bench_sweep(root: str | Path) -> tuple[pd.DataFrame, str | None]:
    """The first ``bench/sweep_*.csv`` (rows with status ok) and its file name."""
    files = sorted((Path(root) / "bench").glob("sweep_*.csv"))
    if not files:
        return pd.DataFrame(), None
    sweep = pd.read_csv(files[0])
    if "status" in sweep:
        sweep = sweep[sweep["status"] == "ok"]
    return sweep, files[0].name
