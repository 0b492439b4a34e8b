"""Our lm-evaluation-harness model backend: shared contexts encoded once, their KV cache reused.

:class:`CachedLM` subclasses the harness's ``HFLM`` (through
:class:`~avsslib.eval_encoding.BatchedEncoding`, which tokenizes a call's requests in batches
with the harness's own rules) and replaces the two methods where the time goes, keeping
everything else (tokenisation rules, request plumbing, chat templates, caching hooks):

``_loglikelihood_tokens`` (``loglikelihood``, multiple choice, rolling perplexity)
    The harness runs every (context, continuation) pair in full. Here requests are grouped by
    their context (the question shared by its answer choices) and the context prefix shared by
    every request of the call (the few-shot preamble) is found. Three stages then run:

    1. the shared prefix ``P`` once, batch 1, into a ``DynamicCache``;
    2. per batch of contexts, each context's tokens after ``P`` except its last token, right
       padded, on top of ``P``'s cache expanded to the batch (explicit ``position_ids``, a full
       2-D attention mask with the padding as zeros);
    3. per batch of continuations, ``[last context token] + continuation[:-1]``, right padded,
       on a copy of its context's cache row (``index_select`` along the batch), with explicit
       ``position_ids`` (the real positions, not the padded column) and a full attention mask.

    The logits of stage 3 are exactly those the harness scores; only they are turned into
    log-probabilities (the harness takes ``log_softmax`` over every padded position).
    Request semantics are the harness's: the same ``(context, continuation)`` token lists
    (tokenised by ``HFLM``'s own ``_encode_pair``, trailing context spaces moved to the
    continuation), the same left truncation ``(context + continuation)[-(max_length + 1):]``,
    the same ``log_softmax`` dtype (``softmax_dtype``, else the logits' dtype), the sum of the
    continuation's log-probabilities and ``is_greedy`` (argmax equals the continuation at every
    position). Only floating-point rounding differs (the parity tests hold it below 1e-4 in
    float32).

``generate_until`` (greedy generation; the decoding is :mod:`avsslib.eval_greedy`)
    Requests are sorted longest first (as the harness does), tokenised as ``HFLM``'s
    ``tok_batch_encode`` would tokenise each alone (so the ``has_bos_prefix`` rule applies to
    each prompt, not to the first prompt of a harness batch; one tokenizer call for all,
    :func:`~avsslib.eval_encoding.encode_prompts`), left truncated to ``max_length -
    max_gen_toks``, left padded, and decoded greedily: the prompts on a ``DynamicCache``, the
    steps after them on it too or, on a GPU, as a replayed CUDA graph on a ``StaticCache``
    (``CachedLM.decode``). A sequence is done as soon as it emits one of the model's EOS ids or
    its decoded text contains a stop string, or after ``max_gen_toks`` tokens, and leaves the
    batch (on a static cache, once half the batch is done); its text is decoded and cut at the
    first stop string exactly as the harness does. Because the harness also cuts at the first stop string, the
    tokens it keeps generating for a finished row (until every row of its batch is done) never
    change the answer. Rows per batch follow a token budget rather than ``batch_size``, so far
    more rows run at once (decoding is memory-bound).

Where cache reuse is not known to be safe the plain ``HFLM`` methods run instead
(:func:`cache_reuse_support` says why): encoder-decoder models, attention implementations other
than ``eager``/``sdpa`` (flash-attention kernels align the causal mask to the padded columns),
caches that are not plain ``DynamicLayer`` s (sliding-window or hybrid models such as Mistral and
Gemma 2/3, where a window measured in padded columns would be wrong), and architectures outside
:data:`REUSE_ARCHITECTURES`, the ones the parity tests cover. Generation also falls back for
sampling, extra generation arguments, ``think_end_token``, and models whose
``generation_config`` would change greedy decoding (repetition penalty, banned words, ...).

The cache helpers (:func:`cache_reuse_support`, :func:`select_rows`, :func:`common_prefix`)
live in :mod:`avsslib.kv_cache` and are importable from here too. Writes no files.

Memory: one forward pass holds at most ``max_batch_tokens`` token positions (rows x (cached +
new) columns; default :func:`~avsslib.kv_cache.default_max_batch_tokens`: ``512 * batch_size``,
up to four times that on CUDA where memory allows) and computes logits at no more than an eighth of
that; a single request longer than that runs alone.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from avsslib.eval_encoding import BatchedEncoding, encode_prompts
from avsslib.eval_greedy import default_decode, greedy_ok, greedy_tokens
from avsslib.kv_cache import (
    REUSE_ARCHITECTURES,
    cache_reuse_support,
    common_prefix,
    context_batches,
    default_max_batch_tokens,
    pad_ids,
    select_rows,
    shared_prefix,
)


@dataclass
class _Requests:
    """One ``_loglikelihood_tokens`` call: each request's ``(context, continuation)`` after left
    truncation, the request indices of each distinct context, the length of the prefix shared
    by all contexts and its cache (``None`` when empty), and the answers as the passes queue
    them: ``(request indices, log-likelihoods, greedy flags)``, the two tensors still on the
    device (read back once, when every pass is queued)."""

    prepared: list[tuple[tuple[int, ...], tuple[int, ...]]]
    groups: dict[tuple[int, ...], list[int]]
    shared: int
    prefix_cache: Any
    pending: list[tuple[list[int], torch.Tensor, torch.Tensor]]

    def answers(self) -> list[tuple[float, bool]]:
        """Every request's ``(log-likelihood, is_greedy)``, in request order (one transfer)."""
        order = [i for indices, _, _ in self.pending for i in indices]
        sums = torch.cat([s for _, s, _ in self.pending]).tolist()
        flags = torch.cat([f for _, _, f in self.pending]).tolist()
        out: list[tuple[float, bool] | None] = [None] * len(self.prepared)
        for i, total, flag in zip(order, sums, flags, strict=True):
            out[i] = (float(total), bool(flag))
        assert all(a is not None for a in out), "a request was not scored"
        return out  # type: ignore[return-value]


