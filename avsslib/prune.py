"""Removing transformer blocks, for good or for the length of a ``with``.

* ``prune_layers_(model, layers)`` deletes the blocks **in place** (the trailing underscore is
  PyTorch's in-place convention) and returns the same model object, which still generates with a
  KV cache and round-trips through ``save_pretrained`` / ``from_pretrained``. It

  - deletes the blocks from the ``ModuleList`` (``avsslib.arch.blocks``), which renumbers the
    remaining ones ``0..M'-1`` (so the saved weights are named like a model built with ``M'``
    layers);
  - sets the config's layer count (``avsslib.arch.layer_count_field``, e.g.
    ``num_hidden_layers``) to ``M'``;
  - subsets every per-layer config list (``layer_types`` and any other list or tuple attribute
    of length ``M``, except token-id lists) the same way;
  - renumbers every ``layer_idx`` attribute inside the remaining blocks (``self_attn.layer_idx``
    indexes the KV cache) consecutively;
  - records the removed *original* indices, ascending, in ``config.avss_pruned_layers``
    (composed over repeated pruning).

* ``pruned_copy(model, layers)`` does the same on a deep copy (twice the memory).
* ``pruned_view(model, layers)`` copies only the module tree: the kept blocks share the
  original's weights (no weight memory), for evaluating many pruned configurations.
* ``skip_layers(model, layers)`` is non-destructive: inside the ``with`` block each chosen block
  returns its input unchanged (the residual stream passes through); the model is restored on
  exit. The skipped blocks still run (their outputs are discarded), which keeps the output
  structure right for any architecture at the cost of their compute.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import operator
from collections.abc import Iterable, Iterator
from typing import Any, cast

import torch

from avsslib.arch import blocks, layer_count_field
from avsslib.errors import ConfigError, ModelError

__all__ = [
    "PRUNED_LAYERS_FIELD",
    "prune",
    "prune_layers_",
    "pruned_copy",
    "pruned_view",
    "skip_layers",
]

PRUNED_LAYERS_FIELD = "avss_pruned_layers"
"""Config attribute listing the original indices of the removed blocks."""

# List-valued config attributes that are never per-layer, whatever their length.
_NOT_PER_LAYER = {
    "architectures",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    PRUNED_LAYERS_FIELD,
}


def _check_layers(layers: Iterable[int], n_layers: int, *, allow_all: bool) -> list[int]:
    """Validate layer indices: integers in ``[0, n_layers)``, no duplicates."""
    chosen = []
    for i in layers:
        try:
            chosen.append(operator.index(i))
        except TypeError:
            raise ConfigError(f"layer index {i!r} is not an integer.") from None
    out_of_range = [i for i in chosen if not 0 <= i < n_layers]
    if out_of_range:
        raise ConfigError(
            f"layer indices {out_of_range} are out of range: the model has {n_layers} blocks "
            f"(valid indices 0..{n_layers - 1})."
        )
    duplicates = sorted({i for i in chosen if chosen.count(i) > 1})
    if duplicates:
        raise ConfigError(f"layer indices {duplicates} are listed more than once.")
    if not allow_all and len(chosen) == n_layers:
        raise ConfigError(f"cannot prune all {n_layers} blocks; keep at least one.")
    return sorted(chosen)


def prune_layers_(model: torch.nn.Module, layers: Iterable[int]) -> torch.nn.Module:
    """Delete the blocks at indices ``layers`` from ``model`` in place; returns ``model``.

    Raises ``ConfigError`` for indices out of range, duplicates, or all layers, and
    ``ModelError`` when the config's layer count disagrees with the block list or the config is
    heterogeneous (``per_layer_config``; not supported).
    """
    block_list = blocks(model)
    n_old = len(block_list)
    removed = _check_layers(layers, n_old, allow_all=False)
    config = model.config
    field = layer_count_field(model)
    if getattr(config, field, None) != n_old:
        raise ModelError(
            f"config.{field} = {getattr(config, field, None)} but the model has {n_old} blocks; "
            "cannot prune a model whose config disagrees with its modules."
        )
    if getattr(config, "is_heterogeneous", False):
        raise ModelError(
            "this config has a per_layer_config (heterogeneous layers); prune_layers_ does not "
            "support it."
        )
    keep = [i for i in range(n_old) if i not in set(removed)]

    for i in reversed(removed):
        del block_list[i]  # ModuleList renumbers its keys 0..n-1
    for new_index, block in enumerate(block_list):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                cast(Any, module).layer_idx = new_index

    for name, value in list(vars(config).items()):
        if (
            not name.startswith("_")
            and name not in _NOT_PER_LAYER
            and not name.endswith(("_token_id", "_token_ids"))
            and isinstance(value, (list, tuple))
            and len(value) == n_old
        ):
            setattr(config, name, type(value)(value[i] for i in keep))
    setattr(config, field, len(keep))

    previous = list(getattr(config, PRUNED_LAYERS_FIELD, None) or [])
    original = [i for i in range(n_old + len(previous)) if i not in set(previous)]
    setattr(config, PRUNED_LAYERS_FIELD, sorted(previous + [original[i] for i in removed]))
    return model


prune = prune_layers_
"""DESIGN.md's name for ``prune_layers_`` (in place)."""


def pruned_copy(model: torch.nn.Module, layers: Iterable[int]) -> torch.nn.Module:
    """A pruned deep copy of ``model``; ``model`` itself is left untouched."""
    return prune_layers_(copy.deepcopy(model), layers)


def pruned_view(model: torch.nn.Module, layers: Iterable[int]) -> torch.nn.Module:
    """A pruned copy of ``model`` that **shares** its parameters and buffers.

    Like :func:`pruned_copy`, but only the module tree and the config are copied:
    the kept blocks' weights are the original tensors, so it costs no weight memory and no
    copying time. ``model`` is left unpruned; do not modify the view's weights in place (that
    would modify ``model``'s). Meant for evaluating many pruned configurations of one model.
    """
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return prune_layers_(copy.deepcopy(model, shared), layers)


@contextlib.contextmanager
def skip_layers(model: torch.nn.Module, layers: Iterable[int]) -> Iterator[torch.nn.Module]:
    """Within the ``with`` block, the blocks at ``layers`` return their input unchanged.

    Yields ``model``. Output structure is kept: a block that returns a tuple returns
    ``(input, *rest)``, one that returns a tensor returns the input tensor. Skipping every
    block is allowed (embeddings straight into the head). Hooks are removed on exit, also on
    errors.
    """
    block_list = blocks(model)
    chosen = _check_layers(layers, len(block_list), allow_all=True)
    handles = []
    try:
        for i in chosen:
            hook = _make_skip_hook(i)
            handles.append(block_list[i].register_forward_hook(hook, with_kwargs=True))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _make_skip_hook(index: int):
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        h_in = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(h_in, torch.Tensor):
            raise ModelError(
                f"skip_layers: block {index} ({type(module).__name__}) got no hidden-state "
                "tensor as first positional argument or `hidden_states` keyword."
            )
        if isinstance(output, tuple):
            return (h_in, *output[1:])
        if isinstance(output, list):
            return [h_in, *output[1:]]
        return h_in

    return hook
