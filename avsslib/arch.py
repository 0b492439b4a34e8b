"""Architectures: where each model family keeps its decoder blocks (one table), block access,
the layer-count field, the context length, and :func:`eval_mode` (a pass in ``eval()`` mode
with the training flag restored afterwards). Free of loading: nothing here reads a file.

``blocks(model)`` returns the ``torch.nn.ModuleList`` of transformer blocks of any model whose
``config.model_type`` is in :data:`ARCHITECTURES`. To support a new architecture, add one line to
that table: the dotted attribute path of the block list as seen from the task wrapper
(``*ForCausalLM``, ``*ForSequenceClassification``, ...) and the config field holding the layer
count. Bare base models (``LlamaModel``, ``BertModel``, ...) are handled by the same entry: the
path is tried with and without its first component (the attribute the wrapper adds).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch

from avsslib.errors import ModelError


@dataclass(frozen=True)
class Architecture:
    """Where one architecture keeps its blocks.

    ``blocks``: dotted path of the block ``ModuleList`` from the task wrapper (e.g.
    ``"model.layers"`` in ``LlamaForCausalLM``); the bare base model has the same path without
    its first component (``"layers"`` in ``LlamaModel``).
    ``n_layers``: the ``config`` attribute holding the number of blocks (updated on pruning).
    ``causal``: a decoder (loaded as ``AutoModelForCausalLM``); ``False`` for bidirectional
    encoders, which ``load_model`` loads as masked language models and which the commands that
    generate or score continuations refuse.
    """

    blocks: str
    n_layers: str = "num_hidden_layers"
    causal: bool = True


# One line per architecture, keyed by ``config.model_type`` (pyvene's convention).
ARCHITECTURES: dict[str, Architecture] = {
    # decoder-only, Llama family
    "llama": Architecture("model.layers"),
    "mistral": Architecture("model.layers"),
    "mixtral": Architecture("model.layers"),
    "qwen2": Architecture("model.layers"),
    "qwen3": Architecture("model.layers"),
    "gemma": Architecture("model.layers"),
    "gemma2": Architecture("model.layers"),
    "gemma3_text": Architecture("model.layers"),
    "olmo": Architecture("model.layers"),
    "olmo2": Architecture("model.layers"),
    "phi": Architecture("model.layers"),
    "phi3": Architecture("model.layers"),
    "stablelm": Architecture("model.layers"),
    "smollm3": Architecture("model.layers"),
    "granite": Architecture("model.layers"),
    # decoder-only, other layouts
    "gpt2": Architecture("transformer.h", "n_layer"),
    "gptj": Architecture("transformer.h", "n_layer"),
    "bloom": Architecture("transformer.h", "n_layer"),
    "falcon": Architecture("transformer.h"),
    "gpt_neox": Architecture("gpt_neox.layers"),
    "opt": Architecture("model.decoder.layers"),
    # encoders
    "bert": Architecture("bert.encoder.layer", causal=False),
    "roberta": Architecture("roberta.encoder.layer", causal=False),
    "distilbert": Architecture("distilbert.transformer.layer", "n_layers", causal=False),
}


def is_causal_lm_architecture(model_type: str) -> bool:
    """Whether ``model_type`` is a decoder of ``ARCHITECTURES`` (``True`` for types not in the
    table, which ``load_model`` tries as causal language models)."""
    arch = ARCHITECTURES.get(model_type)
    return arch is None or arch.causal


def require_causal_lm(model: torch.nn.Module, command: str) -> None:
    """Raise ``ModelError`` when ``model`` is an encoder: ``command`` needs a causal language
    model (it generates answers or scores continuations)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is not None and not is_causal_lm_architecture(model_type):
        raise ModelError(
            f"{command} needs a causal language model (a decoder), but this is a {model_type!r} "
            "encoder. Encoders work with `avss score` and `avss prune`; for evaluation, "
            "hallucination labels and mitigation use a decoder model."
        )


def _architecture(model: torch.nn.Module) -> tuple[str, Architecture]:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ModelError(
            f"{type(model).__name__} has no `config.model_type`; blocks() needs a Hugging Face "
            "transformers model (PreTrainedModel) to look up its architecture."
        )
    try:
        return model_type, ARCHITECTURES[model_type]
    except KeyError:
        raise ModelError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}). Supported "
            f"model types: {', '.join(sorted(ARCHITECTURES))}. To add one, add one line to the "
            "ARCHITECTURES table in avsslib/arch.py: "
            f'"{model_type}": Architecture("<path.to.block.ModuleList>", "<config layer-count field>").'
        ) from None


def _get_path(obj: object, path: str) -> object | None:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's transformer blocks, in order (length = ``config.<layer_count_field>``).

    Works for task wrappers (``LlamaForCausalLM``) and bare base models (``LlamaModel``), and for
    PEFT-wrapped models (unwrapped with ``get_base_model()``). Each block maps hidden states of
    shape ``(batch, seq, hidden)`` to the same shape (decoders may return a tuple whose first
    element is that tensor). Raises ``ModelError`` for an architecture not in ``ARCHITECTURES``.
    """
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = cast(Any, model).get_base_model()
    model_type, arch = _architecture(model)
    candidates = [arch.blocks]
    if "." in arch.blocks:
        candidates.append(arch.blocks.split(".", 1)[1])
    for path in candidates:
        found = _get_path(model, path)
        if isinstance(found, torch.nn.ModuleList):
            return found
    raise ModelError(
        f"{type(model).__name__} (model_type {model_type!r}) has no ModuleList at "
        f"{' or '.join(repr(p) for p in candidates)}; fix the {model_type!r} line of the "
        "ARCHITECTURES table in avsslib/arch.py."
    )


def layer_count_field(model: torch.nn.Module) -> str:
    """The ``model.config`` attribute holding the number of blocks (e.g. ``"num_hidden_layers"``,
    ``"n_layer"`` for GPT-2); a pruner sets it to the new block count."""
    if hasattr(model, "get_base_model"):
        model = cast(Any, model).get_base_model()
    return _architecture(model)[1].n_layers


_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(model: torch.nn.Module) -> int | None:
    """The longest input, in tokens, the model was built for (``config.max_position_embeddings``
    or its equivalent: ``n_positions`` for GPT-2, ...); ``None`` when the config names none."""
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = cast(Any, model).get_base_model()
    config = getattr(model, "config", None)
    for field in _CONTEXT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in ``eval()`` mode inside the ``with`` block; afterwards (also on an error) its
    training flag is what it was before, set on every submodule (``model.train(flag)``)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "blocks",
    "context_length",
    "eval_mode",
    "is_causal_lm_architecture",
    "layer_count_field",
    "require_causal_lm",
]
