"""avsslib.diagnosis: Poisson intervals, depth correlations, clamp effect, rank stability."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from avsslib.diagnosis import (
    clamp_effect,
    depth_correlations,
    diagnose,
    log_decomposition,
    poisson_interval,
    poisson_rank_stability,
    run_diagnosis,
    sparsity_table,
)
from avsslib.errors import ConfigError
from avsslib.scores import avss_values


def _table(variance, counts, n=1_000_000, rms=None) -> pd.DataFrame:
    v = np.asarray(variance, dtype=float)
    k = np.asarray(counts, dtype=float)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = avss_values(v, k / n)
    t = pd.DataFrame(
        {
            "variance": v,
            "sparsity": k / n,
            "near_zero_count": k,
            "element_count": float(n),
            "rms": np.sqrt(v) if rms is None else rms,
            "avss": a,
            "near_zero_count@1e-05": k,
            "near_zero_count@0.01": k * 100,
        }
    )
    t.index.name = "layer"
    return t


def test_poisson_interval_known_values():
    low, high = poisson_interval([0, 1, 10])
    # Garwood intervals (standard tables): 0 -> [0, 3.689], 1 -> [0.0253, 5.572], 10 -> [4.795, 18.39]
    np.testing.assert_allclose(low, [0.0, 0.02532, 4.7954], rtol=1e-3)
    np.testing.assert_allclose(high, [3.6889, 5.5716, 18.390], rtol=1e-3)
    with pytest.raises(ConfigError):
        poisson_interval([-1])
    with pytest.raises(ConfigError):
        poisson_interval([1.5])


def test_poisson_interval_coverage():
    rng = np.random.default_rng(0)
    mu = 4.0
    k = rng.poisson(mu, size=4000)
    low, high = poisson_interval(k)
    coverage = np.mean((low <= mu) & (mu <= high))
    assert coverage >= 0.95  # exact intervals are conservative


def test_depth_correlations_monotone():
    t = _table([1, 2, 4, 8, 16], [10, 8, 6, 4, 2])
    c = depth_correlations(t)
    row = c[(c.a == "variance") & (c.b == "depth")].iloc[0]
    assert row.spearman == pytest.approx(1.0)
    row = c[(c.a == "sparsity") & (c.b == "depth")].iloc[0]
    assert row.spearman == pytest.approx(-1.0)
    assert {"avss", "variance", "rms", "sparsity"} <= set(c.a)


def test_log_decomposition_variance_explains_all_when_sparsity_constant():
    t = _table([1, 5, 2, 9, 3, 7, 4, 8], [5] * 8)
    d = log_decomposition(t, 0.25)
    assert d["r2_log_variance"] == pytest.approx(1.0)
    assert d["k"] == 2 and d["avss_pruned"] == [0, 2]
    assert d["overlap_variance"] == 2 and d["overlap_depth"] == 1


def test_sparsity_table_rows_and_zero_flag():
    t = _table([1, 2, 3], [0, 4, 9])
    s = sparsity_table(t)
    assert len(s) == 6 and set(s.eps) == {1e-5, 1e-2}
    first = s[s.eps == 1e-5].set_index("layer")
    assert bool(first.loc[0, "zero"]) and first.loc[0, "count_high"] == pytest.approx(
        3.6889, rel=1e-3
    )
    assert first.loc[2, "rate"] == pytest.approx(9e-6)


def test_clamp_effect_hand_case():
    # layer 3 has no near-zero element and a small variance: clamped it ranks on top (kept);
    # with half a count its AVSS is small and it falls into the pruned set
    t = _table([10.0, 10.0, 10.0, 0.001], [5, 5, 5, 0])
    c = clamp_effect(t, fraction=0.25)
    assert list(c.layer) == [3]
    row = c.iloc[0]
    assert row.rank_clamped == 3 and row.rank_half == 0 and row.rank_upper == 0
    assert not row.pruned_clamped and row.pruned_half and row.set_changed_half
    # no clamped layer: empty frame with the documented columns
    assert clamp_effect(_table([1, 2, 3, 4], [1, 2, 3, 4])).empty


def test_poisson_rank_stability_large_counts_are_stable():
    v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    stable = _table(v, [10_000] * 8)
    per, summ = poisson_rank_stability(stable, 0.25, n_draws=100, seed=1)
    assert summ["p_set_observed"] == 1.0 and summ["p_any_clamped"] == 0.0
    assert per.p_pruned.tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    noisy = _table(
        np.linspace(5.0, 5.1, 8), [2] * 8
    )  # similar variance, tiny counts: noise decides
    _, summ2 = poisson_rank_stability(noisy, 0.25, n_draws=200, seed=1)
    assert summ2["p_any_clamped"] > 0.5 and summ2["p_set_observed"] < 0.5
    # same seed, same numbers
    assert poisson_rank_stability(noisy, 0.25, n_draws=200, seed=1)[1] == summ2


def test_bad_tables_raise():
    with pytest.raises(ConfigError, match="lacks the column"):
        diagnose(pd.DataFrame({"variance": [1, 2, 3]}))
    with pytest.raises(ConfigError, match="fraction"):
        log_decomposition(_table([1, 2, 3], [1, 2, 3]), 1.0)


def test_run_diagnosis_writes_files(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    _table([1, 3, 2, 5, 4, 6], [4, 3, 0, 2, 1, 2]).to_csv(study / "layer_stats.csv")
    out = tmp_path / "diag"
    run_diagnosis(study, out, n_draws=50)
    for name in ("correlations", "sparsity", "clamp", "stability"):
        frame = pd.read_csv(out / f"{name}.csv")
        assert set(frame["mode"]) <= {"fixed"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fixed"]["clamped_layers"] == [2]
    assert (out / "record.json").is_file() and (out / "record.md").is_file()
    with pytest.raises(ConfigError, match="no such file"):
        run_diagnosis(tmp_path / "nope", out)


def test_cli_diagnose_on_committed_study(tmp_path, capsys):
    from pathlib import Path

    from avsslib.cli import main

    study = Path(__file__).resolve().parents[1] / "results" / "smollm2-135m" / "avss"
    if not (study / "layer_stats.csv").is_file():
        pytest.skip("committed study not present")
    assert (
        main(["diagnose", "--study", str(study), "--out", str(tmp_path / "d"), "--n-draws", "20"])
        == 0
    )
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert set(summary) >= {"fixed", "faithful"}
    assert summary["fixed"]["near_zero_max"] > summary["fixed"]["near_zero_min"]
    assert main(["diagnose", "--study", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
