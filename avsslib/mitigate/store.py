"""Storing what training changed: the trained blocks' tensors (or LoRA adapters) and their
metadata, and re-applying them to a freshly loaded base model."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from avsslib.arch import blocks
from avsslib.errors import ModelError
from avsslib.fs import atomic_path, write_json_atomic
from avsslib.report import model_fingerprint, state_sha256

CHECKPOINT = "checkpoint.pt"
TRAINED_LAYERS = "trained_layers.safetensors"
TRAINED_META = "trained_layers.json"


if TYPE_CHECKING:
    from avsslib.mitigate.train import TrainResult


def lora_targets(model: torch.nn.Module, layers: Iterable[int]) -> list[str]:
    """Full module names of every linear projection (``nn.Linear`` or GPT-2's ``Conv1D``)
    inside the given blocks: attention and MLP projections."""
    from transformers.pytorch_utils import Conv1D

    names = {id(module): name for name, module in model.named_modules()}
    targets = []
    for layer in layers:
        block = blocks(model)[layer]
        targets += [
            f"{names[id(block)]}.{sub}"
            for sub, module in block.named_modules()
            if isinstance(module, torch.nn.Linear | Conv1D)
        ]
    return targets


def _add_lora(model: torch.nn.Module, targets: list[str], r: int, alpha: int) -> torch.nn.Module:
    """Inject LoRA adapters into ``targets`` in place (``peft``); returns the PeftModel wrapper."""
    from peft import LoraConfig, get_peft_model

    if not targets:
        raise ModelError(
            "no linear projection found in the chosen blocks; LoRA needs nn.Linear "
            "or Conv1D modules there (train the full parameters instead)."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(
            model,
            LoraConfig(
                r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none"
            ),
        )


# ---------------------------------------------------------------- saving and loading


def save_trained_layers(result: TrainResult, directory: str | Path) -> Path:
    """Write ``trained_layers.safetensors`` (the trained tensors by parameter name) and
    ``trained_layers.json`` (kind, layers, config, base-model fingerprint, LoRA settings) into
    ``directory``, each atomically. Returns the safetensors path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    path = directory / TRAINED_LAYERS
    with atomic_path(path) as tmp:
        save_file(result.state, tmp, metadata={"format": "avsslib.mitigate/1"})
    write_json_atomic(directory / TRAINED_META, result.meta)
    return path


def load_trained_layers(
    model: torch.nn.Module, path: str | Path, *, verify_weights: bool = True
) -> dict[str, Any]:
    """Apply trained layers saved by :func:`save_trained_layers` to a freshly loaded base
    ``model``, in place; returns the saved metadata.

    ``path``: the folder or its ``trained_layers.safetensors``. The base model must match the
    recorded one (id, type, layer count, hidden size, and with ``verify_weights`` the SHA-256 of
    its weights; turn that off for the same model in another dtype), else ``ModelError``. LoRA
    adapters are injected, loaded and merged, leaving a plain model.
    """
    from safetensors.torch import load_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    tensors_path, meta_path = folder / TRAINED_LAYERS, folder / TRAINED_META
    if not tensors_path.exists() or not meta_path.exists():
        raise ModelError(
            f"{folder} lacks {TRAINED_LAYERS} or {TRAINED_META}; pass the out_dir of a "
            "finished training run."
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    want, have = meta["base_model"], model_fingerprint(model, weights=False)
    for key in ("id", "model_type", "num_layers", "hidden_size"):
        if want.get(key) != have.get(key):
            raise ModelError(
                f"{meta_path}: trained on a base model with {key} = {want.get(key)!r}, "
                f"but this model has {have.get(key)!r}; load the same base model."
            )
    if verify_weights and want["state_sha256"] != state_sha256(model):
        raise ModelError(
            f"{meta_path}: the base model's weights differ from those it was trained "
            "on (SHA-256); load a fresh copy of that model, or pass "
            "verify_weights=False for the same model in another dtype."
        )
    tensors = load_file(tensors_path)
    net = (
        _add_lora(model, meta["lora"]["target_modules"], meta["lora"]["r"], meta["lora"]["alpha"])
        if meta["kind"] == "lora"
        else model
    )
    named = dict(model.named_parameters())
    for name, value in tensors.items():
        if name not in named or named[name].shape != value.shape:
            raise ModelError(
                f"{tensors_path}: tensor {name} {tuple(value.shape)} has no match in the "
                "model; it was saved for another architecture."
            )
        with torch.no_grad():
            named[name].copy_(value)
    if meta["kind"] == "lora":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            cast(Any, net).merge_and_unload()
    return meta


__all__ = [
    "lora_targets",
    "CHECKPOINT",
    "TRAINED_LAYERS",
    "TRAINED_META",
    "load_trained_layers",
    "save_trained_layers",
]
