"""Per-layer activation statistics, streamed through forward hooks.

``LayerStats`` hooks the output of every transformer block (``avsslib.arch.blocks``), reduces
each block's hidden states ``h`` of shape ``(B, T, d)`` to a handful of sums on the block's
device, and adds them up over batches. No activation is kept beyond the forward pass of its
batch, no value is copied to the host during a forward pass, and every accumulator is float64.
A model split over several devices (``load_model(..., device_map="auto")``) works: each block is
reduced where it lives and the small float64 accumulators sit on the first parameter's device;
for data-parallel runs over several processes see ``avsslib.distributed``.

Cost: ``benchmarks/bench_stats.py`` times a ``LayerStats`` pass against a bare no-grad forward
pass on the same batches, in the same run, and prints the ratio; the committed measurements are
the JSON files under ``results/bench/``, tabulated in the book's chapter 7.

What is measured, per layer ``l`` (``w`` is the token mask: 1 for a counted position):

* **variance**, three readings of the paper's "activation variance" (``variance_mode``):

  - ``"code"`` (default; the official scripts): pool each sample over its tokens,
    ``p_b = sum_t w_bt h_bt / sum_t w_bt``, take the *unbiased* variance of ``p_b`` over the
    ``d`` hidden units, average over samples;
  - ``"r_port"`` (the unofficial R port): the *population* variance over hidden units of the
    mean over all counted tokens of the batch (batch and sequence pooled together);
  - ``"flat"`` (our literal reading of "over inputs"): the population variance of all counted
    token-level elements ``h_btk`` together.

* **sparsity**: the fraction of counted token-level elements with ``|h| < eps`` (strict, in
  float32), at ``eps`` and at every threshold of ``eps_grid``; the raw near-zero and element
  counts are kept, because at ``eps = 1e-5`` the count is a few hundred.
* **mean**, **rms** (``sqrt(sum h^2 / N)``) and **token variance** (unbiased variance over the
  hidden units of one token, averaged over tokens) of the counted elements.
* optionally (``similarity=True``) the block's **input-output similarity**: the mean over counted
  tokens of ``1 - cos(x_in, x_out)`` (ShortGPT's block influence) and of
  ``arccos(cos(x_in, x_out)) / pi`` (Gromov et al.'s angular distance, with ``n = 1``).
* scale-aware statistics (thresholds ``r`` of ``rel_grid``; ``()`` turns them off):

  - **relative sparsity**: the fraction of counted elements with ``|h_btk| < r * rms_bt``,
    where ``rms_bt = sqrt(mean_k h_btk^2)`` is the RMS of the element's own token vector (the
    layer's RMS is only known after the pass; the token's is known at once, and a threshold
    relative to it does not grow with the residual stream's norm);
  - with ``similarity=True``, the **block update** ``u_bt = (h_out - h_in)_bt / rms(h_in)_bt``
    (the change the block adds to the residual stream, in units of its input's RMS): sums of
    ``u`` and ``u^2`` for its mean, mean square and variance, and the fraction of its elements
    with ``|u_btk| < r``.

How values are aggregated over batches (``aggregate``):

* ``"batch"``: every statistic is computed per batch and the layer value is the *unweighted*
  mean of the per-batch values, as the official code's ``np.mean`` over batches does (a short
  last batch weighs as much as a full one);
* ``"pooled"``: every sample (variance) or element (sparsity, mean, ...) of the whole data set
  weighs the same. Pooled values do not depend on how the data was cut into batches.

``faithful=True`` reproduces the official scripts: pad positions are
counted as ordinary tokens, causal LMs get no attention mask, dropout stays on (``train()``
during the pass) and values are per-batch means. The default (``faithful=False``) is the fixed
mode: ``eval()``, attention mask passed to the model, pad positions excluded from every
statistic (masked pooling), pooled aggregation.

Example::

    stats = LayerStats().fit(model, batches)   # dicts with input_ids, attention_mask
    stats.variance_, stats.sparsity_                   # numpy float64 arrays, shape (n_layers,)
    stats.to_frame()                                   # one row per layer

Every fitted value derives from per-batch records of plain sums (``records_``), so two
``LayerStats`` fitted on disjoint batches ``merge`` into exactly what one pass over all the
batches gives (for the pooled ``r_port`` variance up to float64 rounding, see ``merge``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from avsslib.arch import blocks, context_length
from avsslib.errors import AvssError, ConfigError, ModelError

__all__ = [
    "AGGREGATES",
    "DEFAULT_EPS_GRID",
    "DEFAULT_REL_GRID",
    "VARIANCE_MODES",
    "LayerStats",
    "batch_record",
    "reduce_block_output",
]

DEFAULT_EPS_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
DEFAULT_REL_GRID: tuple[float, ...] = (0.001, 0.01, 0.1)
"""Relative thresholds ``r`` of the scale-aware sparsities (``|h| < r * rms``, ``|u| < r``)."""
VARIANCE_MODES: tuple[str, ...] = ("code", "r_port", "flat")
AGGREGATES: tuple[str, ...] = ("batch", "pooled")

VarianceMode = Literal["code", "r_port", "flat"]
Aggregate = Literal["batch", "pooled"]

_STATE_FORMAT = "avsslib.LayerStats/2"
_OLD_STATE_FORMATS = ("avsslib.LayerStats/1",)  # readable: no scale-aware columns (rel_grid=())

# Columns of one per-batch record row (one row per layer). Every column except ``rport_var`` is a
# sum over the batch's counted samples or tokens, so the record of a union of batches is the sum
# of their records; ``rport_var`` is the batch's own r_port variance (only its batch mean is used).
_FIXED_COLUMNS: tuple[str, ...] = (
    "samples",  # number of samples with at least one counted token
    "tokens",  # number of counted tokens (element count = tokens * d)
    "sample_var",  # sum over samples of the unbiased variance over d of the pooled state
    "rport_var",  # population variance over d of the batch's token-mean state
    "sum",  # sum of h over counted elements
    "sum_sq",  # sum of h**2 over counted elements
    "token_sum_sq",  # sum over counted tokens of (sum over d of h)**2
)
_SIM_COLUMNS: tuple[str, ...] = ("cos_dist", "angle")  # sums over tokens of 1-cos, arccos/pi
# with similarity and a rel_grid: sums over counted elements of the block update u, u**2, and
# over counted tokens of (sum over d of u)**2; then one near-zero count of |u| < r per threshold
_UPDATE_COLUMNS: tuple[str, ...] = ("upd_sum", "upd_sum_sq", "upd_token_sum_sq")


def reduce_block_output(
    h: torch.Tensor,
    w: torch.Tensor,
    eps_grid: tuple[float, ...],
    h_in: torch.Tensor | None = None,
    rel_grid: tuple[float, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token and per-sample reductions of block outputs: all the work on ``h`` itself.

    A few reductions over the hidden dimension, no host synchronisation, outputs far smaller
    than ``h``; everything else happens once per batch in ``batch_record``. Float32
    throughout; near-zero tests are strict (``|h| < eps``) in float32, like the official
    ``h.abs() < 1e-5`` on float32 states. Leading dimensions (``...``) are carried through,
    so several layers' outputs can be reduced in one call.

    Args:
        h: block outputs, shape ``(..., B, T, d)``, any float dtype.
        w: token mask, shape ``(B, T)``, float32, 1.0 for counted positions and 0.0 for pads.
        eps_grid: near-zero thresholds.
        h_in: the blocks' inputs, shape of ``h``, for the similarity rows (optional).
        rel_grid: relative thresholds ``r`` (scale-aware rows; ``()`` for none).

    Returns:
        ``tok``: float32, shape ``(..., C, B, T)``, rows ``sum_d h``, ``sum_d h^2``, one
        near-zero count per threshold, one count of ``|h| < r * rms(token)`` per ``r`` and, with
        ``h_in``, ``<h_in, h>`` and ``|h_in|`` and, with ``h_in`` and ``rel_grid``, the update
        rows ``sum_d (h - h_in)``, ``sum_d (h - h_in)^2`` and one count of
        ``|h - h_in| < r * rms(h_in)`` per ``r``;
        ``pooled``: float32, shape ``(..., B, d)``, the masked token sum ``sum_t w_bt h_bt``.
    """
    x = h.float()
    a = x.abs()
    d = x.shape[-1]
    compiling = torch.compiler.is_compiling()
    # comparisons written as 0.0/1.0 into one float buffer: ~4x faster than bool on CPU
    indicator = None if compiling else torch.empty_like(a)

    def count(values: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
        if indicator is None:
            return (values < threshold).sum(-1, dtype=torch.float32)
        return torch.lt(values, threshold, out=indicator).sum(-1)

    sum_sq = torch.linalg.vector_norm(x, dim=-1).square()
    rows = [x.sum(-1), sum_sq]
    rows += [count(a, eps) for eps in eps_grid]
    if rel_grid:
        rms = (sum_sq / d).sqrt().unsqueeze(-1)
        rows += [count(a, rms * r) for r in rel_grid]
    if h_in is not None:
        x_in = h_in.float()
        norm_in = torch.linalg.vector_norm(x_in, dim=-1)
        rows += [torch.linalg.vecdot(x_in, x, dim=-1), norm_in]
        if rel_grid:
            delta = x - x_in
            rows += [delta.sum(-1), torch.linalg.vector_norm(delta, dim=-1).square()]
            delta = delta.abs_()
            rms_in = (norm_in / math.sqrt(d)).unsqueeze(-1)
            rows += [count(delta, rms_in * r) for r in rel_grid]
    pooled = (x * w.unsqueeze(-1)).sum(-2)
    return torch.stack(rows, dim=-3), pooled


def batch_record(
    tok: torch.Tensor, pooled: torch.Tensor, w: torch.Tensor, n_near: int, n_rel: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's record rows from the stacked outputs of ``reduce_block_output``.

    Args:
        tok: float32, shape ``(L, C, B, T)`` (``C = 2 + n_near + n_rel``, plus 2 similarity
            rows and, with ``n_rel``, ``2 + n_rel`` update rows).
        pooled: float32, shape ``(L, B, d)``.
        w: token mask, shape ``(B, T)``.
        n_near: number of near-zero thresholds.
        n_rel: number of relative thresholds.

    Returns:
        ``record``: float64, shape ``(L, K)``, columns as ``LayerStats.columns``;
        ``unit``: float64, shape ``(L, d)``, the sum over counted tokens of ``h``.
    """
    n_layers, _, _, _ = tok.shape
    d = pooled.shape[-1]
    w64 = w.double().reshape(-1)  # (B*T,)
    t = tok.double().flatten(2)  # (L, C, B*T)
    s1, s2 = t[:, 0], t[:, 1]
    j = 2 + n_near + n_rel
    rows = [s1, s2, s1 * s1, t[:, 2:j]]
    if t.shape[1] > j:  # similarity rows
        dot, norm_in = t[:, j], t[:, j + 1]
        cos = (dot / (norm_in * s2.sqrt())).clamp(-1.0, 1.0)
        rows += [1.0 - cos, torch.arccos(cos) / math.pi]
        if n_rel:  # block update, / rms(h_in)
            scale = (norm_in / math.sqrt(d)).clamp(min=torch.finfo(torch.float32).tiny)
            u1 = t[:, j + 2] / scale
            rows += [u1, t[:, j + 3] / (scale * scale), u1 * u1, t[:, j + 4 : j + 4 + n_rel]]
    rows = [r.unsqueeze(1) if r.dim() == 2 else r for r in rows]
    token_sums = torch.cat(rows, 1) @ w64  # (L, C')

    n_b = w.double().sum(1)  # (B,) tokens per sample
    valid = (n_b > 0).double()
    p = pooled.double()  # (L, B, d)
    sample_var = (p / n_b.clamp(min=1.0).view(1, -1, 1)).var(dim=-1) @ valid  # (L,)
    unit = p.sum(1)  # (L, d)
    n_tok = w64.sum()
    rport_var = unit.var(dim=-1, correction=0) / (n_tok * n_tok)  # (L,)
    counts = torch.stack([valid.sum(), n_tok]).expand(n_layers, 2)
    head = torch.stack([sample_var, rport_var], 1)
    return torch.cat([counts, head, token_sums], 1), unit


@dataclass
class _Batch:
    """What the hooks collect while one batch runs through the model."""

    w: torch.Tensor  # (B, T) float32 token mask
    toks: list[torch.Tensor | None]  # per layer: (C, B, T) float32
    pooled: list[torch.Tensor | None]  # per layer: (B, d) float32
    calls: list[int]  # hook calls per layer (host-side counter, no sync)
    pending: list[tuple] = field(default_factory=list)  # stashed (k, h, h_in, versions)
    stash_layers: int = 0  # reduce once this many outputs are stashed


class LayerStats:
    """Streaming per-layer activation statistics of a transformer (estimator style).

    Parameters (set at construction, never changed by fitting):

    * ``eps``: the primary near-zero threshold of ``sparsity_`` (the official code's ``1e-5``).
    * ``eps_grid``: further thresholds whose counts are kept (``eps`` is added to the grid).
    * ``faithful``: reproduce the official scripts (see the module docstring). It sets the
      defaults of ``mask_pad`` (False), ``pass_mask`` (only for non-generative models, as the
      SST-2 script does), ``aggregate`` ("batch") and the training mode (dropout on).
    * ``variance_mode``: which variance ``variance_`` reports: ``"code"``, ``"r_port"`` or
      ``"flat"`` (all three are always accumulated; ``get_variance`` reads any of them).
    * ``aggregate``: ``"batch"`` (unweighted mean of per-batch values) or ``"pooled"``.
    * ``mask_pad``: exclude positions with ``attention_mask == 0`` from every statistic.
    * ``pass_mask``: pass the attention mask to the model (``None``: the mode's default).
    * ``similarity``: also accumulate the block input-output cosine statistics (baselines).
    * ``rel_grid``: relative thresholds of the scale-aware statistics (module docstring);
      ``()`` collects none of them (the statistics of format 1, slightly cheaper).
    * ``stash_bytes``: how many bytes of block outputs the hooks may hold before reducing them
      together (one batched ``reduce_block_output`` call over several layers instead of one
      call per layer: far fewer kernel launches, which is what costs on GPUs). The outputs are
      references to tensors of the running forward pass (blocks must not modify them in
      place; checked through the tensors' version counters) and are released after each
      reduction. ``None``: 0 on CPU (each output is reduced at once, while it is in cache),
      64 MiB on other devices (several small outputs per call; a large one alone).
    * ``compile``: run ``reduce_block_output`` through ``torch.compile`` (a few fused
      kernels instead of about fifteen small ones; ``benchmarks/compile_variant.py`` compares
      the variants; the first batches pay the compilation, some seconds).
      ``None`` (default): on CUDA devices only. A failed compilation falls back to eager.

    Usage: ``fit(model, batches)`` (resets, then accumulates every batch) or, for streaming and
    data-parallel use, ``update(model, batch)`` repeatedly and ``merge(other)``. Hooks are
    attached for the duration of each call, or once for many calls with ``attach(model)``
    (also a context manager). Fitted attributes end with an underscore and are numpy float64
    arrays of shape ``(n_layers,)`` unless stated otherwise.
    """

    def __init__(
        self,
        eps: float = 1e-5,
        eps_grid: Iterable[float] = DEFAULT_EPS_GRID,
        *,
        faithful: bool = False,
        variance_mode: VarianceMode = "code",
        aggregate: Aggregate | None = None,
        mask_pad: bool | None = None,
        pass_mask: bool | None = None,
        similarity: bool = True,
        stash_bytes: int | None = None,
        compile: bool | None = None,
        rel_grid: Iterable[float] = DEFAULT_REL_GRID,
    ) -> None:
        grid = sorted({float(e) for e in eps_grid} | {float(eps)})
        if not all(math.isfinite(e) and e > 0 for e in grid):
            raise ConfigError(f"eps and eps_grid must be positive finite numbers, got {grid}.")
        rel = sorted({float(r) for r in rel_grid})
        if not all(math.isfinite(r) and r > 0 for r in rel):
            raise ConfigError(f"rel_grid must hold positive finite numbers, got {rel}.")
        _check_choice("variance_mode", variance_mode, VARIANCE_MODES)
        if aggregate is not None:
            _check_choice("aggregate", aggregate, AGGREGATES)
        self.eps = float(eps)
        self.eps_grid = tuple(grid)
        self.rel_grid = tuple(rel)
        self.faithful = bool(faithful)
        self.variance_mode = variance_mode
        self.aggregate = aggregate if aggregate is not None else ("batch" if faithful else "pooled")
        self.mask_pad = (not faithful) if mask_pad is None else bool(mask_pad)
        self.pass_mask = pass_mask
        self.similarity = bool(similarity)
        if stash_bytes is not None and stash_bytes < 0:
            raise ConfigError(f"stash_bytes must be >= 0 or None, got {stash_bytes}.")
        self.stash_bytes = stash_bytes
        self.compile = compile
        self._compile_failed = False
        self._warned_dtype = False
        self._handles: list[Any] = []
        self._model: torch.nn.Module | None = None
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> LayerStats:
        """Forget everything accumulated (hooks stay attached)."""
        self._records: list[torch.Tensor] = []  # per batch: (L, K) float64, on device
        self._unit_sums: torch.Tensor | None = None  # (L, d) float64, on device
        self._batch: _Batch | None = None
        self._host: tuple[np.ndarray, np.ndarray] | None = None
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the record columns (the last axis of ``records_``)."""
        near = tuple(f"near_{e:g}" for e in self.eps_grid)
        rel = tuple(f"relnear_{r:g}" for r in self.rel_grid)
        sim = _SIM_COLUMNS if self.similarity else ()
        upd = (
            _UPDATE_COLUMNS + tuple(f"updnear_{r:g}" for r in self.rel_grid)
            if self.similarity and self.rel_grid
            else ()
        )
        return _FIXED_COLUMNS + near + rel + sim + upd

    def accumulation_params(self) -> dict[str, Any]:
        """Parameters that change what is accumulated (must agree to merge or load); part of
        the accumulator's public API with :meth:`state_dict`, :meth:`load_state_dict` and
        :meth:`merge` (what :mod:`avsslib.distributed` uses)."""
        return {
            "eps_grid": list(self.eps_grid),
            "rel_grid": list(self.rel_grid),
            "faithful": self.faithful,
            "mask_pad": self.mask_pad,
            "pass_mask": self.pass_mask,
            "similarity": self.similarity,
        }

    # ------------------------------------------------------------------ hooks
    def attach(self, model: torch.nn.Module) -> LayerStats:
        """Register one forward hook per block of ``model``; returns ``self``.

        Usable as a context manager: ``with LayerStats().attach(model) as stats: ...`` detaches
        on exit. Hooks only record inside ``update``; other forward passes are left alone.
        """
        if self._handles:
            if self._model is model:
                return self
            raise ConfigError(
                "this LayerStats is already attached to another model; call detach() first."
            )
        layers = blocks(model)
        self._handles = [
            block.register_forward_hook(self._make_hook(k), with_kwargs=True)
            for k, block in enumerate(layers)
        ]
        self._model = model
        return self

    def detach(self) -> LayerStats:
        """Remove every hook this instance registered."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._model = None
        return self

    def __enter__(self) -> LayerStats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _make_hook(self, k: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            batch = self._batch
            if batch is None:
                return
            h = output[0] if isinstance(output, (tuple, list)) else output
            h_in = None
            if self.similarity:
                h_in = args[0] if args else kwargs.get("hidden_states")
                if not isinstance(h_in, torch.Tensor):
                    raise ModelError(
                        f"block {k} ({type(module).__name__}) received no hidden-state tensor as "
                        "first positional argument or `hidden_states` keyword; use "
                        "LayerStats(similarity=False) for this model."
                    )
                if h_in.device != h.device:
                    # a model split over devices (device_map): the hook sees the input as the
                    # previous block left it, before accelerate moved it to this block's device
                    h_in = h_in.to(h.device)
            batch.calls[k] += 1
            if not batch.pending and not batch.stash_layers:
                budget = self.stash_bytes
                if budget is None:
                    budget = 0 if h.device.type == "cpu" else 64 * 2**20
                batch.stash_layers = max(1, budget // max(1, h.numel() * h.element_size()))
            batch.pending.append((k, h, h_in, _version(h), _version(h_in)))
            if len(batch.pending) >= batch.stash_layers:
                self._reduce_pending(batch)

        return hook

    def _reduce_pending(self, batch: _Batch) -> None:
        """Reduce the stashed block outputs, several layers per call where shapes agree."""
        pending, batch.pending = batch.pending, []
        for k, h, h_in, v, v_in in pending:
            if _version(h) != v or _version(h_in) != v_in:
                raise ModelError(
                    f"the output or input of block {k} was modified in place after the block "
                    "returned; use LayerStats(stash_bytes=0) for this model."
                )
        while pending:
            first = pending[0][1]
            n = 1
            while n < len(pending) and _same_layout(pending[n][1], first):
                n += 1
            group, pending = pending[:n], pending[n:]
            w = batch.w if batch.w.device == first.device else batch.w.to(first.device)
            if n == 1:
                k, h, h_in = group[0][:3]
                batch.toks[k], batch.pooled[k] = self._reduce(h, w, h_in)
                continue
            outputs = [g[1] for g in group]
            inputs = [g[2] for g in group]
            if not self.similarity:
                toks, pooled = self._reduce(torch.stack(outputs), w, None)
            elif all(inputs[i] is outputs[i - 1] for i in range(1, n)):
                # the usual residual chain: block i's input is block i-1's output; stack once
                chain = torch.stack([inputs[0], *outputs])
                toks, pooled = self._reduce(chain[1:], w, chain[:-1])
            else:
                toks, pooled = self._reduce(torch.stack(outputs), w, torch.stack(inputs))
            for (k, *_), tok, pool in zip(group, toks.unbind(0), pooled.unbind(0), strict=True):
                batch.toks[k], batch.pooled[k] = tok, pool

    def _reduce(
        self, h: torch.Tensor, w: torch.Tensor, h_in: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``reduce_block_output``, through ``torch.compile`` when asked (``compile=None``: on
        CUDA), falling back to eager with one warning if compilation fails."""
        use_compile = self.compile if self.compile is not None else h.device.type == "cuda"
        if use_compile and not self._compile_failed:
            try:
                return _compiled_reduce()(h, w, self.eps_grid, h_in, self.rel_grid)
            except Exception as error:  # noqa: BLE001 - any compiler failure: fall back
                self._compile_failed = True
                warnings.warn(
                    f"torch.compile of the statistics reductions failed ({type(error).__name__}: "
                    f"{error}); continuing without it (slower). Pass compile=False to silence.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return reduce_block_output(h, w, self.eps_grid, h_in, self.rel_grid)

    # ------------------------------------------------------------------ fitting
    def update(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> LayerStats:
        """Run one no-grad forward pass on ``batch`` and add its statistics; returns ``self``.

        ``batch`` holds ``input_ids`` of shape ``(B, T)`` and optionally ``attention_mask``
        ``(B, T)`` (1 = real token) and ``token_type_ids``; tensors are moved to the model's
        device. The model's train/eval flags are restored afterwards.
        """
        if "input_ids" not in batch:
            raise ConfigError(f"batch has no 'input_ids' (keys: {sorted(batch)}).")
        device = _device_of(model)
        input_ids = batch["input_ids"].to(device)
        mask = batch.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask.to(device)
        if mask.shape != input_ids.shape:
            raise ConfigError(
                f"attention_mask shape {tuple(mask.shape)} differs from input_ids shape "
                f"{tuple(input_ids.shape)}."
            )
        context = context_length(model)
        if context is not None and input_ids.shape[-1] > context:
            raise ConfigError(
                f"a batch of {input_ids.shape[-1]} tokens per row is longer than the model's "
                f"context of {context} tokens (config.max_position_embeddings or equivalent); "
                f"truncate the texts to at most {context} tokens (seq_len / --seq-len)."
            )
        if self.mask_pad and not bool(mask.any()):
            raise ConfigError(
                f"a batch of shape {tuple(input_ids.shape)} has no real token: its attention_mask "
                "is all 0 (an all-padding batch), so it adds nothing to the statistics. Drop "
                "empty texts before batching (calibration_batches does) or check the mask."
            )
        pass_mask = self.pass_mask
        if pass_mask is None:
            pass_mask = not (self.faithful and _is_generative(model))
        inputs: dict[str, Any] = {"input_ids": input_ids}
        if pass_mask:
            inputs["attention_mask"] = mask
        if "token_type_ids" in batch:
            inputs["token_type_ids"] = batch["token_type_ids"].to(device)
        if getattr(getattr(model, "config", None), "use_cache", None) is not None:
            inputs["use_cache"] = False  # scoring needs no KV cache: do not build one

        if self.faithful and not self._warned_dtype:
            dtype = next(model.parameters()).dtype
            if dtype != torch.float32:
                self._warned_dtype = True
                warnings.warn(
                    f"faithful statistics need a float32 model (the official scripts run in fp32; "
                    f"near-zero counts at eps=1e-5 depend on it), this one is {dtype}.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        w = mask.float() if self.mask_pad else torch.ones_like(input_ids, dtype=torch.float32)
        n_layers = len(blocks(model))
        self._batch = _Batch(
            w=w, toks=[None] * n_layers, pooled=[None] * n_layers, calls=[0] * n_layers
        )
        attached_here = not self._handles
        try:
            if attached_here:
                self.attach(model)
            elif self._model is not model:
                raise ConfigError("update() got a different model than the one attached.")
            with torch.no_grad(), _training_mode(model, train=self.faithful):
                model(**inputs)
                self._reduce_pending(self._batch)
            batch_state = self._batch
        finally:
            self._batch = None
            if attached_here:
                self.detach()

        bad = [k for k, c in enumerate(batch_state.calls) if c != 1]
        if bad:
            raise ModelError(
                f"blocks {bad} of {type(model).__name__} ran {[batch_state.calls[k] for k in bad]} "
                "times in one forward pass (expected once each); LayerStats needs every block "
                "to run exactly once per forward."
            )
        record, units = batch_record(
            torch.stack([t.to(device) for t in batch_state.toks]),  # type: ignore[union-attr]
            torch.stack([p.to(device) for p in batch_state.pooled]),  # type: ignore[union-attr]
            w,
            len(self.eps_grid),
            len(self.rel_grid),
        )
        if self._unit_sums is not None and self._unit_sums.shape != units.shape:
            raise ConfigError(
                f"this batch gives per-layer statistics of shape {tuple(units.shape)} but earlier "
                f"batches gave {tuple(self._unit_sums.shape)}: a different model?"
            )
        self._unit_sums = units if self._unit_sums is None else self._unit_sums.to(device) + units
        self._records.append(record)
        self._host = None
        return self

    def fit(
        self,
        model: torch.nn.Module,
        batches: Iterable[Mapping[str, torch.Tensor]],
        progress: bool = True,
    ) -> LayerStats:
        """Reset, then ``update`` on every batch (one forward pass each); returns ``self``."""
        from tqdm.auto import tqdm

        self.reset()
        total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        with contextlib.ExitStack() as stack:
            if not self._handles:
                stack.callback(self.detach)
                self.attach(model)
            for batch in tqdm(batches, total=total, desc="layer statistics", disable=not progress):
                self.update(model, batch)
        return self

    # ------------------------------------------------------------------ merge / state
    def merge(self, other: LayerStats) -> LayerStats:
        """Add ``other``'s batches to this instance (in place); returns ``self``.

        Exact: after ``a.merge(b)``, every fitted value equals what one instance fitted on
        ``a``'s batches followed by ``b``'s gives, bit for bit, because values derive from the
        concatenated per-batch records. The one exception is the pooled ``r_port`` variance,
        whose ``(n_layers, d)`` token sums are added in a different order (float64 rounding).
        """
        if self.accumulation_params() != other.accumulation_params():
            raise ConfigError(
                "cannot merge LayerStats with different accumulation parameters: "
                f"{self.accumulation_params()} vs {other.accumulation_params()}."
            )
        if other._unit_sums is None:
            return self
        if self._unit_sums is None:
            self._records = [r.clone() for r in other._records]
            self._unit_sums = other._unit_sums.clone()
        else:
            if self._unit_sums.shape != other._unit_sums.shape:
                raise ConfigError(
                    f"cannot merge statistics of shape {tuple(other._unit_sums.shape)} into "
                    f"{tuple(self._unit_sums.shape)} (n_layers, hidden size): different models."
                )
            device = self._unit_sums.device
            self._records += [r.to(device) for r in other._records]
            self._unit_sums = self._unit_sums + other._unit_sums.to(device)
        self._host = None
        return self

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore this instance: parameters and CPU tensors.

        Keys: ``format``, ``params`` (constructor arguments), ``columns``, ``records``
        (float64, shape ``(n_batches, n_layers, K)``), ``unit_sums`` (float64,
        ``(n_layers, d)``). Save it with ``torch.save``.
        """
        self._check_fitted()
        assert self._unit_sums is not None
        return {
            "format": _STATE_FORMAT,
            "params": {
                **self.accumulation_params(),
                "eps": self.eps,
                "variance_mode": self.variance_mode,
                "aggregate": self.aggregate,
                "compile": self.compile,
            },
            "columns": list(self.columns),
            "records": torch.stack(self._records).cpu(),
            "unit_sums": self._unit_sums.cpu(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> LayerStats:
        """Replace the accumulated state with ``state`` (from ``state_dict``); returns ``self``.

        The accumulation parameters must match this instance's; the reporting parameters
        (``eps``, ``variance_mode``, ``aggregate``) are this instance's own. Use
        ``LayerStats.from_state_dict`` to rebuild an instance with the saved parameters.
        """
        state = _upgrade_state(state)
        saved = {k: state["params"][k] for k in self.accumulation_params()}
        if saved != self.accumulation_params():
            raise ConfigError(
                f"state was accumulated with {saved}, this LayerStats uses "
                f"{self.accumulation_params()}; build it with LayerStats.from_state_dict()."
            )
        self._records = list(torch.as_tensor(state["records"], dtype=torch.float64).unbind(0))
        self._unit_sums = torch.as_tensor(state["unit_sums"], dtype=torch.float64).clone()
        self._host = None
        return self

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> LayerStats:
        """A new ``LayerStats`` with the saved parameters and state."""
        state = _upgrade_state(state)
        params = dict(state["params"])
        grid = params.pop("eps_grid")
        return cls(eps_grid=grid, **params).load_state_dict(state)

    # ------------------------------------------------------------------ fitted values
    def _check_fitted(self) -> None:
        if not self._records:
            raise AvssError(
                "LayerStats has no data yet: call fit(model, batches) or update(model, batch) "
                "first (or load_state_dict)."
            )

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Host copies: records ``(n_batches, L, K)`` and unit sums ``(L, d)`` (one sync)."""
        self._check_fitted()
        if self._host is None:
            assert self._unit_sums is not None
            self._host = (
                torch.stack(self._records).cpu().numpy(),
                self._unit_sums.cpu().numpy(),
            )
        return self._host

    def _col(self, name: str) -> int:
        return self.columns.index(name)

    def _per_batch(self, name: str) -> np.ndarray:
        """Per-batch values ``(n_batches, L)`` of a statistic (NaN for a batch with no tokens)."""
        rec, _ = self._arrays()
        return _derive(rec, self.columns, name, self._d)

    def _pooled(self, name: str) -> np.ndarray:
        rec, unit = self._arrays()
        total = rec.sum(0)
        if name == "rport_var":
            with np.errstate(invalid="ignore", divide="ignore"):
                return (unit / total[:, self._col("tokens"), None]).var(axis=1)
        return _derive(total[None], self.columns, name, self._d)[0]

    def _value(self, name: str, aggregate: str | None) -> np.ndarray:
        aggregate = self.aggregate if aggregate is None else aggregate
        _check_choice("aggregate", aggregate, AGGREGATES)
        if aggregate == "pooled":
            return self._pooled(name)
        with np.errstate(invalid="ignore"), _quiet_nanmean():
            return np.nanmean(self._per_batch(name), axis=0)

    @property
    def _d(self) -> int:
        return int(self._arrays()[1].shape[1])

    def get_variance(
        self, mode: VarianceMode | None = None, aggregate: Aggregate | None = None
    ) -> np.ndarray:
        """Per-layer variance in ``mode`` (default ``variance_mode``) aggregated by
        ``aggregate`` (default ``self.aggregate``); shape ``(n_layers,)``."""
        mode = self.variance_mode if mode is None else mode
        _check_choice("variance_mode", mode, VARIANCE_MODES)
        return self._value(
            {"code": "sample_var", "r_port": "rport_var", "flat": "flat_var"}[mode], aggregate
        )

    def get_sparsity(
        self, eps: float | None = None, aggregate: Aggregate | None = None
    ) -> np.ndarray:
        """Per-layer fraction of counted elements with ``|h| < eps`` (``eps`` from the grid)."""
        eps = self.eps if eps is None else float(eps)
        if eps not in self.eps_grid:
            raise ConfigError(f"eps={eps:g} is not in eps_grid {self.eps_grid}; refit with it.")
        return self._value(f"near_{eps:g}", aggregate)

    def _check_rel(self, r: float, update: bool = False) -> str:
        if r not in self.rel_grid:
            raise ConfigError(
                f"r={r:g} is not in rel_grid {self.rel_grid}; refit with it "
                "(LayerStats(rel_grid=...))."
            )
        if update and not self.similarity:
            raise ConfigError(
                "block-update statistics need the block inputs: use LayerStats(similarity=True)."
            )
        return f"{'updnear' if update else 'relnear'}_{r:g}"

    def get_rel_sparsity(self, r: float, aggregate: Aggregate | None = None) -> np.ndarray:
        """Per-layer fraction of counted elements with ``|h| < r * rms`` of their own token
        (``r`` from ``rel_grid``); shape ``(n_layers,)``."""
        return self._value(self._check_rel(float(r)), aggregate)

    def get_update_sparsity(self, r: float, aggregate: Aggregate | None = None) -> np.ndarray:
        """Per-layer fraction of elements of the block update ``u = (h_out - h_in) / rms(h_in)``
        with ``|u| < r`` (``r`` from ``rel_grid``); shape ``(n_layers,)``."""
        return self._value(self._check_rel(float(r), update=True), aggregate)

    def _check_update(self) -> None:
        if not (self.similarity and self.rel_grid):
            raise ConfigError(
                "block-update statistics were not collected; use "
                "LayerStats(similarity=True) with a non-empty rel_grid."
            )

    @property
    def update_variance_(self) -> np.ndarray:
        """Per-layer population variance of all counted elements of the block update
        ``u = (h_out - h_in) / rms(h_in)`` (dimensionless)."""
        self._check_update()
        return self._value("upd_flat_var", None)

    @property
    def update_rms_(self) -> np.ndarray:
        """Per-layer root mean square of the block update ``u`` (dimensionless: the update's
        size in units of the input's RMS)."""
        self._check_update()
        return np.sqrt(self._value("upd_mean_square", None))

    @property
    def update_token_variance_(self) -> np.ndarray:
        """Per-layer unbiased variance over the hidden units of one token's update ``u``, mean
        over tokens."""
        self._check_update()
        return self._value("upd_token_var", None)

    @property
    def mean_square_(self) -> np.ndarray:
        """Per-layer mean of ``h^2`` over the counted elements (``rms_ ** 2``)."""
        return self._value("mean_square", None)

    @property
    def variance_(self) -> np.ndarray:
        """Per-layer variance (``variance_mode``, ``aggregate``)."""
        return self.get_variance()

    @property
    def sparsity_(self) -> np.ndarray:
        """Per-layer near-zero fraction at ``eps`` (``aggregate``)."""
        return self.get_sparsity()

    @property
    def near_zero_counts_(self) -> np.ndarray:
        """Per-layer number of counted elements with ``|h| < eps`` (integer-valued float64)."""
        return self._arrays()[0][:, :, self._col(f"near_{self.eps:g}")].sum(0)

    @property
    def near_zero_grid_(self) -> np.ndarray:
        """Near-zero counts at every threshold, shape ``(n_layers, len(eps_grid))``."""
        rec, _ = self._arrays()
        cols = [self._col(f"near_{e:g}") for e in self.eps_grid]
        return rec[:, :, cols].sum(0)

    @property
    def element_counts_(self) -> np.ndarray:
        """Per-layer number of counted token-level elements (tokens x hidden size)."""
        return self._arrays()[0][:, :, self._col("tokens")].sum(0) * self._d

    @property
    def mean_(self) -> np.ndarray:
        """Per-layer mean of the counted elements."""
        return self._value("mean_elem", None)

    @property
    def rms_(self) -> np.ndarray:
        """Per-layer root mean square of the counted elements, ``sqrt(sum h^2 / N)``."""
        return np.sqrt(self._value("mean_square", None))

    @property
    def token_variance_(self) -> np.ndarray:
        """Per-layer unbiased variance over the hidden units of one token, mean over tokens."""
        return self._value("token_var", None)

    @property
    def cosine_distance_(self) -> np.ndarray:
        """Per-layer mean over counted tokens of ``1 - cos(block input, block output)``."""
        self._check_similarity()
        return self._value("cos_dist_mean", None)

    @property
    def angular_distance_(self) -> np.ndarray:
        """Per-layer mean over counted tokens of ``arccos(cos(input, output)) / pi``."""
        self._check_similarity()
        return self._value("angle_mean", None)

    @property
    def batch_variances_(self) -> np.ndarray:
        """Per-batch variance (``variance_mode``), shape ``(n_batches, n_layers)``."""
        mode = {"code": "sample_var", "r_port": "rport_var", "flat": "flat_var"}
        return self._per_batch(mode[self.variance_mode])

    @property
    def batch_sparsities_(self) -> np.ndarray:
        """Per-batch near-zero fraction at ``eps``, shape ``(n_batches, n_layers)``."""
        return self._per_batch(f"near_{self.eps:g}")

    @property
    def records_(self) -> np.ndarray:
        """The raw per-batch sums, shape ``(n_batches, n_layers, len(columns))``."""
        return self._arrays()[0]

    @property
    def n_batches_(self) -> int:
        return len(self._records)

    @property
    def n_layers_(self) -> int:
        return int(self._arrays()[0].shape[1])

    @property
    def n_samples_(self) -> int:
        return int(self._arrays()[0][:, 0, 0].sum())

    @property
    def n_tokens_(self) -> int:
        return int(self._arrays()[0][:, 0, 1].sum())

    def _check_similarity(self) -> None:
        if not self.similarity:
            raise ConfigError("similarity statistics were not collected; use similarity=True.")

    def to_frame(self):
        """A ``pandas.DataFrame`` with one row per layer (index ``layer``) and one column per
        fitted statistic: the three variances, sparsity and counts at every ``eps``, mean, rms,
        token variance, the relative sparsity at every ``r`` of ``rel_grid`` and, with
        ``similarity``, the cosine and angular distances and the block update's variance,
        RMS, token variance and sparsity at every ``r``."""
        import pandas as pd

        frame = {
            "variance": self.variance_,
            "variance_code": self.get_variance("code"),
            "variance_r_port": self.get_variance("r_port"),
            "variance_flat": self.get_variance("flat"),
            "sparsity": self.sparsity_,
            "near_zero_count": self.near_zero_counts_,
            "element_count": self.element_counts_,
        }
        for j, e in enumerate(self.eps_grid):
            frame[f"sparsity@{e:g}"] = self.get_sparsity(e)
            frame[f"near_zero_count@{e:g}"] = self.near_zero_grid_[:, j]
        frame.update(mean=self.mean_, rms=self.rms_, token_variance=self.token_variance_)
        for r in self.rel_grid:
            frame[f"rel_sparsity@{r:g}"] = self.get_rel_sparsity(r)
        if self.similarity:
            frame.update(
                cosine_distance=self.cosine_distance_, angular_distance=self.angular_distance_
            )
            if self.rel_grid:
                frame.update(
                    update_variance=self.update_variance_,
                    update_rms=self.update_rms_,
                    update_token_variance=self.update_token_variance_,
                )
                for r in self.rel_grid:
                    frame[f"update_sparsity@{r:g}"] = self.get_update_sparsity(r)
        df = pd.DataFrame(frame)
        df.index.name = "layer"
        return df

    def __repr__(self) -> str:
        state = f"{self.n_batches_} batches" if self._records else "not fitted"
        return (
            f"LayerStats(eps={self.eps:g}, faithful={self.faithful}, "
            f"variance_mode={self.variance_mode!r}, aggregate={self.aggregate!r}, "
            f"mask_pad={self.mask_pad}; {state})"
        )


# ---------------------------------------------------------------------- helpers
def _upgrade_state(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A state of the current format: format-1 states (before the scale-aware statistics) get
    ``rel_grid = []``, which describes their columns exactly; other formats are refused."""
    fmt = state.get("format")
    if fmt == _STATE_FORMAT:
        return state
    if fmt in _OLD_STATE_FORMATS:
        return {**state, "format": _STATE_FORMAT, "params": {**state["params"], "rel_grid": []}}
    raise ConfigError(
        f"not a LayerStats state (format {fmt!r}, expected {_STATE_FORMAT!r} or one of "
        f"{_OLD_STATE_FORMATS})."
    )


def _derive(rec: np.ndarray, columns: tuple[str, ...], name: str, d: int) -> np.ndarray:
    """A statistic from records of shape ``(n, L, K)`` -> ``(n, L)``; NaN where no token counts."""
    c = {n: rec[..., i] for i, n in enumerate(columns)}
    with np.errstate(invalid="ignore", divide="ignore"):
        tokens = np.where(c["tokens"] > 0, c["tokens"], np.nan)
        elements = tokens * d
        if name == "sample_var":
            return c["sample_var"] / np.where(c["samples"] > 0, c["samples"], np.nan)
        if name == "rport_var":
            return np.where(c["tokens"] > 0, c["rport_var"], np.nan)
        if name.startswith(("near_", "relnear_", "updnear_")):
            return c[name] / elements
        if name == "upd_mean_square":
            return c["upd_sum_sq"] / elements
        if name == "upd_flat_var":  # population variance of all update elements
            return c["upd_sum_sq"] / elements - (c["upd_sum"] / elements) ** 2
        if name == "upd_token_var":  # unbiased variance over d, mean over tokens
            return (c["upd_sum_sq"] - c["upd_token_sum_sq"] / d) / (d - 1) / tokens
        if name == "mean_elem":
            return c["sum"] / elements
        if name == "mean_square":
            return c["sum_sq"] / elements
        if name == "flat_var":  # population variance of all elements
            return c["sum_sq"] / elements - (c["sum"] / elements) ** 2
        if name == "token_var":  # unbiased variance over d, mean over tokens
            return (c["sum_sq"] - c["token_sum_sq"] / d) / (d - 1) / tokens
        if name == "cos_dist_mean":
            return c["cos_dist"] / tokens
        if name == "angle_mean":
            return c["angle"] / tokens
    raise KeyError(name)


def _version(t: torch.Tensor | None) -> int:
    """A tensor's in-place modification counter (-1 for None or inference tensors)."""
    if t is None:
        return -1
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter
        return -1


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _check_choice(param: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{param}={value!r} is not one of {choices}.")


def _device_of(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _is_generative(model: torch.nn.Module) -> bool:
    can_generate = getattr(model, "can_generate", None)
    return bool(callable(can_generate) and can_generate())


@contextlib.contextmanager
def _training_mode(model: torch.nn.Module, train: bool) -> Iterator[None]:
    """Put every submodule in train (dropout on) or eval mode; restore each flag afterwards.

    Only the modules whose flag differs are touched (usually none: a model in eval mode being
    scored in fixed mode), which keeps this off the per-batch cost of large models."""
    changed = [m for m in model.modules() if m.training != train]
    for module in changed:
        module.training = train
    try:
        yield
    finally:
        for module in changed:
            module.training = not train


@contextlib.contextmanager
def _quiet_nanmean() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layer -> NaN, silently
        yield


_COMPILED: Callable | None = None


def _compiled_reduce() -> Callable:
    """``torch.compile(reduce_block_output, dynamic=True)``, built once per process."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(reduce_block_output, dynamic=True)
    return _COMPILED
