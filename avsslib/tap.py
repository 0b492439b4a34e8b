"""The block tap: forward hooks on every transformer block that reduce its output to one record.

A ``BlockTap`` registers one forward hook per block of a model (``avsslib.arch.blocks``). During
``BlockTap.record_batch`` each hook hands its block's output (and, for the similarity rows, its
input) to ``avsslib.reductions.reduce_block_output``, on the block's device, either at once or
after stashing the outputs of several blocks (one batched reduction instead of one per block;
the stashed tensors' version counters guard against blocks that modify them in place). After
the forward pass the per-layer reductions become one batch's record (``batch_record``).
``torch.compile`` of the reduction is used where asked (by default on CUDA), with one warning
and a fallback to eager if compilation fails. The tap keeps nothing between batches; adding
records up is ``avsslib.accumulator``'s job and ``avsslib.stats.LayerStats`` joins the two.
Writes no file.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from avsslib.arch import blocks
from avsslib.errors import ConfigError, ModelError
from avsslib.reductions import batch_record, reduce_block_output

__all__ = ["BlockTap", "device_of", "is_generative", "training_mode"]


@dataclass
class _Batch:
    """What the hooks collect while one batch runs through the model."""

    w: torch.Tensor  # (B, T) float32 token mask
    toks: list[torch.Tensor | None]  # per layer: (C, B, T) float32
    pooled: list[torch.Tensor | None]  # per layer: (B, d) float32
    calls: list[int]  # hook calls per layer (host-side counter, no sync)
    pending: list[tuple] = field(default_factory=list)  # stashed (k, h, h_in, versions)
    stash_layers: int = 0  # reduce once this many outputs are stashed


class BlockTap:
    """Forward hooks on a model's blocks that turn one forward pass into one batch record.

    Args:
        eps_grid: near-zero thresholds of the reduction.
        rel_grid: relative thresholds (``()`` for none).
        similarity: also reduce each block's input against its output.
        stash_bytes: bytes of block outputs the hooks may hold before reducing them together
            (``None``: 0 on CPU, 64 MiB on other devices; see ``LayerStats``).
        compile: run the reduction through ``torch.compile`` (``None``: on CUDA only).

    ``compile_failed`` turns true (with one ``RuntimeWarning``) when compilation failed and the
    tap fell back to eager. Hooks only record inside ``record_batch``; other forward passes of
    the model are left alone.
    """

    def __init__(
        self,
        eps_grid: tuple[float, ...],
        rel_grid: tuple[float, ...] = (),
        *,
        similarity: bool = True,
        stash_bytes: int | None = None,
        compile: bool | None = None,
    ) -> None:
        if stash_bytes is not None and stash_bytes < 0:
            raise ConfigError(f"stash_bytes must be >= 0 or None, got {stash_bytes}.")
        self.eps_grid = tuple(eps_grid)
        self.rel_grid = tuple(rel_grid)
        self.similarity = bool(similarity)
        self.stash_bytes = stash_bytes
        self.compile = compile
        self.compile_failed = False
        self._handles: list[Any] = []
        self._model: torch.nn.Module | None = None
        self._batch: _Batch | None = None

    # ------------------------------------------------------------------ hooks
    @property
    def model(self) -> torch.nn.Module | None:
        """The model the hooks are attached to (``None`` when detached)."""
        return self._model if self._handles else None

    def attach(self, model: torch.nn.Module) -> BlockTap:
        """Register one forward hook per block of ``model`` (a no-op if already attached to it);
        returns ``self``. ``ConfigError`` when attached to another model."""
        if self._handles:
            if self._model is model:
                return self
            raise ConfigError(
                "this LayerStats is already attached to another model; call detach() first."
            )
        self._handles = [
            block.register_forward_hook(self._make_hook(k), with_kwargs=True)
            for k, block in enumerate(blocks(model))
        ]
        self._model = model
        return self

    def detach(self) -> BlockTap:
        """Remove every hook this tap registered; returns ``self``."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._model = None
        return self

    def __enter__(self) -> BlockTap:
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

    # ------------------------------------------------------------------ reductions
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
        if use_compile and not self.compile_failed:
            try:
                return _compiled_reduce()(h, w, self.eps_grid, h_in, self.rel_grid)
            except Exception as error:  # noqa: BLE001 - any compiler failure: fall back
                self.compile_failed = True
                warnings.warn(
                    f"torch.compile of the statistics reductions failed ({type(error).__name__}: "
                    f"{error}); continuing without it (slower). Pass compile=False to silence.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return reduce_block_output(h, w, self.eps_grid, h_in, self.rel_grid)

    # ------------------------------------------------------------------ one batch
    def record_batch(
        self,
        model: torch.nn.Module,
        inputs: Mapping[str, Any],
        w: torch.Tensor,
        *,
        train: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one no-grad forward pass ``model(**inputs)`` with the hooks and return its record.

        Args:
            model: the model (attached for this call if the tap is detached; if attached, it
                must be the attached model).
            inputs: keyword arguments of the forward pass, already on the model's device.
            w: token mask, shape ``(B, T)``, float32, on the model's device.
            train: run with every module in train mode (dropout on); flags restored after.

        Returns:
            ``batch_record``'s ``(record, unit)``: float64, shapes ``(L, K)`` and ``(L, d)``,
            on ``w``'s device.
        """
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
            with torch.no_grad(), training_mode(model, train=train):
                model(**inputs)
                self._reduce_pending(self._batch)
            batch = self._batch
        finally:
            self._batch = None
            if attached_here:
                self.detach()
        bad = [k for k, c in enumerate(batch.calls) if c != 1]
        if bad:
            raise ModelError(
                f"blocks {bad} of {type(model).__name__} ran {[batch.calls[k] for k in bad]} "
                "times in one forward pass (expected once each); LayerStats needs every block "
                "to run exactly once per forward."
            )
        return batch_record(
            torch.stack([t.to(w.device) for t in batch.toks]),  # type: ignore[union-attr]
            torch.stack([p.to(w.device) for p in batch.pooled]),  # type: ignore[union-attr]
            w,
            len(self.eps_grid),
            len(self.rel_grid),
        )


# ---------------------------------------------------------------------- helpers
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


def device_of(model: torch.nn.Module) -> torch.device:
    """The device inputs of ``model`` go to: ``model.device``, else its first parameter's."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def is_generative(model: torch.nn.Module) -> bool:
    """Whether ``model`` can generate (a causal LM with ``can_generate()``)."""
    can_generate = getattr(model, "can_generate", None)
    return bool(callable(can_generate) and can_generate())


@contextlib.contextmanager
def training_mode(model: torch.nn.Module, train: bool) -> Iterator[None]:
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


_COMPILED: Callable | None = None


def _compiled_reduce() -> Callable:
    """``torch.compile(reduce_block_output, dynamic=True)``, built once per process."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(reduce_block_output, dynamic=True)
    return _COMPILED
