"""Files on disk, the ground floor: atomic writes, hashes, locks, directory swaps, cached steps.

Nothing here imports another ``avsslib`` module except :mod:`avsslib.errors`.

* :func:`atomic_path` is the one atomic writer: it yields a temporary path next to the target
  for any writer (``torch.save``, safetensors' ``save_file``, ``fig.savefig``), then ``fsync``
  and ``os.replace``: a reader sees the old file or the new one, never half of one, and an
  error while writing leaves the old file as it was. :func:`write_text_atomic`,
  :func:`write_bytes_atomic`, :func:`write_json_atomic` and :func:`write_csv_atomic` are built
  on it.
* JSON files use sorted keys, two-space indents and floats rounded to :data:`FLOAT_DIGITS`
  significant digits (:func:`to_jsonable`), so that result files diff well.
* :func:`file_sha256` hashes a file; :func:`content_hash` a JSON-able object (cache keys).
* :func:`file_lock` waits for a short critical section; :func:`results_lock` refuses a second
  run in the same results directory at once, naming the PID that holds it.
* :func:`replace_directory` swaps a complete directory into place by renames.
* :func:`cached` / :func:`read_cached`: resumable steps, recomputed unless the file's saved key
  equals the key of this run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import numpy as np

from avsslib.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")

FLOAT_DIGITS = 12
"""Significant digits kept for floats in JSON and CSV result files."""

LOCK_NAME = ".avss.lock"
"""The lock file :func:`results_lock` holds in a results directory while a run writes there."""

# Temporary files of the atomic writers (mkstemp: 8 random characters), left behind only when a
# process is killed between creating and renaming one.
_STALE_TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|png|pdf|svg)$")


# ---------------------------------------------------------------- JSON values


def to_jsonable(obj: Any) -> Any:
    """Numpy, paths, tuples and dataclasses to JSON types; floats rounded to
    :data:`FLOAT_DIGITS` significant digits; NaN and infinities to ``None``. Unknown objects are
    left for ``json`` to reject."""
    if obj is None or isinstance(obj, bool | str | int):
        return obj
    if isinstance(obj, float | np.floating):
        x = float(obj)
        return float(format(x, f".{FLOAT_DIGITS}g")) if math.isfinite(x) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    return obj


def content_hash(obj: Any, *, ensure_ascii: bool = False) -> str:
    """The first 16 hex digits of the SHA-256 of ``obj`` as canonical JSON (:func:`to_jsonable`,
    sorted keys): the key of a cached step."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True, ensure_ascii=ensure_ascii)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex). Raises ``DataError`` if it cannot be read."""
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
    except OSError as exc:
        raise DataError(
            f"cannot hash data file {path}: {exc}; check that the file exists."
        ) from exc
    return sha.hexdigest()


