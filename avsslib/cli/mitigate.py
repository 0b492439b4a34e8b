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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avsslib.cli.common import add_model_options, options_config, parse_list

if TYPE_CHECKING:
    from avsslib.mitigation import MitigationConfig

HELP = "contrastive fine-tuning of chosen (prone) layers, evaluated before/after with KL and perplexity"
LOCK_OUT = True  # the dispatcher holds the lock of --out while run() writes there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``avss mitigate``, one ``add_argument`` call each: long because the list of
    options is, not the logic."""
    from avsslib.mitigate import DEFAULT_MAX_NEGATIVES
    from avsslib.protocol import MODES

    add_model_options(parser)
    parser.add_argument(
        "--dataset",
        default="truthfulqa",
        help="training data: truthfulqa, sciq_mc, wikiqa, nq_open, triviaqa, sciq",
    )
    parser.add_argument("--split", help="its split (default: the dataset's default split)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--layers", help="comma-separated layer indices (e.g. the prone layers)")
    source.add_argument(
        "--layers-from",
        type=Path,
        help="JSON with the layers (a list, an object with 'prone_layers' or "
        "'layers', or the prone_layers.json of `avss hallucination`; with "
        "--fold its fold's layers), the probe_layers.json of `avss "
        "hallucination --probe` (mode probe: the --k best probes), or a "
        "layer_stats.csv (mode avss: the --k lowest AVSS)",
    )
    parser.add_argument(
        "--prone-family",
        help="family in an `avss hallucination` prone_layers.json (if it has several)",
    )
    parser.add_argument(
        "--k",
        type=int,
        help="layer count for --mode random, avss from a CSV, probe from a probe_layers.json",
    )
    parser.add_argument(
        "--mode", choices=MODES, default="eavss", help="ablation mode (default eavss)"
    )
    params = parser.add_mutually_exclusive_group()
    params.add_argument("--lora", action="store_true", help="LoRA on the layers' projections")
    params.add_argument(
        "--full-params", action="store_true", help="train the layers' full parameters (the default)"
    )
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default 32)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (default 1)")
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-5 full, 1e-4 LoRA)")
    parser.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        default=0.5,
        help="weight of the contrastive loss (default 0.5)",
    )
    parser.add_argument("--tau", type=float, default=0.07, help="temperature (default 0.07)")
    parser.add_argument(
        "--loss",
        choices=("infonce", "supcon"),
        default="infonce",
        help="contrastive loss (default infonce)",
    )
    parser.add_argument(
        "--no-in-batch",
        action="store_true",
        help="do not use other questions' positives as negatives",
    )
    parser.add_argument("--projection", action="store_true", help="train through an MLP head g_l")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="questions per micro-batch (default 4)"
    )
    parser.add_argument(
        "--grad-accum", type=int, default=4, help="micro-batches per step (default 4)"
    )
    parser.add_argument(
        "--max-negatives",
        type=int,
        default=DEFAULT_MAX_NEGATIVES,
        help=f"negatives per question (default {DEFAULT_MAX_NEGATIVES})",
    )
    parser.add_argument(
        "--own-negatives",
        type=Path,
        help="JSON list of [question, hallucinated answer] pairs (or objects with "
        "'question' and 'answer') from the model itself",
    )
    parser.add_argument(
        "--no-dataset-negatives",
        action="store_true",
        help="use only --own-negatives (and in-batch ones)",
    )
    parser.add_argument("--bf16", action="store_true", help="autocast the forward pass to bfloat16")
    parser.add_argument(
        "--n-train", type=int, help="training questions (default: all not evaluated)"
    )
    parser.add_argument("--eval-tasks", help="comma-separated tasks (default: the dataset's own)")
    parser.add_argument(
        "--n-eval",
        type=int,
        default=100,
        help="evaluation questions (default 100; ignored with --folds)",
    )
    parser.add_argument(
        "--eval-seed", type=int, default=0, help="evaluation sample seed (default 0)"
    )
    parser.add_argument(
        "--folds",
        type=int,
        help="k-fold protocol: split every question of the evaluation task into "
        "this many folds (avsslib.folds); evaluate fold --fold, train on the rest",
    )
    parser.add_argument("--fold", type=int, help="the evaluated fold, 0..folds-1 (with --folds)")
    parser.add_argument(
        "--fold-seed",
        type=int,
        default=0,
        help="seed of the fold split (default 0; the same in avss hallucination --folds)",
    )
    parser.add_argument(
        "--eval-batch-size", type=int, default=8, help="harness batch size (default 8)"
    )
    parser.add_argument(
        "--kl-texts",
        type=int,
        default=32,
        help="WikiText-2 test paragraphs for KL to the base model (0 = skip; default 32)",
    )
    parser.add_argument(
        "--ppl-windows",
        type=int,
        default=8,
        help="512-token WikiText-2 test windows for perplexity (0 = skip; default 8)",
    )
    parser.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=50,
        help="optimizer steps between checkpoints (0 = none; default 50)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")


def config_from_args(args: argparse.Namespace) -> MitigationConfig:
    """The :class:`~avsslib.mitigation.MitigationConfig` of these options (the record keeps the
    command line exactly as given)."""
    from avsslib.mitigation import MitigationConfig

    return options_config(
        "mitigate",
        MitigationConfig,
        args,
        layers=tuple(parse_list(args.layers, "--layers", int)),
        eval_tasks=tuple(parse_list(args.eval_tasks, "--eval-tasks")),
    )


def run(args: argparse.Namespace) -> int:
    from avsslib.mitigation import run_mitigation

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
