"""``avss hallucination``: label the model's answers, then find hallucination-prone layers.

``avss hallucination --model smollm2-135m --datasets nq_open,triviaqa --n 40 --out DIR``
runs :func:`avsslib.hallucination.run_hallucination` (whose docstring maps the files it writes
into ``--out``); the options are the fields of :class:`avsslib.hallucination.HallucinationConfig`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from avsslib.cli.common import (
    add_eps_option,
    config_options,
    options_config,
    parse_list,
)
from avsslib.hallucination import HallucinationConfig, run_hallucination

HELP = "label answers as hallucinated/truthful and find hallucination-prone layers (HSAV/HSS/EAVSS)"
LOCK_OUT = True  # the dispatcher holds the lock of --out while run() writes there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``avss hallucination``: the fields of
    :class:`~avsslib.hallucination.HallucinationConfig`, whose defaults they take."""
    add = config_options(parser, HallucinationConfig)
    add("--datasets", "comma-separated datasets (default %(default)s)")
    add("--n", "questions per dataset, seeded sample (default %(default)s)")
    add("--family", "score families, comma-separated: P, C (default %(default)s)")
    add(
        "--prone-by",
        "rank prone layers by the family's default (P: delta, C: eavss) or by EAVSS alone "
        "(the literal option)",
    )
    add("--positions", "tokens counted in the statistics (default %(default)s)")
    add("--k", "number of prone layers (default ceil(0.25 * layers))")
    add(
        "--calib-fraction",
        "share of each dataset's questions in the calibration part (default %(default)s; the "
        "rest is the evaluation part)",
    )
    add(
        "--min-per-class",
        "fewest hallucinated and truthful calibration answers needed to score a dataset "
        "(default %(default)s)",
    )
    add("--template", "prompt template with {question} (default: avsslib.labels.DEFAULT_TEMPLATE)")
    add(
        "--chat-template",
        "wrap the prompt in the tokenizer's chat template (auto: when it has one)",
    )
    add(
        "--question-guard",
        "NQ/TriviaQA/SciQ: an alias the question contains counts only as an exact answer "
        "(avsslib.labels)",
    )
    add("--max-new-tokens", "answer length limit in tokens (default %(default)s)")
    add("--batch-size", "batch size (default %(default)s)")
    add_eps_option(parser, "near-zero threshold of the sparsity")
    add("--labels-from", "reuse DIR/labels/<dataset>.jsonl instead of generating answers")
    add(
        "--probe",
        "store each answer's mean activation per layer and fit one linear probe per layer "
        "(probe_layers.json; avsslib.probe)",
    )
    add(
        "--folds",
        "also choose layers per fold from the answers outside it (k-fold protocol of avss "
        "mitigate --folds; avsslib.folds)",
    )
    add("--fold-seed", "seed of the fold split (default %(default)s; as avss mitigate's)")


def config_from_args(args: argparse.Namespace) -> HallucinationConfig:
    """The :class:`~avsslib.hallucination.HallucinationConfig` of these options (the record
    keeps the command line exactly as given)."""
    return options_config(
        "hallucination",
        HallucinationConfig,
        args,
        datasets=tuple(parse_list(args.datasets, "--datasets")),
        family=tuple(parse_list(args.family, "--family")),
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    result = run_hallucination(config)
    out: Path = result.out
    summary_df, prone, sparsity = result.summary, result.prone, result.sparsity
    probes, fold_prone = result.probes, result.fold_prone
    for dataset, why in result.skipped.items():
        print(f"{dataset}: skipped, {why}")
    print(summary_df.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    for dataset, fams in prone.items():
        for family, entry in fams.items():
            print(f"{dataset:>12} {family} (by {entry['by']}, k={entry['k']}): {entry['layers']}")
    for dataset, note in sparsity.items():
        if note["degenerate"]:
            print(
                f"{dataset}: warning: no near-zero element at eps={config.eps:g} in "
                f"{len(note['clamped_h'])} (hallucinated) / {len(note['clamped_t'])} (truthful) "
                f"of {note['n_layers']} layers; HSS and EAVSS there reflect the 1e-12 clamp. "
                "Use a larger --eps, --positions all or a larger --n."
            )
    for dataset, entry in probes.items():
        top = entry["ranking"][:5]
        print(
            f"{dataset:>12} probe (2-fold CV accuracy, majority {entry['majority_rate']:.3f}): "
            + ", ".join(
                f"layer {i} {entry['accuracy'][i]:.3f} [{entry['ci_low'][i]:.3f}, "
                f"{entry['ci_high'][i]:.3f}]"
                for i in top
            )
        )
    for dataset, fams in fold_prone.items():
        for family, entries in fams.items():
            print(f"{dataset:>12} {family} per fold: {[e['layers'] for e in entries]}")
    print(
        f"wrote {out}/labels, profiles, figures, label_summary.csv, splits.json, "
        "prone_layers.json, record.json"
        + (", features, probe, probe_layers.json" if config.probe else "")
    )
    return 0
