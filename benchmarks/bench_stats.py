"""Throughput of ``LayerStats`` against a bare forward pass and the official recipe, in one run.

Three modes run on the SAME batches, interleaved (by batch on CPUs, by repeat on GPUs:
``--interleave``) so that machine noise hits all of them alike (see ``benchmarks/README.md``):

* ``a``: bare forward, ``model.eval()``, ``torch.no_grad()``, ``model(input_ids, attention_mask,
  use_cache=False)`` (no KV cache, as ``LayerStats.update`` runs it);
* ``b``: ``avsslib.stats.LayerStats()`` with default settings (fixed mode, what users run):
  ``stats.update(model, batch)`` per batch, then ``variance_`` and ``sparsity_`` read once;
* ``c``: the official recipe: forward hooks that copy every block output
  to the host (``output[0].detach().cpu()``, bare tensors handled), gradients on, no
  ``eval()``, LM loss with ``labels=input_ids`` and ``loss.backward()`` every batch, then the
  per-batch V and S of every layer from the host copies (``.item()`` each) and ``zero_grad``.

Printed: tokens/s and seconds per batch (median, min and max over the timed repeats, after
warm-up), the time ratios (b)/(a) and (c)/(b) computed from the medians (and per repeat, as a
check against drifting load), the peak memory of
each mode (CUDA: ``max_memory_allocated``; host: peak RSS, sampled) and LayerStats' own buffers
counted analytically against the model's parameter bytes. ``--sweep CSV`` adds a table of
(a) and (b) throughput over batch sizes and sequence lengths; ``--json OUT`` writes everything.

Imports only torch, transformers, numpy and ``avsslib.stats`` / ``avsslib.models`` (plus the
standard library, and psutil when it is installed), so it runs from a source tree
(``PYTHONPATH=.``) on machines without the project's optional dependencies.

Examples::

    python benchmarks/bench_stats.py                                  # CPU, embedded model
    python benchmarks/bench_stats.py --config llama2-7b --device cuda --json results/x.json
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from avsslib.arch import blocks
from avsslib.models import DEFAULT_MODEL, load_model
from avsslib.report import model_fingerprint
from avsslib.stats import LayerStats

try:  # optional: host peak memory per mode; without it the process high-water mark is used
    import psutil
except ImportError:  # pragma: no cover - depends on the machine
    psutil = None

Batch = dict[str, torch.Tensor]

MODES: dict[str, str] = {
    "a": "bare forward (no_grad)",
    "b": "LayerStats (fixed, defaults)",
    "c": "official recipe (hooks+backward)",
}

# Randomly initialised models built from a config: throughput does not depend on the weights.
CONFIGS: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    # a few-second smoke run of the whole benchmark on any machine
    "llama-tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=688,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SWEEP_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
SWEEP_SEQ_LENS = (128, 256, 512, 1024, 2048)
OFFICIAL_EPS = 1e-5


# ---------------------------------------------------------------------- set-up
def build_model(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """The model in eval mode on ``device`` with ``dtype``: a zoo name / hub id / local
    directory through ``load_model``, or a randomly initialised ``--config`` built in place."""
    if args.config is None:
        model, _ = load_model(args.model, dtype=dtype, device=device)
        return model
    config = transformers.LlamaConfig(**CONFIGS[args.config])
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.avss_origin = {"id": f"config:{args.config}", "source": "config (random weights)"}
    return model.eval()


def make_batches(
    n: int, batch_size: int, seq_len: int, vocab_size: int, device: torch.device, seed: int = 0
) -> list[Batch]:
    """``n`` batches of uniformly random token ids, ``input_ids`` and an all-ones
    ``attention_mask`` of shape ``(batch_size, seq_len)``, already on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
        batches.append(
            {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        )
    return batches


# ---------------------------------------------------------------------- the three modes
# Each mode is one object per repeat: ``begin()`` / ``end()`` bracket a run (hooks, train or
# eval mode), ``step(batch)`` processes one batch, ``result()`` reads what the repeat computed.
# With ``--interleave repeat`` a run is all the batches; with ``--interleave batch`` it is one
# batch (hooks attached and removed around every batch, as ``LayerStats.update`` does alone).
class BareForward:
    """(a) The baseline: one no-grad eval forward pass per batch."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def begin(self) -> None:
        self.model.eval()

    def step(self, batch: Batch) -> None:
        with torch.no_grad():
            self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            )

    def end(self) -> None:
        pass

    def result(self) -> None:
        return None


class LayerStatsMode:
    """(b) ``LayerStats()`` with default settings as users run it: ``update`` per batch with
    the hooks attached around the run (``fit`` is this loop); ``result()`` reads ``variance_``
    and ``sparsity_`` (one host transfer), which is part of the timed work."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.stats = LayerStats()

    def begin(self) -> None:
        self.stats.attach(self.model)

    def step(self, batch: Batch) -> None:
        self.stats.update(self.model, batch)

    def end(self) -> None:
        self.stats.detach()

    def result(self) -> tuple[LayerStats, np.ndarray, np.ndarray]:
        return self.stats, self.stats.variance_, self.stats.sparsity_


class OfficialRecipe:
    """(c) The official scripts' loop, per batch: hooks copy each block's
    output ``(B, T, d)`` to the host, LM loss with ``labels=input_ids`` (causal-LM scripts pass
    no attention mask), ``backward()``, then per layer ``V_b = h.mean(1).var(1).mean()`` and
    ``S_b = (|h| < 1e-5).mean()`` as Python floats, then ``zero_grad``. Dropout on (no
    ``eval()``). ``result()``: per-layer means over batches of V and S, shape ``(n_layers,)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.acts: list[torch.Tensor] = []
        self.handles: list[Any] = []
        self.v_batches: list[list[float]] = []
        self.s_batches: list[list[float]] = []

    def _hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        h = output[0] if isinstance(output, (tuple, list)) else output
        self.acts.append(h.detach().cpu())

    def begin(self) -> None:
        self.handles = [block.register_forward_hook(self._hook) for block in blocks(self.model)]
        self.model.train()

    def step(self, batch: Batch) -> None:
        self.acts.clear()
        loss = self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        loss.backward()
        self.v_batches.append([h.mean(dim=1).var(dim=1).mean().item() for h in self.acts])
        self.s_batches.append([(h.abs() < OFFICIAL_EPS).float().mean().item() for h in self.acts])
        self.acts.clear()
        self.model.zero_grad()

    def end(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.model.eval()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return np.mean(self.v_batches, axis=0), np.mean(self.s_batches, axis=0)


RUNNERS: dict[str, type] = {"a": BareForward, "b": LayerStatsMode, "c": OfficialRecipe}


def run_all(runner: Any, batches: Sequence[Batch]) -> Any:
    """One uninterrupted run of a mode over all ``batches``; returns its result."""
    runner.begin()
    try:
        for batch in batches:
            runner.step(batch)
    finally:
        runner.end()
    return runner.result()


def run_one(runner: Any, batch: Batch, last: bool) -> Any:
    """One batch of a mode as its own run; on the ``last`` batch also read the result."""
    runner.begin()
    try:
        runner.step(batch)
    finally:
        runner.end()
    return runner.result() if last else None


# ---------------------------------------------------------------------- timing and memory
def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` (CUDA: between two events, queue drained first) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, result
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


class _RssSampler(threading.Thread):
    """Samples the process's resident set size every millisecond (needs psutil)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._process = psutil.Process()
        self._done = threading.Event()
        self.start_rss = self.peak = self._process.memory_info().rss

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._done.wait(0.001)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, self._process.memory_info().rss) - self.start_rss


