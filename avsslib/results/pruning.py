"""Readers of the AVSS pruning study of every model (``results/<model>/avss/``:
``retention.csv``, or the finished ``eval/<config>.json`` of a partial study, and
``layer_stats.csv``): retention at the claim's fraction, AVSS against random layers paired over
the same examples, per-layer profiles, the examples each study evaluated. Writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from avsslib.errors import DataError
from avsslib.protocol import is_sweep
from avsslib.results.base import (
    BOOT,
    FRACTION,
    SEED,
    _boot_idx,
    _interval,
    _primary,
    _read_json,
    models,
    task_name,
    uninformative,
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


def _studies(root: Path) -> Iterator[tuple[str, pd.DataFrame, str]]:
    """``(model, retention frame, source)`` of every model folder with a readable study."""
    for m in models(root):
        frame, source = study_retention(root / m / "avss")
        if frame is not None and source is not None:
            yield m, frame, source


def retention(
    root: str | Path, fraction: float = FRACTION, *, sweep: bool = False, primary: bool = True
) -> pd.DataFrame:
    """Retention rows of every model's study at ``fraction`` (``sweep=True``: the sweep
    configurations at every fraction instead), one metric per task when ``primary``, with columns
    ``model``, ``source`` and ``informative`` (``None``) or ``why`` it is not."""
    root = Path(root)
    parts = []
    for m, frame, source in _studies(root):
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


def study_sizes(root: str | Path) -> pd.DataFrame:
    """Per model with a study: the examples its original model was evaluated on, per task, in
    words (``"SciQ 1,000, SST-2 872, WikiText-2 596 windows"``), from the ``n`` of its retention
    rows. Columns ``model`` and ``examples per task``."""
    root = Path(root)
    rows = []
    for m, frame, _ in _studies(root):
        first = frame[frame["config"] == "original"].drop_duplicates("task")
        sizes = ", ".join(
            f"{task_name(t)} {int(n):,}{' windows' if t == 'wikitext2_ppl' else ''}"
            for t, n in sorted(zip(first["task"], first["n"], strict=True))
        )
        rows.append({"model": m, "examples per task": sizes})
    return pd.DataFrame(rows, columns=["model", "examples per task"])


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
