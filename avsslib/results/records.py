"""Run records, costs and benchmarks of the committed runs: every ``record.json`` under a results
root (command, device, versions, wall time), wall time per model and stage, and the benchmark
files under ``results/bench/``. Writes nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from avsslib.errors import DataError
from avsslib.results.base import (
    STAGES,
    _read_json,
    model_name,
)

# ------------------------------------------------------------------------- records and costs


def _stage_of(path: Path, root: Path) -> tuple[str, str]:
    parts = path.relative_to(root).parts
    model, stage = parts[0], parts[1] if len(parts) > 1 else ""
    if stage == "mitigation" and len(parts) > 3:
        return model, f"mitigation {parts[2]}"
    return model, STAGES.get(stage, stage)


def run_records(root: str | Path) -> pd.DataFrame:
    """One row per run record (``record.json``) under ``root``: folder, model, stage, command,
    the device it ran on, start time, wall time (s), library versions (``avsslib`` version and
    git commit where recorded)."""
    root = Path(root)
    rows = []
    for path in sorted(root.rglob("record.json")) if root.is_dir() else []:
        r = _read_json(path)
        if not isinstance(r, dict) or "command" not in r:
            continue
        versions, timing = r.get("versions", {}), r.get("timing", {})
        model, stage = _stage_of(path.parent, root)
        avsslib = versions.get("avsslib")
        rows.append(
            {
                "folder": str(path.parent.relative_to(root)),
                "model": model,
                "stage": stage,
                "command": r["command"],
                "device": _device(r.get("device")),
                "start (UTC)": _minute(timing.get("start", "")),
                "wall_s": timing.get("wall_s", math.nan),
                "avsslib": avsslib if avsslib not in (None, "absent") else "not recorded",
                "git commit": versions.get("avsslib_commit", "not recorded"),
                "torch": versions.get("torch"),
                "transformers": versions.get("transformers"),
                "lm_eval": versions.get("lm_eval"),
                "data files": len(r.get("data_files", {})),
            }
        )
    return pd.DataFrame(rows)


def _minute(timestamp: Any) -> str:
    """``"2026-12-07T02:45:39+00:00"`` -> ``"2026-12-07 02:45"`` (as recorded: UTC)."""
    return str(timestamp)[:16].replace("T", " ")


def _oldest_first(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Benchmark rows sorted by their ``date`` (ties keep file order)."""
    frame = pd.DataFrame(rows)
    return frame.sort_values("date", kind="stable", ignore_index=True) if rows else frame


def _device(text: Any) -> str:
    """``"cuda: NVIDIA H200"`` -> ``"NVIDIA H200"``; ``"cpu"`` stays."""
    text = str(text or "unknown")
    return text.split(": ", 1)[1] if text.startswith("cuda: ") else text


def stage_costs(root: str | Path) -> pd.DataFrame:
    """Wall time per model, stage and device, summed over runs: the study from its evaluation
    files (``eval_s``, device from the evaluation's protocol) and every other stage from its run
    records. Columns model, stage, device, runs, minutes."""
    root = Path(root)
    rows = []
    for path in sorted(root.glob("*/avss/eval/*.json")):
        e = _read_json(path)
        seconds = (e.get("timing") or {}).get("eval_s")
        if seconds:
            device = e.get("protocol", {}).get("model", {}).get("device", "unknown")
            record = path.parents[1] / "record.json"
            if record.is_file():  # "cuda" -> the GPU's name
                device = _device(_read_json(record).get("device", device))
            rows.append(
                {
                    "model": path.parents[2].name,
                    "stage": "AVSS study (evaluations)",
                    "device": device,
                    "seconds": float(seconds),
                }
            )
    records = run_records(root)
    for r in records.itertuples():
        if r.stage == STAGES["avss"]:
            continue  # counted through its evaluations
        rows.append(
            {"model": r.model, "stage": r.stage, "device": r.device, "seconds": float(r.wall_s)}
        )
    if not rows:
        return pd.DataFrame(columns=["model", "stage", "device", "runs", "minutes"])
    frame = pd.DataFrame(rows)
    out = (
        frame.groupby(["model", "stage", "device"], sort=True)
        .agg(runs=("seconds", "size"), seconds=("seconds", "sum"))
        .reset_index()
    )
    return out.assign(minutes=out["seconds"] / 60).drop(columns="seconds")


# ----------------------------------------------------------------------------------- benchmarks


