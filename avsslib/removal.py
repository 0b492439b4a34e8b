"""The mean token loss of a causal LM, intact and with one block skipped: what the
``ppl_removal`` score (``avsslib.scores``) measures.

``removal_losses`` replays the kept outputs of the blocks before the skipped one instead of
computing them again (about half the cost); ``removal_losses_plain`` is the plain way (the
whole model once per skipped block), the reference tests and benchmarks hold it to. Runs the
model; writes no file.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from avsslib.arch import eval_mode
from avsslib.errors import AvssError

__all__ = ["mean_token_loss", "removal_losses", "removal_losses_plain"]


def removal_losses(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    progress: bool = True,
) -> tuple[float, np.ndarray]:
    """Mean token loss of the intact model and of the model with each block skipped alone.

    Returns ``(base, removed)``, ``removed`` of shape ``(n_layers,)``: the same numbers as
    :func:`removal_losses_plain` (one :func:`mean_token_loss` per skipped block), at about half
    the cost. The hidden states entering block ``l`` are the same for the intact model and for
    every model that skips a later block, so each batch runs the intact model once, keeping every
    block's output, and the model that skips block ``l`` replays the kept outputs of blocks
    ``0..l-1`` instead of computing them: only blocks ``l+1..`` run (and the embedding and the
    head). Memory: the block outputs of one batch (``n_layers x batch x seq x hidden``) on the
    model's device. A progress bar counts batches; the first batch's time gives its estimate.
    """
    from tqdm.auto import tqdm

    from avsslib.arch import blocks

    block_list = blocks(model)
    n = len(block_list)
    batches = list(batches)
    device = next(model.parameters()).device
    base_total, totals, count = 0.0, np.zeros(n), 0
    block_runs = len(batches) * (n + n * (n - 1) // 2)
    if progress:
        print(
            f"ppl_removal: {len(batches) * (n + 1)} forward passes over {len(batches)} batches "
            f"(per batch the intact model once, then once per skipped block, running only the "
            f"blocks after it): {block_runs} block runs, the work of about "
            f"{block_runs / n:.0f} full passes.",
            file=sys.stderr,
            flush=True,
        )
    started = time.perf_counter()
    with eval_mode(model), torch.no_grad():
        for batch in tqdm(
            batches,
            desc=f"ppl_removal: skip each of {n} blocks",
            unit="batch",
            disable=not progress,
        ):
            ids, mask = _ids_and_mask(batch, device)
            first_input, outputs, handles = _keep_block_io(block_list)
            try:
                loss, tokens = _batch_loss(model, ids, mask)
            finally:
                for handle in handles:
                    handle.remove()
            base_total += loss
            count += tokens
            for layer in range(n):
                entering = first_input[0] if layer == 0 else _hidden(outputs[layer - 1])
                replay = {j: _Replay(block_list[j], outputs[j]) for j in range(layer)}
                replay[layer] = _Replay(block_list[layer], _with_hidden(outputs[layer], entering))
                with _replaced(block_list, replay):
                    totals[layer] += _batch_loss(model, ids, mask)[0]
            if progress and batch is batches[0] and len(batches) > 1:
                took = time.perf_counter() - started
                print(
                    f"ppl_removal: the first batch took {took:.1f} s; estimated "
                    f"{took * len(batches):.0f} s for all {len(batches)}.",
                    file=sys.stderr,
                    flush=True,
                )
    if count == 0:
        raise AvssError("removal_losses: the batches hold no target token (all padding?).")
    return base_total / count, totals / count


def removal_losses_plain(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    progress: bool = True,
) -> tuple[float, np.ndarray]:
    """:func:`removal_losses` the plain way: the whole model once, then once per skipped block
    (:func:`avsslib.prune.skip_layers`). The reference that tests and benchmarks hold the
    cached version to."""
    from tqdm.auto import tqdm

    from avsslib.arch import blocks
    from avsslib.prune import skip_layers

    batches = list(batches)
    base = mean_token_loss(model, batches)
    n = len(blocks(model))
    out = np.empty(n)
    for layer in tqdm(range(n), desc="ppl_removal (plain): skip each layer", disable=not progress):
        with skip_layers(model, [layer]):
            out[layer] = mean_token_loss(model, batches)
    return base, out


def _keep_block_io(
    block_list: torch.nn.ModuleList,
) -> tuple[list[torch.Tensor], list[Any], list[Any]]:
    """Hooks that keep, during the next forward pass, the hidden states entering block 0 and the
    output of every block. Returns ``(first_input, outputs, handles)``; remove the handles."""
    first_input: list[torch.Tensor] = []
    outputs: list[Any] = [None] * len(block_list)

    def keep_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        first_input.append(args[0] if args else kwargs["hidden_states"])

    def keeper(i: int) -> Callable[..., None]:
        def keep(module: torch.nn.Module, args: tuple, output: Any) -> None:
            outputs[i] = output

        return keep

    handles = [block_list[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
    handles += [b.register_forward_hook(keeper(i)) for i, b in enumerate(block_list)]
    return first_input, outputs, handles


class _Replay(torch.nn.Module):
    """Stands in for a block: returns ``output`` (kept from an earlier pass) without computing.
    Attribute reads that the model's forward makes on its blocks (``attention_type``, ...) go to
    the block it replaces."""

    def __init__(self, block: torch.nn.Module, output: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_output", output)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._output

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)


@contextlib.contextmanager
def _replaced(
    block_list: torch.nn.ModuleList, replacements: Mapping[int, torch.nn.Module]
) -> Iterator[None]:
    """Within the block, ``block_list[i]`` is ``replacements[i]``; restored on exit."""
    originals = {i: block_list[i] for i in replacements}
    try:
        for i, module in replacements.items():
            block_list[i] = module
        yield
    finally:
        for i, module in originals.items():
            block_list[i] = module


def _hidden(output: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or the first element of a tuple)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` of a block with its hidden states replaced by ``hidden`` (same structure)."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (
        type(output)([hidden, *output[1:]]) if isinstance(output, list) else (hidden, *output[1:])
    )


def _ids_and_mask(
    batch: Mapping[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    ids = batch["input_ids"].to(device)
    mask = batch.get("attention_mask")
    return ids, torch.ones_like(ids) if mask is None else mask.to(device)


def _batch_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy (nats) and the number of counted target tokens."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    total = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    ).item()
    return total, int((target != -100).sum())


def mean_token_loss(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> float:
    """Mean next-token cross-entropy (nats) of a causal LM over all counted target tokens.

    Each batch holds ``input_ids`` ``(B, T)`` and optionally ``attention_mask``; a target
    token counts when it and its context position are not padding. The model is put in
    ``eval()`` mode for the pass and its flags restored afterwards.
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            loss, tokens = _batch_loss(model, *_ids_and_mask(batch, device))
            total += loss
            count += tokens
    if count == 0:
        raise AvssError("mean_token_loss: the batches hold no target token (all padding?).")
    return total / count
