"""Where our evaluation backend spends its time: a cProfile of ``CachedLM`` per task.

For each task the requests are built as ``bench_eval.py`` builds them and answered three times by
``CachedLM``: once to warm up, once timed with the time inside ``_loglikelihood_tokens`` (the
forward passes and scoring) measured apart, and once under cProfile, whose busiest functions are
printed (by own time, then cumulative). The study's perplexity task is profiled the same way,
with the time of loading and tokenizing its text printed first. This is how the tokenizer calls
of the harness's request encoding were found to be half of TruthfulQA's time on an H100
(2026-12-07; ``avsslib.eval_encoding`` batches them since).

    python benchmarks/profile_eval.py --device cuda --n 500 > profile.log
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_eval import answer, build_requests  # noqa: E402

import avsslib.evaluate as ev  # noqa: E402
from avsslib.data import load_dataset  # noqa: E402
from avsslib.eval_backend import CachedLM  # noqa: E402
from avsslib.models import load_model  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _print_profile(profile: cProfile.Profile, rows: int) -> None:
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(order).print_stats(rows)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="sst2,sciq_mc,truthfulqa_mc1,triviaqa_em")
    parser.add_argument("--n", type=int, default=100, help="questions per task (default 100)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=16, help="profile rows printed")
    args = parser.parse_args()

    model, tok = load_model(args.model, device=args.device, dtype=torch.float32)
    model.eval()
    ours = CachedLM(model, tok, batch_size=args.batch_size, max_length=2048)

    spec = ev.TASKS["wikitext2_ppl"]
    t0 = time.perf_counter()
    text = "".join(d.text for d in load_dataset(spec.dataset, spec.split))
    t1 = time.perf_counter()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    t2 = time.perf_counter()
    print(f"wikitext2_ppl: load {t1 - t0:.2f} s, tokenize {t2 - t1:.2f} s ({len(ids)} tokens)")
    profile = cProfile.Profile()
    profile.enable()
    ev._perplexity_task(model, tok, args.n, 512, 512, args.batch_size)
    _sync(args.device)
    profile.disable()
    _print_profile(profile, args.rows)

    inner = {"s": 0.0}
    scoring = CachedLM._loglikelihood_tokens

    def timed(self, *a, **k):
        t = time.perf_counter()
        out = scoring(self, *a, **k)
        _sync(args.device)
        inner["s"] += time.perf_counter() - t
        return out

    with tempfile.TemporaryDirectory() as tmp, ev._offline():
        for name in args.tasks.split(","):
            requests = build_requests(name, Path(tmp) / name, args.n, 0)
            answer(ours, requests)
            inner["s"] = 0.0
            CachedLM._loglikelihood_tokens = timed
            try:
                _, seconds = answer(ours, requests)
            finally:
                CachedLM._loglikelihood_tokens = scoring
            print(
                f"== {name}: {len(requests)} requests, {seconds:.2f} s, of which "
                f"_loglikelihood_tokens {inner['s']:.2f} s"
            )
            profile = cProfile.Profile()
            profile.enable()
            answer(ours, requests)
            _sync(args.device)
            profile.disable()
            _print_profile(profile, args.rows)


if __name__ == "__main__":
    main()