def measure_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak memory of one untimed run of ``fn``: on CUDA the allocator's peak (absolute and
    above what was allocated before, i.e. above the resting model); on the host the peak RSS
    above the RSS before (psutil, sampled), else the growth of the process's high-water mark
    (``ru_maxrss``, which only sees new highs: 0 means "no higher than before")."""
    gc.collect()
    out: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resting = torch.cuda.memory_allocated(device)
    if psutil is not None:
        sampler = _RssSampler()
        sampler.start()
    else:
        maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        out.update(device_peak_bytes=peak, device_extra_bytes=peak - resting)
    if psutil is not None:
        out.update(host_extra_bytes=sampler.stop(), host_method="psutil rss peak - start")
    else:
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0
        out.update(host_extra_bytes=grown * 1024, host_method="ru_maxrss growth")
    return out


def summary(seconds: Sequence[float], n_batches: int, tokens_per_batch: int) -> dict[str, Any]:
    """Per-batch seconds of each timed repeat, their median/min/max, and tokens/s at the median."""
    per_batch = [s / n_batches for s in seconds]
    median = statistics.median(per_batch)
    return {
        "s_per_batch": per_batch,
        "median_s_per_batch": median,
        "min_s_per_batch": min(per_batch),
        "max_s_per_batch": max(per_batch),
        "tokens_per_s": tokens_per_batch / median,
    }


def paired_ratios(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Ratios ``x[i] / y[i]`` of two modes' times on the same unit ``i`` (timed next to each
    other, so drifts of the machine's load cancel): their number, median, min and max."""
    ratios = [xi / yi for xi, yi in zip(x, y, strict=True)]
    return {
        "n": len(ratios),
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
    }


