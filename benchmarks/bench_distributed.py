"""Data-parallel LayerStats (``avsslib.distributed``): speed-up of N ranks over one, in one run.

Launched by ``torchrun --nproc_per_node N``; every rank builds the same randomly initialised
model (``bench_stats.build_model``; rank 0's weights are broadcast so all ranks are identical)
and the same ``--batches`` batches of random tokens (fixed seed). Then, ``--repeats`` times:

1. **single**: rank 0 alone fits one ``LayerStats`` on ALL the batches (the others wait at a
   barrier): the one-GPU baseline, measured in the same invocation;
2. **parallel**: every rank fits its contiguous ``shard`` of the batches, the statistics are
   summed with ``all_reduce_stats``, and rank 0 reads the per-layer values.

Each phase is timed on rank 0 from a barrier to the values on the host, with
``torch.cuda.synchronize`` around the timers; ``--warmup`` batches run untimed first on every
rank (they also absorb ``torch.compile`` of the reductions on CUDA). Printed: tokens/s and
seconds of both phases (median over the repeats), ``speedup = t_single / t_parallel``, each
rank's fit and all-reduce seconds, peak memory per rank, and the check that the all-reduced
statistics and scores equal the single pass's within a relative ``1e-6``. Rank 0 writes the
JSON to ``--out DIR``.

NCCL runs with ``NCCL_NVLS_ENABLE=0`` (no NVLink multicast) unless the environment says
otherwise. Without torchrun it runs as one rank (speed-up 1 by construction).

Examples::

    torchrun --nproc_per_node 2 benchmarks/bench_distributed.py --config llama2-7b --out results/x
    torchrun --nproc_per_node 2 benchmarks/bench_distributed.py --device cpu --config tiny \\
        --batches 8 --seq-len 64 --out /tmp/bench
"""

from __future__ import annotations

import os

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import (  # noqa: E402
    CONFIGS,
    DTYPES,
    _jsonable,
    build_model,
    environment,
    make_batches,
    write_atomic,
)

from avsslib.distributed import (  # noqa: E402
    STATS_SCORES,
    all_reduce_stats,
    init_distributed,
    shard,
)
from avsslib.report import model_fingerprint  # noqa: E402
from avsslib.scores import score  # noqa: E402
from avsslib.stats import AGGREGATES, VARIANCE_MODES, LayerStats  # noqa: E402

