"""``avss heal``: LoRA healing of pruned models with one fixed budget (:mod:`avsslib.healing`).

``avss heal --model smollm2-135m --study results/smollm2-135m/avss --configs
avss-count,block_influence-count,angular-count,random-count,tail-count --out DIR`` prunes the
layers each configuration of the study's ``selections.json`` chose (fixed-mode statistics),
evaluates, heals (``--steps`` x ``--batch-size`` x ``--seq-len`` tokens of ``--text``, LoRA
rank ``--rank``, learning rate ``--lr``) and evaluates again; writes ``healing.csv``, the
evaluation files and a run record. Rerunning resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from avsslib.cli.common import (
    add_model_options,
    command_line,
    config_options,
    parse_list,
    resolve_device,
)
from avsslib.options import named_values

HELP = "LoRA healing of pruned models (fixed budget), retention before and after"
LOCK_OUT = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avsslib.healing import HealConfig

    add_model_options(parser, out_help="output directory (resumed)")
    parser.add_argument(
        "--study",
        required=True,
        type=Path,
        help="a pruning study's directory (its selections.json names the layers)",
    )
    parser.add_argument(
        "--configs",
        default="avss-count,block_influence-count,angular-count,random-count,tail-count",
        help="SCORE-RULE names of the study's fixed-mode selections",
    )
    parser.add_argument("--tasks", default="sciq_mc,wikitext2_ppl", help="evaluation tasks")
    parser.add_argument("--n-eval", type=int, default=200, help="examples per task (default 200)")
    add = config_options(parser, HealConfig)
    add("--steps", "optimizer steps (default %(default)s)")
    add("--heal-batch-size", "chunks per step (default %(default)s)", field="batch_size")
    add("--seq-len", "tokens per chunk (default %(default)s)")
    add("--lr", "peak learning rate (default %(default)s)")
    add("--rank", "LoRA rank (default %(default)s)")
    add("--alpha", "LoRA alpha (default %(default)s)")
    add("--warmup", "warm-up steps (default %(default)s)")
    parser.add_argument(
        "--text",
        default="wikitext2:validation",
        help="NAME:SPLIT of the healing text (default wikitext2:validation)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    parser.add_argument("--ppl-window", type=int, default=512, help="wikitext2_ppl window")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")


def _selections(study: Path, names: list[str]) -> dict[str, list[int]]:
    from avsslib.errors import ConfigError

    path = study / "selections.json"
    try:
        chosen = json.loads(path.read_text(encoding="utf-8"))["fixed"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(
            f"{path}: no readable selections.json with a 'fixed' entry; point "
            "--study at a pruning study's directory."
        ) from None
    out = {}
    for name in names:
        key = "/".join(name.rsplit("-", 1))
        if key not in chosen:
            raise ConfigError(
                f"--configs {name}: {path} has no selection {key!r} "
                f"(it has {', '.join(sorted(chosen))})."
            )
        out[name] = chosen[key]
    return out


def run(args: argparse.Namespace) -> int:
    from avsslib.errors import ConfigError
    from avsslib.healing import HealConfig, healing_study
    from avsslib.study import primary_metric_rows

    name, sep, split = args.text.partition(":")
    if not sep:
        raise ConfigError(f"--text {args.text!r}: write NAME:SPLIT, e.g. wikitext2:validation.")
    budget = named_values(args, "steps", "seq_len", "lr", "rank", "alpha", "warmup")
    config = HealConfig(
        **budget, batch_size=args.heal_batch_size, text_name=name, text_split=split, seed=args.seed
    )
    config.validate()
    selections = _selections(args.study, parse_list(args.configs, "--configs"))
    result = healing_study(
        args.model,
        out_dir=args.out,
        selections=selections,
        config=config,
        tasks=parse_list(args.tasks, "--tasks"),
        n_eval=args.n_eval,
        seed=args.seed,
        device=resolve_device(args.device),
        dtype=args.dtype,
        batch_size=args.batch_size,
        ppl_window=args.ppl_window,
        n_boot=args.n_boot,
        progress=not args.quiet,
        command=command_line("heal", args),
    )
    table = primary_metric_rows(result["table"])
    columns = ["config", "task", "retention_before", "retention_after", "recovered"]
    print(table[columns].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(
        f"wrote {args.out} (healing.csv, eval/, record.json and its .md); status {result['status']}"
    )
    return 0
