"""Scale-aware statistics and scores: hand-computed values on a tiny tensor, merge, state format."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from avsslib.errors import ConfigError
from avsslib.scores import REGISTRY, avss_values, score
from avsslib.stats import DEFAULT_REL_GRID, LayerStats

NEW_SCORES = ["var_ratio", "update_variance"] + [
    f"{kind}_{r:g}"
    for r in DEFAULT_REL_GRID
    for kind in ("avss_rel", "scalefree_avss", "update_avss")
]


class _Block(nn.Module):
    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, hidden_states: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids]


class _Model(nn.Module):
    """Fake Llama-shaped model: the embedding is ``tables[0]``, block ``k`` outputs
    ``tables[k + 1][ids]`` whatever its input (so inputs and outputs are known exactly)."""

    def __init__(self, tables: list[torch.Tensor]) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="llama", num_hidden_layers=len(tables) - 1)
        self.embed = nn.Embedding.from_pretrained(tables[0])
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(_Block(t) for t in tables[1:])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        h = self.embed(input_ids)
        for layer in self.model.layers:
            h = layer(h, input_ids=input_ids)
        return h


# token 0 and token 1; hidden size 4
H_IN = [[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]]  # RMS 1 and 1
H0 = [[1.0, 1.0, 1.0, 5.0], [2.0, 0.05, 0.0, -2.0]]  # layer 0 output
H1 = [[3.0, 1.0, 1.0, 5.0], [2.0, 0.05, 0.0, -2.0]]  # layer 1 output (input: H0)


def _hand_model() -> _Model:
    return _Model([torch.tensor(t) for t in (H_IN, H0, H1)])


def _batch() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([[0, 1]]), "attention_mask": torch.tensor([[1, 1]])}


def test_hand_computed_statistics_layer0():
    stats = LayerStats().fit(_hand_model(), [_batch()], progress=False)
    # relative sparsity: token 0 has RMS sqrt(28/4) = 2.6458 (no element under 0.1 RMS);
    # token 1 has RMS sqrt(8.0025/4) = 1.4144: 0.05 and 0 are under 0.1 RMS, only 0 under 0.01 RMS
    assert stats.get_rel_sparsity(0.1)[0] == pytest.approx(2 / 8)
    assert stats.get_rel_sparsity(0.01)[0] == pytest.approx(1 / 8)
    assert stats.get_rel_sparsity(0.001)[0] == pytest.approx(1 / 8)
    # update u = (H0 - H_IN) / rms(H_IN) = [0, 0, 0, 4] and [0, 0.05, 0, -2]
    assert stats.get_update_sparsity(0.1)[0] == pytest.approx(6 / 8)
    assert stats.get_update_sparsity(0.01)[0] == pytest.approx(5 / 8)
    mean_u, ms_u = 2.05 / 8, (16 + 0.0025 + 4) / 8
    assert stats.update_variance_[0] == pytest.approx(ms_u - mean_u**2, rel=1e-6)
    assert stats.update_rms_[0] == pytest.approx(math.sqrt(ms_u), rel=1e-6)
    # var_ratio: pooled token mean (1.5, 0.525, 0.5, 1.5), unbiased variance over d = 4,
    # over the mean square of the 8 elements (36.0025 / 8)
    pooled = np.array([1.5, 0.525, 0.5, 1.5])
    expected = (((pooled - pooled.mean()) ** 2).sum() / 3) / (36.0025 / 8)
    assert score("var_ratio", stats)[0] == pytest.approx(expected, rel=1e-6)
    # layer 1: its input is H0 (RMS 2.6458 and 1.4144); u = [2, 0, 0, 0] / 2.6458 and 0
    assert stats.get_update_sparsity(0.1)[1] == pytest.approx(7 / 8)
    assert stats.update_rms_[1] == pytest.approx(math.sqrt((2 / math.sqrt(7)) ** 2 / 8), rel=1e-6)


def test_hand_computed_scores():
    stats = LayerStats().fit(_hand_model(), [_batch()], progress=False)
    v = stats.variance_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # layer 1: token 0 has RMS sqrt(36/4) = 3: no element under 0.3; token 1 as layer 0
        s_rel = np.array([2 / 8, 2 / 8])
        np.testing.assert_allclose(
            score("avss_rel_0.1", stats), (v / v.sum()) / (s_rel / s_rel.sum()), rtol=1e-6
        )
        ratio = v / np.array([36.0025 / 8, 44.0025 / 8])
        np.testing.assert_allclose(score("var_ratio", stats), ratio, rtol=1e-6)
        np.testing.assert_allclose(
            score("scalefree_avss_0.1", stats),
            (ratio / ratio.sum()) / (s_rel / s_rel.sum()),
            rtol=1e-6,
        )
        uv = np.array([2.5003125 - 0.25625**2, (4 / 7) / 8 - (2 / math.sqrt(7) / 8) ** 2])
        np.testing.assert_allclose(score("update_variance", stats), uv, rtol=1e-5)
        su = np.array([6 / 8, 7 / 8])
        np.testing.assert_allclose(
            score("update_avss_0.1", stats), (uv / uv.sum()) / (su / su.sum()), rtol=1e-5
        )


def test_every_new_score_is_registered_and_finite():
    assert set(NEW_SCORES) <= set(REGISTRY)
    rng = torch.Generator().manual_seed(0)
    tables = [torch.randn(10, 8, generator=rng) * (k + 1) for k in range(4)]
    batches = [{"input_ids": torch.randint(0, 10, (3, 6), generator=rng)} for _ in range(2)]
    stats = LayerStats().fit(_Model(tables), batches, progress=False)
    for name in NEW_SCORES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = score(name, stats)
        assert values.shape == (3,) and np.isfinite(values).all(), name


def test_numpy_reference_on_random_tensor():
    """Relative and update sparsities against a brute-force numpy count."""
    rng = torch.Generator().manual_seed(3)
    tables = [torch.randn(9, 16, generator=rng) * (1 + 2 * k) for k in range(3)]
    ids = torch.randint(0, 9, (2, 5), generator=rng)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    stats = LayerStats().fit(
        _Model(tables), [{"input_ids": ids, "attention_mask": mask}], progress=False
    )
    keep = mask.bool().numpy()
    for k in range(2):
        h_in = tables[k][ids].numpy()[keep].astype(np.float64)
        h = tables[k + 1][ids].numpy()[keep].astype(np.float64)
        rms = np.sqrt((h**2).mean(-1, keepdims=True))
        rms_in = np.sqrt((h_in**2).mean(-1, keepdims=True))
        u = (h - h_in) / rms_in
        for r in DEFAULT_REL_GRID:
            assert stats.get_rel_sparsity(r)[k] == pytest.approx((np.abs(h) < r * rms).mean())
            assert stats.get_update_sparsity(r)[k] == pytest.approx((np.abs(u) < r).mean())
        assert stats.update_variance_[k] == pytest.approx(u.var(), rel=1e-5)


def _random_setup(seed: int = 0):
    rng = torch.Generator().manual_seed(seed)
    tables = [torch.randn(12, 8, generator=rng) * (k + 1) for k in range(5)]
    batches = [
        {
            "input_ids": torch.randint(0, 12, (2, 7), generator=rng),
            "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3]),
        }
        for _ in range(3)
    ]
    return _Model(tables), batches


def test_merge_is_exact_for_every_new_score():
    model, batches = _random_setup()
    one = LayerStats().fit(model, batches, progress=False)
    merged = (
        LayerStats()
        .fit(model, batches[:1], progress=False)
        .merge(LayerStats().fit(model, batches[1:], progress=False))
    )
    np.testing.assert_array_equal(merged.records_, one.records_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in NEW_SCORES:
            np.testing.assert_array_equal(score(name, merged), score(name, one), err_msg=name)
    with pytest.raises(ConfigError, match="accumulation parameters"):
        LayerStats(rel_grid=(0.5,)).merge(one)


def test_state_format_2_round_trip_and_format_1_still_loads():
    model, batches = _random_setup(1)
    stats = LayerStats().fit(model, batches, progress=False)
    state = stats.state_dict()
    assert state["format"] == "avsslib.LayerStats/2" and state["params"]["rel_grid"] == list(
        DEFAULT_REL_GRID
    )
    again = LayerStats.from_state_dict(state)
    np.testing.assert_array_equal(again.to_frame().to_numpy(), stats.to_frame().to_numpy())
    # a state written before the scale-aware statistics (format 1: no rel_grid, no columns)
    old = LayerStats(rel_grid=()).fit(model, batches, progress=False).state_dict()
    old["format"] = "avsslib.LayerStats/1"
    del old["params"]["rel_grid"]
    restored = LayerStats.from_state_dict(old)
    assert restored.rel_grid == ()
    np.testing.assert_array_equal(restored.variance_, stats.variance_)
    with pytest.raises(ConfigError, match="rel_grid"):
        restored.get_rel_sparsity(0.01)
    with pytest.raises(ConfigError, match="not a LayerStats state"):
        LayerStats.from_state_dict({**state, "format": "something/9"})


def test_bad_rel_grid_and_missing_similarity():
    with pytest.raises(ConfigError, match="rel_grid"):
        LayerStats(rel_grid=(0.0,))
    model, batches = _random_setup()
    stats = LayerStats(similarity=False).fit(model, batches, progress=False)
    assert stats.get_rel_sparsity(0.01).shape == (4,)
    with pytest.raises(ConfigError, match="block-update"):
        _ = stats.update_variance_
    with pytest.raises(ConfigError):
        score("update_avss_0.01", stats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isfinite(avss_values(stats.variance_, stats.get_rel_sparsity(0.1))).all()
