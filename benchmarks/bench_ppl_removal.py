"""``ppl_removal`` the cached way (``avsslib.removal.removal_losses``) against the plain way
(``removal_losses_plain``: the whole model once per skipped block), in one run, on the same
calibration batches.

Both are timed ``--repeats`` times, alternating (plain, cached, plain, cached, ...) so that
machine noise hits both alike; printed: the seconds of each (median, min, max), the time ratio
cached / plain from the medians and per repeat, and the largest absolute difference of the
per-layer losses (the two ways give the same numbers). ``--json OUT`` writes everything with
the device and the versions.

Examples::

    python benchmarks/bench_ppl_removal.py                 # CPU, embedded model, 2 batches of 8 x 128
    python benchmarks/bench_ppl_removal.py --n 16 --repeats 3 --json results/bench/x.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--n", type=int, default=16, help="calibration texts (default 16)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from avsslib.arch import blocks
    from avsslib.calibration import calibration_set
    from avsslib.fs import write_json_atomic
    from avsslib.models import load_model
    from avsslib.removal import removal_losses, removal_losses_plain
    from avsslib.report import device_name, library_versions

    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    batches, calib = calibration_set(
        tokenizer,
        "wikitext2",
        "validation",
        n=args.n,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=0,
    )
    times: dict[str, list[float]] = {"plain": [], "cached": []}
    results = {}
    for repeat in range(args.repeats):
        for name, fn in (("plain", removal_losses_plain), ("cached", removal_losses)):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            results[name] = fn(model, batches, progress=False)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            print(f"repeat {repeat}: {name:6s} {times[name][-1]:7.2f} s", flush=True)
    base_diff = abs(results["plain"][0] - results["cached"][0])
    layer_diff = float(np.abs(results["plain"][1] - results["cached"][1]).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["cached"] / med["plain"]
    per_repeat = [c / p for c, p in zip(times["cached"], times["plain"], strict=True)]
    print(
        f"model {args.model} ({len(blocks(model))} blocks), {len(batches)} batches of "
        f"{args.batch_size} x {args.seq_len} tokens, device {device_name(model)}"
    )
    print(
        f"plain  median {med['plain']:.2f} s (min {min(times['plain']):.2f}, max {max(times['plain']):.2f})"
    )
    print(
        f"cached median {med['cached']:.2f} s (min {min(times['cached']):.2f}, max {max(times['cached']):.2f})"
    )
    print(
        f"ratio cached/plain: {ratio:.3f} (per repeat: {', '.join(f'{r:.3f}' for r in per_repeat)})"
    )
    print(
        f"largest absolute difference: base loss {base_diff:.3g}, per-layer losses {layer_diff:.3g}"
    )
    if args.json:
        write_json_atomic(
            args.json,
            {
                "benchmark": "ppl_removal",
                "command": " ".join(["python", *sys.argv]),
                "model": args.model,
                "n_layers": len(blocks(model)),
                "n_batches": len(batches),
                "batch_size": args.batch_size,
                "seq_len": args.seq_len,
                "device": device_name(model),
                "processor": platform.processor() or platform.machine(),
                "times_s": times,
                "median_s": med,
                "ratio_cached_over_plain": ratio,
                "ratio_per_repeat": per_repeat,
                "max_abs_diff_base": base_diff,
                "max_abs_diff_layers": layer_diff,
                "calibration": {k: v for k, v in calib.items() if k != "data_files"},
                "versions": library_versions(),
            },
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
