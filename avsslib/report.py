"""Run records and result files: what ran, on what, with which versions, and what came out.

* :class:`RunRecord` holds the configuration, command, seed, model fingerprint, data file
  hashes, library versions, device, metrics and timings of one run.
* Result files are written atomically by :mod:`avsslib.fs` (JSON with sorted keys, two-space
  indents and floats rounded to 12 significant digits); everything in a record that varies
  between identical runs (dates, durations) sits under the single key ``"timing"``, which
  determinism checks ignore.
* :func:`result_card` renders a record as a short markdown summary; :func:`save_record` writes
  the JSON and the card side by side.
* :func:`model_fingerprint` is the one fingerprint of a model in a record: where it came from
  (:func:`avsslib.models.model_origin`) and ``state_sha256``, the hash of its weights now.

The file helpers that lived here (``write_json_atomic``, ``write_csv_atomic``, ``file_sha256``,
``file_lock``, ``results_lock``, ``replace_directory``, ``LOCK_NAME``, ``FLOAT_DIGITS``) moved to
:mod:`avsslib.fs`; importing them from here still works and warns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from avsslib import fs
from avsslib.arch import blocks

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
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
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


def model_fingerprint(model: torch.nn.Module, *, weights: bool = True) -> dict[str, Any]:
    """What a run record needs to identify ``model``: ``id``, ``source`` (``zoo``, ``local``,
    ``hub`` or ``unknown`` for a model not made by :func:`avsslib.models.load_model`), the
    weights' origin (``gguf_sha256`` + ``weights_sha256`` for zoo models, ``revision`` for hub
    models), ``model_type``, ``dtype``, ``num_layers`` (current block count, so pruned models
    show it), ``hidden_size``, ``parameters`` (count) and, unless ``weights=False``,
    ``state_sha256`` (:func:`state_sha256`, the hash of the weights as they are now; it reads
    every weight once)."""
    origin = getattr(model, "avss_origin", None) or {
        "id": getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__,
        "source": "unknown",
    }
    first = next(model.parameters(), None)
    out = {
        **origin,
        "model_type": cast(Any, model).config.model_type,
        "dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
        "num_layers": len(blocks(model)),
        "hidden_size": getattr(cast(Any, model).config, "hidden_size", None),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if weights:
        out["state_sha256"] = state_sha256(model)
    return out


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
    #: PyTorch's CPU threads: float64 training sums, hence mitigation results, depend on them
    threads: int = dataclasses.field(default_factory=torch.get_num_threads)
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
        f"{_fmt(record.timing.get('wall_s'))} s; **CPU threads:** {record.threads}",
        f"- **Data files:** {len(record.data_files)} hashed (see the JSON record)",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(fs.to_jsonable(record.config), sort_keys=True, indent=2),
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
        lines += ["", "```json", json.dumps(fs.to_jsonable(rest), sort_keys=True, indent=2), "```"]
    return "\n".join(lines) + "\n"


def save_record(record: RunRecord, path: str | Path) -> Path:
    """Write ``record`` as JSON at ``path`` and its :func:`result_card` next to it (same name,
    ``.md``), both atomically. Returns the JSON path."""
    path = Path(path)
    fs.write_json_atomic(path, record.to_dict())
    fs.write_text_atomic(path.with_suffix(".md"), result_card(record))
    return path


#: names that moved to :mod:`avsslib.fs` (old name here -> name there)
_MOVED_TO_FS = {
    "FLOAT_DIGITS": "FLOAT_DIGITS",
    "LOCK_NAME": "LOCK_NAME",
    "_atomic_write": "_atomic_write",
    "_jsonable": "to_jsonable",
    "file_lock": "file_lock",
    "file_sha256": "file_sha256",
    "replace_directory": "replace_directory",
    "results_lock": "results_lock",
    "write_csv_atomic": "write_csv_atomic",
    "write_json_atomic": "write_json_atomic",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_FS:
        import warnings

        new = _MOVED_TO_FS[name]
        warnings.warn(
            f"avsslib.report.{name} moved to avsslib.fs.{new}; import it from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(fs, new)
    raise AttributeError(f"module 'avsslib.report' has no attribute {name!r}")


__all__ = [
    "RunRecord",
    "device_name",
    "library_versions",
    "model_fingerprint",
    "result_card",
    "save_record",
    "state_sha256",
    "tensor_bytes",
]