ALIASES = {"tiny": "llama-tiny", "7b": "llama2-7b"}
RTOL = 1e-6


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Speed-up of data-parallel LayerStats over one rank.")
    p.add_argument(
        "--config",
        default="llama2-7b",
        choices=sorted([*CONFIGS, *ALIASES]),
        help="model shape, random weights (default %(default)s; tiny = llama-tiny)",
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda: rank r uses cuda:LOCAL_RANK with NCCL; cpu: gloo",
    )
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), help="default: bfloat16 on cuda, float32 on cpu"
    )
    p.add_argument("--batches", type=int, default=32, help="batches in all (default 32)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per rank first")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of both phases")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the tokens")
    p.add_argument(
        "--threads", type=int, help="CPU threads per rank (default: cpu_count // nproc, at least 1)"
    )
    p.add_argument(
        "--check-device-map",
        action="store_true",
        help="also check, on rank 0 with 2+ GPUs, that LayerStats on a tiny model "
        "split over cuda:0 and cuda:1 (accelerate) equals one GPU's",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory for the JSON results (rank 0 writes it)",
    )
    args = p.parse_args(argv)
    for name in ("batches", "batch_size", "seq_len", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    args.config = ALIASES.get(args.config, args.config)
    args.model = None  # bench_stats.build_model: build from --config
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def barrier(distributed: bool) -> None:
    if distributed:
        dist.barrier()


def gather(value: Any, distributed: bool) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` without a process group)."""
    if not distributed:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def peak_memory(device: torch.device) -> float:
    """Peak bytes of this rank: CUDA ``max_memory_allocated``, else the process's peak RSS."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0


def values(stats: LayerStats) -> dict[str, np.ndarray]:
    """Every per-layer statistic and the statistics-based scores, as host arrays (read
    without pandas, which GPU machines may lack)."""
    out = {
        f"variance:{mode}:{agg}": stats.get_variance(mode, agg)
        for mode in VARIANCE_MODES
        for agg in AGGREGATES
    }
    out.update(
        {
            f"sparsity@{e:g}:{agg}": stats.get_sparsity(e, agg)
            for e in stats.eps_grid
            for agg in AGGREGATES
        }
    )
    out.update(
        near_zero_counts=stats.near_zero_grid_.ravel(),
        mean=stats.mean_,
        rms=stats.rms_,
        token_variance=stats.token_variance_,
        cosine_distance=stats.cosine_distance_,
        angular_distance=stats.angular_distance_,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparsity clamp warnings of random weights
        out.update({f"score:{name}": score(name, stats) for name in STATS_SCORES})
    return out


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / |b| over the layers (0 where both are equal, NaN included)."""
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(same, 0.0, np.abs(a - b) / np.abs(b))
    return float(np.max(np.nan_to_num(rel, nan=np.inf))) if rel.size else 0.0


def two_gpu_device_map(model: torch.nn.Module) -> dict[str, int]:
    """First half of the blocks (and the embeddings) on GPU 0, the rest and the head on GPU 1."""
    n = len(model.model.layers)
    device_map: dict[str, int] = {}
    for name, _ in model.model.named_children():
        if name == "layers":
            device_map.update({f"model.layers.{i}": int(i >= n // 2) for i in range(n)})
        else:
            device_map[f"model.{name}"] = 1 if name == "norm" else 0
    device_map.update({name: 1 for name, _ in model.named_children() if name != "model"})
    return device_map


def check_device_map(args: argparse.Namespace) -> dict[str, Any]:
    """LayerStats of a tiny float32 model on cuda:0 against the same model split over two GPUs."""
    if torch.cuda.device_count() < 2:
        return {"status": "skipped: fewer than 2 CUDA devices visible"}
    try:
        from accelerate import dispatch_model
    except ImportError:
        return {"status": "skipped: accelerate is not installed"}
    torch.manual_seed(args.seed)
    tiny = build_model(
        argparse.Namespace(config="llama-tiny", model=None), torch.device("cpu"), torch.float32
    )
    batches = make_batches(3, 4, 64, int(tiny.config.vocab_size), torch.device("cpu"), args.seed)
    one = LayerStats().fit(copy.deepcopy(tiny).to("cuda:0"), batches, progress=False)
    split = dispatch_model(copy.deepcopy(tiny), device_map=two_gpu_device_map(tiny))
    devices = sorted({str(p.device) for p in split.parameters()})
    two = LayerStats().fit(split, batches, progress=False)
    a, b = values(two), values(one)
    diff = max(max_rel_diff(a[k], b[k]) for k in b)
    status = "ok" if diff <= 1e-5 else "MISMATCH"
    return {"status": status, "devices": devices, "max_rel_diff": diff, "rtol": 1e-5}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = init_distributed(device=args.device)
    rank, world, device, main_rank = env.rank, env.world_size, env.device, env.is_main
    if device.type == "cpu":
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    say = print if main_rank else (lambda *a, **k: None)
    dtype = DTYPES[args.dtype]
    try:
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        model = build_model(args, device, dtype)
        if env.distributed:  # identical weights on every rank
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)
        vocab = int(model.config.vocab_size)
        batches = make_batches(
            args.batches, args.batch_size, args.seq_len, vocab, device, args.seed
        )
        tokens = args.batches * args.batch_size * args.seq_len
        say(
            f"{world} rank(s), {env.backend or 'no process group'}, {device.type}; model "
            f"{args.config} {args.dtype} ready in {time.perf_counter() - t0:.1f} s; "
            f"{args.batches} batches of {args.batch_size} x {args.seq_len} tokens",
            flush=True,
        )

        if args.warmup:  # compile and allocator warm-up, every rank
            warm = make_batches(
                args.warmup, args.batch_size, args.seq_len, vocab, device, args.seed + 1
            )
            LayerStats().fit(model, warm, progress=False).variance_  # noqa: B018
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        single_s, parallel_s, fit_s, reduce_s = [], [], [], []
        single = merged = None
        for repeat in range(args.repeats):
            # 1) the baseline: rank 0 alone on every batch
            barrier(env.distributed)
            if main_rank:
                sync(device)
                start = time.perf_counter()
                single = LayerStats().fit(model, batches, progress=False)
                single.variance_, single.sparsity_  # noqa: B018 - values on the host
                sync(device)
                single_s.append(time.perf_counter() - start)
            # 2) every rank on its shard, then the all-reduce
            barrier(env.distributed)
            sync(device)
            start = time.perf_counter()
            merged = LayerStats().fit(model, shard(batches, rank, world), progress=False)
            sync(device)
            fitted = time.perf_counter()
            all_reduce_stats(merged)
            if main_rank:
                merged.variance_, merged.sparsity_  # noqa: B018
            sync(device)
            end = time.perf_counter()
            parallel_s.append(end - start)
            fit_s.append(fitted - start)
            reduce_s.append(end - fitted)
            say(
                f"  repeat {repeat + 1}/{args.repeats}: single "
                f"{single_s[-1] if single_s else float('nan'):.3f} s, parallel "
                f"{parallel_s[-1]:.3f} s",
                flush=True,
            )

        per_rank = gather(
            {
                "rank": rank,
                "device": str(device),
                "batches": len(shard(batches, rank, world)),
                "fit_s": fit_s,
                "reduce_s": reduce_s,
                "peak_memory_bytes": peak_memory(device),
            },
            env.distributed,
        )
        report = None
        if main_rank:
            assert single is not None and merged is not None
            a, b = values(merged), values(single)
            diffs = {k: max_rel_diff(a[k], b[k]) for k in b}
            worst = max(diffs, key=diffs.get)
            records_identical = bool(np.array_equal(merged.records_, single.records_))
            t_single, t_parallel = statistics.median(single_s), statistics.median(parallel_s)
            report = {
                "benchmark": "benchmarks/bench_distributed.py",
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "environment": {
                    **environment(device),
                    "world_size": world,
                    "backend": env.backend,
                    "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"),
                },
                "model": model_fingerprint(model),
                "settings": {
                    "config": args.config,
                    "dtype": args.dtype,
                    "batches": args.batches,
                    "batch_size": args.batch_size,
                    "seq_len": args.seq_len,
                    "warmup": args.warmup,
                    "repeats": args.repeats,
                    "seed": args.seed,
                    "sharding": "contiguous (avsslib.distributed.shard)",
                    "threads_per_rank": torch.get_num_threads(),
                    "inputs": "uniform random token ids, attention_mask all ones",
                },
                "tokens": tokens,
                "single": {
                    "seconds": single_s,
                    "median_s": t_single,
                    "tokens_per_s": tokens / t_single,
                },
                "parallel": {
                    "seconds": parallel_s,
                    "median_s": t_parallel,
                    "tokens_per_s": tokens / t_parallel,
                },
                "speedup": t_single / t_parallel,
                "ideal_speedup": world,
                "ranks": per_rank,
                "check": {
                    "rtol": RTOL,
                    "max_rel_diff": diffs[worst],
                    "worst": worst,
                    "records_identical": records_identical,
                    "ok": diffs[worst] <= RTOL,
                    "per_value": diffs,
                },
            }
            print_report(report)
        if args.check_device_map and device.type == "cuda" and main_rank:
            try:
                report["device_map_check"] = check_device_map(args)
            except Exception as error:  # noqa: BLE001 - report, keep the main results
                report["device_map_check"] = {"status": f"FAILED: {type(error).__name__}: {error}"}
            print(
                f"device_map check (tiny model split over 2 GPUs vs one): "
                f"{report['device_map_check']}"
            )
        if main_rank:
            path = args.out / (f"bench_distributed_{args.config}_{device.type}_n{world}.json")
            write_atomic(path, json.dumps(report, indent=2, default=_jsonable) + "\n")
            print(f"results written to {path}")
        barrier(env.distributed)
        return 0 if report is None or report["check"]["ok"] else 1
    finally:
        if env.owns_group:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def print_report(r: dict[str, Any]) -> None:
    gib = 2.0**30
    print(
        f"tokens {r['tokens']} ({r['settings']['batches']} batches); medians over "
        f"{r['settings']['repeats']} repeats"
    )
    print(
        f"  single rank (all batches): {r['single']['median_s']:.3f} s, "
        f"{r['single']['tokens_per_s']:,.0f} tokens/s"
    )
    print(
        f"  {r['environment']['world_size']} ranks (shards + all-reduce): "
        f"{r['parallel']['median_s']:.3f} s, {r['parallel']['tokens_per_s']:,.0f} tokens/s"
    )
    print(f"  speedup = t_single / t_parallel = {r['speedup']:.2f} (ideal {r['ideal_speedup']})")
    for row in r["ranks"]:
        print(
            f"  rank {row['rank']} ({row['device']}): {row['batches']} batches, fit "
            f"{statistics.median(row['fit_s']):.3f} s, all-reduce "
            f"{statistics.median(row['reduce_s']):.4f} s, peak memory "
            f"{row['peak_memory_bytes'] / gib:.2f} GiB"
        )
    c = r["check"]
    verdict = "OK" if c["ok"] else "FAILED"
    print(
        f"check: all-reduced vs single-rank statistics and scores: max rel. diff "
        f"{c['max_rel_diff']:.3g} ({c['worst']}), records identical: "
        f"{c['records_identical']} -> {verdict} (rtol {c['rtol']:g})"
    )


if __name__ == "__main__":
    sys.exit(main())
