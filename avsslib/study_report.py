"""The pruning study's closing steps (:func:`avsslib.study.pruning_study`): it writes, under
the study's folder, ``retention.csv``, ``sweep.csv`` and ``agreement.csv``
(:func:`write_tables`), ``figures/layer_profile.png``, ``figures/retention.png`` and
``figures/sweep.png`` (:func:`write_figures`), and ``record.json`` / ``record.md`` (or
``record.partial.json`` while configurations are missing; :func:`finish_record`).

:class:`StudyResult` is what :func:`~avsslib.study.pruning_study` returns.

Which rows belong to the main comparison and which to the sweep is read from each
configuration's kind (:class:`avsslib.study_eval.PrunedConfig`), not from its name.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avsslib.protocol import ConfigKind
from avsslib.study_eval import PrunedConfig
from avsslib.study_tables import primary_metric_rows, retention_table, score_agreement, score_names


def calib_label(spec: Mapping[str, Any]) -> str:
    """``name/split/seed<k>``: the label of one calibration sample in ``agreement.csv``."""
    return f"{spec['name']}/{spec['split']}/seed{spec['seed']}"


def main_rows(retention_df: pd.DataFrame, configs: Mapping[str, PrunedConfig]) -> pd.DataFrame:
    """The rows of the unpruned model and of the main selections (no sweep point)."""
    kinds = retention_df["config"].map(lambda n: configs[n].kind)
    return retention_df[kinds.isin(["original", "main"]).astype(bool)]


def write_tables(
    out: Path,
    results: Mapping[str, Any],
    configs: Mapping[str, PrunedConfig],
    agreement_df: pd.DataFrame,
    *,
    n_boot: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Write ``retention.csv``, ``sweep.csv`` (the sweep configurations' rows) and
    ``agreement.csv``; returns the three tables."""
    from avsslib.fs import write_csv_atomic

    retention_df = retention_table(results, configs, n_boot, seed)
    sweep_rows = retention_df["config"].map(lambda n: configs[n].kind == "sweep").astype(bool)
    sweep_df = (
        retention_df[sweep_rows].drop(columns=["config", "stats", "rule"]).reset_index(drop=True)
    )
    write_csv_atomic(out / "retention.csv", retention_df)
    write_csv_atomic(out / "sweep.csv", sweep_df)
    write_csv_atomic(out / "agreement.csv", agreement_df)
    return retention_df, sweep_df, agreement_df


def agreement_table(
    fixed: pd.DataFrame,
    faithful: pd.DataFrame,
    stability: Mapping[str, np.ndarray],
    agreement: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    scores: Sequence[str],
) -> pd.DataFrame:
    """Rank agreement between the scores, the two modes (AVSS), sample seeds and calibration
    sets (``stability``: :func:`calib_label` -> AVSS per layer)."""
    names = score_names(fixed, scores)
    parts = [score_agreement({n: fixed[n].to_numpy() for n in names}, "scores")]
    if "avss" in names and "avss" in faithful:
        both = {
            "avss/fixed": fixed["avss"].to_numpy(),
            "avss/faithful": faithful["avss"].to_numpy(),
        }
        parts.append(score_agreement(both, "mode"))
    labels = {
        (c["name"], c["split"], s): calib_label({**c, "seed": s}) for c in agreement for s in seeds
    }
    calibs = list(dict.fromkeys((c["name"], c["split"]) for c in agreement))
    seed_pairs = [
        (labels[(*c, a)], labels[(*c, b)])
        for c in calibs
        for a, b in itertools.combinations(seeds, 2)
    ]
    calib_pairs = [
        (labels[(*a, s)], labels[(*b, s)])
        for s in seeds
        for a, b in itertools.combinations(calibs, 2)
    ]
    parts.append(score_agreement(stability, "seed", seed_pairs))
    parts.append(score_agreement(stability, "calibration", calib_pairs))
    return pd.concat(parts, ignore_index=True)


