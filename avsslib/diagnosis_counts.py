"""Near-zero counts as counting noise: the Poisson intervals of the counts, what the sparsity
clamp does to the AVSS ranking, and how stable the ranking is under counting noise alone.

Part of the diagnosis of :mod:`avsslib.diagnosis` (which re-exports every public name here and
documents each); reads a per-layer table of a pruning study, runs no model, writes no file.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from avsslib.errors import ConfigError
from avsslib.scores import SPARSITY_CLAMP, avss_values

__all__ = ["clamp_effect", "poisson_interval", "poisson_rank_stability", "sparsity_table"]

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
    tally = _tally_draws(v, n, counts, observed, k, clamp)
    per_layer = pd.DataFrame(
        {
            "layer": table.index.to_numpy(),
            "count": k_counts.astype(np.int64),
            "p_zero": tally["zero_hits"] / n_draws,
            "p_pruned": tally["pruned_hits"] / n_draws,
            "pruned_observed": [i in observed_set for i in range(m)],
        }
    )
    t = np.asarray(tally["taus"])
    summary = {
        "n_draws": n_draws,
        "k": k,
        "n_layers": m,
        "seed": seed,
        "p_any_clamped": tally["any_clamped"] / n_draws,
        "mean_clamped": tally["n_clamped"] / n_draws,
        "p_set_observed": tally["same_set"] / n_draws,
        "p_clamp_decides": tally["decides_set"] / n_draws,
        "p_clamp_decides_rank": tally["decides_rank"] / n_draws,
        "kendall_median": float(np.median(t)),
        "kendall_q05": float(np.quantile(t, 0.05)),
        "mean_jaccard": float(np.mean(tally["jaccards"])),
    }
    return per_layer, summary


def _tally_draws(
    v: np.ndarray,
    n: np.ndarray,
    counts: np.ndarray,
    observed: np.ndarray,
    k: int,
    clamp: float,
) -> dict[str, Any]:
    """The tallies of :func:`poisson_rank_stability` over the replicate ``counts`` (one row per
    draw): per layer how often it is clamped (``zero_hits``) and pruned (``pruned_hits``); over
    draws ``any_clamped``, ``n_clamped``, ``same_set``, ``decides_set``, ``decides_rank`` and
    the per-draw ``taus`` and ``jaccards``."""
    from scipy.stats import kendalltau

    m = len(v)
    observed_set = _lowest(observed, k)
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
    return {
        "zero_hits": zero_hits,
        "pruned_hits": pruned_hits,
        "any_clamped": any_clamped,
        "n_clamped": n_clamped,
        "same_set": same_set,
        "decides_set": decides_set,
        "decides_rank": decides_rank,
        "taus": taus,
        "jaccards": jaccards,
    }
