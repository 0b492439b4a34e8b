"""LayerStats: known answers on hand-made hidden states, and the official algorithm on a tiny Llama.

The ``TableModel`` below is a fake transformer whose block ``k`` outputs ``tables[k + 1][ids]``:
every hidden state is known in advance, so each statistic can be recomputed with numpy.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from avsslib.errors import AvssError, ConfigError, ModelError
from avsslib.stats import LayerStats, batch_record, reduce_block_output

EPS_GRID = (1e-5, 1e-4, 1e-3, 1e-2)


class TableBlock(nn.Module):
    """Outputs ``table[input_ids]`` whatever its input; records its training flag."""

    def __init__(self, table: torch.Tensor, as_tuple: bool) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.as_tuple = as_tuple
        self.dropout = nn.Dropout(0.5)  # never applied: only its training flag is inspected
        self.seen_training: list[bool] = []

    def forward(self, hidden_states: torch.Tensor, input_ids: torch.Tensor):
        self.seen_training.append(self.dropout.training)
        out = self.table[input_ids]
        return (out, None) if self.as_tuple else out


class TableModel(nn.Module):
    """A fake Llama-shaped model (``model.layers``) with known block outputs."""

    def __init__(
        self, tables: list[torch.Tensor], as_tuple: bool = False, copy_between: bool = False
    ) -> None:
        super().__init__()
        self.copy_between = copy_between  # each block gets a copy of the previous output
        self.config = SimpleNamespace(model_type="llama", num_hidden_layers=len(tables) - 1)
        self.embed = nn.Embedding.from_pretrained(tables[0])
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(TableBlock(t, as_tuple) for t in tables[1:])
        self.seen_masks: list[torch.Tensor | None] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        self.seen_masks.append(attention_mask)
        h = self.embed(input_ids)
        for layer in self.model.layers:
            out = layer(h.clone() if self.copy_between else h, input_ids=input_ids)
            h = out[0] if isinstance(out, tuple) else out
        return h


def make_tables(n_layers: int = 3, vocab: int = 12, d: int = 6, seed: int = 0) -> list:
    """Random tables (float32) with planted exact and near zeros at several scales."""
    rng = np.random.default_rng(seed)
    tables = []
    for k in range(n_layers + 1):
        t = rng.normal(0.0, 1.0 + k, size=(vocab, d))
        planted = rng.choice(vocab * d, size=8 + 2 * k, replace=False)
        small = np.array([0.0, 3e-6, -7e-6, 2e-5, -5e-5, 5e-4, -2e-3, 8e-3, 0.0, 1e-6, 0.0, 4e-4])
        t.flat[planted] = small[: planted.size]
        tables.append(torch.tensor(t, dtype=torch.float32))
    return tables


def make_batches() -> list[dict[str, torch.Tensor]]:
    """Two batches of different shapes, right padding, one fully padded row."""
    g = torch.Generator().manual_seed(1)
    ids1 = torch.randint(0, 12, (3, 5), generator=g)
    mask1 = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    ids2 = torch.randint(0, 12, (4, 7), generator=g)
    mask2 = torch.tensor([[1] * 7, [1, 1, 1, 1, 1, 1, 0], [0] * 7, [1, 1, 0, 0, 0, 0, 0]])
    return [
        {"input_ids": ids1, "attention_mask": mask1},
        {"input_ids": ids2, "attention_mask": mask2},
    ]


def numpy_reference(tables, batches, *, masked: bool) -> dict[str, np.ndarray]:
    """Every statistic recomputed with numpy in float64 from the float32 tables."""
    n_layers = len(tables) - 1
    out: dict[str, list] = {
        key: []
        for key in (
            "code_batch",
            "code_pooled",
            "rport_batch",
            "rport_pooled",
            "flat_batch",
            "flat_pooled",
            "sparsity_batch",
            "sparsity_pooled",
            "counts",
            "elements",
            "mean",
            "rms",
            "token_var",
            "cos_dist",
            "angle",
            "batch_v",
            "batch_s",
        )
    }
    for k in range(n_layers):
        t_out = tables[k + 1].numpy()
        t_in = tables[k].numpy()
        v_b, s_b, r_b, f_b, sample_vars, elems, elems_in = [], [], [], [], [], [], []
        for batch in batches:
            ids = batch["input_ids"].numpy()
            m = batch["attention_mask"].numpy().astype(bool) if masked else np.ones(ids.shape, bool)
            h = t_out[ids].astype(np.float64)
            n_b = m.sum(1)
            ok = n_b > 0
            pooled = (h * m[..., None]).sum(1)[ok] / n_b[ok, None]
            sv = pooled.var(axis=1, ddof=1)
            e32 = t_out[ids][m]  # (n_tok, d) float32
            e = e32.astype(np.float64)
            v_b.append(sv.mean())
            s_b.append((np.abs(e32) < np.float32(1e-5)).mean())
            r_b.append(e.mean(0).var())
            f_b.append(e.var())
            sample_vars.append(sv)
            elems.append(e32)
            elems_in.append(t_in[ids][m].astype(np.float64))
        e32 = np.concatenate(elems)
        e = e32.astype(np.float64)
        x_in = np.concatenate(elems_in)
        cos = (e * x_in).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(x_in, axis=1)
        out["code_batch"].append(np.mean(v_b))
        out["code_pooled"].append(np.concatenate(sample_vars).mean())
        out["rport_batch"].append(np.mean(r_b))
        out["rport_pooled"].append(e.mean(0).var())
        out["flat_batch"].append(np.mean(f_b))
        out["flat_pooled"].append(e.var())
        out["sparsity_batch"].append(np.mean(s_b))
        out["counts"].append([(np.abs(e32) < np.float32(eps)).sum() for eps in EPS_GRID])
        out["elements"].append(e.size)
        out["sparsity_pooled"].append(out["counts"][-1][0] / e.size)
        out["mean"].append(e.mean())
        out["rms"].append(np.sqrt((e * e).mean()))
        out["token_var"].append(e.var(axis=1, ddof=1).mean())
        out["cos_dist"].append((1 - cos).mean())
        out["angle"].append((np.arccos(np.clip(cos, -1, 1)) / np.pi).mean())
        out["batch_v"].append(v_b)
        out["batch_s"].append(s_b)
    result = {key: np.asarray(value, dtype=np.float64) for key, value in out.items()}
    result["batch_v"] = result["batch_v"].T  # (n_batches, n_layers)
    result["batch_s"] = result["batch_s"].T
    return result


@pytest.fixture
def tables():
    return make_tables()


@pytest.fixture
def batches():
    return make_batches()


# ---------------------------------------------------------------------- known answers
@pytest.mark.parametrize("masked", [True, False])
def test_statistics_match_numpy(tables, batches, masked):
    model = TableModel(tables)
    stats = LayerStats(mask_pad=masked).fit(model, batches, progress=False)
    ref = numpy_reference(tables, batches, masked=masked)
    close = dict(rtol=1e-5, atol=0)

    np.testing.assert_allclose(stats.get_variance("code", "pooled"), ref["code_pooled"], **close)
    np.testing.assert_allclose(stats.get_variance("code", "batch"), ref["code_batch"], **close)
    np.testing.assert_allclose(stats.get_variance("r_port", "pooled"), ref["rport_pooled"], **close)
    np.testing.assert_allclose(stats.get_variance("r_port", "batch"), ref["rport_batch"], **close)
    np.testing.assert_allclose(stats.get_variance("flat", "pooled"), ref["flat_pooled"], **close)
    np.testing.assert_allclose(stats.get_variance("flat", "batch"), ref["flat_batch"], **close)
    np.testing.assert_array_equal(stats.near_zero_grid_, ref["counts"])
    np.testing.assert_array_equal(stats.near_zero_counts_, ref["counts"][:, 0])
    np.testing.assert_array_equal(stats.element_counts_, ref["elements"])
    np.testing.assert_allclose(stats.sparsity_, ref["sparsity_pooled"], rtol=1e-15)
    np.testing.assert_allclose(
        stats.get_sparsity(aggregate="batch"), ref["sparsity_batch"], rtol=1e-15
    )
    np.testing.assert_allclose(stats.mean_, ref["mean"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.rms_, ref["rms"], **close)
    np.testing.assert_allclose(stats.token_variance_, ref["token_var"], **close)
    np.testing.assert_allclose(stats.cosine_distance_, ref["cos_dist"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.angular_distance_, ref["angle"], rtol=1e-5, atol=1e-7)
    # default reporting: fixed mode = code variance, pooled
    np.testing.assert_array_equal(stats.variance_, stats.get_variance("code", "pooled"))
    assert stats.n_batches_ == 2 and stats.n_layers_ == 3
    assert ref["counts"][:, 0].min() > 0 and (ref["counts"][:, 0] != ref["counts"][:, -1]).all()


def test_masking_changes_exactly_the_pad_positions(tables, batches):
    """Masked and unmasked element counts differ by the number of pads times d."""
    masked = LayerStats().fit(TableModel(tables), batches, progress=False)
    unmasked = LayerStats(mask_pad=False).fit(TableModel(tables), batches, progress=False)
    n_pads = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    np.testing.assert_array_equal(unmasked.element_counts_ - masked.element_counts_, n_pads * 6)
    assert masked.n_samples_ == 6 and unmasked.n_samples_ == 7  # the all-pad row drops out
    assert not np.allclose(masked.variance_, unmasked.variance_)


def test_faithful_mode_reproduces_the_official_conventions(tables, batches):
    model = TableModel(tables)
    model.eval()
    stats = LayerStats(faithful=True).fit(model, batches, progress=False)
    ref = numpy_reference(tables, batches, masked=False)
    assert (stats.aggregate, stats.mask_pad) == ("batch", False)
    np.testing.assert_allclose(stats.variance_, ref["code_batch"], rtol=1e-5)
    np.testing.assert_allclose(stats.sparsity_, ref["sparsity_batch"], rtol=1e-15)
    np.testing.assert_allclose(stats.batch_variances_, ref["batch_v"], rtol=1e-5)
    np.testing.assert_allclose(stats.batch_sparsities_, ref["batch_s"], rtol=1e-15)
    # dropout on during the pass, flags restored afterwards
    assert all(model.model.layers[0].seen_training) and not model.training
    assert not model.model.layers[0].dropout.training
    # a non-generative model gets the mask, as the official SST-2 script passes it
    assert all(m is not None for m in model.seen_masks)


def test_fixed_mode_runs_in_eval_and_restores_train(tables, batches):
    model = TableModel(tables).train()
    LayerStats().fit(model, batches, progress=False)
    assert not any(model.model.layers[1].seen_training)
    assert model.training and model.model.layers[1].dropout.training


def test_stashed_multi_layer_reduction_equals_per_layer(tables, batches):
    """stash_bytes > 0 reduces several layers in one call: same numbers as one at a time."""
    at_once = LayerStats(stash_bytes=0).fit(TableModel(tables), batches, progress=False)
    for copy_between in (False, True):  # inputs chained to outputs, or separate tensors
        model = TableModel(tables, copy_between=copy_between)
        stashed = LayerStats(stash_bytes=2**20).fit(model, batches, progress=False)
        np.testing.assert_allclose(stashed.records_, at_once.records_, rtol=1e-6, atol=1e-12)
        np.testing.assert_array_equal(stashed.near_zero_grid_, at_once.near_zero_grid_)


class InPlaceBlock(nn.Module):
    """Scales its input in place (which LayerStats must detect when it stashes outputs)."""

    def forward(self, hidden_states: torch.Tensor, input_ids: torch.Tensor):
        return hidden_states.mul_(2.0)


def test_in_place_modification_of_a_stashed_output_is_detected(tables, batches):
    model = TableModel(tables)
    model.model.layers.append(InPlaceBlock())
    model.config.num_hidden_layers += 1
    with pytest.raises(ModelError, match="in place"):
        LayerStats(stash_bytes=2**20).fit(model, batches, progress=False)
    assert LayerStats(stash_bytes=0).fit(model, batches, progress=False).n_layers_ == 4


def test_tuple_and_tensor_block_outputs_agree(tables, batches):
    bare = LayerStats().fit(TableModel(tables, as_tuple=False), batches, progress=False)
    tup = LayerStats().fit(TableModel(tables, as_tuple=True), batches, progress=False)
    np.testing.assert_array_equal(bare.records_, tup.records_)


def test_reduction_functions_directly():
    """reduce_block_output + batch_record on one hand-made (B=1, T=2, d=2) tensor."""
    h = torch.tensor([[[1.0, 0.5], [0.0, 5e-6]]])
    w = torch.tensor([[1.0, 1.0]])
    tok, pooled = reduce_block_output(h, w, (1e-5, 1.0))
    expected = torch.tensor([[1.5, 5e-6], [1.25, 2.5e-11], [0, 2], [1, 2]])
    assert torch.allclose(tok[:, 0], expected, rtol=1e-6, atol=0)  # sum, sum_sq, two counts
    assert torch.allclose(pooled, torch.tensor([[1.0, 0.5 + 5e-6]]))
    record, unit = batch_record(tok.unsqueeze(0), pooled.unsqueeze(0), w, n_near=2)
    # the pooled mean is (0.5, 0.25 + 2.5e-6); its unbiased variance over d=2 is diff^2 / 2
    diff = 0.5 - (0.25 + 2.5e-6)
    assert record[0, 0] == 1 and record[0, 1] == 2  # samples, tokens
    assert torch.isclose(record[0, 2], torch.tensor(diff**2 / 2, dtype=torch.float64))
    assert torch.isclose(record[0, 6], torch.tensor(1.5**2 + 5e-6**2, dtype=torch.float64))
    assert record[0, 7] == 2 and record[0, 8] == 3  # |h| < 1e-5; |h| < 1
    assert torch.allclose(unit, torch.tensor([[1.0, 0.5 + 5e-6]], dtype=torch.float64))


# ---------------------------------------------------------------------- merge / state
def test_merge_of_two_halves_equals_one_pass(tables, batches):
    one = LayerStats().fit(TableModel(tables), batches, progress=False)
    a = LayerStats().fit(TableModel(tables), batches[:1], progress=False)
    b = LayerStats().fit(TableModel(tables), batches[1:], progress=False)
    merged = a.merge(b)
    np.testing.assert_array_equal(merged.records_, one.records_)
    for mode in ("code", "flat"):
        for aggregate in ("batch", "pooled"):
            np.testing.assert_array_equal(
                merged.get_variance(mode, aggregate), one.get_variance(mode, aggregate)
            )
    np.testing.assert_array_equal(
        merged.get_variance("r_port", "batch"), one.get_variance("r_port", "batch")
    )
    np.testing.assert_allclose(
        merged.get_variance("r_port", "pooled"), one.get_variance("r_port", "pooled"), rtol=1e-12
    )
    np.testing.assert_array_equal(merged.sparsity_, one.sparsity_)
    np.testing.assert_array_equal(merged.near_zero_grid_, one.near_zero_grid_)
    # merging into an empty instance copies
    empty = LayerStats().merge(one)
    np.testing.assert_array_equal(empty.to_frame().to_numpy(), one.to_frame().to_numpy())
    with pytest.raises(ConfigError, match="accumulation parameters"):
        LayerStats(mask_pad=False).merge(one)


def test_state_dict_round_trip(tables, batches):
    stats = LayerStats(eps_grid=(1e-3,), variance_mode="flat").fit(
        TableModel(tables), batches, progress=False
    )
    buffer = io.BytesIO()
    torch.save(stats.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    restored = LayerStats.from_state_dict(state)
    assert restored.eps_grid == (1e-5, 1e-3) and restored.variance_mode == "flat"
    np.testing.assert_array_equal(restored.to_frame().to_numpy(), stats.to_frame().to_numpy())
    again = LayerStats(eps_grid=(1e-3,)).load_state_dict(state)  # reporting params its own
    np.testing.assert_array_equal(again.variance_, stats.get_variance("code"))
    with pytest.raises(ConfigError, match="from_state_dict"):
        LayerStats().load_state_dict(state)


def test_errors_and_unfitted(tables):
    stats = LayerStats()
    with pytest.raises(AvssError, match="fit"):
        _ = stats.variance_
    with pytest.raises(ConfigError, match="variance_mode"):
        LayerStats(variance_mode="median")
    with pytest.raises(ConfigError, match="positive"):
        LayerStats(eps=0.0)
    bad = {
        "input_ids": torch.zeros(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
    }
    with pytest.raises(ConfigError, match="shape"):
        stats.update(TableModel(tables), bad)
    with pytest.raises(ConfigError, match="not in eps_grid"):
        LayerStats().fit(TableModel(tables), make_batches(), progress=False).get_sparsity(0.5)


# ---------------------------------------------------------------------- hooks on a real model
def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooked_forward_is_bit_identical_and_hooks_are_removed(tiny_llama):
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        plain = tiny_llama(input_ids=ids, attention_mask=mask).logits
    captured = []
    handle = tiny_llama.register_forward_hook(lambda m, a, o: captured.append(o.logits))
    try:
        n_hooks = _hook_count(tiny_llama)
        stats = LayerStats()
        stats.update(tiny_llama, {"input_ids": ids, "attention_mask": mask})
        assert _hook_count(tiny_llama) == n_hooks  # update attached and detached
        with stats.attach(tiny_llama):
            assert _hook_count(tiny_llama) == n_hooks + 4
            stats.update(tiny_llama, {"input_ids": ids, "attention_mask": mask})
        assert _hook_count(tiny_llama) == n_hooks
    finally:
        handle.remove()
    assert all(torch.equal(c, plain) for c in captured) and len(captured) == 2
    n_hooks = _hook_count(tiny_llama)
    with pytest.raises(ValueError), stats.attach(tiny_llama):
        raise ValueError("boom")
    assert _hook_count(tiny_llama) == n_hooks


def reference_block_stats(model, layers, batches, eps=1e-5, pass_mask=False):
    """The reference algorithm of the official scripts, as a plain loop (float32, .item() per batch)."""
    cache, V, S = {}, [[] for _ in layers], [[] for _ in layers]

    def make_hook(k):
        def hook(mod, inp, out):
            cache[k] = (out[0] if isinstance(out, (tuple, list)) else out).float()

        return hook

    handles = [b.register_forward_hook(make_hook(k)) for k, b in enumerate(layers)]
    with torch.no_grad():
        for batch in batches:
            model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"] if pass_mask else None,
            )
            for k, h in cache.items():
                V[k].append(h.mean(1).var(1).mean().item())
                S[k].append((h.abs() < eps).float().mean().item())
    for hd in handles:
        hd.remove()
    return np.array(V), np.array(S)  # (n_layers, n_batches)


def test_faithful_layerstats_equals_paper_reference_on_tiny_llama(tiny_llama):
    g = torch.Generator().manual_seed(3)
    batches = []
    for n, t in ((4, 12), (3, 12), (1, 12)):  # a short last batch, as in the code
        ids = torch.randint(3, 128, (n, t), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 8:] = 0
        ids[mask == 0] = 0  # pad id, counted as a token
        batches.append({"input_ids": ids, "attention_mask": mask})
    stats = LayerStats(faithful=True).fit(tiny_llama, batches, progress=False)
    for eps in (1e-5, 1e-2):
        V, S = reference_block_stats(tiny_llama, tiny_llama.model.layers, batches, eps=eps)
        np.testing.assert_allclose(stats.variance_, V.mean(1), rtol=1e-5)
        np.testing.assert_allclose(stats.batch_variances_, V.T, rtol=1e-5)
        np.testing.assert_allclose(stats.get_sparsity(eps), S.mean(1), rtol=1e-6)
    assert S.min() > 0  # eps=1e-2 really counts something
    assert not tiny_llama.training  # restored to eval


def test_to_frame_has_one_row_per_layer(tables, batches):
    frame = LayerStats().fit(TableModel(tables), batches, progress=False).to_frame()
    assert list(frame.index) == [0, 1, 2] and frame.index.name == "layer"
    assert {
        "variance",
        "sparsity",
        "near_zero_count",
        "element_count",
        "rms",
        "sparsity@0.01",
        "cosine_distance",
        "angular_distance",
    } <= set(frame.columns)
    no_sim = LayerStats(similarity=False).fit(TableModel(tables), batches, progress=False)
    assert "cosine_distance" not in no_sim.to_frame().columns
    with pytest.raises(ConfigError, match="similarity"):
        _ = no_sim.cosine_distance_


@pytest.mark.slow
def test_compiled_reduction_matches_eager(tables, batches):
    """compile=True (the CUDA default) gives the same counts and, to float32 rounding, sums."""
    eager = LayerStats(compile=False, stash_bytes=2**20).fit(
        TableModel(tables), batches, progress=False
    )
    compiled = LayerStats(compile=True, stash_bytes=2**20).fit(
        TableModel(tables), batches, progress=False
    )
    assert not compiled.tap.compile_failed
    np.testing.assert_array_equal(compiled.near_zero_grid_, eager.near_zero_grid_)
    np.testing.assert_allclose(
        compiled.to_frame().to_numpy(), eager.to_frame().to_numpy(), rtol=1e-5, atol=1e-9
    )


@pytest.mark.slow
def test_embedded_model_statistics(smol):
    """On SmolLM2-135M: 30 layers, counts grow with eps, the hooked forward is unchanged."""
    model, tokenizer = smol
    texts = [
        "The capital of France is Paris.",
        "Layer pruning removes whole transformer blocks.",
        "Activation sparsity counts near-zero values.",
        "A short one.",
    ]
    batch = dict(tokenizer(texts, return_tensors="pt", padding=True))
    with torch.no_grad():
        plain = model(**batch).logits
    captured = []
    handle = model.register_forward_hook(lambda m, a, o: captured.append(o.logits))
    try:
        stats = LayerStats().fit(model, [batch, batch], progress=False)
    finally:
        handle.remove()
    assert all(torch.equal(c, plain) for c in captured)
    assert stats.n_layers_ == 30 and stats.n_tokens_ == 2 * int(batch["attention_mask"].sum())
    grid = stats.near_zero_grid_
    assert (np.diff(grid, axis=1) >= 0).all() and grid[:, -1].min() > 0
    assert (stats.variance_ > 0).all() and np.isfinite(stats.to_frame().to_numpy()).all()
    faithful = LayerStats(faithful=True).fit(model, [batch], progress=False)
    assert faithful.n_tokens_ == batch["input_ids"].numel()  # pads counted
