"""Diagnostics of AVSS statistics: where near-zero counts come from, how stable the layer
rankings are, and what the official scripts compute.

* :func:`gaussian_near_zero_fraction` and :func:`gaussian_scale`: for a centred Gaussian of
  scale ``sigma``, ``P(|x| < eps) ~ 2 eps p(0) = sqrt(2/pi) eps / sigma`` (``eps << sigma``),
  and the inverse: the scale a Gaussian would need to produce an observed near-zero fraction.
* :func:`subset_statistics`, :func:`split_halves`, :func:`half_agreement` and
  :func:`bootstrap_agreement`: variance, sparsity and AVSS recomputed from a subset (or a
  resample) of the batches a ``LayerStats`` was fitted on, and the Kendall tau between layer
  rankings. No forward pass: everything comes from the per-batch records.
* :func:`official_batch_stats` and :func:`official_avss_table`: the official per-batch
  statistics and ``AVSS.py``'s pandas table, re-implemented operation by operation (bugs
  included) so that the book can show what they do.
* :func:`block_outputs`: the raw output object of every block in one forward pass, as a forward
  hook receives it (a tuple in transformers 4.x, a bare tensor in 5.x for Llama-style blocks).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from avsslib.accumulator import StatsAccumulator
from avsslib.arch import blocks
from avsslib.errors import ConfigError
from avsslib.scores import SparsityClampWarning, avss_values

__all__ = [
    "bootstrap_statistics",
    "QUANTITIES",
    "block_outputs",
    "bootstrap_agreement",
    "gaussian_near_zero_fraction",
    "gaussian_scale",
    "half_agreement",
    "kendall_tau",
    "official_avss_table",
    "official_batch_stats",
    "split_halves",
    "subset_statistics",
]

QUANTITIES: tuple[str, ...] = ("variance", "sparsity", "avss")
"""The per-layer quantities whose rankings the agreement functions compare."""

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # 2 p(0) for a standard normal, about 0.798


# ---------------------------------------------------------------------- Gaussian near-zero
def gaussian_near_zero_fraction(
    scale: Sequence[float] | np.ndarray | float, eps: float
) -> np.ndarray:
    """Fraction of a centred Gaussian ``N(0, scale^2)`` with ``|x| < eps``, to first order.

    ``P(|x| < eps) = erf(eps / (scale sqrt 2)) ~ 2 eps p(0) = sqrt(2/pi) eps / scale``, exact to
    a relative ``(eps/scale)^2 / 6``. ``scale`` per layer (shape ``(M,)``, activation units,
    e.g. ``LayerStats.rms_``); returns the fraction, same shape.
    """
    s = np.asarray(scale, dtype=np.float64)
    if eps <= 0 or (s <= 0).any():
        raise ConfigError(f"eps and scale must be positive, got eps={eps} and scale={s}.")
    return _SQRT_2_OVER_PI * eps / s


def gaussian_scale(fraction: Sequence[float] | np.ndarray | float, eps: float) -> np.ndarray:
    """The scale of the centred Gaussian whose near-zero fraction at ``eps`` is ``fraction``:
    ``sqrt(2/pi) eps / fraction`` (inverse of :func:`gaussian_near_zero_fraction`); ``inf``
    where ``fraction`` is 0. Shape of ``fraction``, activation units."""
    f = np.asarray(fraction, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return _SQRT_2_OVER_PI * eps / f


# ---------------------------------------------------------------------- ranking stability
def kendall_tau(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b between two per-layer vectors (shape ``(M,)``); NaN if one is constant."""
    from scipy.stats import kendalltau

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(kendalltau(x, y).statistic)


def subset_statistics(stats: StatsAccumulator, batches: Sequence[int] | np.ndarray) -> pd.DataFrame:
    """Variance, sparsity and AVSS per layer from a multiset of the fitted batches.

    Args:
        stats: a fitted ``LayerStats`` (or ``StatsAccumulator``); its ``variance_mode``,
            ``aggregate`` and ``eps`` apply.
        batches: indices into the batches it was fitted on (repeats allowed: a bootstrap).

    Returns a DataFrame indexed by ``layer`` with columns ``variance``, ``sparsity`` and
    ``avss`` (sparsities clamped as in ``avss_values``, silently: resamples often have layers
    with no near-zero value). With all batches once, the values equal ``stats.variance_`` and
    ``stats.sparsity_``. ``aggregate="batch"`` averages the chosen per-batch values; pooled
    statistics add the chosen batches' sums, which works for the ``code`` and ``flat``
    variances but not for the pooled ``r_port`` variance (``ConfigError`` unless the indices
    are every batch once). The subset is ``stats.subset(batches)``.
    """
    chosen = stats.subset(batches)  # ConfigError for bad indices
    variance, sparsity = chosen.variance_, chosen.sparsity_  # ConfigError: pooled r_port
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparsityClampWarning)
        avss = avss_values(variance, sparsity)
    frame = pd.DataFrame({"variance": variance, "sparsity": sparsity, "avss": avss})
    frame.index.name = "layer"
    return frame