def benchmark(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    modes: Sequence[str],
    repeats: int,
    warmup: int,
    device: torch.device,
    interleave: str,
    label: str = "",
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, Any]]:
    """Run every mode ``warmup + repeats`` times over all ``batches``, interleaved so that
    neither noise nor a mode's position after another biases the comparison: with
    ``interleave="repeat"`` each mode runs over all batches in turn, with ``"batch"`` the modes
    take turns on every batch; either way the order rotates (a,b,c / b,c,a / c,a,b ...).
    Returns, warm-up excluded, the seconds per repeat and mode (summed over batches), the
    seconds of every separately timed unit (one batch, or one repeat), in the same order for
    every mode so that units at the same index ran next to each other, and each mode's result
    from its last repeat."""
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    units: dict[str, list[float]] = {m: [] for m in modes}
    results: dict[str, Any] = {}
    n = len(modes)
    for r in range(warmup + repeats):
        runners = {m: RUNNERS[m](model) for m in modes}
        total = dict.fromkeys(modes, 0.0)
        if interleave == "repeat":
            for mode in [*modes[r % n :], *modes[: r % n]]:
                total[mode], results[mode] = timed(partial(run_all, runners[mode], batches), device)
                if r >= warmup:
                    units[mode].append(total[mode])
        else:
            for i, batch in enumerate(batches):
                shift = (r * len(batches) + i) % n
                last = i == len(batches) - 1
                for mode in [*modes[shift:], *modes[:shift]]:
                    elapsed, result = timed(partial(run_one, runners[mode], batch, last), device)
                    total[mode] += elapsed
                    if r >= warmup:
                        units[mode].append(elapsed)
                    if last:
                        results[mode] = result
        if r >= warmup:
            for mode in modes:
                seconds[mode].append(total[mode])
        tag = "warm-up" if r < warmup else f"repeat {r - warmup + 1}/{repeats}"
        times = "  ".join(f"{m}={total[m] / len(batches):.4f}s/batch" for m in modes)
        print(f"  {label}{tag} {times}", flush=True)
    return seconds, units, results


def layerstats_buffers(
    stats: LayerStats, batch_size: int, seq_len: int, model: torch.nn.Module
) -> dict[str, Any]:
    """LayerStats' own memory, counted: the persistent state (float64 records ``(n_batches,
    L, K)`` and token sums ``(L, d)``) and the per-batch hook outputs kept until the batch
    ends (float32 ``(L, C, B, T)`` token rows and ``(L, B, d)`` pooled sums), against the
    model's parameter bytes. Transient work buffers inside one reduction (a few tensors the
    size of one block output) are not counted here: the measured peaks show them."""
    state = stats.state_dict()
    n_layers, d = state["unit_sums"].shape
    per_batch_record = n_layers * len(stats.columns)
    n_rel = len(getattr(stats, "rel_grid", ()))
    rows = (
        2
        + len(stats.eps_grid)
        + n_rel
        + (2 if stats.similarity else 0)
        + (2 + n_rel if stats.similarity and n_rel else 0)
    )
    hook_floats = n_layers * rows * batch_size * seq_len + n_layers * batch_size * d
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    persistent = 8 * (state["records"].numel() + state["unit_sums"].numel())
    return {
        "n_layers": int(n_layers),
        "hidden_size": int(d),
        "record_columns": len(stats.columns),
        "float64_per_batch_record": int(per_batch_record),
        "float64_token_sums": int(n_layers * d),
        "persistent_bytes": int(persistent),
        "persistent_bytes_per_batch": int(8 * per_batch_record),
        "hook_float32_per_batch": int(hook_floats),
        "hook_bytes_per_batch": int(4 * hook_floats),
        "parameter_bytes": int(param_bytes),
        "persistent_fraction_of_parameters": persistent / param_bytes,
        "hook_fraction_of_parameters": 4 * hook_floats / param_bytes,
    }


