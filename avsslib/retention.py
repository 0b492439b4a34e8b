"""Retention of a pruned (or edited) model against the original, task by task, with a paired
bootstrap interval over the examples both runs scored. Writes no files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from avsslib.bootstrap import percentile_interval
from avsslib.errors import ConfigError
from avsslib.eval_results import EvalResult, paired_metrics

__all__ = ["RETENTION_COLUMNS", "retention"]

#: the columns of :func:`retention`'s table, in order
RETENTION_COLUMNS = (
    "task",
    "metric",
    "original",
    "pruned",
    "retention",
    "ci_low",
    "ci_high",
    "n",
    "inverted",
)


def _ratio(original: float, pruned: float, inverted: bool) -> float:
    """``pruned / original`` (``original / pruned`` when ``inverted``: lower is better), in
    float64; a zero denominator gives ``inf`` (``nan`` for 0/0), without a warning."""
    num, den = (original, pruned) if inverted else (pruned, original)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(num) / np.float64(den))


def retention(
    original: EvalResult,
    pruned: EvalResult,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Retention per task and metric, with a paired bootstrap interval.

    Retention is ``pruned / original`` for metrics where higher is better and
    ``original / pruned`` where lower is better (perplexity: ``PPL_orig / PPL_pruned``), so 1.0
    means no loss and higher is better. Both runs must have scored the same examples (same
    ``n`` and ``seed``); each bootstrap resample draws one set of example indices and applies it
    to both runs. Tasks present in only one result are skipped.

    A ratio with a zero denominator is ``inf`` (``nan`` for 0/0); intervals follow the NaN
    policy of :mod:`avsslib.bootstrap` (``nan`` when some resample gives 0/0).

    Returns columns task, metric, original, pruned, retention, ci_low, ci_high, n, inverted.
    """
    common = [t for t in original.tasks if t in pruned.tasks]
    if not common:
        raise ConfigError(
            f"no task in common: original has {sorted(original.tasks)}, pruned has {sorted(pruned.tasks)}; "
            "evaluate both models on the same tasks."
        )
    rows = []
    for name in common:
        o, p = original.tasks[name], pruned.tasks[name]
        if set(o.ids) != set(p.ids) or len(o.ids) != len(p.ids):
            raise ConfigError(
                f"task {name}: the two runs scored different examples ({len(o.ids)} vs {len(p.ids)}); "
                "run both with the same n, seed and tokenizer so the bootstrap can pair them."
            )
        for metric, mo, mp, _, _, pairs in paired_metrics(
            o, p, n_boot=n_boot, seed=seed, alpha=alpha
        ):
            inverted = not mo.higher_is_better
            boot = np.array([_ratio(x, y, inverted) for x, y in pairs])
            low, high = percentile_interval(boot, alpha)
            rows.append(
                dict(
                    task=name,
                    metric=metric,
                    original=mo.value,
                    pruned=mp.value,
                    retention=_ratio(mo.value, mp.value, inverted),
                    ci_low=low,
                    ci_high=high,
                    n=len(o.ids),
                    inverted=inverted,
                )
            )
    return pd.DataFrame(rows, columns=list(RETENTION_COLUMNS))
