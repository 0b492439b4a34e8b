"""StatsAccumulator on records built by hand: derived values against numpy, merge, subset, state.

No model runs here: records come from ``reduce_block_output`` + ``batch_record`` on small
random tensors (two layers, hidden size 5, some padded positions and one all-pad sample), or
are written column by column, and every statistic is recomputed from the tensors with numpy.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from avsslib.accumulator import OLD_STATE_FORMATS, STATE_FORMAT, StatsAccumulator
from avsslib.errors import AvssError, ConfigError
from avsslib.reductions import batch_record, record_columns, reduce_block_output
from avsslib.stats import LayerStats

EPS_GRID = (1e-3, 0.5)
REL_GRID = (0.1, 0.5)
D = 5


def _batch(rng: np.random.Generator, b: int, t: int) -> tuple[np.ndarray, ...]:
    """Block inputs and outputs ``(2, b, t, D)`` float32 and a mask ``(b, t)`` with pads."""
    h_in = rng.normal(size=(2, b, t, D)).astype(np.float32)
    h = (h_in + rng.normal(scale=0.4, size=h_in.shape)).astype(np.float32)
    h[:, 0, 0, :2] = 0.0  # exact zeros: near-zero counts at every eps
    w = np.ones((b, t), dtype=np.float32)
    w[0, -1] = 0.0
    w[-1, :] = 0.0  # a sample with no counted token
    return h_in, h, w


@pytest.fixture(scope="module")
def raw():
    rng = np.random.default_rng(7)
    return [_batch(rng, b, t) for b, t in [(3, 4), (2, 6), (4, 3), (3, 5)]]


def _record(h_in: np.ndarray, h: np.ndarray, w: np.ndarray, *, similarity: bool = True):
    tw = torch.from_numpy(w)
    tok, pooled = reduce_block_output(
        torch.from_numpy(h), tw, EPS_GRID, torch.from_numpy(h_in) if similarity else None, REL_GRID
    )
    return batch_record(tok, pooled, tw, len(EPS_GRID), len(REL_GRID))


def _fed(raw, indices=None, **params) -> StatsAccumulator:
    acc = StatsAccumulator(eps=EPS_GRID[0], eps_grid=EPS_GRID, rel_grid=REL_GRID, **params)
    for i in range(len(raw)) if indices is None else indices:
        acc.add_batch(*_record(*raw[i]))
    return acc


def _reference(batches) -> dict[str, np.ndarray]:
    """Every pooled statistic of the given ``(h_in, h, w)`` batches, per layer, with numpy."""
    per_layer = []
    for layer in range(2):
        xs, us, ins, samples, near, rel, upd_near, unit = [], [], [], [], [], [], [], 0.0
        for h_in, h, w in batches:
            x, x_in, keep = h[layer].astype(np.float64), h_in[layer].astype(np.float64), w > 0
            for b in range(w.shape[0]):
                if keep[b].any():
                    samples.append(x[b][keep[b]].mean(0).var(ddof=1))
            unit = unit + (x * w[..., None]).sum((0, 1))
            a = np.abs(h[layer][keep])  # float32, as the reduction compares
            rms = np.sqrt((x[keep] ** 2).mean(-1, keepdims=True))
            rms_in = np.sqrt((x_in[keep] ** 2).mean(-1, keepdims=True))
            near.append([(a < np.float32(e)).sum() for e in EPS_GRID])
            rel.append([(a < r * rms).sum() for r in REL_GRID])
            delta = x[keep] - x_in[keep]
            upd_near.append([(np.abs(delta) < r * rms_in).sum() for r in REL_GRID])
            xs.append(x[keep]), ins.append(x_in[keep]), us.append(delta / rms_in)
        x, x_in, u = np.concatenate(xs), np.concatenate(ins), np.concatenate(us)
        n = x.size
        cos = (x * x_in).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(x_in, axis=-1)
        per_layer.append(
            {
                "code": np.mean(samples),
                "r_port": (unit / len(x)).var(),
                "flat": x.var(),
                "near": np.sum(near, 0),
                "sparsity": np.sum(near, 0) / n,
                "rel_sparsity": np.sum(rel, 0) / n,
                "mean": x.mean(),
                "rms": np.sqrt((x**2).mean()),
                "token_variance": x.var(-1, ddof=1).mean(),
                "cosine": (1 - cos).mean(),
                "angular": (np.arccos(np.clip(cos, -1, 1)) / np.pi).mean(),
                "update_variance": u.var(),
                "update_rms": np.sqrt((u**2).mean()),
                "update_token_variance": u.var(-1, ddof=1).mean(),
                "update_sparsity": np.sum(upd_near, 0) / n,
                "tokens": len(x),
                "samples": len(samples),
            }
        )
    return {k: np.array([p[k] for p in per_layer]) for k in per_layer[0]}


# ---------------------------------------------------------------------- derived values
def test_pooled_values_match_numpy(raw):
    acc, ref = _fed(raw), _reference(raw)
    for mode in ("code", "r_port", "flat"):
        np.testing.assert_allclose(acc.get_variance(mode), ref[mode], rtol=1e-5)
    np.testing.assert_array_equal(acc.near_zero_grid_, ref["near"])
    np.testing.assert_array_equal(acc.near_zero_counts_, ref["near"][:, 0])
    assert (ref["near"] > 0).all() and (ref["rel_sparsity"] > 0).all()  # real counts
    for j, e in enumerate(EPS_GRID):
        np.testing.assert_allclose(acc.get_sparsity(e), ref["sparsity"][:, j], rtol=1e-12)
    for j, r in enumerate(REL_GRID):
        np.testing.assert_allclose(acc.get_rel_sparsity(r), ref["rel_sparsity"][:, j], rtol=1e-12)
        np.testing.assert_allclose(
            acc.get_update_sparsity(r), ref["update_sparsity"][:, j], rtol=1e-12
        )
    pairs = {
        "mean_": "mean",
        "rms_": "rms",
        "token_variance_": "token_variance",
        "cosine_distance_": "cosine",
        "angular_distance_": "angular",
        "update_variance_": "update_variance",
        "update_rms_": "update_rms",
        "update_token_variance_": "update_token_variance",
    }
    for attr, key in pairs.items():
        np.testing.assert_allclose(getattr(acc, attr), ref[key], rtol=2e-5, atol=1e-7, err_msg=attr)
    np.testing.assert_allclose(acc.mean_square_, ref["rms"] ** 2, rtol=1e-5)
    assert acc.n_tokens_ == ref["tokens"][0] and acc.n_samples_ == ref["samples"][0]
    assert acc.hidden_size_ == D and acc.n_layers_ == 2 and acc.n_batches_ == len(raw)
    np.testing.assert_array_equal(acc.element_counts_, ref["tokens"] * D)


def test_batch_aggregate_is_the_unweighted_mean_of_batches(raw):
    acc = _fed(raw, aggregate="batch")
    per_batch = [_reference([b]) for b in raw]
    for mode in ("code", "r_port", "flat"):
        expected = np.mean([p[mode] for p in per_batch], axis=0)
        np.testing.assert_allclose(acc.get_variance(mode), expected, rtol=1e-5)
    sparsity = np.array([p["sparsity"][:, 0] for p in per_batch])
    np.testing.assert_allclose(acc.batch_sparsities_, sparsity, rtol=1e-12)
    np.testing.assert_allclose(acc.sparsity_, sparsity.mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        acc.batch_variances_, [p["code"] for p in per_batch], rtol=1e-5
    )  # variance_mode "code"


def test_columns_mean_what_their_names_say():
    """A record written column by column (no reduction involved)."""
    columns = record_columns((1e-5,), (), similarity=False)
    values = {
        "samples": 2,
        "tokens": 4,
        "sample_var": 3.0,
        "rport_var": 0.5,
        "sum": 8.0,
        "sum_sq": 40.0,
        "token_sum_sq": 72.0,
        "near_1e-05": 2,
    }
    assert set(columns) == set(values)
    record = torch.tensor([[values[c] for c in columns]], dtype=torch.float64)
    acc = StatsAccumulator(eps_grid=(1e-5,), rel_grid=(), similarity=False)
    acc.add_batch(record, torch.tensor([[4.0, 4.0]], dtype=torch.float64))  # d = 2
    elements = 4 * 2
    np.testing.assert_allclose(acc.variance_, [3.0 / 2])
    np.testing.assert_allclose(acc.get_variance("flat"), [40 / elements - (8 / elements) ** 2])
    np.testing.assert_allclose(acc.get_variance("r_port"), [0.0])  # unit sums (4, 4) / 4: equal
    np.testing.assert_allclose(acc.get_variance("r_port", "batch"), [0.5])
    np.testing.assert_allclose(acc.sparsity_, [2 / elements])
    np.testing.assert_allclose(acc.mean_, [1.0])
    np.testing.assert_allclose(acc.rms_, [np.sqrt(5.0)])
    np.testing.assert_allclose(acc.token_variance_, [(40.0 - 72.0 / 2) / (2 - 1) / 4])
    with pytest.raises(ConfigError, match="similarity"):
        _ = acc.cosine_distance_
    with pytest.raises(ConfigError, match="block-update"):
        _ = acc.update_variance_


# ---------------------------------------------------------------------- merge / subset
def test_merge_of_two_halves_equals_the_whole(raw):
    whole = _fed(raw)
    merged = _fed(raw, [0, 1]).merge(_fed(raw, [2, 3]))
    np.testing.assert_array_equal(merged.records_, whole.records_)
    frames = merged.to_frame(), whole.to_frame()
    rport = "variance_r_port"
    np.testing.assert_array_equal(frames[0].drop(columns=rport), frames[1].drop(columns=rport))
    np.testing.assert_allclose(frames[0][rport], frames[1][rport], rtol=1e-12)
    empty = StatsAccumulator(eps=EPS_GRID[0], eps_grid=EPS_GRID, rel_grid=REL_GRID)
    np.testing.assert_array_equal(empty.merge(whole).records_, whole.records_)  # a copy
    with pytest.raises(ConfigError, match="accumulation parameters"):
        _fed(raw, [0], mask_pad=False).merge(whole)


def test_merge_refuses_another_model_shape(raw):
    wide = np.concatenate([raw[0][0], raw[0][0]], axis=-1)  # hidden size 2 D
    wide_record = _record(wide, wide, raw[0][2])
    other = StatsAccumulator(eps=EPS_GRID[0], eps_grid=EPS_GRID, rel_grid=REL_GRID)
    with pytest.raises(ConfigError, match="different models"):
        _fed(raw, [0]).merge(other.add_batch(*wide_record))
    with pytest.raises(ConfigError, match="a different model"):
        _fed(raw, [0]).add_batch(*wide_record)
    with pytest.raises(ConfigError, match="columns"):
        _fed(raw, [0]).add_batch(*_record(*raw[1], similarity=False))


def test_subset_equals_an_accumulator_of_those_batches(raw):
    whole = _fed(raw)
    alone = _fed(raw, [1, 3])
    chosen = whole.subset([1, 3])
    assert isinstance(chosen, StatsAccumulator) and chosen.n_batches_ == 2
    for mode in ("code", "flat"):
        np.testing.assert_array_equal(chosen.get_variance(mode), alone.get_variance(mode))
    np.testing.assert_array_equal(chosen.sparsity_, alone.sparsity_)
    np.testing.assert_array_equal(chosen.update_variance_, alone.update_variance_)
    # a repeated batch weighs twice: [0, 0] has batch 0's fractions
    np.testing.assert_allclose(whole.subset([0, 0]).sparsity_, whole.subset([0]).sparsity_)
    # the pooled r_port variance needs per-unit sums, which only the whole has
    with pytest.raises(ConfigError, match="r_port"):
        _ = chosen.get_variance("r_port")
    np.testing.assert_array_equal(
        chosen.get_variance("r_port", "batch"), alone.get_variance("r_port", "batch")
    )
    assert chosen.to_frame()["variance_r_port"].isna().all()
    with pytest.raises(ConfigError, match="subset"):
        chosen.state_dict()
    # every batch once, in any order: the per-unit sums are those of the whole
    np.testing.assert_array_equal(
        whole.subset([3, 1, 0, 2]).get_variance("r_port"), whole.get_variance("r_port")
    )
    for bad in ([], [0, 4], [-1]):
        with pytest.raises(ConfigError, match="0..3"):
            whole.subset(bad)


def test_subset_of_a_layerstats_is_a_plain_accumulator(raw):
    stats = LayerStats(eps=EPS_GRID[0], eps_grid=EPS_GRID, rel_grid=REL_GRID, compile=False)
    stats.load_state_dict(_fed(raw).state_dict())
    chosen = stats.subset([0, 2])
    assert type(chosen) is StatsAccumulator
    np.testing.assert_array_equal(chosen.variance_, _fed(raw, [0, 2]).variance_)


# ---------------------------------------------------------------------- state
def test_state_dict_round_trip(raw):
    acc = _fed(raw, variance_mode="flat", aggregate="batch")
    buffer = io.BytesIO()
    torch.save(acc.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    assert state["format"] == STATE_FORMAT and state["columns"] == list(acc.columns)
    assert state["records"].shape == (len(raw), 2, len(acc.columns))
    restored = StatsAccumulator.from_state_dict(state)
    assert (restored.variance_mode, restored.aggregate) == ("flat", "batch")
    np.testing.assert_array_equal(restored.to_frame().to_numpy(), acc.to_frame().to_numpy())
    # the same format as LayerStats: either reads the other's state
    stats = LayerStats.from_state_dict(state)
    np.testing.assert_array_equal(stats.to_frame().to_numpy(), acc.to_frame().to_numpy())
    back = StatsAccumulator.from_state_dict(stats.state_dict())  # `compile` left out
    np.testing.assert_array_equal(back.records_, acc.records_)
    with pytest.raises(ConfigError, match="from_state_dict"):
        StatsAccumulator(eps_grid=(1e-5,)).load_state_dict(state)


def test_old_and_foreign_state_formats(raw):
    acc = StatsAccumulator(eps=EPS_GRID[0], eps_grid=EPS_GRID, rel_grid=())
    tw = torch.from_numpy(raw[0][2])
    tok, pooled = reduce_block_output(
        torch.from_numpy(raw[0][1]), tw, EPS_GRID, torch.from_numpy(raw[0][0])
    )
    acc.add_batch(*batch_record(tok, pooled, tw, len(EPS_GRID)))
    state = acc.state_dict()
    params = {k: v for k, v in state["params"].items() if k != "rel_grid"}
    old = {**state, "format": OLD_STATE_FORMATS[0], "params": params}
    restored = StatsAccumulator.from_state_dict(old)
    assert restored.rel_grid == ()
    np.testing.assert_array_equal(restored.to_frame().to_numpy(), acc.to_frame().to_numpy())
    with pytest.raises(ConfigError, match="not a LayerStats state"):
        StatsAccumulator.from_state_dict({**state, "format": "something/9"})


def test_empty_accumulator_refuses_values():
    acc = StatsAccumulator()
    assert acc.n_batches_ == 0 and "empty" in repr(acc)
    with pytest.raises(AvssError, match="no data"):
        _ = acc.variance_
    with pytest.raises(AvssError, match="no data"):
        acc.state_dict()
    with pytest.raises(ConfigError, match="variance_mode"):
        StatsAccumulator(variance_mode="median")
    with pytest.raises(ConfigError, match="rel_grid"):
        StatsAccumulator(rel_grid=(0.0,))
