"""Evaluation speed: the harness's ``HFLM`` against our ``CachedLM`` on the same requests, one run.

For every harness task asked (``--tasks``), the task's requests are built once
(lm-evaluation-harness ``TaskManager`` over our records, ``n`` questions sampled with ``--seed``,
exactly as :func:`avsslib.evaluate.evaluate` builds them) and answered by both backends, the
order alternating from task to task so that drifting machine load hits both alike. Printed per
task: requests, seconds of each backend, the ratio harness / ours, the largest absolute
difference of a log-likelihood, how many ``is_greedy`` flags and generated strings differ.

Each task also gets a *floor*: the seconds of one forward pass over each distinct input any
backend must encode (each distinct context after the prefix all contexts share, or each
generation prompt), logits at one position, under our token budget
(:func:`floor_seconds`). Continuations, scoring and decoding are left out, so a backend that
computes the same numbers in the same dtype and batches as ours does cannot beat it; harness /
floor bounds what such a backend could gain.

The study's task set (:func:`avsslib.study.pruning_study`'s default: ``wikitext2_ppl``, ``sst2``,
``sciq_mc``, ``triviaqa_em``) gets a row of its own: the sum of its harness tasks' times plus
the time of ``wikitext2_ppl`` (our own windowed perplexity, :func:`avsslib.evaluate.perplexity`,
the same code under either backend; added to both). It is timed as a study configuration pays
it: a study tokenizes the text once and keeps its tokens, so the second of two runs is timed and
the first, with the tokenizing, is recorded beside it (``wikitext2_ppl_first_s``). Its floor is that
perplexity time plus the floors of its harness tasks.

``--json OUT`` writes every number with the device, versions and command.

Examples::

    python benchmarks/bench_eval.py --n 100 --json results/bench/bench_eval_smollm2-135m_cpu.json
    python benchmarks/bench_eval.py --device cuda --batch-size 32 --n 500 --json results/bench/x.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import avsslib
from avsslib.eval_greedy import DECODE_MODES

STUDY_TASKS = ("wikitext2_ppl", "sst2", "sciq_mc", "triviaqa_em")
DEFAULT_TASKS = ("truthfulqa_mc1", "sst2", "sciq_mc", "triviaqa_em")


def build_requests(name: str, folder: Path, n: int, seed: int) -> list[Any]:
    """The harness ``Instance`` s of task ``name`` on ``n`` sampled records (as ``evaluate`` does)."""
    from lm_eval.tasks import TaskManager

    import avsslib.evaluate as ev

    ev.materialise_task(name, folder, n=n, seed=seed)
    with ev._offline():
        task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][
            name
        ]
        task.set_fewshot_seed(seed)
        task.build_all_requests(limit=None, rank=0, world_size=1)
    return list(task.instances)


def answer(lm: Any, requests: list[Any]) -> tuple[list[Any], float]:
    """All answers of ``lm`` (one request type) and the seconds it took."""
    kind = requests[0].request_type
    t0 = time.perf_counter()
    out = getattr(lm, kind)(requests, disable_tqdm=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def distinct_inputs(lm: Any, requests: list[Any]) -> list[tuple[int, ...]]:
    """The token rows any backend must encode at least once, as ``lm`` (a ``CachedLM``)
    tokenises them: each distinct context of the log-likelihood requests, or each distinct
    prompt of the generation requests; longest first."""
    if requests[0].request_type == "generate_until":
        from lm_eval.models.utils import normalize_gen_kwargs

        rows = set()
        for req in requests:
            max_gen = int(normalize_gen_kwargs(req.args[1], lm.max_gen_toks)["max_gen_toks"])
            rows.add(tuple(lm.prompt_tokens(req.args[0], max_gen)))
    else:
        rows = {lm.request_tokens(*lm._encode_pair(*req.args))[0] for req in requests}
    return sorted(rows, key=lambda r: (-len(r), r))


@torch.inference_mode()
def floor_seconds(model: Any, rows: list[tuple[int, ...]], max_batch_tokens: int) -> float:
    """Seconds of one forward pass over each row (sorted longest first) after the prefix all
    rows share (the prefix once), logits at one position, in the batches ``CachedLM`` forms
    (:func:`avsslib.kv_cache.context_batches`: the token budget, little padding): the compute
    no backend can skip, with continuations, scoring and decoding left out."""
    from avsslib.kv_cache import context_batches, pad_ids, shared_prefix

    device = next(model.parameters()).device
    shared = len(shared_prefix(rows))
    batches = [[r[shared:] for r in b] for b in context_batches(rows, shared, max_batch_tokens)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if shared:
        model(input_ids=torch.tensor([rows[0][:shared]], device=device), logits_to_keep=1)
    for batch in batches:
        width = len(batch[0])
        model(input_ids=pad_ids(batch, width, 0).to(device), logits_to_keep=1)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(kind: str, a: list[Any], b: list[Any]) -> dict[str, Any]:
    """Largest |log-likelihood difference|, differing greedy flags, differing strings."""
    if kind == "generate_until":
        return {
            "max_abs_ll_diff": None,
            "greedy_diffs": None,
            "text_diffs": sum(x != y for x, y in zip(a, b, strict=True)),
        }
    if kind == "loglikelihood_rolling":
        return {
            "max_abs_ll_diff": float(np.max(np.abs(np.subtract(a, b)))),
            "greedy_diffs": None,
            "text_diffs": None,
        }
    return {
        "max_abs_ll_diff": float(np.max(np.abs([x[0] - y[0] for x, y in zip(a, b, strict=True)]))),
        "greedy_diffs": sum(x[1] != y[1] for x, y in zip(a, b, strict=True)),
        "text_diffs": None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--tasks", default=",".join(DEFAULT_TASKS), help="harness tasks, comma-separated"
    )
    parser.add_argument("--n", type=int, default=100, help="questions per task (default 100)")
    parser.add_argument(
        "--ppl-windows",
        type=int,
        default=None,
        help="wikitext2_ppl windows of the study row (default: --n, as a study does)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument(
        "--decode",
        choices=DECODE_MODES,
        help="how our greedy steps run (CachedLM.decode; default: its choice for the device)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    import lm_eval
    import transformers
    from lm_eval.models.huggingface import HFLM

    import avsslib.evaluate as ev
    from avsslib.eval_backend import CachedLM
    from avsslib.fs import write_json_atomic
    from avsslib.models import load_model
    from avsslib.report import device_name

    model, tok = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    model.eval()
    tasks = [t for t in args.tasks.split(",") if t]
    for t in STUDY_TASKS:
        if t != "wikitext2_ppl" and t not in tasks:
            tasks.append(t)
    harness = HFLM(
        pretrained=model, tokenizer=tok, batch_size=args.batch_size, max_length=args.max_length
    )
    ours = CachedLM(model, tok, batch_size=args.batch_size, max_length=args.max_length)
    ours.decode = args.decode or ours.decode
    print(f"our greedy decode steps: {ours.decode}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp, ev._offline():
        for k, name in enumerate(tasks):
            requests = build_requests(name, Path(tmp) / name, args.n, args.seed)
            order = [("harness", harness), ("ours", ours)][:: 1 if k % 2 == 0 else -1]
            answers, seconds = {}, {}
            for label, lm in order:
                answers[label], seconds[label] = answer(lm, requests)
            inputs = distinct_inputs(ours, requests)
            floor = floor_seconds(model, inputs, ours.max_batch_tokens)
            row = {
                "task": name,
                "request_type": requests[0].request_type,
                "requests": len(requests),
                "harness_s": seconds["harness"],
                "ours_s": seconds["ours"],
                "ratio": seconds["harness"] / seconds["ours"],
                "distinct_inputs": len(inputs),
                "floor_s": floor,
                "harness_over_floor": seconds["harness"] / floor,
                **compare(requests[0].request_type, answers["harness"], answers["ours"]),
            }
            rows.append(row)
            print(
                f"{name:16s} {row['requests']:6d} requests  harness {row['harness_s']:8.2f} s  ours "
                f"{row['ours_s']:8.2f} s  ratio {row['ratio']:5.2f}  floor {floor:6.2f} s "
                f"(harness/floor {row['harness_over_floor']:5.2f})  max|dLL| {row['max_abs_ll_diff']}  "
                f"greedy diffs {row['greedy_diffs']}  text diffs {row['text_diffs']}",
                flush=True,
            )
        windows = args.ppl_windows or args.n
        ppl_times = []
        for _ in range(2):  # the first tokenizes the text; later configurations of a study don't
            t0 = time.perf_counter()
            ppl_ids, _, _ = ev._perplexity_task(model, tok, windows, 512, 512, args.batch_size)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ppl_times.append(time.perf_counter() - t0)
        ppl_first_s, ppl_s = ppl_times
    by_task = {r["task"]: r for r in rows}
    study = {
        "tasks": list(STUDY_TASKS),
        "wikitext2_ppl_s": ppl_s,
        "wikitext2_ppl_first_s": ppl_first_s,  # with tokenizing the text (once per study)
        "wikitext2_ppl_windows": len(ppl_ids),  # evaluated (the text may have fewer than asked)
        "harness_s": ppl_s + sum(by_task[t]["harness_s"] for t in STUDY_TASKS if t in by_task),
        "ours_s": ppl_s + sum(by_task[t]["ours_s"] for t in STUDY_TASKS if t in by_task),
    }
    study["ratio"] = study["harness_s"] / study["ours_s"]
    study["floor_s"] = ppl_s + sum(by_task[t]["floor_s"] for t in STUDY_TASKS if t in by_task)
    study["harness_over_floor"] = study["harness_s"] / study["floor_s"]
    study["max_abs_ll_diff"] = max(
        (by_task[t]["max_abs_ll_diff"] or 0.0) for t in STUDY_TASKS if t in by_task
    )
    print(
        f"{'study task set':16s} harness {study['harness_s']:8.2f} s  ours {study['ours_s']:8.2f} s  "
        f"ratio {study['ratio']:5.2f}  (wikitext2_ppl {ppl_s:.2f} s, same code, in both; "
        f"{ppl_first_s:.2f} s with tokenizing the text)\n"
        f"{'':16s} floor {study['floor_s']:8.2f} s (wikitext2_ppl + each task's floor): harness / "
        f"floor {study['harness_over_floor']:.2f}, the most a backend batching as ours could gain"
    )
    if args.json:
        write_json_atomic(
            args.json,
            {
                "benchmark": "bench_eval",
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "device": device_name(model),
                "cpu": platform.processor() or platform.machine(),
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
                "model": args.model,
                "dtype": args.dtype,
                "n": args.n,
                "seed": args.seed,
                "batch_size": args.batch_size,
                "max_length": args.max_length,
                "cache_reuse": ours.reuse_cache,
                "decode": ours.decode,
                "max_batch_tokens": ours.max_batch_tokens,
                "versions": {
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "lm_eval": lm_eval.__version__,
                    "avsslib": avsslib.__version__,
                },
                "tasks": rows,
                "study": study,
            },
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
