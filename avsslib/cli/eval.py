"""``avss eval``: evaluate a model on our tasks and write the result files.

``avss eval --model NAME_OR_DIR --tasks sciq_mc,sst2 --n 100 --seed 0 --out results/dir`` writes
into ``--out``:

* ``metrics.json``: per task the protocol, metric values and per-example scores
  (:meth:`avsslib.evaluate.EvalResult.to_dict`; read back with ``EvalResult.from_dict``);
* ``metrics.csv``: one row per task and metric with its bootstrap confidence interval;
* ``record.json``: the run record (command, configuration, seed, model fingerprint, data file
  hashes, versions, device, metrics table, timings) and ``record.md``, its result card.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from avsslib.cli.common import add_model_options, load_cli_model
from avsslib.errors import ConfigError
from avsslib.evaluate import BACKENDS, TASKS, EvalResult, evaluate, task_data_files
from avsslib.fs import write_csv_atomic, write_json_atomic
from avsslib.options import named_values
from avsslib.report import RunRecord, save_record

HELP = "evaluate a model on lm-eval tasks and perplexity; write metrics, run record and card"
LOCK_OUT = True  # the dispatcher holds the lock of --out while run() writes there

#: the options passed on to :func:`avsslib.evaluate.evaluate` under their own names
EVALUATE_OPTIONS = (
    "n",
    "seed",
    "batch_size",
    "num_fewshot",
    "max_length",
    "ppl_window",
    "ppl_stride",
    "chat_template",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument(
        "--tasks", required=True, help=f"comma-separated task names: {', '.join(TASKS)}"
    )
    parser.add_argument(
        "--n", type=int, help="examples per task, sampled with --seed (default: all)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    parser.add_argument(
        "--num-fewshot",
        type=int,
        help="few-shot examples for every task (default: each task's own; sst2: 4)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=2048,
        help="harness context length, the window of wikitext2_word_ppl (default 2048)",
    )
    parser.add_argument(
        "--ppl-window", type=int, default=512, help="wikitext2_ppl window (default 512)"
    )
    parser.add_argument(
        "--ppl-stride", type=int, default=512, help="wikitext2_ppl stride (default 512)"
    )
    parser.add_argument(
        "--chat-template",
        action="store_true",
        help="wrap harness prompts in the tokenizer's chat template",
    )
    parser.add_argument(
        "--eval-backend",
        choices=BACKENDS,
        default="avsslib",
        help="harness model backend: avsslib (ours: shared contexts encoded once; default) "
        "or harness (lm-evaluation-harness's HFLM, for comparison)",
    )
    parser.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples for CIs (default 1000)"
    )


def _command(config: dict, out: Path) -> str:
    """The full command line that repeats this run (every option explicit)."""
    argv = ["avss", "eval"]
    for key, value in config.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return shlex.join([*argv, "--out", str(out)])


def run(args: argparse.Namespace) -> int:
    import torch

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(
            f"--tasks: unknown task(s) {unknown or '(none given)'}; known tasks: {', '.join(TASKS)}."
        )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = named_values(args, *EVALUATE_OPTIONS)
    config = {
        "model": args.model,
        "tasks": tasks,
        **options,
        "eval_backend": args.eval_backend,
        "n_boot": args.n_boot,
        "device": device,
        "dtype": args.dtype,
        "trust_remote_code": getattr(args, "trust_remote_code", False),
    }
    model, tokenizer, load_s = load_cli_model(args, device, causal_for="eval")
    record = RunRecord.start(
        _command(config, args.out),
        config,
        args.seed,
        model=model,
        data_files=task_data_files(tasks),
    )
    result: EvalResult = evaluate(model, tokenizer, tasks, **options, backend=args.eval_backend)
    table = result.table(n_boot=args.n_boot, seed=args.seed)
    out: Path = args.out
    write_json_atomic(out / "metrics.json", result.to_dict())
    write_csv_atomic(out / "metrics.csv", table)
    record.finish(
        {
            "table": table.to_dict(orient="records"),
            "protocols": {name: t.protocol for name, t in result.tasks.items()},
        },
        load_model_s=load_s,
        tasks_s={name: t.wall_s for name, t in result.tasks.items()},
    )
    save_record(record, out / "record.json")
    print(table.to_string(index=False))
    print(f"wrote {out}/metrics.json, metrics.csv, record.json, record.md")
    return 0
