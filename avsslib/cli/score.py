"""``avss score``: per-layer activation statistics and importance scores of a model.

``avss score --model smollm2-135m --calib wikitext2 --n 64 --seq-len 128 --out DIR`` writes
into ``--out``:

* ``layer_stats.csv``: one row per layer: variance, sparsity, near-zero and element counts,
  mean, rms, token variance, every score and its rank (:func:`avsslib.study.layer_scores`);
* ``layer_stats.json``: the calibration description, the mode, the layers each rule and
  baseline would prune at ``--fraction`` and the clamped layers;
* ``batch_stats.csv``: per-batch variance V and sparsity S of every layer;
* ``figures/layer_profile.png``: variance, sparsity and AVSS per layer;
* ``record.json`` and ``record.md``: the run record and its result card.

``--faithful`` reproduces the official scripts (pads counted, batches padded to
``--seq-len``, dropout on, per-batch means).

By default only the scores that come from the one statistics pass are computed
(``avsslib.study.FAST_SCORES``); a score that runs the model again (``ppl_removal``) runs when
named in ``--scores``, and the command says before it starts how many forward passes that is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from avsslib.cli.common import (
    add_calibration_options,
    add_eps_option,
    add_model_options,
    calibration_from_args,
    check_numbers,
    command_line,
    load_cli_model,
    parse_list,
    resolve_device,
    run_options,
    score_layers,
)
from avsslib.study import FAST_SCORES

HELP = "per-layer activation statistics and importance scores (AVSS and baselines) of a model"
LOCK_OUT = True  # the dispatcher holds the lock of --out while run() writes there


# ---------------------------------------------------------------------- the command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_calibration_options(parser)
    parser.add_argument(
        "--faithful",
        action="store_true",
        help="official-script statistics: pads counted, dropout on, batch means",
    )
    parser.add_argument(
        "--scores",
        default=",".join(FAST_SCORES),
        help=f"comma-separated scores (default {','.join(FAST_SCORES)}: one "
        "statistics pass; ppl_removal runs the model once more per layer)",
    )
    add_eps_option(parser)
    parser.add_argument(
        "--fraction",
        type=float,
        default=0.25,
        help="pruned share for the selections listed in layer_stats.json (default 0.25)",
    )


def run(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from avsslib import plots
    from avsslib.fs import write_csv_atomic, write_json_atomic
    from avsslib.report import RunRecord, save_record
    from avsslib.study import batch_table, save_layer_table, selections

    check_numbers(args)
    scores = parse_list(args.scores, "--scores")
    device = resolve_device(args.device)
    out: Path = args.out
    model, tokenizer, load_s = load_cli_model(args, device)
    batches, calib = calibration_from_args(tokenizer, args, faithful=args.faithful)
    config = {**run_options(args), "device": device, "scores": scores}
    record = RunRecord.start(
        command_line("score", args), config, args.seed, model=model, data_files=calib["data_files"]
    )
    t0 = time.perf_counter()
    stats, table = score_layers(model, batches, args, scores)
    stats_s = time.perf_counter() - t0
    table = save_layer_table(out / "layer_stats.csv", table)
    write_csv_atomic(
        out / "batch_stats.csv", batch_table(stats, "faithful" if args.faithful else "fixed")
    )
    chosen = selections(table, args.fraction, scores)
    clamped = table.index[table["clamped"]].tolist()
    write_json_atomic(
        out / "layer_stats.json",
        {
            "model": args.model,
            "faithful": args.faithful,
            "eps": args.eps,
            "scores": scores,
            "calibration": calib,
            "fraction": args.fraction,
            "selections": chosen,
            "clamped_layers": clamped,
        },
    )
    if "avss" in table:
        plots.use_style()
        fig = plots.study_layer_profile(table, pruned=chosen.get("avss/count", []))
        plots.save(fig, out / "figures" / "layer_profile.png")
        plt.close(fig)
    record.finish(
        {"selections": chosen, "clamped_layers": clamped, "calibration": calib},
        load_model_s=load_s,
        stats_s=stats_s,
    )
    save_record(record, out / "record.json")
    shown = [c for c in ("variance", "sparsity", "near_zero_count", *scores) if c in table]
    print(table[shown].to_string(float_format=lambda x: f"{x:.4g}"))
    for key, layers in chosen.items():
        print(f"{key:>24}: {layers}")
    print(f"wrote {out}/layer_stats.csv, layer_stats.json, batch_stats.csv, record.json, record.md")
    return 0
