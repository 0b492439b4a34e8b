"""``avss study``: the whole AVSS pruning study of one model (:func:`avsslib.study.pruning_study`).

``avss study --model smollm2-135m --out DIR [--n-eval 200] [--tasks ...] [--device cuda]
[--dtype bfloat16] [--quick]`` computes the layer statistics and scores (fixed and faithful
mode), selects layers with every rule and baseline, evaluates the original model and every
pruned configuration, and writes retention, sweep and agreement tables, figures and a run
record into ``DIR`` (layout in :mod:`avsslib.study`). Rerunning with the same options resumes:
configurations already evaluated are read back, not recomputed.

``--batch-size`` is the batch of the calibration texts and of the evaluation.

``--quick`` is a smoke run in minutes on a CPU: 20 examples of ``sciq_mc`` and
``wikitext2_ppl`` (128-token windows), 16 calibration texts of 64 tokens, no ``ppl_removal``
score, sweep at 0.25 and 0.5. Options given explicitly override it.
"""

from __future__ import annotations

import argparse
from typing import Any

from avsslib.cli.common import (
    CALIBRATION_DEFAULTS,
    add_calibration_options,
    add_model_options,
    check_numbers,
    command_line,
    given,
    parse_list,
    resolve_device,
)
from avsslib.study import DEFAULT_AGREEMENT_CALIBS, DEFAULT_SCORES

HELP = "run the AVSS pruning study: scores, selections, evaluation, retention, figures, record"
LOCK_OUT = True  # the dispatcher holds the lock of --out while run() writes there

# Defaults of the options left as None by the parser: (full study, --quick).
_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "tasks": ("wikitext2_ppl,sst2,sciq_mc,triviaqa_em", "sciq_mc,wikitext2_ppl"),
    "n_eval": (200, 20),
    "n": (CALIBRATION_DEFAULTS["n"], 16),
    "seq_len": (CALIBRATION_DEFAULTS["seq_len"], 64),
    "scores": (",".join(DEFAULT_SCORES), ",".join(s for s in DEFAULT_SCORES if s != "ppl_removal")),
    "sweep_fractions": ("0.1,0.2,0.25,0.3,0.4,0.5", "0.25,0.5"),
    "ppl_window": (512, 128),
    "n_boot": (1000, 200),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, out_help="output directory (resumed if present)")
    add_calibration_options(parser)
    parser.add_argument(
        "--quick", action="store_true", help="small smoke-run sizes (see module help)"
    )
    parser.add_argument("--tasks", help=f"comma-separated tasks (default {_DEFAULTS['tasks'][0]})")
    parser.add_argument(
        "--n-eval", type=int, help="examples per task (default 200; windows for wikitext2_ppl)"
    )
    parser.add_argument(
        "--fraction", type=float, default=0.25, help="main pruned share (default 0.25)"
    )
    parser.add_argument(
        "--scores", help=f"comma-separated scores (default {_DEFAULTS['scores'][0]})"
    )
    parser.add_argument("--sweep-fractions", help=f"default {_DEFAULTS['sweep_fractions'][0]}")
    parser.add_argument(
        "--sweep-scores",
        default="avss,block_influence,random",
        help="scores swept over the fractions (default avss,block_influence,random)",
    )
    parser.add_argument(
        "--agreement-calibs",
        default=",".join(f"{c['name']}:{c['split']}" for c in DEFAULT_AGREEMENT_CALIBS),
        help="NAME:SPLIT calibration sets for the AVSS stability check "
        "(default wikitext2:validation,sst2:validation)",
    )
    parser.add_argument(
        "--agreement-seeds", default="0,1", help="sample seeds for the stability check"
    )
    parser.add_argument(
        "--no-new-evals",
        action="store_true",
        help="evaluate nothing new: write the tables, figures and record from the "
        "configurations already evaluated (a partial run's results so far)",
    )
    parser.add_argument(
        "--no-faithful-eval",
        action="store_true",
        help="do not evaluate the faithful-mode AVSS selections",
    )
    parser.add_argument(
        "--eps", type=float, default=1e-5, help="near-zero threshold (default 1e-5)"
    )
    parser.add_argument(
        "--max-length", type=int, default=2048, help="harness context length (default 2048)"
    )
    parser.add_argument("--ppl-window", type=int, help="wikitext2_ppl window (default 512)")
    parser.add_argument("--ppl-stride", type=int, help="wikitext2_ppl stride (default: the window)")
    parser.add_argument(
        "--num-fewshot",
        type=int,
        help="few-shot examples for every task (default: each task's own)",
    )
    parser.add_argument("--n-boot", type=int, help="bootstrap resamples (default 1000)")


