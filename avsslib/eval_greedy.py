"""Batched greedy decoding for :class:`avsslib.eval_backend.CachedLM` (its ``generate_until``):
when the harness's generation arguments allow plain argmax decoding (:func:`greedy_ok`), and
the decoding itself (:func:`greedy_tokens`), on ``CachedLM``'s pass plumbing. Writes no files.

A decode step runs one of three ways (``CachedLM.decode``):

- ``"dynamic"``: on the prefill's ``DynamicCache``, which grows by a column a step; rows that
  finished are dropped from the batch. The default off CUDA, where a step's cost is its compute.
- ``"static"``: on a ``StaticCache`` of fixed width (prompt + ``max_gen`` columns) with an
  explicit attention mask; the batch keeps its rows to the end. Tested on the CPU against the
  harness; the shape a CUDA graph needs.
- ``"graph"``: ``"static"`` with the step captured once as a CUDA graph and replayed. On a GPU
  a small model's step is bound by the host launching its kernels (SmolLM2-135M on an H100,
  2026-12-07: ~1,150 launches a step, kernels 0.90 s of TriviaQA's 2.97 s), and a replay
  launches them all at once. The default on CUDA with ``sdpa`` attention.
"""

from __future__ import annotations

from typing import Any

import torch

from avsslib.errors import ConfigError
from avsslib.kv_cache import REUSE_ARCHITECTURES, pad_ids

DECODE_MODES = ("dynamic", "static", "graph")

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


GRAPH_ARCHITECTURES = frozenset(REUSE_ARCHITECTURES - {"gptj"})
"""``config.model_type`` values whose decode step may run on a ``StaticCache`` with an explicit
4-D mask (tested against the ``DynamicCache`` step; GPT-J's attention under transformers 5.17
reads such a mask otherwise)."""


def static_decode_support(model: Any) -> tuple[bool, str]:
    """Whether ``model``'s decode steps may run on a ``StaticCache`` with a boolean 4-D mask
    (``decode="static"`` or ``"graph"``): ``(ok, reason)``. Needs a model type of
    :data:`GRAPH_ARCHITECTURES`, ``sdpa`` attention (eager attention adds the mask to its
    scores, so a boolean mask would mask nothing), full-attention cache layers only (a sliding
    window layer keeps fewer columns than the mask) and a rotary embedding that does not rescale
    with the positions it sees (``dynamic`` and ``longrope`` may read them on the host, which a
    graph cannot replay)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = model.config
    if config.model_type not in GRAPH_ARCHITECTURES:
        return False, f"model type {config.model_type!r} is not among GRAPH_ARCHITECTURES"
    impl = getattr(config, "_attn_implementation", None)
    if impl != "sdpa":
        return False, f"attention implementation {impl!r} (a static step needs sdpa)"
    if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=config).layers):
        return False, "sliding-window or hybrid cache layers"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = (
        str(rope.get("rope_type", rope.get("type", "default"))) if isinstance(rope, dict) else ""
    )
    if "dynamic" in rope_type or "longrope" in rope_type:
        return False, f"rotary scaling {rope_type!r}"
    return True, "a static cache with an explicit mask"


def default_decode(model: Any, device: torch.device, mixed_precision: bool) -> str:
    """``"graph"`` on CUDA for a model in its own dtype that :func:`static_decode_support`
    accepts; ``"dynamic"`` otherwise (on a CPU a step's cost is its compute)."""
    if device.type == "cuda" and not mixed_precision and static_decode_support(model)[0]:
        return "graph"
    return "dynamic"


def eos_ids(model: Any) -> set[int]:
    """The token ids that end a generation: ``generation_config``'s EOS, else the config's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = model.config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


class DynamicSteps:
    """Decode steps on the prefill's ``DynamicCache`` (``decode="dynamic"``): each step appends
    a mask column and a cache column; :meth:`keep` drops finished rows, as soon as any finish."""

    @staticmethod
    def shrink(kept: int, rows: int) -> bool:
        """Whether to drop the finished rows when ``kept`` of ``rows`` go on."""
        return kept < rows

    def __init__(self, lm: Any, cache: Any, mask: torch.Tensor, next_pos: torch.Tensor) -> None:
        self.lm, self.cache, self.mask, self.next_pos = lm, cache, mask, next_pos

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """The next-token logits after feeding ``tokens`` (shape (rows,))."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        logits = self.lm._forward(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.next_pos[:, None],
            cache=self.cache,
        ).logits[:, -1]
        self.next_pos = self.next_pos + 1
        return logits

    def keep(self, index: torch.Tensor) -> None:
        """Keep only batch rows ``index``."""
        self.cache.batch_select_indices(index)
        self.mask, self.next_pos = self.mask[index], self.next_pos[index]


