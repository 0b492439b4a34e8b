"""``avss diagnose``: why AVSS ranks layers as it does, from a pruning study's tables.

``avss diagnose --study results/smollm2-135m/avss --out results/smollm2-135m/diagnosis``
reads ``layer_stats.csv`` (and ``layer_stats_faithful.csv``) and writes depth correlations,
near-zero counts with exact Poisson intervals, the clamp's effect and the counting-noise rank
stability (:func:`avsslib.diagnosis.run_diagnosis`). No model is loaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from avsslib.cli.common import command_line
from avsslib.options import named_values

HELP = "diagnose an AVSS ranking: depth trend, near-zero counting noise, the sparsity clamp"
LOCK_OUT = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study",
        required=True,
        type=Path,
        help="a pruning study's directory (with layer_stats.csv)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--fraction", type=float, default=0.25, help="pruned share (default 0.25)")
    parser.add_argument(
        "--n-draws",
        type=int,
        default=2000,
        help="replicate near-zero counts for the rank stability (default 2000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the replicates (default 0)")


def run(args: argparse.Namespace) -> int:
    from avsslib.diagnosis import run_diagnosis

    command = command_line("diagnose", args)
    draws = named_values(args, "fraction", "n_draws", "seed")
    results = run_diagnosis(args.study, args.out, **draws, command=command)
    for mode, r in results.items():
        s = r["summary"]
        st = s["stability"]
        print(
            f"{mode}: Spearman with depth: AVSS {s['spearman_avss_depth']:.2f}, variance "
            f"{s['spearman_variance_depth']:.2f}, RMS {s['spearman_rms_depth']:.2f}; near-zero "
            f"counts {s['near_zero_min']}-{s['near_zero_max']} of {s['elements_per_layer']}; "
            f"clamped {s['clamped_layers']}; noise keeps the pruned set in "
            f"{st['p_set_observed']:.0%} of draws"
        )
    print(
        f"wrote {args.out} (correlations.csv, sparsity.csv, clamp.csv, stability.csv, "
        "summary.json, record.json and its .md)"
    )
    return 0
