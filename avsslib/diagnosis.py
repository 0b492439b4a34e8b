"""Why AVSS ranks layers the way it does: depth trend, near-zero counting noise and the clamp.

Everything here reads a per-layer table of a pruning study (``layer_stats.csv`` or
``layer_stats_faithful.csv``, see :mod:`avsslib.study`); no model is run.

* :func:`depth_correlations`: Spearman rank correlations of AVSS, its variance, the RMS of the
  residual stream and the sparsity with depth (the layer index) and with each other, with their
  p-values. A variance computed on the residual stream grows with the stream's norm, which grows
  with depth in most decoder LLMs; these correlations say how much of the AVSS ranking that
  trend explains.
* :func:`log_decomposition`: ``log AVSS = log V - log S + const``; the share of the variance
  over layers of ``log AVSS`` that ``log V`` alone explains (R^2 of a least-squares line), and
  how many of the layers AVSS prunes the variance alone, the RMS alone or plain depth
  (the first layers) would prune too.
* :func:`poisson_interval` and :func:`sparsity_table`: near-zero counts ``k`` (elements with
  ``|h| < eps`` out of ``N``) with the exact (Garwood) Poisson 95% interval of their mean,
  per threshold. At ``eps = 1e-5`` the counts are a few to a few hundred: the sparsity of a
  layer is then known to a factor of about two at best.
* :func:`clamp_effect`: layers with ``k = 0`` get the sparsity clamp (``1e-12``), hence a huge
  AVSS; their rank with the clamp against their rank with half a count (``0.5 / N``) and with
  the upper end of the Poisson interval of zero (``3.69 / N``), and whether the pruned set
  changes.
* :func:`poisson_rank_stability`: replicate counts drawn from the posterior predictive of each
  layer's Poisson rate (Jeffreys prior, ``rate ~ Gamma(k + 1/2)``, ``count ~ Poisson(rate)``),
  AVSS recomputed with the clamp: how often some layer is clamped, how often the clamp moves a
  layer into or out of the pruned set, how often the pruned set is the observed one, the
  Kendall tau of replicate rankings with the observed one, and each layer's probability of
  being pruned. This is what counting noise alone does to the ranking, holding the variance
  fixed.
The counting-noise parts (Poisson intervals, the clamp, rank stability) live in
:mod:`avsslib.diagnosis_counts` and are exported here.

* :func:`diagnose` gathers all of these for one table; :func:`run_diagnosis` writes them for
  a study directory (fixed and faithful modes) with a run record.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avsslib.diagnosis_counts import (
    _check_table,
    _k_of,
    _lowest,
    clamp_effect,
    poisson_interval,
    poisson_rank_stability,
    sparsity_table,
)
from avsslib.errors import ConfigError

__all__ = [
    "DIAGNOSIS_FORMAT",
    "clamp_effect",
    "depth_correlations",
    "diagnose",
    "log_decomposition",
    "poisson_interval",
    "poisson_rank_stability",
    "run_diagnosis",
    "sparsity_table",
    "summary_frame",
]

DIAGNOSIS_FORMAT = "avsslib.diagnosis/1"


# ---------------------------------------------------------------------- depth trend
def depth_correlations(
    table: pd.DataFrame, columns: Sequence[str] = ("avss", "variance", "rms", "sparsity")
) -> pd.DataFrame:
    """Spearman rho (and its two-sided p-value) of each column with depth and of each pair.

    ``depth`` is the layer index (0 = first block). Returns columns ``a``, ``b``,
    ``spearman``, ``p_value``, ``n_layers``; rows ``(column, "depth")`` first, then every pair
    of ``columns`` in order. NaN where a column is constant.
    """
    from scipy.stats import spearmanr

    _check_table(table)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(f"depth_correlations: no column(s) {missing} in the table.")
    values = {c: table[c].to_numpy(dtype=np.float64) for c in columns}
    values["depth"] = np.arange(len(table), dtype=np.float64)
    pairs = [(c, "depth") for c in columns]
    pairs += [(a, b) for i, a in enumerate(columns) for b in columns[i + 1 :]]
    rows = []
    for a, b in pairs:
        x, y = values[a], values[b]
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            rho, p = float("nan"), float("nan")
        else:
            res = spearmanr(x, y)
            rho, p = float(res.statistic), float(res.pvalue)
        rows.append(dict(a=a, b=b, spearman=rho, p_value=p, n_layers=len(x)))
    return pd.DataFrame(rows)


def log_decomposition(table: pd.DataFrame, fraction: float = 0.25) -> dict[str, Any]:
    """How much of AVSS is its variance: ``log AVSS = log V - log S + const``.

    Returns a dict: ``r2_log_variance`` (R^2 of a least-squares line of ``log AVSS`` on
    ``log V`` over the layers that are not clamped, whose ``log S`` would be the clamp's),
    ``r2_log_sparsity`` (the same with ``-log S``), the standard deviations over those layers of
    ``log V`` and ``log S`` (natural log), ``n_unclamped``, ``k`` (layers pruned at
    ``fraction``), ``avss_pruned`` (the ``k`` lowest-AVSS layers) and the overlap of that set
    with the ``k`` lowest of variance, of RMS and of depth (the first ``k`` layers), as counts.
    The AVSS column of the table (the study's, clamp included) is used as is.
    """
    _check_table(table)
    kept = table["near_zero_count"].to_numpy(dtype=np.float64) > 0  # clamped layers left out
    a = np.log(table["avss"].to_numpy(dtype=np.float64)[kept])
    v = np.log(table["variance"].to_numpy(dtype=np.float64)[kept])
    s = np.log(table["sparsity"].to_numpy(dtype=np.float64)[kept])

    def r2(x: np.ndarray) -> float:
        if np.ptp(x) == 0 or np.ptp(a) == 0:
            return float("nan")
        return float(np.corrcoef(x, a)[0, 1] ** 2)

    k = _k_of(fraction, len(table))
    pruned = _lowest(table["avss"].to_numpy(dtype=np.float64), k)
    by_var = _lowest(table["variance"].to_numpy(dtype=np.float64), k)
    by_rms = _lowest(table["rms"].to_numpy(dtype=np.float64), k)
    by_depth = set(range(k))
    return {
        "r2_log_variance": r2(v),
        "r2_log_sparsity": r2(-s),
        "n_unclamped": int(kept.sum()),
        "sd_log_variance": float(np.std(v)),
        "sd_log_sparsity": float(np.std(s)),
        "k": k,
        "avss_pruned": sorted(pruned),
        "overlap_variance": len(pruned & by_var),
        "overlap_rms": len(pruned & by_rms),
        "overlap_depth": len(pruned & by_depth),
    }


# ---------------------------------------------------------------------- together
def diagnose(
    table: pd.DataFrame,
    fraction: float = 0.25,
    n_draws: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Every diagnosis of one per-layer table: ``correlations``, ``sparsity``, ``clamp``,
    ``stability`` (DataFrames) and ``summary`` (a dict: the :func:`log_decomposition`,
    the :func:`poisson_rank_stability` summary, the Spearman rho of AVSS, variance and RMS with
    depth, the clamped layers, the total near-zero count range at the primary threshold)."""
    corr = depth_correlations(table)
    per_layer, stab = poisson_rank_stability(table, fraction, n_draws, seed)
    counts = table["near_zero_count"].to_numpy(dtype=np.float64)

    def rho(a: str, b: str) -> float:
        row = corr[(corr["a"] == a) & (corr["b"] == b)]
        return float(row["spearman"].iloc[0])

    summary = {
        "fraction": fraction,
        "n_layers": len(table),
        "spearman_avss_depth": rho("avss", "depth"),
        "spearman_variance_depth": rho("variance", "depth"),
        "spearman_rms_depth": rho("rms", "depth"),
        "spearman_sparsity_depth": rho("sparsity", "depth"),
        "spearman_avss_variance": rho("avss", "variance"),
        "spearman_avss_rms": rho("avss", "rms"),
        "spearman_avss_sparsity": rho("avss", "sparsity"),
        "spearman_variance_rms": rho("variance", "rms"),
        "near_zero_min": int(counts.min()),
        "near_zero_max": int(counts.max()),
        "near_zero_median": float(np.median(counts)),
        "elements_per_layer": int(table["element_count"].iloc[0]),
        "clamped_layers": [int(x) for x in table.index[counts == 0]],
        **log_decomposition(table, fraction),
        "stability": stab,
    }
    return {
        "correlations": corr,
        "sparsity": sparsity_table(table, alpha),
        "clamp": clamp_effect(table, fraction, alpha=alpha),
        "stability": per_layer,
        "summary": summary,
    }


def run_diagnosis(
    study_dir: str | Path,
    out_dir: str | Path,
    *,
    fraction: float = 0.25,
    n_draws: int = 2000,
    seed: int = 0,
    command: str | None = None,
) -> dict[str, Any]:
    """Diagnose a pruning study's committed tables and write the result files.

    Reads ``study_dir/layer_stats.csv`` (fixed mode) and, when present,
    ``layer_stats_faithful.csv``; writes under ``out_dir``: ``correlations.csv``,
    ``sparsity.csv``, ``clamp.csv``, ``stability.csv`` (each with a ``mode`` column),
    ``summary.json`` (per mode, :func:`diagnose`'s summary) and ``record.json`` / ``record.md``
    (inputs with their sha256). Returns ``{mode: diagnose(...)}``.
    """
    from avsslib.fs import file_sha256, write_csv_atomic, write_json_atomic
    from avsslib.report import RunRecord, save_record
    from avsslib.study import read_layer_table

    t0 = time.perf_counter()
    study, out = Path(study_dir), Path(out_dir)
    files = {"fixed": study / "layer_stats.csv", "faithful": study / "layer_stats_faithful.csv"}
    if not files["fixed"].is_file():
        raise ConfigError(
            f"{files['fixed']}: no such file; point --study at a pruning study's "
            "directory (e.g. results/smollm2-135m/avss)."
        )
    files = {k: p for k, p in files.items() if p.is_file()}
    config = {
        "study_dir": str(study),
        "fraction": fraction,
        "n_draws": n_draws,
        "seed": seed,
        "format": DIAGNOSIS_FORMAT,
    }
    if command is None:
        command = (
            f"run_diagnosis({str(study)!r}, {str(out)!r}, fraction={fraction}, "
            f"n_draws={n_draws}, seed={seed})"
        )
    record = RunRecord.start(
        command, config, seed, data_files={str(p): file_sha256(p) for p in files.values()}
    )
    study_record = study / "record.json"
    if study_record.is_file():
        import json

        record.model = json.loads(study_record.read_text(encoding="utf-8")).get("model", {})
    results = {
        mode: diagnose(read_layer_table(path), fraction, n_draws, seed)
        for mode, path in files.items()
    }
    for name in ("correlations", "sparsity", "clamp", "stability"):
        frame = pd.concat(
            [r[name].assign(mode=mode) for mode, r in results.items()], ignore_index=True
        )
        write_csv_atomic(out / f"{name}.csv", frame[["mode", *[c for c in frame if c != "mode"]]])
    summaries = {mode: r["summary"] for mode, r in results.items()}
    write_json_atomic(out / "summary.json", {"format": DIAGNOSIS_FORMAT, **summaries})
    record.finish(
        {"table": _record_rows(summaries), "summary": summaries}, total_s=time.perf_counter() - t0
    )
    save_record(record, out / "record.json")
    return results


def _record_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The run record's table: per mode the depth correlations, the R^2 of log V and the
    counting-noise summary, one row per metric."""
    table = []
    for mode, s in summaries.items():
        for key in (
            "spearman_avss_depth",
            "spearman_variance_depth",
            "spearman_rms_depth",
            "spearman_avss_variance",
            "r2_log_variance",
        ):
            table.append(
                dict(
                    task=mode, metric=key, value=s[key], ci_low=None, ci_high=None, n=s["n_layers"]
                )
            )
        st = s["stability"]
        for key in ("p_any_clamped", "p_clamp_decides", "p_set_observed", "kendall_median"):
            table.append(
                dict(
                    task=mode, metric=key, value=st[key], ci_low=None, ci_high=None, n=st["n_draws"]
                )
            )
    return table


def summary_frame(summary: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """``summary.json`` (per mode) as a one-row-per-mode DataFrame with the stability keys
    prefixed ``stability_``; lists are joined by spaces."""
    rows = []
    for mode, s in summary.items():
        if not isinstance(s, Mapping):
            continue
        row: dict[str, Any] = {"mode": mode}
        for key, value in s.items():
            if key == "stability":
                row.update({f"stability_{k}": v for k, v in value.items()})
            elif isinstance(value, list):
                row[key] = " ".join(map(str, value))
            else:
                row[key] = value
        rows.append(row)
    return pd.DataFrame(rows)
