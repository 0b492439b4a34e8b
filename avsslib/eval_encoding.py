"""The harness's request encoding, done in batches (for :class:`avsslib.eval_backend.CachedLM`).

``HFLM.loglikelihood`` encodes each request on its own: its ``_encode_pair`` moves the trailing
spaces of the context to the continuation, then tokenizes context + continuation and the context,
one tokenizer call each. On an H100, TruthfulQA MC1's 2,562 requests spent 1.8 s of 4.4 s in
those 5,124 calls (cProfile of ``CachedLM``, 2026-12-07), more than in the forward passes.
:func:`pair_strings` lists the distinct strings a call will encode, and :func:`encode_strings`
tokenizes them in one tokenizer call per special-token setting, with ``HFLM.tok_encode``'s rule
for that setting. :class:`BatchedEncoding` (a base of ``CachedLM``) answers ``tok_encode`` from
that table, so the harness's own ``_encode_pair`` still decides what is encoded; ``tests/test_eval_backend.py`` holds the table
to ``HFLM.tok_encode``. :func:`encode_prompts` does the same for generation prompts, with
``HFLM.tok_batch_encode``'s rule for a prompt alone. Writes no files.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix


def pair_strings(pairs: Iterable[tuple[str, str]]) -> set[str]:
    """The strings ``_encode_pair`` tokenizes for these ``(context, continuation)`` pairs: for
    each non-empty context, the context without its trailing whitespace, and that plus the
    whitespace and the continuation. (An empty context is encoded otherwise by the harness.)"""
    out: set[str] = set()
    for context, continuation in pairs:
        if context:
            stripped = context.rstrip()
            out.update((stripped, context + continuation))
    return out


def encode_strings(lm: Any, strings: Iterable[str]) -> dict[str, list[int]]:
    """``{string: lm.tok_encode(string)}`` for an ``HFLM`` ``lm``, computed with one tokenizer call
    per special-token setting: ``add_special_tokens`` follows ``lm.add_bos_token``, and is off for
    a string that already starts with the prefix token (``HFLM.tok_encode``'s rule)."""
    bos = lm.tokenizer.decode(lm.prefix_token_id)
    groups: dict[tuple[tuple[str, Any], ...], list[str]] = {}
    for string in strings:
        kwargs = _add_special_kwargs(None, lm.add_bos_token)
        if has_bos_prefix(string, bos):
            kwargs["add_special_tokens"] = False
        groups.setdefault(tuple(sorted(kwargs.items())), []).append(string)
    out: dict[str, list[int]] = {}
    for key, group in groups.items():
        ids = lm.tokenizer(group, **dict(key))["input_ids"]
        out.update(zip(group, ids, strict=True))
    return out


def encode_prompts(lm: Any, prompts: list[str], left_truncate_len: int) -> list[list[int]]:
    """Each generation prompt's token ids as ``HFLM.tok_batch_encode([prompt], ...)`` gives
    them for that prompt alone (its special-token rule, ``lm.truncation``, then the last
    ``left_truncate_len`` tokens), in one tokenizer call per special-token setting."""
    bos = getattr(lm.tokenizer, "bos_token", None)
    groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
    for k, prompt in enumerate(prompts):
        kwargs: dict[str, Any] = {}
        if lm.backend == "causal":
            if has_bos_prefix(prompt, bos):
                kwargs = {"add_special_tokens": False}
            elif lm.add_bos_token is not None:
                kwargs = {"add_special_tokens": lm.add_bos_token}
        groups.setdefault(tuple(sorted(kwargs.items())), []).append(k)
    out: list[list[int]] = [[] for _ in prompts]
    for key, members in groups.items():
        ids = lm.tokenizer([prompts[k] for k in members], truncation=lm.truncation, **dict(key))[
            "input_ids"
        ]
        for k, row in zip(members, ids, strict=True):
            out[k] = list(row[-left_truncate_len:]) if left_truncate_len else list(row)
    return out


class BatchedEncoding(HFLM):
    """``HFLM`` whose ``loglikelihood`` encodes, beforehand and in batches, every string its
    ``_encode_pair`` will tokenize."""

    _encoded: dict[str, list[int]] = {}  # replaced (never changed) for each loglikelihood call

    def loglikelihood(
        self, requests: list[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """``HFLM.loglikelihood`` with the strings of its requests encoded in batches."""
        self._encoded = encode_strings(self, pair_strings(r.args for r in requests))
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._encoded = {}

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """``HFLM.tok_encode``, answered from the batch encoded for this call when it holds it."""
        if add_special_tokens is None and not left_truncate_len and not kwargs:
            if (ids := self._encoded.get(string)) is not None:
                return list(ids)
        return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
