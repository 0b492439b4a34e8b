"""Pruning blocks: config, KV cache, save/load round trip; skipping blocks without pruning."""

from __future__ import annotations

import pytest
import torch

from avsslib.arch import blocks
from avsslib.errors import ConfigError
from avsslib.prune import prune_layers_, pruned_copy, skip_layers


@pytest.fixture
def ids():
    return torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def layer_indices(model) -> list[int]:
    return [m.layer_idx for b in blocks(model) for m in b.modules() if hasattr(m, "layer_idx")]


def test_prune_updates_modules_and_config(tiny_llama, ids):
    before = logits(tiny_llama, ids)
    pruned = pruned_copy(tiny_llama, [3, 1])
    assert len(blocks(tiny_llama)) == 4 and torch.equal(logits(tiny_llama, ids), before)
    assert len(blocks(pruned)) == 2 and pruned.config.num_hidden_layers == 2
    assert pruned.config.avss_pruned_layers == [1, 3]
    assert layer_indices(pruned) == [0, 1]
    # the kept blocks are the original blocks 0 and 2
    kept, original = blocks(pruned)[1], blocks(tiny_llama)[2]
    assert torch.equal(kept.mlp.up_proj.weight, original.mlp.up_proj.weight)
    assert [k for k in pruned.state_dict() if ".layers." in k][-1].startswith("model.layers.1.")
    # pruning again composes the recorded original indices
    prune_layers_(pruned, [1])
    assert pruned.config.avss_pruned_layers == [1, 2, 3] and pruned.config.num_hidden_layers == 1


def test_pruned_model_generates_with_kv_cache(tiny_llama, ids):
    pruned = pruned_copy(tiny_llama, [0, 2])
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with_cache = pruned.generate(ids, use_cache=True, **kwargs)
    without = pruned.generate(ids, use_cache=False, **kwargs)
    assert with_cache.shape == (2, 17) and torch.equal(with_cache, without)


def test_save_and_load_round_trip(tiny_llama, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    pruned = pruned_copy(tiny_llama, [1])
    pruned.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 3 and loaded.config.avss_pruned_layers == [1]
    assert torch.equal(logits(loaded, ids), logits(pruned, ids))


def test_skip_layers_equals_pruning_and_restores(tiny_llama, ids):
    # transformers 5 may keep its own recording hooks on blocks (output_hidden_states installs them
    # lazily and leaves them), so compare the hook sets with what was there before.
    hooks_before = [dict(b._forward_hooks) for b in blocks(tiny_llama)]
    before = logits(tiny_llama, ids)
    with skip_layers(tiny_llama, [1, 2]) as model:
        skipped = logits(model, ids)
    assert torch.equal(skipped, logits(pruned_copy(tiny_llama, [1, 2]), ids))
    assert not torch.equal(skipped, before)
    assert torch.equal(logits(tiny_llama, ids), before)
    assert [dict(b._forward_hooks) for b in blocks(tiny_llama)] == hooks_before
    with pytest.raises(RuntimeError), skip_layers(tiny_llama, [0]):
        raise RuntimeError("boom")
    assert [dict(b._forward_hooks) for b in blocks(tiny_llama)] == hooks_before


def test_skip_keeps_tuple_outputs():
    from torch import nn

    from avsslib.prune import _make_skip_hook

    block = nn.Linear(3, 3)
    block.register_forward_hook(_make_skip_hook(0), with_kwargs=True)
    x = torch.randn(2, 3)
    assert block(x) is x
    tuple_block = nn.Module()
    tuple_block.forward = lambda hidden_states, extra=None: (hidden_states * 2, "cache")
    tuple_block.register_forward_hook(_make_skip_hook(0), with_kwargs=True)
    out = tuple_block(hidden_states=x)
    assert out[0] is x and out[1] == "cache"


def test_invalid_layer_lists(tiny_llama):
    for layers, message in (
        ([4], "out of range"),
        ([-1], "out of range"),
        ([1, 1], "more than once"),
        ([0, 1, 2, 3], "all 4"),
        (["a"], "not an integer"),
    ):
        with pytest.raises(ConfigError, match=message):
            pruned_copy(tiny_llama, layers)
    with skip_layers(tiny_llama, [0, 1, 2, 3]):  # skipping all is allowed
        pass


#: models whose layers are of several kinds (config.layer_types), built by conftest's tiny_model
LAYER_TYPE_MODELS = {
    "qwen3": dict(
        head_dim=8,
        use_sliding_window=True,
        sliding_window=4,
        layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
    ),
    "gemma3_text": dict(
        head_dim=8,
        sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "full_attention"],
    ),
}


@pytest.mark.parametrize("arch", sorted(LAYER_TYPE_MODELS), ids=["gemma3", "qwen3"])
def test_prune_models_with_layer_types(arch, ids, tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    model = tiny_model(arch, **LAYER_TYPE_MODELS[arch])
    types = list(model.config.layer_types)
    prune_layers_(model, [0, 3])
    assert model.config.layer_types == [types[1], types[2]]
    assert model.config.num_hidden_layers == 2 and sorted(set(layer_indices(model))) == [0, 1]
    # each kept block's own attention type still matches the config entry the model reads
    assert [b.self_attn.layer_type for b in blocks(model)] == model.config.layer_types
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(
        model.generate(ids, use_cache=True, **kwargs),
        model.generate(ids, use_cache=False, **kwargs),
    )
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.layer_types == [types[1], types[2]]
    assert torch.equal(logits(loaded, ids), logits(model, ids))
