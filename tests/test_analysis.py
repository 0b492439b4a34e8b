"""avsslib.analysis: Gaussian near-zero arithmetic, ranking stability from per-batch records, and
the re-implemented official statistics and AVSS.py table, on synthetic data and a tiny Llama."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from avsslib.analysis import (
    QUANTITIES,
    block_outputs,
    bootstrap_agreement,
    gaussian_near_zero_fraction,
    gaussian_scale,
    half_agreement,
    kendall_tau,
    official_avss_table,
    official_batch_stats,
    split_halves,
    subset_statistics,
)
from avsslib.errors import ConfigError
from avsslib.selection import select_layers
from avsslib.stats import LayerStats

EPS = 1e-2  # tiny_llama's states have unit scale: near-zero counts of a few dozen per layer


@pytest.fixture(scope="module")
def batches() -> list[dict[str, torch.Tensor]]:
    """Six batches of 3 x 12 random tokens, rows right-padded to different lengths."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(6):
        ids = torch.randint(3, 128, (3, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0
        mask[2, 5:] = 0
        out.append({"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask})
    return out


@pytest.fixture(scope="module")
def fitted(tiny_llama, batches) -> LayerStats:
    return LayerStats(eps=EPS, similarity=False).fit(tiny_llama, batches, progress=False)


def test_gaussian_near_zero_fraction_matches_simulation():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 2.0, size=4_000_000)
    observed = np.mean(np.abs(x) < 0.01)  # expected 0.798 * 0.01 / 2 = 0.00399
    predicted = gaussian_near_zero_fraction(2.0, 0.01)
    assert predicted == pytest.approx(np.sqrt(2 / np.pi) * 0.005, rel=1e-12)
    assert observed == pytest.approx(predicted, rel=0.04)  # ~16,000 hits: 0.8% Poisson sd
    np.testing.assert_allclose(gaussian_scale(predicted, 0.01), 2.0, rtol=1e-12)
    assert np.isinf(gaussian_scale(0.0, 1e-5))
    with pytest.raises(ConfigError, match="positive"):
        gaussian_near_zero_fraction([1.0, 0.0], 1e-5)


def test_kendall_tau_known_answers():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [2, 1, 3]) == pytest.approx(1 / 3)  # 2 concordant, 1 not
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("mode", ["code", "flat"])
def test_subset_of_all_batches_equals_the_fit(tiny_llama, batches, mode):
    for faithful in (False, True):
        stats = LayerStats(eps=EPS, similarity=False, faithful=faithful, variance_mode=mode)
        stats.fit(tiny_llama, batches, progress=False)
        table = subset_statistics(stats, np.arange(len(batches)))
        np.testing.assert_allclose(table["variance"], stats.variance_, rtol=1e-12)
        np.testing.assert_allclose(table["sparsity"], stats.sparsity_, rtol=1e-12)
        assert (stats.near_zero_counts_ > 0).all()  # EPS gives real counts here


def test_subset_equals_a_fit_on_those_batches_only(tiny_llama, batches, fitted):
    chosen = [1, 4, 5]
    alone = LayerStats(eps=EPS, similarity=False).fit(
        tiny_llama, [batches[i] for i in chosen], progress=False
    )
    table = subset_statistics(fitted, chosen)
    np.testing.assert_allclose(table["variance"], alone.variance_, rtol=1e-10)
    np.testing.assert_allclose(table["sparsity"], alone.sparsity_, rtol=1e-12)
    np.testing.assert_allclose(
        table["avss"],
        (alone.variance_ / alone.variance_.sum()) / (alone.sparsity_ / alone.sparsity_.sum()),
        rtol=1e-10,
    )
    # a repeated batch weighs twice: the resample [0, 0] is batch 0's values
    np.testing.assert_allclose(
        subset_statistics(fitted, [0, 0])["sparsity"],
        subset_statistics(fitted, [0])["sparsity"],
        rtol=1e-12,
    )


def test_subset_errors(tiny_llama, batches, fitted):
    with pytest.raises(ConfigError, match="0..5"):
        subset_statistics(fitted, [0, 6])
    with pytest.raises(ConfigError, match="0..5"):
        subset_statistics(fitted, [])
    rport = LayerStats(eps=EPS, similarity=False, variance_mode="r_port")
    rport.fit(tiny_llama, batches[:2], progress=False)
    with pytest.raises(ConfigError, match="r_port"):
        subset_statistics(rport, [0])


def test_split_halves_are_disjoint_and_recomputed(fitted):
    halves = split_halves(fitted, seed=3)
    a, b = halves.attrs["batches_a"], halves.attrs["batches_b"]
    assert sorted(a + b) == list(range(6)) and len(a) == len(b) == 3
    np.testing.assert_allclose(halves["avss_b"], subset_statistics(fitted, b)["avss"])
    assert list(halves.columns) == [f"{q}_{h}" for q in QUANTITIES for h in "ab"]
    taus = half_agreement(halves)
    assert list(taus.index) == list(QUANTITIES)
    assert taus["variance"] == pytest.approx(
        kendall_tau(halves["variance_a"], halves["variance_b"])
    )
    with pytest.raises(ConfigError, match="at least 2"):
        split_halves(LayerStats.from_state_dict(_first_batch(fitted)))


def _first_batch(stats: LayerStats) -> dict:
    state = stats.state_dict()
    state["records"] = state["records"][:1]
    return state


def test_bootstrap_agreement_shape_range_and_seed(fitted):
    boot = bootstrap_agreement(fitted, n_boot=15, seed=7)
    assert boot.shape == (15, 3) and list(boot.columns) == list(QUANTITIES)
    finite = boot.to_numpy()[np.isfinite(boot.to_numpy())]
    assert ((finite >= -1) & (finite <= 1)).all()
    pd.testing.assert_frame_equal(boot, bootstrap_agreement(fitted, n_boot=15, seed=7))
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_agreement(fitted, n_boot=0)


def test_official_table_reproduces_the_code_bug_rule():
    rng = np.random.default_rng(5)
    for _ in range(20):
        v, s = rng.uniform(0.5, 2.0, 12), rng.uniform(1e-6, 1e-5, 12)
        data = official_avss_table(v, s)
        np.testing.assert_allclose(data["Cumulative_AVSS"], np.cumsum(v / s) / (v / s).sum())
        ranked = data.sort_values(by="AVSS", ascending=True)
        pruned = sorted(ranked.loc[ranked["Cumulative_AVSS"] <= 0.25, "Layer"])
        assert pruned == select_layers(v / s, 0.25, "code_bug")
        assert pruned == list(range(len(pruned)))  # always a depth-order prefix


def test_official_table_with_a_zero_sparsity_prunes_every_other_layer():
    data = official_avss_table([1.0, 2.0, 3.0, 4.0], [1e-5, 0.0, 2e-5, 1e-5])
    assert np.isinf(data.loc[1, "AVSS"]) and np.isnan(data.loc[1, "Normalized_AVSS"])
    assert (data.loc[[0, 2, 3], "Normalized_AVSS"] == 0).all()
    assert list(data.loc[data["Cumulative_AVSS"] <= 0.25, "Layer"]) == [0, 2, 3]


def test_official_batch_stats_known_answer_and_2d_failure():
    h = torch.tensor(
        [
            [[1.0, 0.0, 3.0], [3.0, 2e-6, 5.0]],  # sample 0: pooled (2, 0, 4)
            [[0.0, 1.0, 1.0], [2.0, 1.0, 3.0]],
        ]
    )  # sample 1: pooled (1, 1, 2)
    variance, sparsity = official_batch_stats(h)
    assert variance == pytest.approx((4.0 + 1 / 3) / 2)  # unbiased vars 4 and 1/3
    assert sparsity == pytest.approx(3 / 12)  # 0.0, 2e-6 and 0.0
    with pytest.raises(IndexError):
        official_batch_stats(h[0])  # output[0] of a bare tensor


def test_block_outputs_and_faithful_mode_match_the_official_formulas(tiny_llama, batches):
    raw = block_outputs(tiny_llama, batches[0], pass_mask=False)
    assert len(raw) == 4 and all(isinstance(o, torch.Tensor) for o in raw)  # transformers 5
    assert raw[0].shape == (3, 12, 32)
    official = np.array([official_batch_stats(o, EPS) for o in raw])
    faithful = LayerStats(eps=EPS, faithful=True, similarity=False)
    faithful.fit(tiny_llama, batches[:1], progress=False)
    np.testing.assert_allclose(faithful.variance_, official[:, 0], rtol=1e-5)
    np.testing.assert_allclose(faithful.sparsity_, official[:, 1], rtol=1e-6)
