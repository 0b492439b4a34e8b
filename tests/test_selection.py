"""Layer selection rules, checked against the official AVSS.py logic."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from avsslib.errors import ConfigError
from avsslib.scores import avss_values
from avsslib.selection import select_all, select_layers


def official_avss_py(variance: np.ndarray, sparsity: np.ndarray, threshold: float = 0.25):
    """The official AVSS.py, step by step: two hand-made CSV files, V / S,
    normalise, cumulative sum in file (layer) order, sort by AVSS, keep Cumulative <= 0.25."""
    a_csv = "Layer,Variance\n" + "".join(f"{i},{float(v)!r}\n" for i, v in enumerate(variance))
    b_csv = "Layer,Sparsity\n" + "".join(f"{i},{float(s)!r}\n" for i, s in enumerate(sparsity))
    a = pd.read_csv(io.StringIO(a_csv))
    b = pd.read_csv(io.StringIO(b_csv))
    df = pd.merge(a, b, on="Layer")
    df["AVSS"] = df["Variance"] / df["Sparsity"]
    df["Normalized_AVSS"] = df["AVSS"] / df["AVSS"].sum()
    df["Cumulative_AVSS"] = df["Normalized_AVSS"].cumsum()
    df_sorted = df.sort_values(by="AVSS")
    layers_to_prune = df_sorted[df_sorted["Cumulative_AVSS"] <= threshold]["Layer"]
    return sorted(int(x) for x in layers_to_prune)


# A 12-layer example: AVSS = V / S is [1, 8, 1, 10, 3, 2, 4, 5, 2.5, 6, 3.5, 0.5] (sum 46.5).
HAND_AVSS = np.array([1, 8, 1, 10, 3, 2, 4, 5, 2.5, 6, 3.5, 0.5])
HAND_S = np.array([2e-5, 1e-5, 4e-5, 1e-5, 3e-5, 2e-5, 5e-5, 1e-5, 2e-5, 3e-5, 1e-5, 6e-5])
HAND_V = HAND_AVSS * HAND_S


def test_hand_example_all_three_rules():
    importance = avss_values(HAND_V, HAND_S)
    # count: round(0.25 * 12) = 3 lowest AVSS: 0.5 (layer 11), 1 (layer 0), 1 (layer 2)
    assert select_layers(importance, 0.25, "count") == [0, 2, 11]
    # code_bug: layer-order prefix 1 + 8 + 1 = 10 <= 0.25 * 46.5 = 11.625; adding 10 exceeds.
    # Layer 1 has the second-highest AVSS and is pruned anyway.
    assert select_layers(importance, 0.25, "code_bug") == [0, 1, 2]
    assert official_avss_py(HAND_V, HAND_S) == [0, 1, 2]
    # mass: sorted 0.5, 1, 1, 2, 2.5, 3 -> cumulative 10 <= 11.625; the next (3.5) exceeds
    assert select_layers(importance, 0.25, "mass") == [0, 2, 4, 5, 8, 11]
    assert select_all(importance, 0.25) == {
        "count": [0, 2, 11],
        "mass": [0, 2, 4, 5, 8, 11],
        "code_bug": [0, 1, 2],
    }


@pytest.mark.parametrize("seed", range(20))
def test_code_bug_equals_official_avss_py(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 40))
    variance = rng.lognormal(0.0, 1.0, n)
    sparsity = rng.uniform(1e-6, 1e-4, n)
    threshold = float(rng.choice([0.1, 0.25, 0.5]))
    chosen = select_layers(avss_values(variance, sparsity), threshold, "code_bug")
    assert chosen == official_avss_py(variance, sparsity, threshold)
    # the raw V / S gives the same selection as NAV / NAS
    assert select_layers(variance / sparsity, threshold, "code_bug") == chosen


def test_count_rounding_is_half_to_even():
    assert len(select_layers(np.arange(6.0), 0.25)) == 2  # 1.5 -> 2 (DistilBERT)
    assert len(select_layers(np.arange(10.0), 0.25)) == 2  # 2.5 -> 2
    assert len(select_layers(np.arange(14.0), 0.25)) == 4  # 3.5 -> 4
    assert len(select_layers(np.arange(32.0), 0.25)) == 8  # StableLM-3B
    assert select_layers(np.arange(3.0), 0.1) == []  # 0.3 -> 0: nothing to prune


def test_count_picks_lowest_and_breaks_ties_by_index():
    importance = np.array([5.0, 1.0, 3.0, 1.0, 0.5, 9.0])
    assert select_layers(importance, 0.5) == [1, 3, 4]
    assert select_layers(np.ones(8), 0.25) == [0, 1]


def test_invalid_arguments():
    importance = np.arange(1.0, 9.0)
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="fraction"):
            select_layers(importance, fraction)
    with pytest.raises(ConfigError, match="unknown selection rule"):
        select_layers(importance, 0.25, "greedy")
    with pytest.raises(ConfigError, match="every layer"):
        select_layers(np.arange(4.0), 0.9)  # round(3.6) = 4 of 4
    with pytest.raises(ConfigError, match="defined for"):
        select_layers(importance, 0.25, "mass", score="block_influence")
    with pytest.raises(ConfigError, match="non-negative"):
        select_layers(np.array([1.0, -2.0, 3.0]), 0.25, "code_bug")
    with pytest.raises(ConfigError, match="NaN"):
        select_layers(np.array([1.0, np.nan, 3.0]), 0.25)
    assert select_all(importance, 0.25, score="tail") == {"count": [0, 1]}


def test_iterative_selection_on_tiny_llama(tiny_llama):
    import torch

    from avsslib.arch import blocks
    from avsslib.prune import pruned_copy
    from avsslib.selection import select_iteratively
    from avsslib.stats import LayerStats

    ids = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(2))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    params = {"eps": 1e-2}  # tiny random model: count at a visible eps
    one_shot = LayerStats(**params).fit(tiny_llama, batches, progress=False)
    first = select_layers(avss_values(one_shot.variance_, one_shot.sparsity_), 0.25)
    assert (
        select_iteratively(tiny_llama, batches, 0.25, stats_params=params, progress=False) == first
    )  # k = 1
    two = select_iteratively(tiny_llama, batches, 0.5, stats_params=params, progress=False)
    # by hand: prune the first choice, refit, take the lowest AVSS among the remaining layers
    rest = LayerStats(**params).fit(pruned_copy(tiny_llama, first), batches, progress=False)
    remaining = [i for i in range(4) if i not in first]
    second = remaining[int(np.argmin(avss_values(rest.variance_, rest.sparsity_)))]
    assert two == sorted(first + [second]) and len(blocks(tiny_llama)) == 4
