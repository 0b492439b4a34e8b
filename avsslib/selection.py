"""Which layers to prune, given per-layer importance.

Three rules, all returning the **ascending list of layer indices to prune**:

* ``"count"`` (default): the ``k = round(fraction * M)`` layers with the lowest importance.
  ``round`` is Python's, which rounds half to even: ``0.25 * 6 = 1.5`` gives 2,
  ``0.25 * 10 = 2.5`` gives 2, ``0.25 * 32 = 8`` gives 8. Ties are broken by layer index (a
  stable sort: the earlier layer is pruned first). Works with any score.
* ``"mass"``: sort ascending, accumulate the normalised importance (NAVSS for AVSS) *in sorted
  order*, prune while the cumulative sum is ``<= fraction``. What the official code's comment
  intends; with heavy-tailed AVSS it can prune far more than ``fraction * M`` layers.
* ``"code_bug"``: the literal official ``AVSS.py``: cumulative NAVSS in *layer order*, then
  prune every layer whose cumulative value is ``<= fraction``; this is a depth-order prefix
  whatever the scores. For ablations only.

``"mass"`` and ``"code_bug"`` treat the importance as a mass (they normalise it to sum 1), which
is meaningful for AVSS-type ratio scores only; they refuse negative or non-finite values, and a
``score`` name other than those in ``MASS_SCORES``.

``select_iteratively`` is the iterative variant of the count rule:
remove one layer at a time, recomputing the statistics of the remaining layers each time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from avsslib.errors import ConfigError

__all__ = ["MASS_SCORES", "RULES", "select_all", "select_iteratively", "select_layers"]

RULES: tuple[str, ...] = ("count", "mass", "code_bug")
MASS_SCORES: tuple[str, ...] = ("avss", "eavss")
"""Scores whose normalised values are a mass (NAVSS), so that ``mass``/``code_bug`` apply."""


def select_layers(
    importance: Sequence[float] | np.ndarray,
    fraction: float = 0.25,
    rule: str = "count",
    *,
    score: str | None = None,
) -> list[int]:
    """Indices of the layers to prune, ascending.

    Args:
        importance: per-layer importance, shape ``(M,)``, higher = keep (``avsslib.scores``).
        fraction: in ``(0, 1)``: the share of layers (``count``) or of the importance mass
            (``mass``, ``code_bug``) to prune.
        rule: ``"count"``, ``"mass"`` or ``"code_bug"`` (module docstring).
        score: optional name of the score ``importance`` came from; with ``mass`` or
            ``code_bug`` it must be one of ``MASS_SCORES``.

    Raises ``ConfigError`` for a fraction outside ``(0, 1)``, an unknown rule, a count rule
    that would prune every layer, or a mass rule on a score that is not a mass.
    """
    values = np.asarray(importance, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ConfigError(f"importance must be a non-empty 1-D array, got shape {values.shape}.")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction must lie strictly between 0 and 1, got {fraction}.")
    if rule not in RULES:
        raise ConfigError(f"unknown selection rule {rule!r}; choose one of {RULES}.")
    if np.isnan(values).any():
        raise ConfigError(
            f"importance is NaN at layers {np.flatnonzero(np.isnan(values)).tolist()}: the "
            "score could not be computed there (no counted token, or a float16 overflow). "
            "Recompute the scores in float32 on non-empty batches."
        )
    order = np.argsort(values, kind="stable")  # least important first

    if rule == "count":
        k = round(fraction * values.size)  # half to even (documented)
        if k >= values.size:
            raise ConfigError(
                f"fraction={fraction} of {values.size} layers rounds to {k}: that prunes every "
                "layer. Use a smaller fraction."
            )
        return sorted(int(i) for i in order[:k])

    if score is not None and score not in MASS_SCORES:
        raise ConfigError(
            f"rule {rule!r} normalises the scores into a mass (NAVSS); it is defined for "
            f"{MASS_SCORES} only, not {score!r}. Use rule='count'."
        )
    if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise ConfigError(
            f"rule {rule!r} needs finite, non-negative importance with a positive sum "
            "(AVSS-type scores); use rule='count' for this score."
        )
    mass = values / values.sum()  # NAVSS
    if rule == "mass":
        return sorted(int(i) for i in order[np.cumsum(mass[order]) <= fraction])
    return [int(i) for i in np.flatnonzero(np.cumsum(mass) <= fraction)]  # code_bug


def select_all(
    importance: Sequence[float] | np.ndarray, fraction: float = 0.25, *, score: str | None = None
) -> dict[str, list[int]]:
    """The layers every rule would prune.

    Rules that do not apply to ``score`` (``mass``/``code_bug`` for a non-mass score) are left
    out of the result."""
    out: dict[str, list[int]] = {}
    for rule in RULES:
        if rule != "count" and score is not None and score not in MASS_SCORES:
            continue
        out[rule] = select_layers(importance, fraction, rule, score=score)
    return out


def select_iteratively(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    fraction: float = 0.25,
    *,
    stats_params: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[int]:
    """Iterative AVSS pruning: ``round(fraction * M)`` steps, each skipping the layers removed
    so far (``avsslib.prune.skip_layers``), refitting ``LayerStats(**stats_params)`` on
    ``batches`` and removing the remaining layer with the lowest AVSS (ties: lowest index).

    Runs ``k`` full statistics passes; returns the removed original indices, ascending. The
    model is left unchanged. With ``k = 1`` it equals the one-shot count rule.
    """
    from tqdm.auto import tqdm

    from avsslib.arch import blocks
    from avsslib.prune import skip_layers
    from avsslib.scores import avss_values
    from avsslib.stats import LayerStats

    batches = list(batches)
    n = len(blocks(model))
    k = len(select_layers(np.zeros(n), fraction, "count"))  # validates, same rounding
    removed: list[int] = []
    for _ in tqdm(range(k), desc="iterative AVSS", disable=not progress):
        with skip_layers(model, removed):
            stats = LayerStats(**(stats_params or {})).fit(model, batches, progress=False)
        keep = [i for i in range(n) if i not in removed]
        importance = avss_values(stats.variance_[keep], stats.sparsity_[keep])
        removed.append(keep[int(np.argmin(importance))])
    return sorted(removed)