class CachedLM(BatchedEncoding):
    """``HFLM`` with shared-context KV-cache reuse, batched greedy generation (module doc) and
    batched request encoding (:class:`~avsslib.eval_encoding.BatchedEncoding`).

    Args:
        pretrained, tokenizer: an in-memory causal LM and its tokenizer (as for ``HFLM``).
        batch_size: the harness batch size; sets the default token budget.
        max_length: the harness context length.
        max_batch_tokens: token positions per forward pass (rows x (cached + new) columns);
            ``None`` = :func:`~avsslib.kv_cache.default_max_batch_tokens`.
        **kwargs: passed to ``HFLM``.

    Attributes: ``reuse_cache`` and ``reuse_reason`` (:func:`cache_reuse_support`);
    ``decode``, how greedy steps run (:data:`~avsslib.eval_greedy.DECODE_MODES`, default
    :func:`~avsslib.eval_greedy.default_decode`); ``check_every``, the steps between read-backs.
    """

    def __init__(
        self,
        pretrained: Any,
        tokenizer: Any = None,
        *,
        batch_size: int = 8,
        max_length: int | None = None,
        max_batch_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            pretrained=pretrained,
            tokenizer=tokenizer,
            batch_size=batch_size,
            max_length=max_length,
            **kwargs,
        )
        self.max_batch_tokens = int(
            max_batch_tokens or default_max_batch_tokens(self.model, int(batch_size))
        )
        # the most greedy steps between reading the tokens back (``eval_greedy``): on a CPU every
        # step, since a finished row's extra steps cost compute there, not just launches
        self.check_every = 8 if self.device.type == "cuda" else 1
        self.max_logit_tokens = max(1, self.max_batch_tokens // 8)
        self.reuse_cache, self.reuse_reason = (
            cache_reuse_support(self.model)
            if self.backend == "causal"
            else (False, "not a causal LM")
        )
        params = inspect.signature(self.model.forward).parameters
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._cache_arg = (
            "cache" if "cache" in params else "past_key_values"
        )  # transformers 5 renames it
        # how greedy decoding steps run (``eval_greedy``): a CUDA graph of the step on a GPU
        self.decode = (
            default_decode(self.model, self.device, self.mixed_precision_dtype is not None)
            if self.reuse_cache
            else "dynamic"
        )

    # ------------------------------------------------------------ plumbing

    def _forward(self, cache: Any = None, **inputs: Any) -> Any:
        """``model(**inputs)`` under the harness's autocast setting, extending ``cache`` in place."""
        if cache is not None:
            inputs[self._cache_arg] = cache
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.model(use_cache=True, **inputs)

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _to_device(self, data: Any) -> torch.Tensor:
        """``data`` (a CPU tensor or a nested list of ints) on the model's device. On CUDA it
        goes through pinned memory without blocking: a copy from pageable memory would wait for
        every queued kernel, and the CPU could not prepare the next pass while the GPU runs."""
        tensor = data if isinstance(data, torch.Tensor) else torch.tensor(data)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def _encode_after_prefix(
        self, parts: list[tuple[int, ...]], shared: int, prefix_cache: Any, **extra: Any
    ) -> tuple[Any, torch.Tensor]:
        """One forward pass over ``parts`` (token rows, right padded) placed after the ``shared``
        positions of ``prefix_cache`` (each row on its own copy; a new cache when ``None``):
        ``(cache, logits)``. No attention mask is passed: with right padding and causal
        attention a real position never sees a padded one, so the logits and the cached keys and
        values at real positions are those of the unpadded rows (a later pass that reads this
        cache must mask the padded columns). Without a mask the attention kernels run their
        plain causal path."""
        width = max(len(p) for p in parts)
        device = self.device
        cache = (
            select_rows(prefix_cache, torch.zeros(len(parts), dtype=torch.long, device=device))
            if prefix_cache is not None
            else self._new_cache()
        )
        out = self._forward(
            input_ids=self._to_device(pad_ids(parts, width, self._pad_id)),
            position_ids=(shared + torch.arange(width, device=device)).expand(len(parts), width),
            cache=cache,
            **extra,
        )
        return cache, out.logits

    # ------------------------------------------------------------ log-likelihood

    def request_tokens(
        self, context: list[int], continuation: list[int]
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(context, continuation)`` token ids of one request after the harness's left
        truncation ``(context + continuation)[-(max_length + 1):]``."""
        assert len(context) > 0 and len(continuation) > 0
        assert len(continuation) <= self.max_length
        full = (list(context) + list(continuation))[-(self.max_length + 1) :]
        return tuple(full[: -len(continuation)]), tuple(continuation)

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """Log-likelihood and greedy flag of each ``(key, context_tokens, continuation_tokens)``,
        in request order (the harness's semantics; module doc)."""
        if not requests:
            return []
        if not self.reuse_cache:
            return super()._loglikelihood_tokens(
                requests, disable_tqdm=disable_tqdm, override_bs=override_bs
            )
        prepared = [
            self.request_tokens(context, continuation) for _, context, continuation in requests
        ]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (prefix, _) in enumerate(prepared):
            groups.setdefault(prefix, []).append(i)
        contexts = sorted(groups, key=lambda c: (-len(c), c))
        shared = shared_prefix(contexts)
        prefix_cache = self._new_cache() if shared else None
        if shared:
            self._forward(
                input_ids=torch.tensor([shared], device=self.device),
                attention_mask=torch.ones(1, len(shared), dtype=torch.long, device=self.device),
                position_ids=torch.arange(len(shared), device=self.device)[None],
                cache=prefix_cache,
                **self._keep_last,
            )
        call = _Requests(prepared, groups, len(shared), prefix_cache, [])
        bar = tqdm(
            total=len(requests),
            disable=disable_tqdm or self.rank != 0,
            desc="log-likelihood (cached contexts)",
        )
        for batch in context_batches(contexts, len(shared), self.max_batch_tokens):
            self._score_contexts(call, batch, bar)
        bar.close()
        results = call.answers()
        for (key, _, _), answer in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def _score_contexts(self, call: _Requests, batch: list[tuple[int, ...]], bar: Any) -> None:
        groups, shared = call.groups, call.shared
        if all(len(call.prepared[i][1]) == 1 for c in batch for i in groups[c]):
            self._score_next_tokens(call, batch)
            bar.update(sum(len(groups[c]) for c in batch))
            return
        parts = [c[shared:-1] for c in batch]
        width = max(len(p) for p in parts)
        if width > 0:  # stage 2: each context after the shared prefix, but its last token
            cache, _ = self._encode_after_prefix(
                parts, shared, call.prefix_cache, **self._keep_last
            )
            own = (
                torch.arange(width)[None] < torch.tensor([len(p) for p in parts])[:, None]
            ).long()
            context_mask = torch.cat([torch.ones(len(batch), shared, dtype=torch.long), own], 1)
            context_mask = self._to_device(context_mask)
        else:
            context_mask = torch.ones(1, shared, dtype=torch.long, device=self.device)
            cache = call.prefix_cache
        cached = shared + width
        rows = sorted(
            ((g, i) for g, c in enumerate(batch) for i in groups[c]),
            key=lambda r: -len(call.prepared[r[1]][1]),
        )
        start = 0
        while start < len(rows):  # stage 3: continuations on copies of their context's row
            longest = len(call.prepared[rows[start][1]][1])
            size = max(
                1,
                min(self.max_batch_tokens // (cached + longest), self.max_logit_tokens // longest),
            )
            chunk = rows[start : start + size]
            start += len(chunk)
            self._score_continuations(call, chunk, batch, cache, context_mask, cached)
            bar.update(len(chunk))

    def _score_next_tokens(self, call: _Requests, batch: list[tuple[int, ...]]) -> None:
        """Stages 2 and 3 in one pass where every continuation of the batch is one token (binary
        and letter-choice tasks): each context after the shared prefix, its last token included,
        right padded; the logits at each row's last real position score all its continuations
        (``HFLM`` shares one-token continuations the same way)."""
        device, shared = self.device, call.shared
        parts = [c[shared:] for c in batch]
        last = torch.tensor([len(p) - 1 for p in parts])
        keep = torch.unique(last)  # the columns whose logits are needed
        extra = {"logits_to_keep": self._to_device(keep)} if self._keep_last else {}
        _, logits = self._encode_after_prefix(parts, shared, call.prefix_cache, **extra)
        column = torch.searchsorted(keep, last) if extra else last
        rows = logits[
            torch.arange(len(batch), device=device), self._to_device(column)
        ]  # (contexts, vocab)
        logp = F.log_softmax(rows, dim=-1, dtype=self.softmax_dtype)
        pairs = [(g, i) for g, c in enumerate(batch) for i in call.groups[c]]
        row = self._to_device([g for g, _ in pairs])
        target = self._to_device([call.prepared[i][1][0] for _, i in pairs])
        hits = logp.argmax(-1)[row] == target
        call.pending.append(([i for _, i in pairs], logp[row, target], hits))

    def _score_continuations(
        self,
        call: _Requests,
        chunk: list[tuple[int, int]],
        batch: list[tuple[int, ...]],
        cache: Any,
        context_mask: torch.Tensor,
        cached: int,
    ) -> None:
        """Stage 3 for ``chunk`` (pairs of batch row, request index): each continuation after
        the last context token, right padded, on a copy of its context's cache row."""
        prepared = call.prepared
        device = self.device
        inputs = [(batch[g][-1], *prepared[i][1][:-1]) for g, i in chunk]
        width = max(len(x) for x in inputs)
        lengths = torch.tensor([len(x) for x in inputs])
        own = torch.arange(width)[None] < lengths[:, None]
        # the scored (row, column)s of the flattened pass
        real = self._to_device(torch.arange(len(chunk) * width)[own.flatten()])
        rows = self._to_device([g if context_mask.shape[0] > 1 else 0 for g, _ in chunk])
        mask = torch.cat([context_mask.index_select(0, rows), self._to_device(own.long())], 1)
        starts = self._to_device([len(batch[g]) - 1 for g, _ in chunk])
        position_ids = starts[:, None] + torch.arange(width, device=device)[None]
        past = select_rows(cache, rows) if cache is not None else None
        logits = self._forward(
            input_ids=self._to_device(pad_ids(inputs, width, self._pad_id)),
            attention_mask=mask,
            position_ids=position_ids,
            cache=past,
        ).logits  # (rows, width, vocab)
        logp = F.log_softmax(
            logits.flatten(0, 1).index_select(0, real), dim=-1, dtype=self.softmax_dtype
        )  # (tokens, vocab)
        targets = self._to_device([t for _, i in chunk for t in prepared[i][1]])
        picked = logp.gather(-1, targets[:, None])[:, 0]
        greedy = logp.argmax(-1) == targets
        # per-row sums and flags on the device, each row's tokens back in place (zeros and
        # True at the padding), so that nothing waits for the GPU before the last pass
        size = len(chunk) * width
        sums = picked.new_zeros(size).index_copy_(0, real, picked).view(-1, width).sum(1)
        flags = greedy.new_ones(size).index_copy_(0, real, greedy).view(-1, width).all(1)
        call.pending.append(([i for _, i in chunk], sums, flags))

    # ------------------------------------------------------------ generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations of ``req.args = (context, gen_kwargs)``, cut at the stop strings."""
        from lm_eval.models.utils import (
            handle_stop_sequences,
            normalize_gen_kwargs,
            postprocess_generated_text,
        )

        by_kwargs: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_kwargs.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        results: list[str | None] = [None] * len(requests)
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        bar = tqdm(
            total=len(requests), disable=disable_tqdm or self.rank != 0, desc="greedy generation"
        )
        for members in by_kwargs.values():
            gen_kwargs = requests[members[0]].args[1]
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            if not self.reuse_cache or not greedy_ok(self, kwargs):
                for i, text in zip(
                    members,
                    super().generate_until([requests[i] for i in members], disable_tqdm),
                    strict=True,
                ):
                    results[i] = text
                bar.update(len(members))
                continue
            assert self.max_length - max_gen > 0, (
                f"max_gen_toks ({max_gen}) must be below max_length ({self.max_length})."
            )
            prompts = encode_prompts(
                self, [requests[i].args[0] for i in members], self.max_length - max_gen
            )
            encoded = dict(zip(members, prompts, strict=True))
            order = sorted(members, key=lambda i: (-len(encoded[i]), requests[i].args[0]))
            start = 0
            while start < len(order):
                size = max(1, self.max_batch_tokens // (len(encoded[order[start]]) + max_gen))
                chunk = order[start : start + size]
                start += len(chunk)
                for i, tokens in zip(
                    chunk,
                    greedy_tokens(self, [encoded[i] for i in chunk], until, max_gen),
                    strict=True,
                ):
                    text = postprocess_generated_text(self.tok_decode(tokens), until, None)
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def prompt_tokens(self, text: str, max_gen: int) -> list[int]:
        """Token ids of one generation prompt: ``HFLM``'s ``tok_batch_encode`` on it alone (so
        its ``has_bos_prefix`` rule applies to this prompt), left truncated to ``max_length -
        max_gen``."""
        ids, _ = self.tok_batch_encode(
            [text], left_truncate_len=self.max_length - max_gen, truncation=self.truncation
        )
        return ids[0].tolist()


__all__ = ["REUSE_ARCHITECTURES", "CachedLM", "cache_reuse_support", "common_prefix", "select_rows"]
