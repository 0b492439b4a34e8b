"""avsslib.bootstrap: one resampling scheme and one NaN policy for retention and mitigation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avsslib.bootstrap import bootstrap_ci, percentile_interval, resample_indices
from avsslib.errors import ConfigError
from avsslib.evaluate import EvalResult, MetricScores, TaskResult, retention
from avsslib.mitigate import paired_change


def _result(values) -> EvalResult:
    values = np.asarray(values, dtype=float)
    ids = tuple(f"q{i}" for i in range(len(values)))
    return EvalResult(
        {
            "t": TaskResult(
                "t", ids, {"acc": MetricScores(float(values.mean()), "mean", True, values)}, {}, 0.0
            )
        }
    )


def test_nan_policy():
    finite = np.arange(101, dtype=float)
    assert percentile_interval(finite, 0.1) == pytest.approx((5.0, 95.0))
    assert all(math.isnan(b) for b in percentile_interval(np.r_[finite, np.nan], 0.1))
    # infinite replicates are ordered: order statistics, inf only past alpha/2 of them
    few_inf = np.r_[finite[:99], np.inf]
    low, high = percentile_interval(few_inf, 0.1)
    assert math.isfinite(high) and low == 4.0
    assert percentile_interval(np.full(10, np.inf), 0.05) == (math.inf, math.inf)
    assert percentile_interval(np.r_[np.zeros(5), np.full(5, -np.inf)], 0.05)[0] == -math.inf


def test_resamples_and_checks():
    idx = resample_indices(5, 3, seed=1)
    assert idx.shape == (3, 5) and (idx == resample_indices(5, 3, seed=1)).all()
    assert bootstrap_ci(np.ones(7)) == (1.0, 1.0)
    with pytest.raises(ConfigError, match="0 examples"):
        bootstrap_ci([])
    with pytest.raises(ConfigError, match="alpha"):
        bootstrap_ci([1.0], alpha=1.5)


def test_retention_and_paired_change_share_the_policy():
    """The same resamples and the same rule: a 0/0 resample makes both intervals NaN, an x/0
    resample makes neither NaN."""
    zeros, one_hit = np.zeros(40), np.eye(40)[0]
    # ratio after/before over resamples: 0/0 where the hit is not drawn
    r = retention(_result(one_hit), _result(one_hit), n_boot=200).iloc[0]
    c = paired_change(_result(one_hit), _result(one_hit), n_boot=200).iloc[0]
    assert math.isnan(r.ci_low) and math.isnan(c.rel_ci_low)
    # x/0 in every resample: infinite, not undefined
    r = retention(_result(zeros), _result(np.ones(40)), n_boot=200).iloc[0]
    c = paired_change(_result(zeros), _result(np.ones(40)), n_boot=200).iloc[0]
    assert (r.ci_low, r.ci_high) == (math.inf, math.inf)
    assert (c.rel_ci_low, c.rel_ci_high) == (math.inf, math.inf)