# ---------------------------------------------------------------- atomic writes


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op elsewhere)."""
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that takes a file name, then move
    it onto ``path`` (``fsync`` and ``os.replace``) when the block ends without an error; on any
    error the temporary file is removed and ``path`` is untouched. Parent folders are created.

    ``keep_suffix=True`` ends the temporary name with ``path``'s suffix (``.png``: writers such
    as ``savefig`` choose the format from it); else it ends with ``.tmp``::

        with atomic_path(out / "checkpoint.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_suffix:
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are for everyone to read
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _atomic_write(path: str | Path, write: Callable[[IO[str]], None]) -> Path:
    """Call ``write(fh)`` on a text file opened at a temporary path next to ``path``, then move
    it onto ``path`` (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        write(fh)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically."""

    def write(fh: IO[str]) -> None:
        fh.write(text)

    return _atomic_write(path, write)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON (sorted keys, indent 2, floats to 12 significant digits, NaN as
    ``null``, trailing newline), atomically. A ``TypeError`` from an object JSON cannot encode
    leaves any existing file at ``path`` intact."""

    def write(fh: IO[str]) -> None:
        json.dump(
            to_jsonable(obj), fh, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False
        )
        fh.write("\n")

    return _atomic_write(path, write)


def write_csv_atomic(path: str | Path, df: pd.DataFrame) -> Path:
    """Write ``df`` as CSV (no index, ``\\n`` line ends, floats to 12 significant digits),
    atomically."""
    return _atomic_write(
        path,
        lambda fh: df.to_csv(
            fh, index=False, float_format=f"%.{FLOAT_DIGITS}g", lineterminator="\n"
        ),
    )


def read_json(path: str | Path) -> Any | None:
    """The JSON value in ``path``, or ``None`` when the file is missing or not valid JSON (a
    cache that is not there)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- cached steps


def _same_json(saved: Any, key: Any) -> bool:
    """``saved`` (read back from JSON) equals ``key`` once ``key`` is written as JSON (tuples
    become lists, floats are rounded as in the file)."""
    return bool(saved == json.loads(json.dumps(to_jsonable(key))))


def holds_key(path: str | Path, key: Any) -> bool:
    """The JSON file ``path`` holds exactly ``key`` (a key file written beside a step's outputs
    by :func:`write_json_atomic`); ``False`` when it is missing or unreadable."""
    saved = read_json(path)
    return saved is not None and _same_json(saved, key)


def read_cached(
    path: str | Path, key: Any, *, key_field: str = "key", requires: Iterable[str | Path] = ()
) -> dict[str, Any] | None:
    """The JSON object saved at ``path`` when its ``key_field`` equals ``key`` and every file in
    ``requires`` exists (the step's other outputs); ``None`` otherwise (missing, unreadable,
    another key): the step must be recomputed."""
    saved = read_json(path)
    if not isinstance(saved, dict) or key_field not in saved:
        return None
    if not _same_json(saved[key_field], key):
        return None
    if not all(Path(p).is_file() for p in requires):
        return None
    return saved


def cached(
    path: str | Path,
    key: Any,
    compute: Callable[[], T],
    *,
    encode: Callable[[T], Any] = lambda value: value,
    decode: Callable[[Any], T] = lambda data: data,
    extra: Callable[[T], Mapping[str, Any]] | None = None,
    key_field: str = "key",
) -> tuple[T, bool]:
    """A resumable step: the value saved at ``path`` when it was computed with the same ``key``,
    else ``compute()``, saved atomically as ``{key_field: key, **extra(value), "result":
    encode(value)}``. Returns ``(value, True)`` for a value read back, ``(value, False)`` for a
    computed one."""
    saved = read_cached(path, key, key_field=key_field)
    if saved is not None and "result" in saved:
        return decode(saved["result"]), True
    value = compute()
    write_json_atomic(
        path, {key_field: key, **(extra(value) if extra else {}), "result": encode(value)}
    )
    return value, False


# ---------------------------------------------------------------- directories and locks


def replace_directory(new: str | Path, target: str | Path) -> None:
    """Put the complete directory ``new`` in the place of ``target`` by renames (same file
    system): the old ``target`` is first set aside as ``.<name>.stale-<pid>`` beside it, then
    removed; a kill in between leaves that complete copy to restore."""
    new, target = Path(new), Path(target)
    stale = target.parent / f".{target.name}.stale-{os.getpid()}"
    if target.exists():
        os.rename(target, stale)
    os.rename(new, target)
    shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive ``flock`` on the lock file ``path``, **waiting** for other holders: for
    short critical sections shared by processes (building a model cache once, merging a log).
    A no-op where ``fcntl`` does not exist. Compare :func:`results_lock`, which refuses."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        return "PID unknown"
    return f"PID {pid}"


def _remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files that killed runs left in ``directory`` and its direct
    subfolders (``figures/``, ``eval/``, ...); only called while holding the directory's lock,
    so no live writer owns them."""
    removed = []
    folders = [
        directory,
        *(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
    ]
    for path in (f for folder in folders for f in folder.glob(".*")):
        if path.is_file() and _STALE_TMP.match(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _open_lock(path: Path, directory: Path) -> int:
    """Open and ``flock`` (without waiting) the lock file ``path``; the open descriptor."""
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"cannot write in the results directory {path.parent} "
                f"({exc.strerror or exc}); pass an --out in a writable place."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"results directory {directory} is in use by another avss run ({_holder(path)}, "
                f"holding {path}). Wait until that run ends, or pass another --out. The lock is "
                "released when the process ends; do not delete the lock file while it runs."
            ) from None
        try:  # the holder before us may have deleted the file after we opened it: retry
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def results_lock(directory: str | Path, *, lock_file: str | Path | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on the results directory ``directory`` while a run writes there.

    The lock is ``fcntl.flock`` on ``directory/.avss.lock`` (or on ``lock_file``, for a
    directory that is replaced as a whole, e.g. the model directory of ``avss prune``), taken
    without waiting: when another process holds it, :class:`ConfigError` names the directory and
    that process's PID, and says what to do. The lock file's folder is created (and removed
    again if the run left it empty); temporary files left in ``directory`` by a killed run are
    removed once the lock is held. The lock file is deleted on exit and the kernel drops the
    lock when the process dies, so a killed run never blocks the next one.
    A no-op lock where ``fcntl`` does not exist (Windows). Yields the directory.
    """
    directory = Path(directory)
    path = Path(lock_file) if lock_file is not None else directory / LOCK_NAME
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            f"results directory {directory} is a file, not a directory; pass an "
            "--out that is a directory (it is created if missing)."
        )
    created = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the results directory {path.parent} "
            f"({exc.strerror or exc}); pass an --out in a writable place."
        ) from None
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover - Windows
        yield directory
        return
    fd = _open_lock(path, directory)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        if directory.is_dir():
            _remove_stale_temporaries(directory)
        yield directory
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # closing releases the flock
        if created:  # a run that failed before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                path.parent.rmdir()


__all__ = [
    "FLOAT_DIGITS",
    "LOCK_NAME",
    "atomic_path",
    "cached",
    "content_hash",
    "file_lock",
    "file_sha256",
    "holds_key",
    "read_cached",
    "read_json",
    "replace_directory",
    "results_lock",
    "to_jsonable",
    "write_bytes_atomic",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
