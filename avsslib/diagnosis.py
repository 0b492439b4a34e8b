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
* :func:`diagnose` gathers all of these for one table; :func:`run_diagnosis` writes them for
  a study directory (fixed and faithful modes) with a run record.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avsslib.errors import ConfigError
from avsslib.scores import SPARSITY_CLAMP, avss_values

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
_NEEDED = ("variance", "sparsity", "near_zero_count", "element_count", "rms", "avss")


def _check_table(table: pd.DataFrame, name: str = "table") -> None:
    missing = [c for c in _NEEDED if c not in table.columns]
    if missing:
        raise ConfigError(
            f"{name} lacks the column(s) {missing}: pass a layer_stats.csv of a pruning study "
            "(avss study or avsslib.study.layer_scores with the 'avss' score)."
        )
    if len(table) < 3:
        raise ConfigError(f"{name} has {len(table)} layers; a diagnosis needs at least 3.")


def _k_of(fraction: float, n_layers: int) -> int:
    if not 0.0 < fraction < 1.0:
        raise ConfigError(
            f"fraction {fraction}: the pruned share must lie strictly between 0 and 1."
        )
    return round(fraction * n_layers)


def _lowest(values: np.ndarray, k: int) -> set[int]:
    """The ``k`` layers with the lowest values (stable: ties to the earlier layer)."""
    return set(np.argsort(values, kind="stable")[:k].tolist())


def _ranks(values: np.ndarray) -> np.ndarray:
    r = np.empty(values.size, dtype=np.int64)
    r[np.argsort(values, kind="stable")] = np.arange(values.size)
    return r


def _avss_quiet(variance: np.ndarray, sparsity: np.ndarray, clamp: float) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clamping is what is being measured here
        return avss_values(variance, sparsity, clamp=clamp)


