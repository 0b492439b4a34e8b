"""Run records and result files: what ran, on what, with which versions, and what came out.

* :class:`RunRecord` holds the configuration, command, seed, model fingerprint, data file
  hashes, library versions, device, metrics and timings of one run.
* :func:`write_json_atomic` / :func:`write_csv_atomic` write through a temporary file in the
  target directory, ``fsync`` and ``os.replace``: a reader sees the old file or the new one, never
  half of one, and an error while serialising leaves the old file as it was.
* JSON files use sorted keys, two-space indents and floats rounded to 12 significant digits, so
  that result files diff well; everything that varies between identical runs (dates, durations)
  sits under the single key ``"timing"``, which determinism checks ignore.
* :func:`result_card` renders a record as a short markdown summary; :func:`save_record` writes
  the JSON and the card side by side.
* :func:`results_lock` serialises runs that write the same results directory: a second run is
  refused at once with a message naming the directory and the PID that holds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch

from avsslib.errors import ConfigError, DataError

FLOAT_DIGITS = 12
"""Significant digits kept for floats in JSON and CSV result files."""

_PACKAGES = ("torch", "transformers", "lm_eval", "datasets", "numpy", "pandas", "avsslib")


def _source_version() -> str:
    """``avsslib``'s version from the ``pyproject.toml`` next to the package (a source tree run
    with ``PYTHONPATH`` and no install), else ``"absent"``."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "absent"