# ---------------------------------------------------------------------- sweep
def sweep(
    model: torch.nn.Module, args: argparse.Namespace, device: torch.device, vocab_size: int
) -> list[dict[str, Any]]:
    """(a) and (b) throughput for every batch size x sequence length of the grid; a cell that
    does not fit in device memory is recorded with status ``"out of memory"``."""
    rows = []
    for batch_size in args.sweep_batch_sizes:
        for seq_len in args.sweep_seq_lens:
            row: dict[str, Any] = {
                "batch_size": batch_size,
                "seq_len": seq_len,
                "tokens_per_batch": batch_size * seq_len,
            }
            try:
                batches = make_batches(args.batches, batch_size, seq_len, vocab_size, device)
                seconds, _, _ = benchmark(
                    model,
                    batches,
                    ("a", "b"),
                    args.repeats,
                    args.warmup,
                    device,
                    args.interleave,
                    label=f"[{batch_size}x{seq_len}] ",
                )
            except torch.cuda.OutOfMemoryError:
                row["status"] = "out of memory"
                gc.collect()
                torch.cuda.empty_cache()
            else:
                a = summary(seconds["a"], len(batches), batch_size * seq_len)
                b = summary(seconds["b"], len(batches), batch_size * seq_len)
                row.update(
                    status="ok",
                    bare_tokens_per_s=a["tokens_per_s"],
                    layerstats_tokens_per_s=b["tokens_per_s"],
                    bare_median_s_per_batch=a["median_s_per_batch"],
                    layerstats_median_s_per_batch=b["median_s_per_batch"],
                    ratio_b_over_a=b["median_s_per_batch"] / a["median_s_per_batch"],
                )
            rows.append(row)
    return rows


SWEEP_COLUMNS = (
    "batch_size",
    "seq_len",
    "tokens_per_batch",
    "bare_tokens_per_s",
    "layerstats_tokens_per_s",
    "ratio_b_over_a",
    "bare_median_s_per_batch",
    "layerstats_median_s_per_batch",
    "status",
)


# ---------------------------------------------------------------------- output
def environment(device: torch.device) -> dict[str, Any]:
    """Machine, library versions and load, for the results file."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            for line in cpuinfo.read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    try:
        avsslib_version = version("avsslib")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        avsslib_version = "source tree"
    return {
        "device": str(device),
        "device_name": name,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "avsslib": avsslib_version,
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (no half-written file)."""
    from avsslib.fs import write_text_atomic

    write_text_atomic(path, text)


