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

The rooms behind it: ``avsslib.reductions`` (the per-batch reductions: tensor in, record out),
``avsslib.tap`` (the forward hooks that feed them, ``BlockTap``) and ``avsslib.accumulator``
(``StatsAccumulator``: records added up, merged, subset, saved, and every derived value).
``LayerStats`` is a ``StatsAccumulator`` fed by a ``BlockTap`` (its ``tap``). Writes no file.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Unpack

import torch

from avsslib.accumulator import (
    AGGREGATES,
    DEFAULT_EPS_GRID,
    DEFAULT_REL_GRID,
    VARIANCE_MODES,
    AccumulatorOptions,
    StatsAccumulator,
)
from avsslib.arch import context_length
from avsslib.errors import ConfigError
from avsslib.reductions import batch_record, reduce_block_output
from avsslib.tap import BlockTap, device_of, is_generative

__all__ = [
    "AGGREGATES",
    "DEFAULT_EPS_GRID",
    "DEFAULT_REL_GRID",
    "VARIANCE_MODES",
    "LayerStats",
    "batch_record",
    "reduce_block_output",
]


class LayerStats(StatsAccumulator):
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
    arrays of shape ``(n_layers,)`` unless stated otherwise; they, ``merge``, ``subset`` and
    the state methods come from ``StatsAccumulator``. ``tap`` is the ``BlockTap`` that holds
    the hooks (``tap.compile_failed``: compilation failed and the reductions run eager).
    """

    def __init__(
        self,
        eps: float = 1e-5,
        eps_grid: Iterable[float] = DEFAULT_EPS_GRID,
        *,
        stash_bytes: int | None = None,
        compile: bool | None = None,
        **options: Unpack[AccumulatorOptions],
    ) -> None:
        super().__init__(eps, eps_grid, **options)
        self.tap = BlockTap(
            self.eps_grid,
            self.rel_grid,
            similarity=self.similarity,
            stash_bytes=stash_bytes,
            compile=compile,
        )
        self._warned_dtype = False

    @property
    def stash_bytes(self) -> int | None:
        """Bytes of block outputs the hooks may stash before reducing (``None``: by device)."""
        return self.tap.stash_bytes

    @property
    def compile(self) -> bool | None:
        """Whether the reductions run through ``torch.compile`` (``None``: on CUDA only)."""
        return self.tap.compile

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "compile": self.compile}

    # ------------------------------------------------------------------ hooks
    def attach(self, model: torch.nn.Module) -> LayerStats:
        """Register one forward hook per block of ``model``; returns ``self``.

        Usable as a context manager: ``with LayerStats().attach(model) as stats: ...`` detaches
        on exit. Hooks only record inside ``update``; other forward passes are left alone.
        """
        self.tap.attach(model)
        return self

    def detach(self) -> LayerStats:
        """Remove every hook this instance registered."""
        self.tap.detach()
        return self

    def __enter__(self) -> LayerStats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # ------------------------------------------------------------------ fitting
    def update(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> LayerStats:
        """Run one no-grad forward pass on ``batch`` and add its statistics; returns ``self``.

        ``batch`` holds ``input_ids`` of shape ``(B, T)`` and optionally ``attention_mask``
        ``(B, T)`` (1 = real token) and ``token_type_ids``; tensors are moved to the model's
        device. The model's train/eval flags are restored afterwards.
        """
        inputs, mask = self._model_inputs(model, batch)
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
        w = mask.float() if self.mask_pad else torch.ones_like(mask, dtype=torch.float32)
        record, units = self.tap.record_batch(model, inputs, w, train=self.faithful)
        return self.add_batch(record, units)

    def _model_inputs(
        self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """The forward pass's keyword arguments on the model's device, and the attention mask
        ``(B, T)`` (all ones when the batch has none); ``ConfigError`` for a batch that does
        not fit the model or holds no real token."""
        if "input_ids" not in batch:
            raise ConfigError(f"batch has no 'input_ids' (keys: {sorted(batch)}).")
        device = device_of(model)
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
            pass_mask = not (self.faithful and is_generative(model))
        inputs: dict[str, Any] = {"input_ids": input_ids}
        if pass_mask:
            inputs["attention_mask"] = mask
        if "token_type_ids" in batch:
            inputs["token_type_ids"] = batch["token_type_ids"].to(device)
        if getattr(getattr(model, "config", None), "use_cache", None) is not None:
            inputs["use_cache"] = False  # scoring needs no KV cache: do not build one
        return inputs, mask

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
            if self.tap.model is None:
                stack.callback(self.detach)
                self.attach(model)
            for batch in tqdm(batches, total=total, desc="layer statistics", disable=not progress):
                self.update(model, batch)
        return self

    def __repr__(self) -> str:
        state = f"{self.n_batches_} batches" if self.n_batches_ else "not fitted"
        return (
            f"LayerStats(eps={self.eps:g}, faithful={self.faithful}, "
            f"variance_mode={self.variance_mode!r}, aggregate={self.aggregate!r}, "
            f"mask_pad={self.mask_pad}; {state})"
        )
