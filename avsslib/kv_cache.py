"""KV-cache helpers of the fast evaluation backend (:mod:`avsslib.eval_backend`): on which
models reusing a cache is known to be safe (:data:`REUSE_ARCHITECTURES`,
:func:`cache_reuse_support`), copies of cache rows (:func:`select_rows`), the prefix shared by
token sequences (:func:`common_prefix`), the batches of the backend's context pass
(:func:`context_batches`), padded id batches, and the default token budget of a pass
(:func:`default_max_batch_tokens`). Writes no files.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, cast

import torch

__all__ = [
    "REUSE_ARCHITECTURES",
    "cache_reuse_support",
    "common_prefix",
    "shared_prefix",
    "context_batches",
    "default_max_batch_tokens",
    "pad_ids",
    "select_rows",
]

REUSE_ARCHITECTURES = frozenset(
    {
        "llama",
        "qwen2",
        "qwen3",
        "gpt2",
        "gpt_neox",
        "phi3",
        "olmo",
        "olmo2",
        "granite",
        "smollm3",
        "stablelm",
        "gemma",
        "phi",
        "gptj",
    }
)
"""``config.model_type`` values whose cache reuse the parity tests check (tiny random models;
``llama`` also the embedded SmolLM2). Other architectures run the plain harness methods."""


def cache_reuse_support(model: torch.nn.Module) -> tuple[bool, str]:
    """Whether :class:`CachedLM` may reuse KV caches on ``model``: ``(ok, reason)``."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config: Any = cast(Any, model).config
    if getattr(config, "is_encoder_decoder", False):
        return False, "encoder-decoder model"
    if config.model_type not in REUSE_ARCHITECTURES:
        return (
            False,
            f"model type {config.model_type!r} is not among the architectures the parity tests cover",
        )
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ("eager", "sdpa"):
        return False, f"attention implementation {impl!r} (only eager and sdpa are covered)"
    params = inspect.signature(model.forward).parameters
    missing = [p for p in ("attention_mask", "position_ids") if p not in params]
    if "cache" not in params and "past_key_values" not in params:
        missing.append("cache (or past_key_values)")
    if missing:
        return False, f"forward() takes no {', '.join(missing)}"
    layers = DynamicCache(config=config).layers
    if any(type(layer) is not DynamicLayer for layer in layers):
        return False, "sliding-window or hybrid cache layers"
    return True, "shared contexts encoded once, KV cache reused"


def select_rows(cache: Any, index: torch.Tensor) -> Any:
    """A new ``DynamicCache`` holding rows ``index`` (shape (rows,), repeats allowed) of
    ``cache``; ``cache`` itself is left unchanged (later updates of either do not touch the
    other)."""
    from transformers import DynamicCache

    return DynamicCache(
        ddp_cache_data=[
            (layer.keys.index_select(0, index), layer.values.index_select(0, index))
            for layer in cache.layers
        ]
    )


def common_prefix(sequences: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The longest token prefix shared by all ``sequences`` (empty for none)."""
    if not sequences:
        return ()
    tuples = [tuple(s) for s in sequences]
    first, last = min(tuples), max(tuples)  # lexicographic extremes bound every prefix
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return tuple(first[:n])


def shared_prefix(contexts: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The prefix encoded once for all ``contexts``: their :func:`common_prefix`, cut so that
    every context keeps at least its last token to encode after it."""
    return common_prefix(contexts)[: min(len(c) for c in contexts) - 1]


def pad_ids(
    rows: Sequence[Sequence[int]], width: int, value: int, *, left: bool = False
) -> torch.Tensor:
    """``rows`` of token ids as one long tensor of shape ``(len(rows), width)``, padded with
    ``value`` on the right (on the left with ``left=True``)."""
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, width - len(r) :] = torch.tensor(r)
            else:
                out[i, : len(r)] = torch.tensor(r)
    return out


def context_batches(
    contexts: list[tuple[int, ...]], shared: int, max_batch_tokens: int
) -> list[list[tuple[int, ...]]]:
    """Consecutive ``contexts`` (sorted longest first, after a ``shared`` prefix of that many
    tokens) whose stage-2 pass fits ``max_batch_tokens`` token positions and pads no row by
    more than about a quarter of the batch's width. Without a shared prefix, contexts with
    nothing to encode before their last token get batches of their own (an all-padding row
    would attend to nothing)."""
    batches: list[list[tuple[int, ...]]] = []
    for c in contexts:
        own = len(c) - 1 - shared
        if batches:
            head = batches[-1]
            width = len(head[0]) - 1 - shared  # the batch's widest part (sorted longest first)
            same_kind = shared > 0 or (own > 0) == (width > 0)
            little_padding = 4 * (width - own) <= width + 16  # at most ~a quarter of the row padded
            if (
                same_kind
                and little_padding
                and (len(head) + 1) * (shared + max(width, 1)) <= max_batch_tokens
            ):
                head.append(c)
                continue
        batches.append([c])
    return batches


def position_bytes(model: torch.nn.Module) -> int:
    """Rough device bytes one token position of a backend pass holds: its keys and values in
    every layer twice (a cache row copied, then extended), the hidden activations of a block,
    and a share of the logits (float32 logits and their log-softmax, 8 bytes a vocabulary entry,
    at no more than an eighth of a pass's positions: ``vocab_size`` bytes a position)."""
    config: Any = cast(Any, model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    width = next(cast(Any, model).parameters()).element_size()
    kv = int(config.num_hidden_layers) * 2 * kv_heads * head_dim * width
    activations = (4 * hidden + 2 * int(inner or 4 * hidden)) * width
    return 2 * kv + activations + int(config.vocab_size)


def default_max_batch_tokens(
    model: torch.nn.Module, batch_size: int, free_bytes: int | None = None
) -> int:
    """Token positions per pass when none are given: ``512 * batch_size``; on CUDA up to four
    times that, as far as a quarter of the free device memory (``free_bytes``, else asked of
    CUDA) holds them (:func:`position_bytes`). On a GPU each pass costs tens of milliseconds of
    kernel launches whatever its size (SmolLM2-135M on an H100 node, 2026-12-07: 25-45 ms), so
    fewer, larger passes are faster; on a CPU the passes are compute-bound and the budget stays.
    A model whose config lacks the size fields :func:`position_bytes` reads keeps the base."""
    base = 512 * int(batch_size)
    if free_bytes is None:
        device = next(model.parameters()).device
        if device.type != "cuda":
            return base
        free_bytes, _ = torch.cuda.mem_get_info(device)
    try:
        per_position = position_bytes(model)
    except (AttributeError, TypeError, ValueError):  # a config without the usual size fields
        return base
    return max(base, min(4 * base, int(free_bytes // 4 // per_position)))