class StaticSteps:
    """Decode steps on a ``StaticCache`` holding the prefill's keys and values and room for
    ``max_gen`` more columns (``decode="static"``, or ``"graph"`` to replay the step as a CUDA
    graph). Every input of a step lives in a buffer of fixed address (token ids, positions, a
    boolean 4-D attention mask over the cache's columns) that the host updates in place, and
    the cache advances its own write position on the device, so a captured step can be
    replayed.

    Finished rows run on (a graph has a fixed shape) until no more than half the rows go on;
    then :meth:`keep` copies the others' columns into a smaller cache and the next step is
    captured anew. Without that, a batch whose last row runs to ``max_gen`` tokens spends most
    of its steps on rows that are done (TriviaQA on an H100: kernels 1.84 s against 0.90 s).

    The first step runs eagerly (on a side stream, as CUDA graph capture wants the model's
    lazy initialisation done first); the second is captured, then replayed as every later one.
    The logits a step returns are overwritten by the next replay: read them first."""

    @staticmethod
    def shrink(kept: int, rows: int) -> bool:
        """Whether to drop the finished rows when ``kept`` of ``rows`` go on: at half or fewer."""
        return 2 * kept <= rows

    def __init__(
        self,
        lm: Any,
        cache: Any,
        mask: torch.Tensor,
        next_pos: torch.Tensor,
        max_gen: int,
        *,
        graph: bool,
    ) -> None:
        rows, width = mask.shape
        self.lm, self.graph, self.column, self.columns = lm, graph, width, width + max_gen
        self.cache = self._static_cache([(layer.keys, layer.values) for layer in cache.layers])
        self.ids = torch.zeros((rows, 1), dtype=torch.long, device=mask.device)
        self.pos = next_pos[:, None].clone()
        self.mask = torch.zeros((rows, 1, 1, self.columns), dtype=torch.bool, device=mask.device)
        self.mask[:, 0, 0, :width] = mask.bool()
        self._graph: Any = None
        self._logits: torch.Tensor | None = None
        self._steps = 0

    def _static_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
        """A ``StaticCache`` of ``self.columns`` columns holding ``layers``' keys and values in
        its first columns (its write position after them)."""
        from transformers import StaticCache

        static = StaticCache(config=self.lm.model.config, max_cache_len=self.columns)
        for i, (keys, values) in enumerate(layers):
            static.update(keys, values, i)
        return static

    def _step(self) -> torch.Tensor:
        return self.lm._forward(
            input_ids=self.ids, attention_mask=self.mask, position_ids=self.pos, cache=self.cache
        ).logits[:, -1]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """The next-token logits after feeding ``tokens`` (shape (rows,))."""
        self.ids.copy_(tokens[:, None])
        self.mask[:, 0, 0, self.column] = True
        if not self.graph:
            logits = self._step()
        elif self._steps == 0:
            side = torch.cuda.Stream(device=self.ids.device)
            side.wait_stream(torch.cuda.current_stream(self.ids.device))
            with torch.cuda.stream(side):
                logits = self._step()
            torch.cuda.current_stream(self.ids.device).wait_stream(side)
        else:
            if self._graph is None:
                self._graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._graph):
                    self._logits = self._step()
            self._graph.replay()
            assert self._logits is not None
            logits = self._logits
        self.pos.add_(1)
        self.column += 1
        self._steps += 1
        return logits

    def keep(self, index: torch.Tensor) -> None:
        """Keep only batch rows ``index``: a new, smaller cache and step buffers, and (with
        ``graph``) a new capture at the next step (the model is warm by then: no eager step)."""
        filled = slice(0, self.column)
        self.cache = self._static_cache(
            [
                (layer.keys[index][:, :, filled], layer.values[index][:, :, filled])
                for layer in self.cache.layers
            ]
        )
        self.ids, self.pos, self.mask = self.ids[index], self.pos[index], self.mask[index]
        self._graph = self._logits = None


