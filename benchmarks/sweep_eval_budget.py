"""Our evaluation backend at several token budgets: seconds and forward passes per task.

``CachedLM`` packs its passes by a token budget (``max_batch_tokens``, rows x positions). On a
GPU each forward pass of a small model costs tens of milliseconds of kernel launches whatever
its size, so the budget decides how many passes a task takes. For each budget this answers the
requests of TruthfulQA MC1 and the study's harness tasks (SST-2, SciQ, TriviaQA), built as
``bench_eval.py`` builds them, after one untimed warm-up, and prints the seconds and forward
passes; the sum over the study's harness tasks closes the table. Before that it prints the
seconds of a one-token forward pass of 8 rows (the launch cost of a pass) and of the
perplexity task cold and warm (tokenizing the text, then with its tokens kept). ``--profile``
adds a cProfile of the first budget on three tasks. Budget 0 means the default
(:func:`avsslib.kv_cache.default_max_batch_tokens`).

    python benchmarks/sweep_eval_budget.py --device cuda --n 1000 --budgets 16384,65536,262144
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_eval import answer, build_requests  # noqa: E402
from profile_eval import _print_profile, _sync  # noqa: E402

import avsslib.eval_backend as eb  # noqa: E402
import avsslib.evaluate as ev  # noqa: E402
from avsslib.models import load_model  # noqa: E402

TASKS = ("truthfulqa_mc1", "sst2", "sciq_mc", "triviaqa_em")
STUDY = ("sst2", "sciq_mc", "triviaqa_em")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=100, help="questions per task (default 100)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--budgets", default="0", help="token budgets, comma-separated; 0 = default"
    )
    parser.add_argument("--no-perplexity", action="store_true", help="skip the perplexity rows")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    def sync() -> None:
        _sync(args.device)

    print("eval_backend from", eb.__file__, flush=True)
    model, tok = load_model(args.model, device=args.device, dtype=torch.float32)
    model.eval()
    calls = {"n": 0}
    model.register_forward_pre_hook(lambda m, a: calls.__setitem__("n", calls["n"] + 1))
    with torch.no_grad():
        x = torch.ones(8, 1, dtype=torch.long, device=args.device)
        for _ in range(2):
            sync()
            t = time.perf_counter()
            for _ in range(50):
                model(input_ids=x, logits_to_keep=1)
            sync()
            ms = (time.perf_counter() - t) / 50 * 1e3
            print(f"forward overhead: {ms:.2f} ms per 8x1-token forward", flush=True)
    if not args.no_perplexity:
        for rep in ("cold", "warm"):
            sync()
            t = time.perf_counter()
            ev._perplexity_task(model, tok, args.n, 512, 512, args.batch_size)
            sync()
            print(f"wikitext2_ppl {rep}: {time.perf_counter() - t:.2f} s", flush=True)
    budgets = [int(b) for b in args.budgets.split(",")]
    lms = {
        b: eb.CachedLM(
            model, tok, batch_size=args.batch_size, max_length=2048, max_batch_tokens=b or None
        )
        for b in budgets
    }
    total = dict.fromkeys(budgets, 0.0)
    with tempfile.TemporaryDirectory() as tmp, ev._offline():
        for name in TASKS:
            requests = build_requests(name, Path(tmp) / name, args.n, 0)
            answer(lms[budgets[0]], requests)
            for b in budgets:
                calls["n"] = 0
                _, seconds = answer(lms[b], requests)
                total[b] += seconds if name in STUDY else 0.0
                print(
                    f"== {name} budget {b or 'default'} ({lms[b].max_batch_tokens}): "
                    f"{seconds:.2f} s, {calls['n']} forward calls",
                    flush=True,
                )
            if args.profile and name != "sst2":
                profile = cProfile.Profile()
                profile.enable()
                answer(lms[budgets[0]], requests)
                sync()
                profile.disable()
                _print_profile(profile, 22)
    for b in budgets:
        print(
            f"== study harness tasks ({', '.join(STUDY)}) budget {b or 'default'}: {total[b]:.2f} s"
        )


if __name__ == "__main__":
    main()