def source_commit() -> str:
    """The git commit of the checkout ``avsslib`` is imported from (``"<sha>"``, with
    ``"+dirty"`` when tracked files differ from it), or ``"absent"`` outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "absent"
    return sha + ("+dirty" if dirty else "") if sha else "absent"


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape the numbers (``"absent"`` if missing).

    ``avsslib`` is the installed version, or the source tree's when it runs without an install;
    ``avsslib_commit`` is the git commit of that source tree (:func:`source_commit`)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = _source_version() if name == "avsslib" else "absent"
    out["avsslib_commit"] = source_commit()
    return out


def device_name(model: torch.nn.Module | None = None) -> str:
    """``"cpu"`` or the GPU's name (e.g. ``"cuda: NVIDIA H200"``): the model's device, else the
    default one."""
    device = next(model.parameters()).device if model is not None else None
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def _offloaded_tensor(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    """The real value of parameter/buffer ``name`` when accelerate offloaded it (the module
    holds a ``meta`` placeholder and its ``_hf_hook`` keeps the weights in ``weights_map``);
    ``None`` when nothing holds it."""
    module_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return None
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        weights = getattr(h, "weights_map", None)
        if weights is not None:
            try:
                return weights[leaf]
            except (KeyError, AttributeError):
                continue
    return None


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor`` in row-major order, on the CPU, whatever its shape (0-d
    included), layout (non-contiguous views), dtype (bfloat16, float8, bool, ...) or device.
    Raises ``ValueError`` for a ``meta`` tensor, which has no data."""
    if tensor.device.type == "meta":
        raise ValueError("a meta tensor has no data")
    t = tensor.detach().to("cpu").reshape(-1).contiguous()
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def state_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the in-memory weights: every parameter and buffer (name, shape, dtype and
    bytes, in ``named_parameters``/``named_buffers`` order, shared tensors once). Pruned or
    fine-tuned models get a different hash; the same weights give the same hash on CPU and CUDA.

    Every shape and dtype is hashed (0-d scalars such as an embedding scale, non-contiguous
    views, bfloat16, float8, bool). Weights that accelerate offloaded under ``device_map`` are
    read from their offload map; a ``meta`` tensor that nothing holds (an empty model) enters
    with its name, shape and dtype and the marker ``meta``. Reads every weight once (about a
    second per GB)."""
    sha = hashlib.sha256()
    for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type == "meta":
            real = _offloaded_tensor(model, key)
            tensor = real if real is not None and real.device.type != "meta" else tensor
        sha.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        sha.update(b"meta" if tensor.device.type == "meta" else tensor_bytes(tensor))
    return sha.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """:func:`avsslib.models.model_fingerprint` (id, source, file hashes, type, dtype, block
    count, size) plus ``state_sha256``, the hash of the weights as they are now."""
    from avsslib.models import model_fingerprint as origin

    return {**origin(model), "state_sha256": state_sha256(model)}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex). Raises ``DataError`` if it cannot be read."""
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
    except OSError as exc:
        raise DataError(f"cannot hash data file {path}: {exc}; check that the file exists.") from exc
    return sha.hexdigest()


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclasses.dataclass
class RunRecord:
    """Everything needed to tell what a run did and to repeat it.

    ``metrics`` is free-form but JSON-able (``avsslib.evaluate`` puts its per-task table
    there); ``timing`` holds ``start``/``end`` (UTC ISO 8601), ``wall_s`` and any per-step
    durations. Build one with :meth:`start`, call :meth:`finish` when done.
    """

    command: str
    config: dict[str, Any]
    seed: int
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_files: dict[str, str] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=library_versions)
    device: str = "cpu"
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    timing: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def start(
        cls,
        command: str,
        config: Mapping[str, Any],
        seed: int,
        *,
        model: torch.nn.Module | None = None,
        data_files: Mapping[str, str] | None = None,
    ) -> RunRecord:
        """A record stamped with the start time, versions, device and model fingerprint.

        ``data_files``: ``{file: sha256}`` of the data read (e.g. from
        :func:`avsslib.data.data_file_hashes`)."""
        record = cls(
            command=command,
            config=dict(config),
            seed=seed,
            model=model_fingerprint(model) if model is not None else {},
            data_files=dict(data_files or {}),
            device=device_name(model),
        )
        record.timing = {"start": _utc_now(), "_t0": time.perf_counter()}
        return record

    def finish(self, metrics: Mapping[str, Any], **durations: Any) -> RunRecord:
        """Store ``metrics``, the end time, the wall time since :meth:`start` and any named
        ``durations`` (seconds, or dicts of seconds) under ``timing``. Returns ``self``."""
        t0 = self.timing.pop("_t0", None)
        self.metrics = dict(metrics)
        self.timing["end"] = _utc_now()
        if t0 is not None:
            self.timing["wall_s"] = time.perf_counter() - t0
        self.timing.update(durations)
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the layout of the record file)."""
        out = dataclasses.asdict(self)
        out["timing"] = {k: v for k, v in self.timing.items() if not k.startswith("_")}
        return out


def _jsonable(obj: Any) -> Any:
    """Numpy, paths, tuples and dataclasses to JSON types; floats rounded to FLOAT_DIGITS
    significant digits; NaN and infinities to ``null``. Unknown objects are left for ``json`` to
    reject."""
    if obj is None or isinstance(obj, bool | str | int):
        return obj
    if isinstance(obj, float | np.floating):
        x = float(obj)
        return float(format(x, f".{FLOAT_DIGITS}g")) if math.isfinite(x) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    return obj


def _atomic_write(path: str | Path, write: Callable[[IO[str]], None]) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path``, fsync it, then ``os.replace``
    it onto ``path``. On any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are for everyone to read
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON (sorted keys, indent 2, floats to 12 significant digits, NaN as
    ``null``, trailing newline), atomically. A ``TypeError`` from an object JSON cannot encode
    leaves any existing file at ``path`` intact."""

    def write(fh: IO[str]) -> None:
        json.dump(_jsonable(obj), fh, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
        fh.write("\n")

    return _atomic_write(path, write)


def write_csv_atomic(path: str | Path, df: pd.DataFrame) -> Path:
    """Write ``df`` as CSV (no index, ``\\n`` line ends, floats to 12 significant digits),
    atomically."""
    return _atomic_write(
        path,
        lambda fh: df.to_csv(fh, index=False, float_format=f"%.{FLOAT_DIGITS}g", lineterminator="\n"),
    )


def _fmt(x: Any) -> str:
    if isinstance(x, float | np.floating):
        return "n/a" if not math.isfinite(x) else f"{x:.4g}"
    return "n/a" if x is None else str(x)


def result_card(record: RunRecord) -> str:
    """A markdown summary of ``record``: what ran, on what, and the metrics table.

    Metrics are shown as a table when ``record.metrics["table"]`` is a list of row dicts (the
    layout ``avsslib.evaluate`` writes: task, metric, value, ci_low, ci_high, n); other metric
    entries are listed as JSON.
    """
    m = record.model
    lines = [
        f"# Result card: `{record.command}`",
        "",
        f"- **Model:** {m.get('id', 'n/a')} ({m.get('source', '?')}, {m.get('model_type', '?')}, "
        f"{m.get('num_layers', '?')} blocks, {m.get('parameters', '?')} parameters, "
        f"{m.get('dtype', '?')}), weights sha256 `{str(m.get('state_sha256', 'n/a'))[:16]}`",
        f"- **Seed:** {record.seed}; **device:** {record.device}",
        "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in sorted(record.versions.items())),
        f"- **Started:** {record.timing.get('start', 'n/a')}; **wall time:** "
        f"{_fmt(record.timing.get('wall_s'))} s",
        f"- **Data files:** {len(record.data_files)} hashed (see the JSON record)",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(_jsonable(record.config), sort_keys=True, indent=2),
        "```",
        "",
        "## Metrics",
        "",
    ]
    table = record.metrics.get("table")
    if isinstance(table, list) and table:
        lines += ["| task | metric | value | 95% CI | n |", "|---|---|---|---|---|"]
        for row in table:
            ci = f"[{_fmt(row.get('ci_low'))}, {_fmt(row.get('ci_high'))}]"
            lines.append(
                f"| {row.get('task')} | {row.get('metric')} | {_fmt(row.get('value'))} | {ci} "
                f"| {row.get('n')} |"
            )
    rest = {k: v for k, v in record.metrics.items() if k != "table"}
    if rest:
        lines += ["", "```json", json.dumps(_jsonable(rest), sort_keys=True, indent=2), "```"]
    return "\n".join(lines) + "\n"


def save_record(record: RunRecord, path: str | Path) -> Path:
    """Write ``record`` as JSON at ``path`` and its :func:`result_card` next to it (same name,
    ``.md``), both atomically. Returns the JSON path."""
    path = Path(path)
    write_json_atomic(path, record.to_dict())
    card = result_card(record)
    _atomic_write(path.with_suffix(".md"), lambda fh: fh.write(card))
    return path


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


LOCK_NAME = ".avss.lock"
"""The lock file :func:`results_lock` holds in a results directory while a run writes there."""

# Temporary files of the atomic writers (mkstemp: 8 random characters), left behind only when a
# process is killed between creating and renaming one.
_STALE_TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|png|pdf|svg)$")


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
    folders = [directory, *(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))]
    for path in (f for folder in folders for f in folder.glob(".*")):
        if path.is_file() and _STALE_TMP.match(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def results_lock(directory: str | Path, *, lock_file: str | Path | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on the results directory ``directory`` while a run writes there.

    The lock is ``fcntl.flock`` on ``directory/.avss.lock`` (or on ``lock_file``, for a
    directory that is replaced as a whole, e.g. the model directory of ``avss prune``), taken
    without waiting: when another process holds it, :class:`ConfigError` names the directory and
    that process's PID, and says what to do. The lock file's folder is created (and removed
    again if the run left it empty); temporary files
    left in ``directory`` by a killed run are removed once the lock is held. The lock file is
    deleted on exit and the kernel drops the lock when the process dies, so a killed run never
    blocks the next one.
    A no-op lock where ``fcntl`` does not exist (Windows). Yields the directory.
    """
    directory = Path(directory)
    path = Path(lock_file) if lock_file is not None else directory / LOCK_NAME
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"results directory {directory} is a file, not a directory; pass an "
                          "--out that is a directory (it is created if missing).")
    created = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the results directory {path.parent} "
                          f"({exc.strerror or exc}); pass an --out in a writable place.") from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield directory
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot write in the results directory {path.parent} "
                              f"({exc.strerror or exc}); pass an --out in a writable place.") from None
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
            break
        os.close(fd)
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
    "RunRecord",
    "device_name",
    "file_sha256",
    "library_versions",
    "model_fingerprint",
    "result_card",
    "results_lock",
    "save_record",
    "state_sha256",
    "tensor_bytes",
    "write_csv_atomic",
    "write_json_atomic",
]
