"""The public loading functions of the datasets that :data:`avsslib.data.specs.DATASETS` lists.

Where records come from, in order:

1. the ``data_dir`` argument, else ``AVSS_DATA_DIR`` (:func:`avsslib.paths.data_dir`): a folder
   laid out like ``shared/data``. A configured folder that does not exist, or lacks a file, is
   an error (no silent fall-back to other data);
2. with neither configured, or for a split that has no local file (``hub only`` in
   :data:`DATASETS`), the Hugging Face hub through ``datasets.load_dataset``, mapped into the
   same records by the ``*_from_hub`` functions of :mod:`avsslib.data.loaders`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from avsslib import paths
from avsslib.data._io import safe_path
from avsslib.data.records import (
    Record,
    SentimentExample,
    TextDocument,
    WikiQAQuestion,
)
from avsslib.data.specs import DatasetSpec, get_spec
from avsslib.errors import ConfigError, DataError
from avsslib.moved import moved_names

T = TypeVar("T")


# ---------------------------------------------------------------- where the data comes from


@dataclass(frozen=True)
class DataSource:
    """Where one split is read from: local files (``root`` + ``files``) or the hub."""

    name: str
    split: str
    root: Path | None
    origin: str  # "the data_dir argument", "AVSS_DATA_DIR", or "hub"
    files: tuple[Path, ...]
    hub_id: str
    hub_config: str | None
    hub_split: str | None

    @property
    def is_local(self) -> bool:
        return self.root is not None and bool(self.files)

    def describe(self) -> str:
        """``local: <files>`` or ``hub: <id> [config] <split>`` for tables and logs."""
        if self.is_local:
            assert self.root is not None
            return "local: " + ", ".join(p.relative_to(self.root).as_posix() for p in self.files)
        config = f" {self.hub_config}" if self.hub_config else ""
        return f"hub: {self.hub_id}{config} [{self.hub_split}]"


def _data_root(data_dir: str | Path | None) -> tuple[Path, str] | None:
    if data_dir is not None:
        root, origin = Path(data_dir).expanduser().resolve(), "the data_dir argument"
    else:
        env = paths.data_dir()
        if env is None:
            return None
        root, origin = env, "AVSS_DATA_DIR"
    if not root.is_dir():
        raise DataError(
            f"data directory {root} (from {origin}) does not exist or is not a directory. Point it at a "
            "folder laid out like shared/data, or unset it to load from the Hugging Face hub."
        )
    return root, origin


def _manifest_sizes(root: Path) -> dict[str, int]:
    """``{relative path: bytes}`` from ``root/MANIFEST.json`` (the layout of shared/data); empty
    when the folder has no readable manifest (it is optional)."""
    try:
        files = json.loads((root / "MANIFEST.json").read_text(encoding="utf-8"))["files"]
        return {str(f["path"]): int(f["bytes"]) for f in files if "bytes" in f}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def resolve_source(
    name: str, split: str | None = None, *, data_dir: str | Path | None = None
) -> DataSource:
    """Decide where ``name``/``split`` is read from (see the module docstring); checks that the
    local files exist, lie inside the data directory and, where the folder has a MANIFEST.json,
    have the size it lists (a truncated copy is refused even when it still parses)."""
    spec = get_spec(name)
    split = spec.split_name(split)
    s = spec.splits[split]
    located = _data_root(data_dir)
    config = s.hub_config or spec.hub_config
    if located is None or not s.files:
        if s.hub_split is None:
            raise DataError(
                f"{name} {split}: no local copy (set AVSS_DATA_DIR to a folder laid out like shared/data); "
                f"this split exists only as local files, not on the hub."
            )
        return DataSource(name, split, None, "hub", (), spec.hub_id, config, s.hub_split)
    root, origin = located
    files = tuple(safe_path(root, f) for f in s.files)
    for rel, path in zip(s.files, files, strict=True):
        if not path.is_file():
            raise DataError(
                f"{name} {split}: file {rel} not found in {root} (the data directory from {origin}). "
                "Point AVSS_DATA_DIR at a folder laid out like shared/data (see its README.md)."
            )
    sizes = _manifest_sizes(root)
    for rel, path in zip(s.files, files, strict=True):
        size = path.stat().st_size
        if rel in sizes and size != sizes[rel]:
            raise DataError(
                f"{path}: has {size:,} bytes but {root / 'MANIFEST.json'} lists {sizes[rel]:,}; "
                "the copy is truncated or altered. Replace the file with an intact copy (its "
                "sha256 is in MANIFEST.json)."
            )
    return DataSource(name, split, root, origin, files, spec.hub_id, config, s.hub_split)


def _fetch_hub(hub_id: str, config: str | None, split: str) -> list[Mapping[str, Any]]:
    """Rows of one hub dataset split, as dicts (needs a network or a populated HF cache)."""
    import datasets

    return list(datasets.load_dataset(hub_id, config, split=split))


def _load_hub(spec: DatasetSpec, src: DataSource) -> list[Any]:
    assert src.hub_split is not None

    def fetch(config: str | None, hub_split: str) -> list[Mapping[str, Any]]:
        try:
            return _fetch_hub(spec.hub_id, config, hub_split)
        except Exception as exc:  # noqa: BLE001 - any hub/network failure becomes one clear message
            raise DataError(
                f"{spec.name} {src.split}: no local copy (set AVSS_DATA_DIR to a folder laid out like "
                f"shared/data) and no network: loading {spec.hub_id} ({config or 'default'}, split "
                f"{hub_split}) from the Hugging Face hub failed: {type(exc).__name__}: {exc}"
            ) from exc

    return spec.hub(fetch, src.hub_config, src.hub_split, src.split)


# ---------------------------------------------------------------- public loading API


def _check_sample(n: int | None, seed: int) -> None:
    def bad(v: object) -> bool:
        return isinstance(v, bool) or not isinstance(v, int | np.integer)

    if n is not None and (bad(n) or n <= 0):
        raise ConfigError(
            f"n = {n!r}: the number of records must be a positive integer (or None for all)."
        )
    if bad(seed) or seed < 0:
        raise ConfigError(f"seed = {seed!r}: the seed must be a non-negative integer.")


def subsample(items: Sequence[T], n: int | None, seed: int = 0) -> list[T]:
    """``n`` items drawn without replacement by ``numpy.random.default_rng(seed)``, kept in their
    original order. ``n=None`` returns all; ``n`` larger than ``len(items)`` returns all with a
    warning; ``n <= 0`` is a :class:`ConfigError`."""
    _check_sample(n, seed)
    if n is None:
        return list(items)
    if n >= len(items):
        if n > len(items):
            warnings.warn(
                f"n = {n} but only {len(items)} records are available; using all of them.",
                UserWarning,
                stacklevel=3,
            )
        return list(items)
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
    return [items[i] for i in chosen]


def load_dataset(
    name: str,
    split: str | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    answerable_only: bool = False,
) -> list[Any]:
    """Records of one dataset split (types in :mod:`avsslib.data.records`).

    Args:
        name: a key of :data:`DATASETS` (``nq_open``, ``triviaqa``, ``sciq``, ``sciq_mc``,
            ``truthfulqa``, ``wikiqa``, ``wikitext2``, ``sst2``).
        split: a split of that dataset; ``None`` = its ``default_split``.
        n: ``None`` = all records in file order; else a seeded sample of ``n`` records in file
            order (see :func:`subsample`).
        seed: seed of the sample.
        data_dir: folder laid out like ``shared/data``; default ``AVSS_DATA_DIR``, and the hub
            when neither is set.
        answerable_only: WikiQA only: drop questions without a label-1 sentence (before sampling).

    Raises:
        DataError: unknown name or split, missing or malformed file, hub unreachable.
        ConfigError: ``n <= 0``, or ``answerable_only`` for a dataset other than WikiQA.
    """
    spec = get_spec(name)
    if answerable_only and spec.record_type is not WikiQAQuestion:
        raise ConfigError(f"answerable_only applies to WikiQA only, not to {name!r}.")
    _check_sample(n, seed)  # before any I/O
    src = resolve_source(name, split, data_dir=data_dir)
    records = spec.local(src.files, src.split) if src.is_local else _load_hub(spec, src)
    if answerable_only:
        records = [r for r in records if r.has_positive]
    return subsample(records, n, seed)


def _texts(record: Record) -> list[str]:
    if isinstance(record, TextDocument):
        return record.paragraphs()
    if isinstance(record, SentimentExample):
        return [record.sentence.strip()]
    return [record.question.strip()]


def calibration_texts(
    name: str = "wikitext2",
    split: str = "validation",
    *,
    n: int | None = 128,
    min_chars: int = 1,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> list[str]:
    """Plain text passages for activation statistics (AVSS/EAVSS calibration).

    The passages are, per record type: WikiText articles -> their body paragraphs (non-empty,
    non-heading lines, stripped; the tokenized validation split keeps its ``<unk>``); SST-2 ->
    the sentence; every question dataset -> the question text. Passages shorter than
    ``min_chars`` characters are dropped, then ``n`` are drawn as in :func:`load_dataset`
    (seeded, file order; ``None`` = all). The default, 128 paragraphs of WikiText-2 validation,
    keeps the test split clean for perplexity.
    """
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 1:
        raise ConfigError(f"min_chars = {min_chars!r}: must be an integer >= 1.")
    texts = [
        t
        for r in load_dataset(name, split, data_dir=data_dir)
        for t in _texts(r)
        if len(t) >= min_chars
    ]
    if not texts:
        raise ConfigError(
            f"{name} {split}: no passage has at least min_chars = {min_chars} characters."
        )
    return subsample(texts, n, seed)


# ---------------------------------------------------------------- provenance

_SHA256: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        from avsslib.fs import file_sha256

        _SHA256[key] = file_sha256(path)
    return _SHA256[key]


def data_file_hashes(
    name: str, split: str | None = None, *, data_dir: str | Path | None = None
) -> dict[str, str]:
    """sha256 of every file that ``load_dataset(name, split)`` reads, keyed by its path relative
    to the data directory (``"nq_open/NQ-open.dev.jsonl"``), for run records. Hashes are
    computed on first use and cached per process (keyed by path, size and mtime).

    For a split read from the hub the key is ``"hf://datasets/<id>[/<config>]@<split>"`` and the
    value the sha256 of the mapped records as canonical JSON (this loads the split).
    """
    src = resolve_source(name, split, data_dir=data_dir)
    if src.is_local:
        assert src.root is not None
        return {p.relative_to(src.root).as_posix(): _sha256_file(p) for p in src.files}
    records = _load_hub(get_spec(name), src)
    blob = json.dumps([dataclasses.asdict(r) for r in records], sort_keys=True, ensure_ascii=False)
    config = f"/{src.hub_config}" if src.hub_config else ""
    return {
        f"hf://datasets/{src.hub_id}{config}@{src.hub_split}": hashlib.sha256(
            blob.encode()
        ).hexdigest()
    }


__getattr__ = moved_names(
    __name__, dict.fromkeys(("DATASETS", "Fetch", "SplitSpec"), "avsslib.data.specs")
)