# ---------------------------------------------------------------------- Poisson intervals
def poisson_interval(
    counts: Sequence[float] | np.ndarray | float, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Garwood) two-sided ``1 - alpha`` interval of a Poisson mean from counts ``k``.

    ``low = chi2.ppf(alpha/2, 2k) / 2`` (0 for ``k = 0``), ``high = chi2.ppf(1 - alpha/2,
    2k + 2) / 2``. Shapes follow ``counts``; for ``k = 0`` and ``alpha = 0.05``, ``(0, 3.689)``.
    """
    from scipy.stats import chi2

    k = np.asarray(counts, dtype=np.float64)
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha {alpha}: must lie strictly between 0 and 1.")
    if (k < 0).any() or not np.isfinite(k).all() or (k != np.round(k)).any():
        raise ConfigError(f"counts must be non-negative integers, got {k.tolist()}.")
    with np.errstate(invalid="ignore"):
        low = np.where(k > 0, chi2.ppf(alpha / 2, 2 * k) / 2, 0.0)
    high = chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2
    return low, high


def _eps_columns(table: pd.DataFrame) -> list[tuple[float, str]]:
    """``(eps, count column)`` of every near-zero threshold in a layer table, ascending."""
    out = []
    for col in table.columns:
        m = re.fullmatch(r"near_zero_count@(.+)", col)
        if m:
            out.append((float(m.group(1)), col))
    return sorted(out)


def sparsity_table(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Near-zero counts per layer and threshold with exact Poisson intervals.

    Columns: ``layer``, ``eps``, ``count``, ``elements``, ``rate`` (``count / elements``),
    ``count_low``, ``count_high`` (interval of the mean count), ``rate_low``, ``rate_high``,
    ``relative_half_width`` (``(high - low) / 2 / max(count, 1)``), ``zero`` (no element below
    ``eps``: the clamp applies at the primary threshold). One row per layer and threshold.
    """
    _check_table(table)
    grid = _eps_columns(table) or [(float("nan"), "near_zero_count")]
    parts = []
    for eps, col in grid:
        k = table[col].to_numpy(dtype=np.float64)
        n = table["element_count"].to_numpy(dtype=np.float64)
        low, high = poisson_interval(k, alpha)
        parts.append(
            pd.DataFrame(
                {
                    "layer": table.index.to_numpy(),
                    "eps": eps,
                    "count": k.astype(np.int64),
                    "elements": n.astype(np.int64),
                    "rate": k / n,
                    "count_low": low,
                    "count_high": high,
                    "rate_low": low / n,
                    "rate_high": high / n,
                    "relative_half_width": (high - low) / 2 / np.maximum(k, 1.0),
                    "zero": k == 0,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


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


# ---------------------------------------------------------------------- the clamp
def clamp_effect(
    table: pd.DataFrame, fraction: float = 0.25, clamp: float = SPARSITY_CLAMP, alpha: float = 0.05
) -> pd.DataFrame:
    """What the sparsity clamp does to each layer with no near-zero element.

    For every layer with ``near_zero_count == 0``: its AVSS rank (0 = pruned first) with the
    clamp, with half a count (``S = 0.5 / N``) and with the upper end of the Poisson interval
    of zero (``S = high / N``, 3.69 at ``alpha = 0.05``), whether it is pruned at ``fraction``
    in each case, and whether the pruned set of all layers differs from the clamped one
    (``set_changed_half``, ``set_changed_upper``). Empty (with these columns) when no layer is
    clamped.
    """
    _check_table(table)
    v = table["variance"].to_numpy(dtype=np.float64)
    k_counts = table["near_zero_count"].to_numpy(dtype=np.float64)
    n = table["element_count"].to_numpy(dtype=np.float64)
    s = k_counts / n
    k = _k_of(fraction, len(table))
    zero = np.flatnonzero(k_counts == 0)
    upper = float(poisson_interval(0.0, alpha)[1])
    base = _avss_quiet(v, s, clamp)
    variants = {"clamped": base}
    for label, c in (("half", 0.5), ("upper", upper)):
        s2 = s.copy()
        s2[zero] = c / n[zero]
        variants[label] = _avss_quiet(v, s2, clamp)
    ranks = {key: _ranks(val) for key, val in variants.items()}
    sets = {key: _lowest(val, k) for key, val in variants.items()}
    rows = []
    for i in zero:
        rows.append(
            dict(
                layer=int(table.index[i]),
                rank_clamped=int(ranks["clamped"][i]),
                rank_half=int(ranks["half"][i]),
                rank_upper=int(ranks["upper"][i]),
                pruned_clamped=i in sets["clamped"],
                pruned_half=i in sets["half"],
                pruned_upper=i in sets["upper"],
                set_changed_half=sets["half"] != sets["clamped"],
                set_changed_upper=sets["upper"] != sets["clamped"],
                upper_count=upper,
                k=k,
                n_layers=len(table),
            )
        )
    columns = [
        "layer",
        "rank_clamped",
        "rank_half",
        "rank_upper",
        "pruned_clamped",
        "pruned_half",
        "pruned_upper",
        "set_changed_half",
        "set_changed_upper",
        "upper_count",
        "k",
        "n_layers",
    ]
    return pd.DataFrame(rows, columns=columns)


def poisson_rank_stability(
    table: pd.DataFrame,
    fraction: float = 0.25,
    n_draws: int = 2000,
    seed: int = 0,
    clamp: float = SPARSITY_CLAMP,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """What counting noise alone does to the AVSS ranking (variance held fixed).

    Each draw replaces every layer's near-zero count ``k`` by ``Poisson(rate)`` with
    ``rate ~ Gamma(k + 1/2, 1)`` (the posterior predictive under the Jeffreys prior; a layer with
    ``k = 0`` can then draw a positive count, and one with ``k > 0`` a zero) and recomputes
    AVSS with the clamp.

    Returns ``(per_layer, summary)``. ``per_layer`` (one row per layer): ``layer``, ``count``,
    ``p_zero`` (share of draws where the layer is clamped), ``p_pruned`` (share of draws where
    it is among the ``round(fraction * M)`` lowest), ``pruned_observed``. ``summary``:
    ``n_draws``, ``k``, ``p_any_clamped`` (share of draws with a clamped layer),
    ``mean_clamped`` (clamped layers per draw), ``p_set_observed`` (share of draws whose pruned
    set equals the observed one), ``p_clamp_decides`` (share of draws where raising each
    clamped layer's count from 0 to 1 changes the pruned set), ``p_clamp_decides_rank``
    (share where it changes some layer's rank), ``kendall_median``, ``kendall_q05``
    (Kendall tau of replicate AVSS with the observed AVSS), ``mean_jaccard`` (of the pruned
    sets), ``seed``.
    """
    from scipy.stats import kendalltau

    _check_table(table)
    if n_draws < 1:
        raise ConfigError(f"n_draws {n_draws}: need at least one draw.")
    v = table["variance"].to_numpy(dtype=np.float64)
    k_counts = table["near_zero_count"].to_numpy(dtype=np.float64)
    n = table["element_count"].to_numpy(dtype=np.float64)
    m = len(table)
    k = _k_of(fraction, m)
    observed = _avss_quiet(v, k_counts / n, clamp)
    observed_set = _lowest(observed, k)
    rng = np.random.default_rng(seed)
    rates = rng.gamma(k_counts + 0.5, 1.0, size=(n_draws, m))
    counts = rng.poisson(rates).astype(np.float64)
    zero_hits = np.zeros(m)
    pruned_hits = np.zeros(m)
    any_clamped = decides_set = decides_rank = same_set = 0
    n_clamped = 0
    taus, jaccards = [], []
    for row in counts:
        a = _avss_quiet(v, row / n, clamp)
        zeros = row == 0
        chosen = _lowest(a, k)
        for i in chosen:
            pruned_hits[i] += 1
        zero_hits += zeros
        n_clamped += int(zeros.sum())
        same_set += chosen == observed_set
        jaccards.append(len(chosen & observed_set) / len(chosen | observed_set) if k else 1.0)
        taus.append(float(kendalltau(a, observed).statistic))
        if zeros.any():
            any_clamped += 1
            raised = row.copy()
            raised[zeros] = 1.0
            b = _avss_quiet(v, raised / n, clamp)
            decides_set += _lowest(b, k) != chosen
            decides_rank += bool((_ranks(b) != _ranks(a)).any())
    per_layer = pd.DataFrame(
        {
            "layer": table.index.to_numpy(),
            "count": k_counts.astype(np.int64),
            "p_zero": zero_hits / n_draws,
            "p_pruned": pruned_hits / n_draws,
            "pruned_observed": [i in observed_set for i in range(m)],
        }
    )
    t = np.asarray(taus)
    summary = {
        "n_draws": n_draws,
        "k": k,
        "n_layers": m,
        "seed": seed,
        "p_any_clamped": any_clamped / n_draws,
        "mean_clamped": n_clamped / n_draws,
        "p_set_observed": same_set / n_draws,
        "p_clamp_decides": decides_set / n_draws,
        "p_clamp_decides_rank": decides_rank / n_draws,
        "kendall_median": float(np.median(t)),
        "kendall_q05": float(np.quantile(t, 0.05)),
        "mean_jaccard": float(np.mean(jaccards)),
    }
    return per_layer, summary


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
    record.finish({"table": table, "summary": summaries}, total_s=time.perf_counter() - t0)
    save_record(record, out / "record.json")
    return results


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