def bench_stats(root: str | Path) -> pd.DataFrame:
    """``bench/bench_stats_*.json``: device, model, dtype, batch shape, tokens/s of (a) a bare
    forward pass, (b) ``LayerStats``, (c) the official recipe, and the ratios (b)/(a), (c)/(b)."""
    rows = []
    for path in sorted((Path(root) / "bench").glob("bench_stats_*.json")):
        data = _read_json(path)
        env, settings, ratios = data["environment"], data["settings"], data.get("ratios", {})
        row = {
            "file": path.name,
            "device": env.get("device_name"),
            "model": data["model"]["id"],
            "dtype": settings["dtype"],
            "batch": f"{settings['batch_size']} x {settings['seq_len']}",
        }
        for mode, entry in data["modes"].items():
            row[f"({mode}) tokens/s"] = entry["tokens_per_s"]
        row["(b)/(a)"] = ratios.get("b_over_a", math.nan)
        row["(c)/(b)"] = ratios.get("c_over_b", math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def bench_distributed(root: str | Path) -> pd.DataFrame:
    """``bench/bench_distributed_*.json``: one GPU against several in the same run."""
    rows = []
    for path in sorted((Path(root) / "bench").glob("bench_distributed_*.json")):
        data = _read_json(path)
        env = data["environment"]
        rows.append(
            {
                "file": path.name,
                "devices": f"{env['world_size']} x {env['device_name']}",
                "model": data["model"]["id"],
                "dtype": data["settings"]["dtype"],
                "tokens": data["tokens"],
                "1 GPU tokens/s": data["single"]["tokens_per_s"],
                "all GPUs tokens/s": data["parallel"]["tokens_per_s"],
                "speed-up": data["speedup"],
                "ideal": data["ideal_speedup"],
                "same statistics": bool(data["check"]["ok"]),
            }
        )
    return pd.DataFrame(rows)


def bench_eval(root: str | Path) -> pd.DataFrame:
    """``bench/bench_eval_*.json``: the harness's ``HFLM`` against our ``CachedLM`` on the same
    requests in one run, one row per file, oldest first. Columns: date (UTC, to the minute),
    device, model (``–`` where the file does not name it), questions per task (each set
    capped at its size), the TruthfulQA MC1 ratio (harness / ours, ``x``), the study task set's
    seconds under each backend and their ratio, the most a backend batching as ours could gain
    there (harness / floor), the largest absolute log-likelihood difference over all tasks, and
    whether the tokenizers library could use several threads (``TOKENIZERS_PARALLELISM``), and
    how our greedy decoding steps ran (``decode``: ``dynamic`` in files that do not say, all
    written before the other ways existed; ``graph``, replayed as a CUDA graph)."""
    rows = []
    for path in sorted((Path(root) / "bench").glob("bench_eval_*.json")):
        data = _read_json(path)
        tasks = {t["task"]: t for t in data["tasks"]}
        study = data["study"]
        diffs = [t["max_abs_ll_diff"] for t in data["tasks"] if t["max_abs_ll_diff"] is not None]
        rows.append(
            {
                "file": path.name,
                "date": _minute(data["date"]),
                "device": _device(data["device"]),
                "model": model_name(data["model"]) if data.get("model") else "–",
                "questions": data["n"],
                "TruthfulQA MC1 x": tasks.get("truthfulqa_mc1", {}).get("ratio", math.nan),
                "study: harness s": study["harness_s"],
                "study: ours s": study["ours_s"],
                "study x": study["ratio"],
                "study: at most x": study["harness_s"] / study["floor_s"]
                if study.get("floor_s")
                else math.nan,
                "largest |dLL|": max(diffs, default=math.nan),
                "tokenizer threads": _tokenizer_threads(data),
                "decode": data.get("decode") or "dynamic",
            }
        )
    return _oldest_first(rows)


def _tokenizer_threads(data: dict) -> str:
    """Whether the tokenizers library could use several threads in a benchmark run: ``off``
    when ``TOKENIZERS_PARALLELISM`` was set false, ``on`` otherwise, ``–`` where the file does
    not record it (files written before 2026-12-07 05:00 UTC)."""
    if "tokenizers_parallelism" not in data:
        return "–"
    value = str(data["tokenizers_parallelism"]).strip().lower()
    return "off" if value in ("false", "0", "off", "no") else "on"


_PLUMBING_RUNS = {"stub": "harness only", "model": "with the model"}


def bench_plumbing(root: str | Path) -> pd.DataFrame:
    """``bench/bench_plumbing_*.json``: :func:`avsslib.evaluate.evaluate` with and without
    :func:`avsslib.harness_plumbing.lean_harness` in one run, one row per file and measurement
    (``stub``: the backend's answers stubbed; ``model``: the model answering), oldest first.
    Columns: date (UTC, to the minute), device, what was measured, questions per task, seconds
    without (``plain s``) and with (``lean s``), their ratio and whether both gave the same
    numbers."""
    rows = []
    for path in sorted((Path(root) / "bench").glob("bench_plumbing_*.json")):
        data = _read_json(path)
        for r in data["rows"]:
            if r["run"] not in _PLUMBING_RUNS:
                raise DataError(
                    f"{path}: run {r['run']!r} is not one of {', '.join(_PLUMBING_RUNS)}; was it "
                    "written by benchmarks/bench_plumbing.py?"
                )
            rows.append(
                {
                    "date": _minute(data["date"]),
                    "device": _device(data["device"]),
                    "measured": _PLUMBING_RUNS[r["run"]],
                    "questions": r["n"],
                    "plain s": r["plain_s"],
                    "lean s": r["lean_s"],
                    "x": r["ratio"],
                    "same numbers": bool(data["same_numbers"]),
                }
            )
    return _oldest_first(rows)


def bench_sweep(root: str | Path) -> tuple[pd.DataFrame, str | None]:
    """The first ``bench/sweep_*.csv`` (rows with status ok) and its file name."""
    files = sorted((Path(root) / "bench").glob("sweep_*.csv"))
    if not files:
        return pd.DataFrame(), None
    sweep = pd.read_csv(files[0])
    if "status" in sweep:
        sweep = sweep[sweep["status"] == "ok"]
    return sweep, files[0].name
