"""``avss mitigate``: contrastive fine-tuning of the hallucination-prone layers,
evaluated before and after on held-out questions (§9.3).

``avss mitigate --model smollm2-135m --dataset truthfulqa --layers 3,7,11 --mode eavss --lora
--n-train 200 --eval-tasks truthfulqa_mc1,truthfulqa_mc2 --n-eval 200 --out DIR`` runs
:func:`avsslib.mitigation.run_mitigation` (whose docstring maps the files it writes into
``--out`` and the modes); the options are the fields of
:class:`avsslib.mitigation.MitigationConfig`.
"""

from __future__ import annotations

import argparse
from typing import Any

from avsslib.cli.common import config_options, options_config, parse_list
from avsslib.mitigation import MitigationConfig, run_mitigation
from avsslib.protocol import MODES

HELP = "contrastive fine-tuning of chosen (prone) layers, evaluated before/after with KL and perplexity"
LOCK_OUT = True  # the dispatcher holds the lock of --out while run() writes there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``avss mitigate``: the fields of
    :class:`~avsslib.mitigation.MitigationConfig`, whose defaults they take."""
    add = config_options(parser, MitigationConfig)
    add("--dataset", "training data: truthfulqa, sciq_mc, wikiqa, nq_open, triviaqa, sciq")
    add("--split", "its split (default: the dataset's default split)")
    source = parser.add_mutually_exclusive_group()
    add("--layers", "comma-separated layer indices (e.g. the prone layers)", to=source)
    add(
        "--layers-from",
        "JSON with the layers (a list, an object with 'prone_layers' or 'layers', or the "
        "prone_layers.json of `avss hallucination`; with --fold its fold's layers), the "
        "probe_layers.json of `avss hallucination --probe` (mode probe: the --k best probes), "
        "or a layer_stats.csv (mode avss: the --k lowest AVSS)",
        to=source,
    )
    add("--prone-family", "family in an `avss hallucination` prone_layers.json (if it has several)")
    add("--k", "layer count for --mode random, avss from a CSV, probe from a probe_layers.json")
    add("--mode", "ablation mode (default %(default)s)", choices=MODES)
    params = parser.add_mutually_exclusive_group()
    add("--lora", "LoRA on the layers' projections", to=params)
    add("--full-params", "train the layers' full parameters (the default)", to=params)
    add("--lora-r", "LoRA rank (default %(default)s)")
    add("--lora-alpha", "LoRA alpha (default %(default)s)")
    add("--epochs", "epochs (default %(default)s)")
    add("--lr", "learning rate (default 1e-5 full, 1e-4 LoRA)")
    add("--lambda", "weight of the contrastive loss (default %(default)s)", dest="lam")
    add("--tau", "temperature (default %(default)s)")
    add("--loss", "contrastive loss (default %(default)s)")
    add("--no-in-batch", "do not use other questions' positives as negatives")
    add("--projection", "train through an MLP head g_l")
    add("--batch-size", "questions per micro-batch (default %(default)s)")
    add("--grad-accum", "micro-batches per step (default %(default)s)")
    add("--max-negatives", "negatives per question (default %(default)s)")
    add(
        "--own-negatives",
        "JSON list of [question, hallucinated answer] pairs (or objects with 'question' and "
        "'answer') from the model itself",
    )
    add("--no-dataset-negatives", "use only --own-negatives (and in-batch ones)")
    add("--bf16", "autocast the forward pass to bfloat16")
    add("--n-train", "training questions (default: all not evaluated)")
    add("--eval-tasks", "comma-separated tasks (default: the dataset's own)")
    add("--n-eval", "evaluation questions (default %(default)s; ignored with --folds)")
    add("--eval-seed", "evaluation sample seed (default %(default)s)")
    add(
        "--folds",
        "k-fold protocol: split every question of the evaluation task into this many folds "
        "(avsslib.folds); evaluate fold --fold, train on the rest",
    )
    add("--fold", "the evaluated fold, 0..folds-1 (with --folds)")
    add("--fold-seed", "seed of the fold split (default %(default)s; as avss hallucination's)")
    add("--eval-batch-size", "harness batch size (default %(default)s)")
    add(
        "--kl-texts",
        "WikiText-2 test paragraphs for KL to the base (0 = skip; default %(default)s)",
    )
    add(
        "--ppl-windows",
        "512-token WikiText-2 windows for perplexity (0 = skip; default %(default)s)",
    )
    add("--n-boot", "bootstrap resamples (default %(default)s)")
    add("--checkpoint-every", "optimizer steps between checkpoints (0 = none; default %(default)s)")
    add("--resume", "continue from --out/checkpoint.pt")


def config_from_args(args: argparse.Namespace) -> MitigationConfig:
    """The :class:`~avsslib.mitigation.MitigationConfig` of these options (the record keeps the
    command line exactly as given)."""
    return options_config(
        "mitigate",
        MitigationConfig,
        args,
        layers=tuple(parse_list(args.layers, "--layers", int)),
        eval_tasks=tuple(parse_list(args.eval_tasks, "--eval-tasks")),
    )


def run(args: argparse.Namespace) -> int:
    run_result = run_mitigation(config_from_args(args))
    out, layers, change = run_result.out, run_result.layers, run_result.change
    effects, training = run_result.side_effects, run_result.training
    history = training["history"]
    print(
        f"trained {training['kind']} on layers {layers} ({run_result.n_questions} questions, "
        f"{len(history)} steps, {training['s_per_step']:.2f} s/step); loss "
        f"{history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}"
    )
    for r in change.to_dict("records"):
        print(
            f"{r['task']} {r['metric']}: {r['before']:.4f} -> {r['after']:.4f} "
            f"(abs {r['delta_abs']:+.4f} [{r['abs_ci_low']:+.4f}, {r['abs_ci_high']:+.4f}], "
            f"rel {r['delta_rel']:+.2%})"
        )
    if "kl_to_base" in effects:
        print(f"KL(base || tuned) = {effects['kl_to_base']['value']:.5f} nats/token")
    if "perplexity" in effects:
        print(
            f"perplexity: base {effects['perplexity']['base']['value']:.3f}, tuned "
            f"{effects['perplexity']['tuned']['value']:.3f}"
        )
    print(
        f"wrote {out} (trained_layers.*, metrics.json, changes.csv, data.json, record.json, record.md)"
    )
    return 0


def __getattr__(name: str) -> Any:
    moved = {
        "DEFAULT_EVAL_TASKS": "DEFAULT_EVAL_TASKS",
        "_layers_from": "layers_from_file",
        "_own_negatives": "read_own_negatives",
    }
    if name in moved:
        import warnings

        from avsslib import mitigation

        warnings.warn(
            f"avsslib.cli.mitigate.{name} moved to avsslib.mitigation.{moved[name]}.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(mitigation, moved[name])
    raise AttributeError(f"module 'avsslib.cli.mitigate' has no attribute {name!r}")