def _option(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name)
    if name in CALIBRATION_DEFAULTS:  # the parser filled in the full-study default
        return _DEFAULTS[name][1] if args.quick and not given(args, name) else value
    return value if value is not None else _DEFAULTS[name][1 if args.quick else 0]


def _agreement_calibs(value: str) -> list[dict[str, str]]:
    from avsslib.errors import ConfigError

    out = []
    for item in parse_list(value, "--agreement-calibs"):
        name, sep, split = item.partition(":")
        if not sep or not name or not split:
            raise ConfigError(
                f"--agreement-calibs item {item!r}: write NAME:SPLIT, e.g. sst2:validation."
            )
        out.append({"name": name, "split": split})
    return out


def run(args: argparse.Namespace) -> int:
    from avsslib.protocol import is_sweep
    from avsslib.study import primary_metric_rows, pruning_study

    for name in _DEFAULTS:  # record the values actually used
        setattr(args, name, _option(args, name))
    check_numbers(args)
    window = int(args.ppl_window)
    result = pruning_study(
        args.model,
        out_dir=args.out,
        tasks=parse_list(args.tasks, "--tasks"),
        n_eval=args.n_eval,
        calib={
            "name": args.calib,
            "split": args.calib_split,
            "n": args.n,
            "seq_len": args.seq_len,
            "seed": args.calib_seed,
        },
        fraction=args.fraction,
        scores=parse_list(args.scores, "--scores"),
        sweep_fractions=parse_list(args.sweep_fractions, "--sweep-fractions", float),
        sweep_scores=parse_list(args.sweep_scores, "--sweep-scores"),
        agreement_calibs=_agreement_calibs(args.agreement_calibs),
        agreement_seeds=parse_list(args.agreement_seeds, "--agreement-seeds", int),
        evaluate_faithful=not args.no_faithful_eval,
        evaluate_missing=not args.no_new_evals,
        seed=args.seed,
        eps=args.eps,
        device=resolve_device(args.device),
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_length=args.max_length,
        ppl_window=window,
        ppl_stride=args.ppl_stride if args.ppl_stride is not None else window,
        num_fewshot=args.num_fewshot,
        n_boot=args.n_boot,
        progress=not args.quiet,
        command=command_line("study", args),
        trust_remote_code=getattr(args, "trust_remote_code", False),
    )
    main = result["retention"]
    main = main[(main["fraction"] == args.fraction) | (main["config"] == "original")]
    main = primary_metric_rows(main[~is_sweep(main["config"])])
    columns = [
        "config",
        "n_pruned",
        "task",
        "metric",
        "original",
        "pruned",
        "retention",
        "ci_low",
        "ci_high",
    ]
    print(main[columns].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    timing = result["timing"]
    counts = {
        s: list(result["status"].values()).count(s)
        for s in ("evaluated", "reused", "cached", "missing")
    }
    print(
        f"configurations: {counts}; statistics {timing['stats']} in {timing['stats_s']:.1f} s; "
        f"total {timing['total_s']:.1f} s"
    )
    record = "record.partial.json" if counts["missing"] else "record.json"
    print(
        f"wrote {args.out} (layer_stats*.csv, selections.json, eval/, retention.csv, sweep.csv, "
        f"agreement.csv, figures/, {record} and its .md)"
    )
    return 0