def write_figures(
    folder: Path,
    fixed: pd.DataFrame,
    pruned: Sequence[int],
    configs: Mapping[str, PrunedConfig],
    retention_df: pd.DataFrame,
    sweep_df: pd.DataFrame,
) -> None:
    """The layer profile (``pruned`` marked), the main retention bars and the sweep."""
    import matplotlib.pyplot as plt

    from avsslib import plots

    plots.use_style()
    main = main_rows(retention_df, configs)
    main = main[main["config"] != "original"]
    figures = {
        "layer_profile.png": plots.study_layer_profile(fixed, pruned=pruned),
        "retention.png": plots.retention_bars(primary_metric_rows(main), label="config"),
    }
    if not sweep_df.empty:  # a partial study (--no-new-evals) may have no sweep point yet
        figures["sweep.png"] = plots.retention_sweep(primary_metric_rows(sweep_df))
    for file, fig in figures.items():
        plots.save(fig, folder / file)
        plt.close(fig)


def finish_record(
    record: Any,
    out: Path,
    retention_df: pd.DataFrame,
    configs: Mapping[str, PrunedConfig],
    chosen: Mapping[str, Any],
    fixed: pd.DataFrame,
    timing: dict[str, Any],
    t_start: float,
) -> None:
    """Finish the run record with the main retention table and save it: ``record.json``, or
    ``record.partial.json`` while configurations are missing (a resuming driver must not take
    a partial study for a finished one)."""
    from avsslib.report import save_record

    table = [
        dict(
            task=f"{row.task} [{row.config}]",
            metric=f"{row.metric} retention",
            value=row.retention,
            ci_low=row.ci_low,
            ci_high=row.ci_high,
            n=row.n,
        )
        for row in primary_metric_rows(main_rows(retention_df, configs)).itertuples()
    ]
    record.finish(
        {
            "table": table,
            "selections": chosen,
            "configs": {k: v.layers for k, v in configs.items()},
            "clamped_layers": fixed.index[fixed["clamped"]].tolist(),
        },
        **timing,
    )
    record.timing["total_s"] = time.perf_counter() - t_start
    missing = sorted(k for k, v in timing["status"].items() if v == "missing")
    save_record(record, out / ("record.partial.json" if missing else "record.json"))
    if not missing:  # complete now: an earlier partial record is out of date
        for stale in ("record.partial.json", "record.partial.md"):
            (out / stale).unlink(missing_ok=True)


@dataclass
class StudyResult:
    """What :func:`avsslib.study.pruning_study` found (everything is also in the files under
    ``out``).

    ``layer_stats`` and ``layer_stats_faithful``: per-layer tables (indexed by ``layer``);
    ``selections``: ``{"fixed": {"<score>/<rule>": layers}, "faithful": ...}``; ``configs``:
    configuration name -> pruned layers; ``kinds``: configuration name -> ``original``,
    ``main`` or ``sweep``; ``retention``, ``sweep``, ``agreement``: the tables of the CSV files;
    ``status``: name -> ``evaluated``, ``cached``, ``reused`` or ``missing``; ``timing``;
    ``record``: the run record as a dict."""

    out: Path
    fraction: float
    layer_stats: Any
    layer_stats_faithful: Any
    selections: dict[str, dict[str, list[int]]]
    configs: dict[str, list[int]]
    kinds: dict[str, ConfigKind]
    retention: Any
    sweep: Any
    agreement: Any
    status: dict[str, str]
    timing: dict[str, Any]
    record: dict[str, Any]

    def main_retention(self) -> Any:
        """The retention rows of the main comparison: the unpruned model and every selection at
        the study's fraction (sweep points left out), each task's primary metric only."""
        kinds = self.retention["config"].map(self.kinds)
        return primary_metric_rows(self.retention[kinds.isin(["original", "main"])])

    def missing(self) -> list[str]:
        """The configurations not evaluated yet (``no_new_evals``)."""
        return sorted(k for k, v in self.status.items() if v == "missing")

    def __getitem__(self, key: str) -> Any:
        """The dict interface ``pruning_study`` returned before (deprecated)."""
        warnings.warn(
            f"pruning_study(...)[{key!r}] is deprecated: pruning_study returns a StudyResult; "
            f"use its attribute .{'out' if key == 'out_dir' else key}.",
            DeprecationWarning,
            stacklevel=2,
        )
        if key == "out_dir":
            return self.out
        if key in {f.name for f in dataclasses.fields(self)}:
            return getattr(self, key)
        raise KeyError(key)


__all__ = [
    "StudyResult",
    "agreement_table",
    "calib_label",
    "finish_record",
    "main_rows",
    "write_figures",
    "write_tables",
]
