"""Percentile bootstrap intervals over examples, paired where two runs scored the same ones.

One resampling scheme and one NaN policy for every interval of the library (retention of a
pruned model, change after mitigation, recovery after healing, differences between folds):

* Resamples are rows of example indices drawn with replacement by
  ``numpy.random.default_rng(seed).integers(0, n, size=(n_boot, n))``
  (:func:`resample_indices`); a *paired* interval applies the same row to both runs.
* **NaN policy** (:func:`percentile_interval`): the interval is ``(nan, nan)`` when any
  replicate is NaN (an undefined statistic, e.g. a ratio 0/0 in some resample): a percentile of
  a set with holes in it would be an interval for another, unnamed statistic. Infinite
  replicates (``x/0`` with ``x != 0``) are values like any other: they are ordered, and the
  bounds are then order statistics (``method="lower"``/``"higher"``), not interpolations, so a
  bound is ``inf`` only when more than ``alpha/2`` of the replicates are. Without any
  non-finite replicate the bounds are ``numpy.quantile``'s linear interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from avsslib.errors import ConfigError


def check_bootstrap(n: int, n_boot: int, alpha: float) -> None:
    """``ConfigError`` unless there is at least one example, one resample and ``0 < alpha < 1``."""
    if n == 0:
        raise ConfigError("bootstrap over 0 examples: evaluate at least one example.")
    if n_boot < 1:
        raise ConfigError(f"n_boot = {n_boot}: the number of bootstrap resamples must be >= 1.")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha = {alpha}: must lie in (0, 1), e.g. 0.05 for a 95% interval.")


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n)`` example indices drawn with replacement, reproducible from ``seed``."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    """The ``1 - alpha`` percentile interval of bootstrap replicates ``boot``, with the NaN
    policy of the module docstring: NaN if any replicate is NaN; infinite replicates ordered
    (the bounds are then order statistics)."""
    boot = np.asarray(boot, dtype=np.float64)
    if np.isnan(boot).any():
        return math.nan, math.nan
    if np.isinf(boot).any():
        return (
            float(np.quantile(boot, alpha / 2, method="lower")),
            float(np.quantile(boot, 1 - alpha / 2, method="higher")),
        )
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` at level ``1 - alpha`` of ``stat(values)``.

    ``values`` has shape (n,) or (n, k); rows (examples) are resampled with replacement
    ``n_boot`` times (:func:`resample_indices`) and ``stat`` maps each resample to a number
    (e.g. ``avsslib.evaluate.statistic("perplexity")`` for (NLL, count) rows). Constant values
    give a zero-width interval.
    """
    values = np.asarray(values, dtype=np.float64)
    check_bootstrap(len(values), n_boot, alpha)
    boot = np.array([stat(values[i]) for i in resample_indices(len(values), n_boot, seed)])
    return percentile_interval(boot, alpha)


def paired_replicates(
    x: np.ndarray, y: np.ndarray, stat: Callable[[np.ndarray], float], idx: np.ndarray
) -> np.ndarray:
    """``(n_boot, 2)``: ``stat`` of ``x`` and of ``y`` on each row of indices ``idx`` (the same
    examples for both runs; ``x[i]`` and ``y[i]`` belong to the same example)."""
    return np.array([(stat(x[i]), stat(y[i])) for i in idx], dtype=np.float64)


__all__ = [
    "bootstrap_ci",
    "check_bootstrap",
    "paired_replicates",
    "percentile_interval",
    "resample_indices",
]