def write_sweep_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_atomic(path, buffer.getvalue())


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    env = report["environment"]
    print()
    print(
        f"model {report['model']['id']} ({report['model']['parameters'] / 1e6:,.1f} M parameters, "
        f"{s['dtype']}) on {env['device']} ({env['device_name']}), "
        f"torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['torch_threads']} threads"
    )
    print(
        f"{s['batches']} batches of {s['batch_size']} x {s['seq_len']} tokens, "
        f"{s['warmup']} warm-up + {s['repeats']} timed repeats per mode, interleaved by "
        f"{s['interleave']}; "
        f"load average {report['load_average_start'][0]:.2f} at start, "
        f"{report['load_average_end'][0]:.2f} at end (1-min)"
    )
    print()
    header = (
        f"{'mode':<38}{'tokens/s':>11}{'s/batch median':>16}{'min':>10}{'max':>10}"
        f"{'spread':>8}{'device peak':>15}{'extra':>13}{'host extra':>13}"
    )
    print(header)
    print("-" * len(header))
    for mode, res in report["modes"].items():
        mem = res.get("memory", {})
        spread = (res["max_s_per_batch"] - res["min_s_per_batch"]) / res["median_s_per_batch"]
        print(
            f"({mode}) {MODES[mode]:<34}{res['tokens_per_s']:>11,.0f}"
            f"{res['median_s_per_batch']:>16.4f}{res['min_s_per_batch']:>10.4f}"
            f"{res['max_s_per_batch']:>10.4f}{spread:>8.1%}"
            f"{_mib(mem.get('device_peak_bytes')):>15}{_mib(mem.get('device_extra_bytes')):>13}"
            f"{_mib(mem.get('host_extra_bytes')):>13}"
        )
    print()
    ratios = report["ratios"]
    if ratios:
        unit = next(iter(report["paired_ratios"].values()))["unit"]
        print(
            f"{'time ratio':<12}{'medians':>9}{'minimums':>10}   paired by {unit}: "
            "median [min, max] (n)"
        )
    for key, value in ratios.items():
        p = report["paired_ratios"][key]
        line = (
            f"({key[0]})/({key[-1]}){'':<5}{value:>9.3f}"
            f"{report['ratios_of_minimums'][key]:>10.3f}   {p['median']:.3f} "
            f"[{p['min']:.3f}, {p['max']:.3f}] ({p['n']})"
        )
        if key == "b_over_a":
            verdict = "meets" if value <= report["target_b_over_a"] else "MISSES"
            line += f"   medians {verdict} the target <= {report['target_b_over_a']:.2f}"
        print(line)
    buffers = report.get("layerstats_buffers")
    if buffers:
        print(
            f"LayerStats buffers: {buffers['float64_token_sums']:,} float64 token sums "
            f"(L x d) + {buffers['float64_per_batch_record']:,} float64 per batch record "
            f"(L x K) = {_mib(buffers['persistent_bytes'])} after {s['batches']} batches "
            f"({buffers['persistent_fraction_of_parameters']:.4%} of the "
            f"{_mib(buffers['parameter_bytes'])} of parameters); hook outputs per batch "
            f"{_mib(buffers['hook_bytes_per_batch'])} "
            f"({buffers['hook_fraction_of_parameters']:.3%})"
        )
    agreement = report.get("agreement_b_vs_c")
    if agreement:
        print(
            f"(b) vs (c) per-layer values: variance max rel. diff "
            f"{agreement['variance_max_rel_diff']:.2e}, sparsity max abs. diff "
            f"{agreement['sparsity_max_abs_diff']:.2e} (same statistic, same batches)"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Tokens/s of LayerStats vs a bare forward pass and the official recipe."
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="zoo name, Hugging Face hub id or local directory (default %(default)s)",
    )
    p.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        help="build a randomly initialised model of this shape instead of --model",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="default: bfloat16 for --config llama2-7b, else float32",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, help="default: 512 for --config llama2-7b, else 128")
    p.add_argument("--batches", type=int, default=4, help="batches per repeat (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per mode (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats first (default 1)")
    p.add_argument("--modes", default="a,b,c", help="comma list of a, b, c (default a,b,c)")
    p.add_argument(
        "--interleave",
        choices=("batch", "repeat"),
        help="modes take turns on every batch (default on CPU: on a shared machine "
        "load drifts within seconds) or on every repeat (default on GPUs: no "
        "synchronisation between the batches of a run)",
    )
    p.add_argument(
        "--sweep",
        type=Path,
        metavar="CSV",
        help="also time (a) and (b) over a grid of batch sizes and sequence "
        "lengths and write tokens/s per cell to CSV",
    )
    p.add_argument(
        "--sweep-batch-sizes",
        type=_int_list,
        default=SWEEP_BATCH_SIZES,
        metavar="N,N,...",
        help="default 1,2,4,8,16,32",
    )
    p.add_argument(
        "--sweep-seq-lens",
        type=_int_list,
        default=SWEEP_SEQ_LENS,
        metavar="N,N,...",
        help="default 128,256,512,1024,2048",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="write all results to this JSON file")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes or len(set(modes)) != len(modes):
        p.error(f"--modes {args.modes!r}: give distinct letters among a, b, c")
    args.modes = tuple(modes)
    for name in ("batch_size", "batches", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    big = args.config == "llama2-7b"
    args.dtype = args.dtype or ("bfloat16" if big else "float32")
    args.seq_len = args.seq_len or (512 if big else 128)
    args.interleave = args.interleave or ("repeat" if args.device.startswith("cuda") else "batch")
    return args


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device(
            "cuda", torch.cuda.current_device() if device.index is None else device.index
        )
    dtype = DTYPES[args.dtype]
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    model = build_model(args, device, dtype)
    vocab_size = int(model.config.vocab_size)
    tokens_per_batch = args.batch_size * args.seq_len
    print(
        f"model ready in {time.perf_counter() - t0:.1f} s; timing modes {','.join(args.modes)}",
        flush=True,
    )

    batches = make_batches(args.batches, args.batch_size, args.seq_len, vocab_size, device)
    seconds, units, results = benchmark(
        model, batches, args.modes, args.repeats, args.warmup, device, args.interleave
    )
    modes: dict[str, Any] = {}
    for mode in args.modes:
        modes[mode] = {
            "label": MODES[mode],
            **summary(seconds[mode], len(batches), tokens_per_batch),
        }
        print(f"  memory pass ({mode})", flush=True)
        modes[mode]["memory"] = measure_memory(
            partial(run_all, RUNNERS[mode](model), batches), device
        )

    med = {m: modes[m]["median_s_per_batch"] for m in args.modes}
    pairs = [(x, y) for x, y in (("b", "a"), ("c", "b"), ("c", "a")) if x in med and y in med]
    ratios = {f"{x}_over_{y}": med[x] / med[y] for x, y in pairs}
    low = {m: modes[m]["min_s_per_batch"] for m in args.modes}
    ratios_of_minimums = {f"{x}_over_{y}": low[x] / low[y] for x, y in pairs}
    paired = {
        f"{x}_over_{y}": {
            "unit": "batch" if args.interleave == "batch" else "repeat",
            **paired_ratios(units[x], units[y]),
        }
        for x, y in pairs
    }
    report: dict[str, Any] = {
        "benchmark": "benchmarks/bench_stats.py",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "environment": environment(device),
        "model": model_fingerprint(model),
        "settings": {
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "batches": args.batches,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "dtype": args.dtype,
            "modes": list(args.modes),
            "interleave": args.interleave,
            "tokens_per_batch": tokens_per_batch,
            "inputs": "uniform random token ids, attention_mask all ones",
        },
        "load_average_start": load_start,
        "modes": modes,
        "ratios": ratios,
        "ratios_of_minimums": ratios_of_minimums,
        "paired_ratios": paired,
        "target_b_over_a": 1.05,
    }
    if "b" in results:
        stats, variance, sparsity = results["b"]
        report["layerstats_buffers"] = layerstats_buffers(
            stats, args.batch_size, args.seq_len, model
        )
        if "c" in results:
            v_c, s_c = results["c"]
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.abs(variance - v_c) / np.abs(v_c)
            report["agreement_b_vs_c"] = {
                "variance_max_rel_diff": float(np.nanmax(rel)),
                "sparsity_max_abs_diff": float(np.max(np.abs(sparsity - s_c))),
            }
    if args.sweep is not None:
        print("sweep: (a) and (b) over batch sizes x sequence lengths", flush=True)
        report["sweep"] = sweep(model, args, device, vocab_size)
        write_sweep_csv(args.sweep, report["sweep"])
        print(f"sweep written to {args.sweep}")
    report["load_average_end"] = os.getloadavg()
    print_table(report)
    if args.json is not None:
        write_atomic(args.json, json.dumps(report, indent=2, default=_jsonable) + "\n")
        print(f"results written to {args.json}")
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


if __name__ == "__main__":
    sys.exit(main())