def checked_decode(lm: Any) -> str:
    """``lm.decode`` (``"dynamic"`` if unset), once it is known and the model can run it;
    else a ``ConfigError`` that says why."""
    decode = getattr(lm, "decode", "dynamic")
    if decode not in DECODE_MODES:
        raise ConfigError(f"decode = {decode!r}: choose one of {', '.join(DECODE_MODES)}.")
    if decode != "dynamic":
        ok, why = static_decode_support(lm.model)
        if not ok:
            raise ConfigError(f"decode = {decode!r} cannot run on this model: {why}.")
    return decode


def decode_steps(
    lm: Any, cache: Any, mask: torch.Tensor, max_gen: int, decode: str
) -> DynamicSteps | StaticSteps:
    """The decode steps after a prefill into ``cache`` of the rows ``mask`` (left padded) marks,
    run as ``decode`` (:func:`checked_decode`) says, with room for ``max_gen`` tokens."""
    if decode == "dynamic" or max_gen == 1:
        return DynamicSteps(lm, cache, mask, mask.sum(-1))
    return StaticSteps(lm, cache, mask, mask.sum(-1), max_gen, graph=decode == "graph")


def greedy_tokens(
    lm: Any, prompts: list[list[int]], until: list[str], max_gen: int
) -> list[list[int]]:
    """Greedy tokens after each prompt (left padded batch); a row stops at an EOS id (kept), at
    a stop string in its decoded text, or after ``max_gen`` tokens. The prefill runs on a
    ``DynamicCache``; the steps after it as ``lm.decode`` says (module doc).

    The tokens are read back after blocks of 1, 2, 4, ... steps, at most ``lm.check_every``
    (8 on CUDA, 1 elsewhere), not at every step, so the CPU queues the next steps while the
    GPU runs; a row that finished inside a block (or, on a static cache, at any time before the
    last row) has run on, and its tokens after its first EOS id are dropped (the harness's
    batches run finished rows on the same way, and cut the text at the first stop string)."""
    decode = checked_decode(lm)
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
    steps = decode_steps(lm, cache, mask, max_gen, decode)
    del cache
    ends_at = eos_ids(lm.model)
    stops = [s for s in until if s]
    out: list[list[int]] = [[] for _ in prompts]
    rows = list(range(len(prompts)))  # the prompt each batch row decodes
    finished = [False] * len(prompts)
    step, size = 0, 1
    while True:
        block = []
        for _ in range(min(size, max_gen - step)):
            tokens = logits.argmax(-1)
            block.append(tokens)
            step += 1
            if step == max_gen:
                break
            logits = steps(tokens)
        keep = []
        for row, (k, new) in enumerate(zip(rows, torch.stack(block, 1).tolist(), strict=True)):
            if finished[k]:
                continue
            ends = [j for j, t in enumerate(new) if t in ends_at]
            out[k].extend(new[: ends[0] + 1] if ends else new)
            finished[k] = (
                bool(ends) or step == max_gen or any(s in lm.tok_decode(out[k]) for s in stops)
            )
            if not finished[k]:
                keep.append(row)
        if not keep:
            return out
        size = min(2 * size, lm.check_every)
        if steps.shrink(len(keep), len(rows)):
            index = lm._to_device(keep)
            steps.keep(index)
            logits = logits[index]
            rows = [rows[r] for r in keep]
