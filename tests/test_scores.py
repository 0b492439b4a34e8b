"""Scores: AVSS arithmetic on hand-made numbers, the registry, and the model-based baseline."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from avsslib.errors import AvssError, ConfigError
from avsslib.prune import pruned_copy
from avsslib.scores import (
    REGISTRY,
    SparsityClampWarning,
    avss_values,
    compute_scores,
    cumulative,
    mean_token_loss,
    navss,
    score,
)

V = np.array([4.0, 1.0, 9.0, 2.0, 6.0])
S = np.array([2e-5, 5e-5, 1e-5, 4e-5, 3e-5])


def test_nav_over_nas_is_v_over_s_times_a_constant():
    """Normalising first changes nothing but one shared constant."""
    nav_nas = avss_values(V, S)
    raw = V / S  # the official AVSS.py
    ratio = nav_nas / raw
    np.testing.assert_allclose(ratio, S.sum() / V.sum(), rtol=1e-14)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-14)
    assert list(np.argsort(nav_nas)) == list(np.argsort(raw)) == [1, 3, 0, 4, 2]
    np.testing.assert_allclose(navss(nav_nas), navss(raw), rtol=1e-14)
    np.testing.assert_allclose(cumulative(navss(nav_nas)), np.cumsum(raw / raw.sum()), rtol=1e-14)
    # hand values: V / S = [2e5, 2e4, 9e5, 5e4, 2e5], sum 1.37e6
    np.testing.assert_allclose(navss(raw), np.array([200, 20, 900, 50, 200]) / 1370, rtol=1e-14)
    assert navss(raw).sum() == pytest.approx(1.0, abs=1e-15)


def test_zero_sparsity_is_clamped_with_a_warning_naming_the_layers():
    s = S.copy()
    s[[1, 3]] = 0.0
    with pytest.warns(SparsityClampWarning, match=r"layers \[1, 3\]"):
        values = avss_values(V, s)
    assert np.isfinite(values).all()
    assert values[1] > 1e3 * values[[0, 2, 4]].max()  # V / 1e-12 dominates
    np.testing.assert_allclose(values[1] / values[3], V[1] / V[3])


def test_avss_errors():
    with pytest.raises(AvssError, match=r"layers \[2\]"):
        avss_values([1.0, 2.0, np.nan], [1e-5, 1e-5, 1e-5])
    with pytest.raises(AvssError, match="at least 2 layers"):
        avss_values([1.0], [1e-5])
    with pytest.raises(AvssError, match="same length"):
        avss_values([1.0, 2.0], [1e-5])


def fake_stats(n: int = 5) -> SimpleNamespace:
    return SimpleNamespace(
        variance_=V[:n],
        sparsity_=S[:n],
        n_layers_=n,
        cosine_distance_=np.array([0.3, 0.1, 0.5, 0.05, 0.2])[:n],
        angular_distance_=np.array([0.25, 0.1, 0.4, 0.02, 0.15])[:n],
    )


def test_registry_scores_from_statistics():
    stats = fake_stats()
    assert {"avss", "block_influence", "angular", "ppl_removal", "random", "tail"} <= set(REGISTRY)
    np.testing.assert_array_equal(score("avss", stats), avss_values(V, S))
    np.testing.assert_array_equal(score("block_influence", stats), stats.cosine_distance_)
    np.testing.assert_array_equal(score("angular", stats), stats.angular_distance_)
    np.testing.assert_array_equal(score("tail", stats), [5, 4, 3, 2, 1])
    r0, r0_again, r1 = (score("random", stats, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(r0, r0_again)
    assert not np.array_equal(r0, r1) and r0.shape == (5,)
    frame = compute_scores(["avss", "tail", "random"], stats, seed=0)
    assert list(frame.columns) == ["avss", "tail", "random"] and frame.index.name == "layer"
    np.testing.assert_array_equal(frame["random"], r0)
    assert REGISTRY["ppl_removal"].needs_model and not REGISTRY["avss"].needs_model


def test_registry_errors():
    with pytest.raises(ConfigError, match="unknown score"):
        score("magic", fake_stats())
    with pytest.raises(ConfigError, match="model="):
        score("ppl_removal", fake_stats())
    with pytest.raises(ConfigError, match="LayerStats"):
        score("avss", None)


def test_ppl_removal_equals_loss_of_each_pruned_model(tiny_llama):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 128, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    batches = [{"input_ids": ids, "attention_mask": mask}]
    importance = score("ppl_removal", model=tiny_llama, batches=batches, progress=False)
    base = mean_token_loss(tiny_llama, batches)
    expected = [mean_token_loss(pruned_copy(tiny_llama, [k]), batches) - base for k in range(4)]
    np.testing.assert_allclose(importance, expected, rtol=1e-6, atol=1e-7)
    assert np.abs(importance).max() > 0
    # the loss ignores pad targets: changing pad ids changes nothing
    ids2 = ids.clone()
    ids2[2, 6:] = 7
    padded_differently = [{"input_ids": ids2, "attention_mask": mask}]
    assert mean_token_loss(tiny_llama, padded_differently) == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "gpt2", "falcon", "opt", "qwen2"])
def test_removal_losses_cached_equal_the_plain_way(model_type):
    """ppl_removal from the kept block outputs gives the same losses as running the whole model
    once per skipped block, on padded batches of two lengths, for block outputs that are bare
    tensors and tuples, sliding-window layers and a 0-d scalar buffer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from avsslib.arch import blocks
    from avsslib.removal import removal_losses, removal_losses_plain

    cfg = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if model_type in ("qwen2", "gemma3_text"):
        cfg.update(sliding_window=6)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg)).eval()
    ids = torch.randint(3, 64, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    batches = [
        {"input_ids": ids, "attention_mask": mask},
        {"input_ids": ids[:2, :12], "attention_mask": mask[:2, :12]},
    ]
    base, removed = removal_losses(model, batches, progress=False)
    plain_base, plain_removed = removal_losses_plain(model, batches, progress=False)
    assert removed.shape == (4,)
    np.testing.assert_allclose(base, plain_base, rtol=1e-6)
    np.testing.assert_allclose(removed, plain_removed, rtol=1e-6)
    assert len(set(np.round(removed, 6))) == 4  # each skipped block changes the loss
    assert all(
        isinstance(b, torch.nn.Module) and type(b).__name__ != "_Replay" for b in blocks(model)
    )  # the blocks are back


def test_ppl_removal_score_is_the_loss_increase(tiny_llama):
    from avsslib.removal import removal_losses_plain
    from avsslib.scores import compute_scores

    torch.manual_seed(1)
    batches = [{"input_ids": torch.randint(3, 128, (2, 10))}]
    scored = compute_scores(["ppl_removal"], None, model=tiny_llama, batches=batches, seed=0)
    base, removed = removal_losses_plain(tiny_llama, batches, progress=False)
    np.testing.assert_allclose(np.asarray(scored["ppl_removal"]), removed - base, rtol=1e-6)


def test_registry_refuses_a_duplicate_name():
    from avsslib.errors import ConfigError
    from avsslib.scores import register

    before = REGISTRY["avss"]
    with pytest.raises(ConfigError, match="'avss' is already registered"):
        register("avss")(lambda stats, **kw: stats)
    assert REGISTRY["avss"] is before
    try:
        register("_test_score")(lambda stats, **kw: stats)
        register("_test_score", replace=True)(lambda stats, **kw: stats)
    finally:
        REGISTRY.pop("_test_score", None)
