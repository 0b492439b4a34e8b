"""``avss prune``: remove the least important layers and save a loadable model directory.

``avss prune --model smollm2-135m --score avss --rule count --fraction 0.25 --out MODEL_DIR``
scores the layers on a calibration set (the options of ``avss score``), or reads the scores
from a table written by ``avss score`` / ``avss study`` (``--from-scores DIR/layer_stats.csv``),
or takes ``--layers 3,7,9`` as given; deletes the chosen blocks
(:func:`avsslib.prune.prune_layers_`) and writes into ``--out``:

* the model and tokenizer (``save_pretrained``; ``avss eval --model MODEL_DIR`` and
  ``avsslib.models.load_model(MODEL_DIR)`` load it);
* ``selection.json``: score, rule, fraction, the removed original layer indices, the kept ones
  in their new order, and where the scores came from;
* ``record.json`` and ``record.md``: the run record and its result card.

The directory is built under a temporary name next to ``--out`` and renamed when complete, so
an interrupted run never leaves a half-written model; an existing ``--out`` is replaced only
with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

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
from avsslib.errors import ConfigError
from avsslib.selection import RULES

HELP = "prune the least important layers (AVSS or a baseline) and save the model directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, out_help="output model directory")
    parser.add_argument(
        "--score", default="avss", help="score that ranks the layers (default avss)"
    )
    parser.add_argument(
        "--rule", choices=RULES, default="count", help="selection rule (default count)"
    )
    parser.add_argument("--fraction", type=float, default=0.25, help="pruned share (default 0.25)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--from-scores",
        type=Path,
        help="layer_stats.csv of `avss score` or `avss study` (else: score now)",
    )
    source.add_argument("--layers", help="comma-separated layer indices to remove, as given")
    add_calibration_options(parser)
    parser.add_argument(
        "--faithful",
        action="store_true",
        help="score with official-script statistics (when scoring now)",
    )
    add_eps_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _choose_layers(
    args: argparse.Namespace, model: Any, tokenizer: Any, n_layers: int
) -> tuple[list[int], dict, dict[str, str]]:
    """The layers to prune: given by ``--layers``, or selected by ``--score`` from a scores
    table (``--from-scores``) or from statistics of a calibration set; with where they came
    from (for ``selection.json``) and the hashes of the data files read."""
    from avsslib.fs import file_sha256
    from avsslib.selection import select_layers
    from avsslib.study import read_layer_table

    data_files: dict[str, str] = {}
    if args.layers is not None:
        layers = sorted(parse_list(args.layers, "--layers", int))
        source: dict = {"layers": "given on the command line"}
    else:
        if args.from_scores is not None:
            path = args.from_scores
            if not path.is_file():
                raise ConfigError(
                    f"--from-scores {path}: no such file; pass the layer_stats.csv "
                    "written by `avss score` or `avss study`."
                )
            table = read_layer_table(path)
            source = {"from_scores": str(path), "sha256": file_sha256(path)}
        else:
            batches, calib = calibration_from_args(tokenizer, args, faithful=args.faithful)
            _, table = score_layers(model, batches, args, [args.score])
            source = {"calibration": calib, "faithful": args.faithful, "eps": args.eps}
            data_files = calib["data_files"]
        if args.score not in table:
            raise ConfigError(
                f"score {args.score!r} is not a column of the scores table "
                f"({', '.join(c for c in table.columns if not c.startswith('rank_'))})."
            )
        if len(table) != n_layers:
            raise ConfigError(
                f"the scores table has {len(table)} layers but {args.model} has "
                f"{n_layers}: it was computed for another model."
            )
        layers = select_layers(
            table[args.score].to_numpy(), args.fraction, args.rule, score=args.score
        )
    return layers, source, data_files


def _run(args: argparse.Namespace) -> int:

    from avsslib.arch import blocks
    from avsslib.fs import replace_directory, write_json_atomic
    from avsslib.prune import prune_layers_
    from avsslib.report import RunRecord, save_record

    check_numbers(args)
    out: Path = args.out
    if out.exists() and not args.overwrite:
        raise ConfigError(
            f"--out {out} already exists; pass --overwrite to replace it or choose "
            "another directory."
        )
    device = resolve_device(args.device)
    model, tokenizer, load_s = load_cli_model(args, device)
    n_layers = len(blocks(model))
    t0 = time.perf_counter()
    layers, source, data_files = _choose_layers(args, model, tokenizer, n_layers)
    select_s = time.perf_counter() - t0
    config = {**run_options(args), "device": device}
    record = RunRecord.start(
        command_line("prune", args), config, args.seed, model=model, data_files=data_files
    )
    prune_layers_(model, layers)
    kept = [i for i in range(n_layers) if i not in set(layers)]
    given = args.layers is not None
    selection = {
        "model": args.model,
        "score": None if given else args.score,
        "rule": None if given else args.rule,
        "fraction": None if given else args.fraction,
        "n_layers_before": n_layers,
        "n_layers_after": len(kept),
        "pruned_layers": layers,
        "kept_layers": kept,
        "source": source,
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        write_json_atomic(work / "selection.json", selection)
        record.finish({"selection": selection}, load_model_s=load_s, select_s=select_s)
        record.model = {
            **record.model,
            "pruned": {"num_layers": len(kept), "pruned_layers": layers},
        }
        save_record(record, work / "record.json")
        replace_directory(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    how = "as given" if given else f"{args.score}, rule {args.rule}, fraction {args.fraction}"
    print(f"pruned layers {layers} of {n_layers} ({how}); {len(kept)} blocks left")
    print(f"wrote {out} (model, tokenizer, selection.json, record.json, record.md)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the command holding a lock next to ``--out`` (the directory itself is swapped in
    whole, so the lock file is ``.<name>.avss.lock`` beside it). What a killed earlier run left
    is tidied first: a previous model directory moved aside but not replaced is put back, and
    half-built temporary directories are removed."""
    from avsslib.fs import results_lock

    out: Path = args.out
    with results_lock(out, lock_file=out.parent / f".{out.name}.avss.lock"):
        for kind in ("stale", "tmp"):
            for left in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
                if not (left.is_dir() and left.name.rsplit("-", 1)[-1].isdigit()):
                    continue
                if kind == "stale" and not out.exists():
                    os.rename(left, out)  # killed between the two renames of the swap
                else:
                    shutil.rmtree(left, ignore_errors=True)
        return _run(args)
