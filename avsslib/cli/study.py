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

The command maps its arguments to a :class:`avsslib.study_config.StudyConfig` (the fields are
its options), calls :func:`avsslib.study.pruning_study` and prints the main retention table.
"""

from __future__ import annotations

import argparse

from avsslib.cli.common import (
    CALIBRATION_DEFAULTS,
    add_calibration_options,
    add_eps_option,
    add_model_options,
    check_numbers,
    command_line,
    given,
    parse_list,
)
from avsslib.study_config import DEFAULT_AGREEMENT_CALIBS, PRESETS, StudyConfig

HELP = "run the AVSS pruning study: scores, selections, evaluation, retention, figures, record"
LOCK_OUT = True  # the dispatcher holds the lock of --out while run() writes there

#: the options whose default is the preset's (:data:`avsslib.study_config.PRESETS`)
PRESET_SIZES = tuple(PRESETS["full"])


def _preset(name: str) -> str:
    value = PRESETS["full"][name]
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, out_help="output directory (resumed if present)")
    add_calibration_options(parser)
    parser.add_argument(
        "--quick", action="store_true", help="small smoke-run sizes (see module help)"
    )
    parser.add_argument("--tasks", help=f"comma-separated tasks (default {_preset('tasks')})")
    parser.add_argument(
        "--n-eval", type=int, help="examples per task (default 200; windows for wikitext2_ppl)"
    )
    parser.add_argument(
        "--fraction", type=float, default=0.25, help="main pruned share (default 0.25)"
    )
    parser.add_argument("--scores", help=f"comma-separated scores (default {_preset('scores')})")
    parser.add_argument("--sweep-fractions", help=f"default {_preset('sweep_fractions')}")
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
    add_eps_option(parser)
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


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The :class:`~avsslib.study_config.StudyConfig` of these options: an option left alone
    stays ``None`` where the preset (full or ``--quick``) decides its value; the record keeps
    the command line with the preset's values filled in."""
    import dataclasses

    check_numbers(args)
    lists = {
        "tasks": ("--tasks", str),
        "scores": ("--scores", str),
        "sweep_fractions": ("--sweep-fractions", float),
        "sweep_scores": ("--sweep-scores", str),
        "agreement_calibs": ("--agreement-calibs", str),
        "agreement_seeds": ("--agreement-seeds", int),
    }
    values = {}
    for f in dataclasses.fields(StudyConfig):
        if f.name == "command":
            continue
        value = getattr(args, f.name)
        if f.name in lists and value is not None:
            value = tuple(parse_list(value, *lists[f.name]))
        if f.name in CALIBRATION_DEFAULTS and f.name in PRESET_SIZES and not given(args, f.name):
            value = None  # the parser's full-study default: the preset decides
        values[f.name] = value
    config = StudyConfig(**values)
    resolved = config.resolved()
    for name in PRESET_SIZES:  # record the values actually used
        if values[name] is not None:
            continue
        value = getattr(resolved, name)
        setattr(args, name, ",".join(map(str, value)) if isinstance(value, tuple) else value)
    return dataclasses.replace(config, command=command_line("study", args))


def run(args: argparse.Namespace) -> int:
    from avsslib.retention import RETENTION_COLUMNS
    from avsslib.study import pruning_study

    result = pruning_study(config_from_args(args))
    shown = [c for c in RETENTION_COLUMNS if c not in ("n", "inverted")]
    columns = ["config", "n_pruned", *shown]
    main = result.main_retention()
    print(main[columns].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    timing = result.timing
    counts = {
        s: list(result.status.values()).count(s)
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
