"""Batched greedy decoding for :class:`avsslib.eval_backend.CachedLM` (its ``generate_until``):
when the harness's generation arguments allow plain argmax decoding (:func:`greedy_ok`), and
the decoding itself (:func:`greedy_tokens`), on ``CachedLM``'s pass plumbing. Writes no files.
"""

from __future__ import annotations

from typing import Any

import torch

from avsslib.kv_cache import pad_ids

GREEDY_DEFAULTS: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "num_beams": 1,
    "exponential_decay_length_penalty": None,
}
"""``generation_config`` fields that change what greedy decoding picks, at their neutral values."""


def greedy_ok(lm: Any, kwargs: dict[str, Any]) -> bool:
    """Whether these generation arguments and ``lm``'s model decode greedily as plain argmax
    (no sampling, no extra arguments, no ``think_end_token``, and no ``generation_config``
    field away from its neutral value, :data:`GREEDY_DEFAULTS`)."""
    if lm.think_end_token is not None:
        return False
    if kwargs.get("do_sample") or set(kwargs) - {"do_sample", "temperature"}:
        return False
    config = getattr(lm.model, "generation_config", None)
    for key, neutral in GREEDY_DEFAULTS.items():
        value = getattr(config, key, None)
        if value not in (None, neutral, [], {}):
            return False
    return True


def eos_ids(model: Any) -> set[int]:
    """The token ids that end a generation: ``generation_config``'s EOS, else the config's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = model.config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def greedy_tokens(
    lm: Any, prompts: list[list[int]], until: list[str], max_gen: int
) -> list[list[int]]:
    """Greedy tokens after each prompt (left padded batch, ``DynamicCache``); a row stops at
    an EOS id (kept), at a stop string in its decoded text, or after ``max_gen`` tokens.

    The tokens are read back after blocks of 1, 2, 4, ... steps, at most ``lm.check_every``
    (8 on CUDA, 1 elsewhere), not at every step, so the CPU queues the next steps while the
    GPU runs; a row that finished inside a block has run on for the rest of it, and its
    tokens after its first EOS id are dropped (the harness's batches run finished rows on
    the same way, and cut the text at the first stop string)."""
    width = max(len(p) for p in prompts)
    mask = lm._to_device(pad_ids([[1] * len(p) for p in prompts], width, 0, left=True))
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = lm._new_cache()
    logits = lm._forward(
        input_ids=lm._to_device(pad_ids(prompts, width, lm._pad_id, left=True)),
        attention_mask=mask,
        position_ids=position_ids,
        cache=cache,
        **lm._keep_last,
    ).logits[:, -1]
    ends_at = eos_ids(lm.model)
    stops = [s for s in until if s]
    out: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    next_pos = mask.sum(-1)
    step, size = 0, 1
    while True:
        block = []
        for _ in range(min(size, max_gen - step)):
            tokens = logits.argmax(-1)
            block.append(tokens)
            step += 1
            if step == max_gen:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            logits = lm._forward(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                cache=cache,
            ).logits[:, -1]
            next_pos = next_pos + 1
        keep = []
        for row, (k, new) in enumerate(zip(active, torch.stack(block, 1).tolist(), strict=True)):
            ends = [j for j, t in enumerate(new) if t in ends_at]
            out[k].extend(new[: ends[0] + 1] if ends else new)
            done = bool(ends) or step == max_gen or any(s in lm.tok_decode(out[k]) for s in stops)
            if not done:
                keep.append(row)
        if not keep:
            return out
        size = min(2 * size, lm.check_every)
        if len(keep) < len(active):
            index = lm._to_device(keep)
            cache.batch_select_indices(index)
            mask, next_pos, logits = mask[index], next_pos[index], logits[index]
            active = [active[r] for r in keep]