def split_halves(stats: StatsAccumulator, seed: int = 0) -> pd.DataFrame:
    """Variance, sparsity and AVSS per layer on two disjoint random halves of the batches.

    The batches are shuffled with ``numpy.random.default_rng(seed)`` and cut in two (the first
    half gets the extra batch of an odd count). Returns a DataFrame indexed by ``layer`` with
    columns ``<quantity>_a`` and ``<quantity>_b`` for each of ``QUANTITIES``; the batch indices
    are in ``attrs["batches_a"]`` and ``attrs["batches_b"]``. Needs at least two batches.
    """
    n = stats.n_batches_
    if n < 2:
        raise ConfigError(f"split_halves needs at least 2 fitted batches, got {n}.")
    order = np.random.default_rng(seed).permutation(n)
    half_a, half_b = np.sort(order[: (n + 1) // 2]), np.sort(order[(n + 1) // 2 :])
    a, b = subset_statistics(stats, half_a), subset_statistics(stats, half_b)
    frame = pd.concat([a.add_suffix("_a"), b.add_suffix("_b")], axis=1)
    frame = frame[[f"{q}_{h}" for q in QUANTITIES for h in "ab"]]
    frame.attrs.update(batches_a=half_a.tolist(), batches_b=half_b.tolist())
    return frame


def half_agreement(halves: pd.DataFrame) -> pd.Series:
    """Kendall tau between the two halves' layer rankings, one value per quantity (index:
    ``QUANTITIES``), from a :func:`split_halves` table."""
    return pd.Series(
        {q: kendall_tau(halves[f"{q}_a"], halves[f"{q}_b"]) for q in QUANTITIES},
        name="kendall_tau",
    )


def bootstrap_agreement(stats: StatsAccumulator, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Kendall tau between each bootstrap resample's layer ranking and the full data's.

    Each replicate draws ``n_batches_`` batches with replacement
    (``numpy.random.default_rng(seed)``) and recomputes the statistics with
    :func:`subset_statistics`; batches, not samples, are the resampling unit, because the
    records are per batch. Returns a DataFrame with one row per replicate and one column per
    quantity of ``QUANTITIES``.
    """
    if n_boot < 1:
        raise ConfigError(f"n_boot = {n_boot}: the number of bootstrap resamples must be >= 1.")
    n = stats.n_batches_
    full = subset_statistics(stats, np.arange(n))
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_boot):
        sample = subset_statistics(stats, rng.integers(0, n, size=n))
        rows.append({q: kendall_tau(full[q], sample[q]) for q in QUANTITIES})
    frame = pd.DataFrame(rows, columns=list(QUANTITIES))
    frame.index.name = "replicate"
    return frame


# ---------------------------------------------------------------------- the official scripts
def official_batch_stats(h: torch.Tensor, eps: float = 1e-5) -> tuple[float, float]:
    """The official scripts' per-batch variance and sparsity of one block output (§3.3).

    ``h`` should be ``(B, T, d)``: variance = mean over samples of the unbiased variance over
    ``d`` of the sequence mean (pad positions included); sparsity = fraction of all elements
    with ``|h| < eps``. The operations and their order are the scripts' own
    (``mean(dim=1).var(dim=1)`` first), so a 2-D tensor (what ``output[0]`` is when a block
    returns a bare tensor) fails the same way: ``IndexError`` in the variance. Returns
    ``(variance, sparsity)`` as floats.
    """
    variance = h.mean(dim=1).var(dim=1).mean().item()
    sparsity = (h.abs() < eps).float().mean().item()
    return variance, sparsity


def official_avss_table(
    variance: Sequence[float] | np.ndarray, sparsity: Sequence[float] | np.ndarray
) -> pd.DataFrame:
    """``AVSS.py``'s table before its sort (§3.6), in layer order, with no guard against zero.

    Columns ``Layer``, ``Variance``, ``Sparsity``, ``AVSS = Variance / Sparsity`` (``inf`` for a
    zero sparsity), ``Normalized_AVSS = AVSS / AVSS.sum()`` (then ``NaN`` for that layer and
    ``0`` for the others) and ``Cumulative_AVSS = Normalized_AVSS.cumsum()``, taken in layer
    order, *before* sorting: the root of the selection bug. ``AVSS.py`` then sorts by ``AVSS``
    and prunes the rows with ``Cumulative_AVSS <= 0.25``.
    """
    data = pd.DataFrame(
        {
            "Layer": np.arange(len(variance)),
            "Variance": np.asarray(variance, dtype=np.float64),
            "Sparsity": np.asarray(sparsity, dtype=np.float64),
        }
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        data["AVSS"] = data["Variance"] / data["Sparsity"]
        data["Normalized_AVSS"] = data["AVSS"] / data["AVSS"].sum()
    data["Cumulative_AVSS"] = data["Normalized_AVSS"].cumsum()
    return data


# ---------------------------------------------------------------------- raw block outputs
def block_outputs(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, pass_mask: bool = True
) -> list[Any]:
    """Every block's raw output in one no-grad forward pass of ``batch``, as a forward hook
    receives it: a tuple whose first item is ``(B, T, d)`` (transformers 4.x), or the bare
    ``(B, T, d)`` tensor (transformers 5.x Llama-style blocks). Index ``k`` is block ``k``.

    ``batch`` holds ``input_ids`` ``(B, T)`` and ``attention_mask``, passed to the model when
    ``pass_mask`` (the official causal-LM scripts pass none). The model's mode is unchanged.
    """
    captured: dict[int, Any] = {}
    handles = [
        block.register_forward_hook(lambda _m, _a, out, k=k: captured.__setitem__(k, out))
        for k, block in enumerate(blocks(model))
    ]
    device = next(model.parameters()).device
    inputs = {"input_ids": batch["input_ids"].to(device)}
    if pass_mask and "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"].to(device)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [captured[k] for k in range(len(captured))]


def bootstrap_statistics(
    stats: StatsAccumulator, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Variance and sparsity per layer (each shape ``(n_layers,)``) of ``stats`` on one bootstrap
    resample of the batches it was fitted on (:func:`subset_statistics`)."""
    frame = subset_statistics(stats, rng.integers(0, stats.n_batches_, size=stats.n_batches_))
    return frame["variance"].to_numpy(), frame["sparsity"].to_numpy()
