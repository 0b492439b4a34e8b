"""Where greedy generation spends its time: TriviaQA answered by our backend under
``torch.profiler``, and one decode step timed alone at several row counts.

On a GPU the study's TriviaQA generation takes several times its floor (the prompts' forward
passes), and halving its passes did not halve its time (H100, 2026-12-07: 64 passes 2.15 s, 32
passes of 1,000 rows 2.51 s). This separates the candidates. Printed:

1. TriviaQA's generation with ``CachedLM`` (its default token budget) under two ways of
   running a decode step (``CachedLM.decode``: ``dynamic`` against ``graph`` on CUDA, against
   ``static`` elsewhere): seconds and forward passes of each after one untimed warm-up, the
   ratio, and how many generated strings differ between them.
2. The same under ``torch.profiler`` (each way) (CPU and, on CUDA, GPU activity): the operators with the
   most self device time and the most self CPU time, and the kernels' summed time against the
   wall time, so a launch- or host-bound run shows as wall time far above kernel time.
3. One decode step alone (one new token per row after a prefill of ``--prompt-len`` tokens,
   each way): for each row count of ``--rows``, the median
   wall seconds of a step and, on CUDA, the median GPU seconds between CUDA events around it.

    python benchmarks/profile_decode.py --device cuda --n 1000 --rows 250,500,1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_eval import answer, build_requests  # noqa: E402
from profile_eval import _sync  # noqa: E402

import avsslib.evaluate as ev  # noqa: E402
from avsslib.eval_backend import CachedLM  # noqa: E402
from avsslib.eval_greedy import checked_decode, decode_steps  # noqa: E402
from avsslib.models import load_model  # noqa: E402


def step_seconds(
    lm: CachedLM, rows: int, prompt_len: int, steps: int, device: str
) -> tuple[float, float]:
    """Median wall and GPU seconds (GPU: NaN off CUDA) of one decode step of ``rows`` rows,
    each after a prefill of ``prompt_len`` tokens, over ``steps`` steps, the steps run as
    ``lm.decode`` says (``eval_greedy.decode_steps``; a graph's capture
    is in its second step, so the first two are not timed)."""
    ids = torch.randint(100, 1000, (rows, prompt_len))
    mask = lm._to_device(torch.ones(rows, prompt_len, dtype=torch.long))
    cache = lm._new_cache()
    logits = lm._forward(
        input_ids=lm._to_device(ids), attention_mask=mask, cache=cache, **lm._keep_last
    ).logits[:, -1]
    decode = decode_steps(lm, cache, mask, steps + 2, checked_decode(lm))
    wall: list[float] = []
    gpu: list[float] = []
    cuda = device.startswith("cuda")
    for step in range(steps + 2):
        tokens = logits.argmax(-1)
        _sync(device)
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        t0 = time.perf_counter()
        logits = decode(tokens)
        if cuda:
            end.record()
        _sync(device)
        if step >= 2:
            wall.append(time.perf_counter() - t0)
            if cuda:
                gpu.append(begin.elapsed_time(end) / 1e3)
    return statistics.median(wall), statistics.median(gpu) if gpu else float("nan")


def profile_table(lm: CachedLM, requests: list[Any], device: str, rows: int) -> None:
    """Part 2: the generation under ``torch.profiler``, two operator tables and the totals."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        answer(lm, requests)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    if device.startswith("cuda"):
        print(events.table(sort_by="self_cuda_time_total", row_limit=rows), flush=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)
    # the kernels' own rows only: an operator's row repeats the time of the kernels it launched
    device_s = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    print(f"profiled: wall {wall:.2f} s, kernel time {device_s / 1e6:.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="triviaqa_em")
    parser.add_argument("--n", type=int, default=100, help="questions (default 100)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", default="250,500,1000", help="row counts of the decode step")
    parser.add_argument("--prompt-len", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="decode steps timed per row count")
    parser.add_argument("--table-rows", type=int, default=15, help="operators printed per table")
    args = parser.parse_args()

    model, tok = load_model(args.model, device=args.device, dtype=torch.float32)
    model.eval()
    calls = {"n": 0}
    model.register_forward_pre_hook(lambda m, a: calls.__setitem__("n", calls["n"] + 1))
    lm = CachedLM(model, tok, batch_size=args.batch_size, max_length=2048)
    print(f"token budget {lm.max_batch_tokens}, read back every {lm.check_every} steps", flush=True)
    modes = ["dynamic", "graph"] if args.device.startswith("cuda") else ["dynamic", "static"]
    with tempfile.TemporaryDirectory() as tmp, ev._offline():
        requests = build_requests(args.task, Path(tmp) / args.task, args.n, 0)
        texts, seconds = {}, {}
        for mode in modes:
            lm.decode = mode
            answer(lm, requests)
            calls["n"] = 0
            texts[mode], seconds[mode] = answer(lm, requests)
            print(
                f"== {args.task}, decode {mode}: {seconds[mode]:.2f} s,"
                f" {calls['n']} forward calls (a graph replay makes none)"
            )
        differ = sum(a != b for a, b in zip(texts[modes[0]], texts[modes[1]], strict=True))
        print(
            f"== {args.task}: decode {modes[1]} {seconds[modes[0]] / seconds[modes[1]]:.2f}x"
            f" decode {modes[0]}; generated strings differing: {differ} of {len(requests)}",
            flush=True,
        )
        for mode in modes:
            lm.decode = mode
            print(f"== profile, decode {mode}", flush=True)
            profile_table(lm, requests, args.device, args.table_rows)
    for mode in modes:
        lm.decode = mode
        for rows in (int(r) for r in args.rows.split(",")):
            wall, gpu = step_seconds(lm, rows, args.prompt_len, args.steps, args.device)
            print(
                f"== decode step ({mode}), {rows} rows after {args.prompt_len} tokens:"
                f" wall {wall * 1e3:.2f} ms, GPU {gpu * 1e3:.2f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
