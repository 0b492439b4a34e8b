"""Evaluation around the model: :func:`avsslib.evaluate.evaluate` with and without
:func:`avsslib.harness_plumbing.lean_harness`, in one run, on the same model, tasks and sample.

Two measurements, each timed for both variants, in alternating order (``--repeats`` times;
the fastest of each is kept):

* ``stub``: the backend's answers replaced by constants (``CachedLM.loglikelihood`` and
  ``generate_until`` patched on the class, for this measurement only). What is left is the
  harness's work around the model: building the task and its requests, the templates, the
  metrics and the results header. ``--n-stub`` questions per task (default 1,000: the whole
  sets).
* ``model``: the model answering, as in a study configuration's evaluation (``--n`` questions
  per task). Both variants must give the same numbers; the run fails otherwise.

The baseline ("plain") replaces ``lean_harness`` in :mod:`avsslib.evaluate` by a context
that does nothing. Printed: seconds of each variant and the ratio plain / lean.

    python benchmarks/bench_plumbing.py --json results/bench/bench_plumbing_smollm2-135m_cpu.json
    python benchmarks/bench_plumbing.py --device cuda --batch-size 32 --n 1000 --json OUT.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

import avsslib.evaluate as ev
from avsslib.eval_backend import CachedLM
from avsslib.fs import write_json_atomic
from avsslib.harness_plumbing import lean_harness

STUDY_HARNESS_TASKS = ("sst2", "sciq_mc", "triviaqa_em")


@contextlib.contextmanager
def plain() -> Iterator[None]:
    """The baseline: :func:`avsslib.evaluate.evaluate` without ``lean_harness``."""
    ev.lean_harness = contextlib.nullcontext  # type: ignore[assignment]
    try:
        yield
    finally:
        ev.lean_harness = lean_harness


@contextlib.contextmanager
def stub_answers() -> Iterator[None]:
    """Constant answers from the backend (what the model would return is left out)."""
    constant: dict[str, Callable[..., list[Any]]] = {
        "loglikelihood": lambda self, requests, disable_tqdm=False: [(-1.0, False)] * len(requests),
        "generate_until": lambda self, requests, disable_tqdm=False: ["x"] * len(requests),
    }
    saved = {name: getattr(CachedLM, name) for name in constant}
    for name, answer in constant.items():
        setattr(CachedLM, name, answer)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(CachedLM, name, method)


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def both(run: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Fastest seconds of each variant over ``repeats`` alternating rounds, and the outputs of
    the last round."""
    seconds: dict[str, list[float]] = {"lean": [], "plain": []}
    outputs: dict[str, Any] = {}
    for k in range(repeats):
        for variant in ("lean", "plain") if k % 2 == 0 else ("plain", "lean"):
            with plain() if variant == "plain" else contextlib.nullcontext():
                outputs[variant], s = timed(run)
            seconds[variant].append(s)
    lean_s, plain_s = min(seconds["lean"]), min(seconds["plain"])
    return {"lean_s": lean_s, "plain_s": plain_s, "ratio": plain_s / lean_s, "outputs": outputs}


def numbers(result: Any) -> dict[str, Any]:
    out = result.to_dict()
    out.pop("timing")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", default=",".join(STUDY_HARNESS_TASKS))
    parser.add_argument("--n", type=int, default=100, help="questions per task, model answering")
    parser.add_argument("--n-stub", type=int, default=1000, help="questions per task, stub")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args(argv)

    from avsslib.models import load_model

    model, tokenizer = load_model(args.model, device=args.device)
    tasks = args.tasks.split(",")

    def evaluate(n: int) -> Callable[[], Any]:
        return lambda: ev.evaluate(
            model, tokenizer, tasks, n=n, seed=args.seed, batch_size=args.batch_size
        )

    with stub_answers():
        stub = both(evaluate(args.n_stub), args.repeats)
    real = both(evaluate(args.n), args.repeats)
    same = numbers(real["outputs"]["lean"]) == numbers(real["outputs"]["plain"])
    rows = {"stub": (args.n_stub, stub), "model": (args.n, real)}
    for label, (n, r) in rows.items():
        print(
            f"{label:<6} {n:>5} per task  plain {r['plain_s']:8.2f} s  lean {r['lean_s']:8.2f} s"
            f"  ratio {r['ratio']:5.2f}"
        )
    print(f"same numbers with and without lean_harness: {same}")
    if args.json:
        import lm_eval
        import transformers

        write_json_atomic(
            args.json,
            {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "device": args.device
                if args.device == "cpu"
                else f"{args.device}: {torch.cuda.get_device_name()}",
                "threads": torch.get_num_threads(),
                "command": " ".join(["python", *sys.argv]),
                "model": args.model,
                "tasks": tasks,
                "seed": args.seed,
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "rows": [
                    {"run": label, "n": n, **{k: v for k, v in r.items() if k != "outputs"}}
                    for label, (n, r) in rows.items()
                ],
                "same_numbers": same,
                "versions": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "lm_eval": lm_eval.__version__,
                },
            },
        )
        print(f"wrote {args.json}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
