"""The summary tables of the paper-scale pipeline (:mod:`avsslib.reproduce`), from the finished
mitigation runs under ``results/<model>/``. Writes::

    mitigation/summary.csv             one row per dataset, mode, seed, task and metric
    mitigation/summary_modes.csv       the same averaged over seeds (mean, sd, min, max)
    mitigation-<K>fold/<dataset>/pooled_scores.csv, modes_vs_random.csv   the k-fold protocol's
                                       pooled comparison
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

#: relative changes of metrics whose base value is below this are not compared with the paper's
#: 12% (1 -> 3 correct answers of 300 is +200%); the book shows their absolute changes only
RELATIVE_BASE_FLOOR = 0.05


def summarise_folds(root: Path, folds: int, *, n_boot: int = 2000) -> pd.DataFrame | None:
    """For each dataset of ``mitigation-<folds>fold``: pool the folds of every mode and seed
    whose ``folds`` runs all finished (:func:`avsslib.beyond.fold_runs`), write
    ``pooled_scores.csv`` (mean before/after per mode, seed, task, metric over all questions)
    and ``modes_vs_random.csv`` (:func:`avsslib.folds.compare_modes`); returns the last
    comparison (``None`` when nothing is complete)."""
    from avsslib.beyond import fold_runs
    from avsslib.folds import compare_modes, mitigation_folder
    from avsslib.fs import write_csv_atomic

    result = None
    for folder in sorted((root / mitigation_folder(folds)).glob("*/")):
        pooled = fold_runs(folder, folds)
        if pooled.empty:
            continue
        means = (
            pooled.groupby(["mode", "seed", "task", "metric"])
            .agg(n=("id", "size"), before=("before", "mean"), after=("after", "mean"))
            .reset_index()
        )
        means.insert(0, "dataset", folder.name)
        means.insert(0, "model", root.name)
        write_csv_atomic(folder / "pooled_scores.csv", means)
        if "random" in set(pooled["mode"]):
            result = compare_modes(pooled, n_boot=n_boot)
            result.insert(0, "dataset", folder.name)
            result.insert(0, "model", root.name)
            write_csv_atomic(folder / "modes_vs_random.csv", result)
    return result


def summarise(root: Path) -> pd.DataFrame | None:
    """``mitigation/summary.csv`` (every finished run's change table with dataset, mode and
    seed) and ``summary_modes.csv`` (mean, sd, min and max over seeds); the first frame."""
    from avsslib.fs import write_csv_atomic

    rows = []
    for metrics in sorted((root / "mitigation").glob("*/*-seed*/metrics.json")):
        match = re.fullmatch(r"(.+)-seed(\d+)", metrics.parent.name)
        if match is None:  # e.g. a renamed copy "eavss-seed0-old": not a run of ours
            continue
        mode, seed = match.groups()
        data = json.loads(metrics.read_text(encoding="utf-8"))
        effects = data.get("side_effects", {})
        kl = effects.get("kl_to_base", {}).get("value", math.nan)
        ppl_ratio = effects.get("perplexity", {}).get("ratio_tuned_to_base", math.nan)
        for r in data["change"]:
            rows.append(
                {
                    "model": root.name,
                    "dataset": metrics.parent.parent.name,
                    "mode": mode,
                    "seed": int(seed),
                    **{
                        k: r[k]
                        for k in (
                            "task",
                            "metric",
                            "before",
                            "after",
                            "delta_abs",
                            "delta_rel",
                            "abs_ci_low",
                            "abs_ci_high",
                            "rel_ci_low",
                            "rel_ci_high",
                            "n",
                        )
                    },
                    "kl_to_base": kl,
                    "ppl_ratio": ppl_ratio,
                    "layers": " ".join(map(str, data["training"]["layers"] or [])),
                }
            )
    if not rows:
        return None
    frame = pd.DataFrame(rows).sort_values(["dataset", "task", "metric", "mode", "seed"])
    write_csv_atomic(root / "mitigation" / "summary.csv", frame)
    keys = ["model", "dataset", "task", "metric", "mode"]
    agg = (
        frame.groupby(keys, sort=True)
        .agg(
            seeds=("seed", "nunique"),
            before=("before", "mean"),
            after_mean=("after", "mean"),
            delta_abs_mean=("delta_abs", "mean"),
            delta_abs_sd=("delta_abs", "std"),
            delta_abs_min=("delta_abs", "min"),
            delta_abs_max=("delta_abs", "max"),
            delta_rel_mean=("delta_rel", "mean"),
            kl_to_base_mean=("kl_to_base", "mean"),
            ppl_ratio_mean=("ppl_ratio", "mean"),
        )
        .reset_index()
    )
    write_csv_atomic(root / "mitigation" / "summary_modes.csv", agg)
    return frame


__all__ = ["RELATIVE_BASE_FLOOR", "summarise", "summarise_folds"]
