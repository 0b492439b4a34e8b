"""Look inside a model before measuring it: a table of its blocks, the size of the residual
stream after each block, and a greedy generation. Used by the book's first chapter.

Layer indices are 0-based and follow ``avsslib.arch.blocks(model)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import torch

from avsslib.arch import blocks, eval_mode

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def describe_layers(model: torch.nn.Module) -> pd.DataFrame:
    """One row per transformer block, in order.

    Columns: ``layer`` (0-based index), ``module`` (class name of the block), ``parameters``
    (number of scalar parameters in the block), ``hidden_size`` (width of the residual stream,
    from ``model.config.hidden_size``) and ``weight_norm`` (Frobenius norm of all the block's
    parameters taken together, in the units of the weights).
    """
    hidden = getattr(model.config, "hidden_size", None)
    rows = []
    for i, block in enumerate(blocks(model)):
        params = list(block.parameters())
        squares = sum(float(p.detach().double().pow(2).sum()) for p in params)
        rows.append(
            {
                "layer": i,
                "module": type(block).__name__,
                "parameters": sum(p.numel() for p in params),
                "hidden_size": hidden,
                "weight_norm": squares**0.5,
            }
        )
    return pd.DataFrame(rows).set_index("layer")


@torch.no_grad()
def residual_rms(model: torch.nn.Module, input_ids: torch.Tensor) -> np.ndarray:
    """Per-token root mean square of each block's output on ``input_ids``.

    ``input_ids``: token ids of shape ``(batch, seq)`` (no padding: every position counts).
    Returns an array of shape ``(n_layers, batch, seq)``: entry ``[l, b, t]`` is the RMS over the
    ``hidden`` units of block ``l``'s output at token ``t`` of sequence ``b`` (the residual stream
    after the block, before any final norm), in the model's activation units. The RMS over all
    tokens of a layer is ``sqrt(mean(rms[l] ** 2))``. The model is run once in eval mode; its
    training/eval state is restored afterwards.
    """
    layers = blocks(model)
    per_layer: list[torch.Tensor | None] = [None] * len(layers)

    def hook(index: int):
        def record(_module, _inputs, output) -> None:
            h = output[0] if isinstance(output, (tuple, list)) else output
            per_layer[index] = h.detach().double().pow(2).mean(dim=-1).sqrt().cpu()

        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with eval_mode(model):
            model(input_ids=input_ids.to(cast(Any, model).device))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(cast(list[torch.Tensor], per_layer)).numpy()


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_new_tokens: int = 32,
) -> str:
    """Greedy continuation of ``prompt`` (no sampling, so it is deterministic).

    When the tokenizer has a chat template, the prompt is sent as one user message with the
    generation prompt appended (instruction-tuned models answer instead of continuing the text).
    Returns only the newly generated text, special tokens removed, stripped of whitespace.
    """
    templated = bool(getattr(tokenizer, "chat_template", None))
    if templated:  # the template writes any special tokens itself
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = prompt
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=not templated)
    encoded = encoded.to(model.device)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    output = cast(Any, model).generate(
        **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
    )
    new_tokens = output[0, encoded["input_ids"].shape[1] :]
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()
