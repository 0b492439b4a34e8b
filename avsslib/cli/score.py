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

This module also holds the options and helpers that ``avss prune`` and ``avss study`` share.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from avsslib.errors import ConfigError
from avsslib.study import DEFAULT_SCORES, DTYPES

HELP = "per-layer activation statistics and importance scores (AVSS and baselines) of a model"
LOCK_OUT = True    # the dispatcher holds the lock of --out while run() writes there


# ---------------------------------------------------------------------- shared helpers
def add_common_arguments(parser: argparse.ArgumentParser, *, seed: int = 0) -> None:
    """``--seed``, ``--device`` and ``--dtype``, as every model command takes them."""
    parser.add_argument("--seed", type=int, default=seed, help=f"global seed (default {seed})")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="model dtype (default float32; faithful statistics need float32)")
    add_trust_remote_code_argument(parser)


def add_trust_remote_code_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-remote-code``: off by default, so loading a model directory or hub id never
    runs Python code shipped with it."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow running the Python code of a model that ships its own "
                             "(auto_map in config.json); only for models you trust")


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """The calibration set: ``--calib``, ``--split``, ``--n``, ``--seq-len``, ``--batch-size``,
    ``--calib-seed``."""
    parser.add_argument("--calib", default="wikitext2",
                        help="calibration dataset (wikitext2, sst2, nq_open, triviaqa, ...; default wikitext2)")
    parser.add_argument("--split", default="validation", help="its split (default validation)")
    parser.add_argument("--n", type=int, default=64, help="calibration texts (default 64)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per text (default 128)")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per batch (default 8)")
    parser.add_argument("--calib-seed", type=int, default=0, help="seed of the text sample (default 0)")


def load_cli_model(args: argparse.Namespace, device: str) -> tuple[Any, Any, float]:
    """Seed everything (``--seed``), then load ``--model`` in ``--dtype`` on ``device``, honouring
    ``--trust-remote-code``; returns ``(model, tokenizer, load seconds)``."""
    import time

    import torch

    from avsslib.models import load_model
    from avsslib.seeding import set_seed

    set_seed(args.seed)
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=device,
                                  trust_remote_code=getattr(args, "trust_remote_code", False))
    return model, tokenizer, time.perf_counter() - t0


def parse_list(value: str | None, option: str, kind: type = str) -> list[Any]:
    """A comma-separated option value as a list of ``kind``; ``ConfigError`` names the option."""
    if value is None:
        return []
    try:
        return [kind(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {value!r}: expected a comma-separated list of "
                          f"{kind.__name__} values.") from None


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse impossible option values before any model or data is loaded; ``ConfigError``
    names the option. Checks the options this namespace has: ``--fraction`` in (0, 1),
    ``--eps`` > 0, ``--n``, ``--seq-len`` and ``--batch-size`` >= 1, ``--seed`` and
    ``--calib-seed`` >= 0."""
    import math

    def bad(option: str, value: Any, rule: str) -> ConfigError:
        return ConfigError(f"{option} {value}: {rule}.")

    fraction = getattr(args, "fraction", None)
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise bad("--fraction", fraction, "the pruned share must lie strictly between 0 and 1, "
                                          "e.g. 0.25")
    eps = getattr(args, "eps", None)
    if eps is not None and not (math.isfinite(eps) and eps > 0):
        raise bad("--eps", eps, "the near-zero threshold must be a positive number, e.g. 1e-5")
    for name in ("n", "seq_len", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise bad(f"--{name.replace('_', '-')}", value, "must be a positive integer")
    for name in ("seed", "calib_seed"):
        value = getattr(args, name, None)
        if value is not None and not 0 <= value < 2**32:
            raise bad(f"--{name.replace('_', '-')}", value,
                      "a seed must be an integer from 0 to 2**32 - 1")


def resolve_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def command_line(name: str, args: argparse.Namespace) -> str:
    """The command line that repeats this run, every option explicit (for run records)."""
    argv = ["avss", name]
    for key, value in vars(args).items():
        if key.startswith("_") or key in ("command", "debug") or value is None or value is False:
            continue
        flag = f"--{key.replace('_', '-')}"
        argv += [flag] if value is True else [flag, str(value)]
    return shlex.join(argv)


def calibration_from_args(tokenizer: Any, args: argparse.Namespace, *, faithful: bool):
    """``calibration_set`` from the calibration options (padded to ``--seq-len`` when faithful)."""
    from avsslib.calibration import calibration_set

    return calibration_set(tokenizer, args.calib, args.split, n=args.n, seq_len=args.seq_len,
                           batch_size=args.batch_size, seed=args.calib_seed,
                           pad_to_max_length=faithful)


# ---------------------------------------------------------------------- the command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="zoo name, local directory or hub id (default smollm2-135m)")
    add_calibration_arguments(parser)
    parser.add_argument("--faithful", action="store_true",
                        help="official-script statistics: pads counted, dropout on, batch means")
    parser.add_argument("--scores", default=",".join(DEFAULT_SCORES),
                        help=f"comma-separated scores (default {','.join(DEFAULT_SCORES)})")
    parser.add_argument("--eps", type=float, default=1e-5, help="near-zero threshold (default 1e-5)")
    parser.add_argument("--fraction", type=float, default=0.25,
                        help="pruned share for the selections listed in layer_stats.json (default 0.25)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from avsslib import plots
    from avsslib.report import RunRecord, save_record, write_csv_atomic, write_json_atomic
    from avsslib.study import batch_table, layer_scores, save_layer_table, selections

    check_numbers(args)
    scores = parse_list(args.scores, "--scores")
    device = resolve_device(args.device)
    out: Path = args.out
    model, tokenizer, load_s = load_cli_model(args, device)
    batches, calib = calibration_from_args(tokenizer, args, faithful=args.faithful)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "debug")}
    config.update(out=str(out), device=device, scores=scores)
    record = RunRecord.start(command_line("score", args), config, args.seed, model=model,
                             data_files=calib["data_files"])
    t0 = time.perf_counter()
    stats, table = layer_scores(model, batches, scores=scores, faithful=args.faithful,
                                seed=args.seed, eps=args.eps, progress=not args.quiet)
    stats_s = time.perf_counter() - t0
    table = save_layer_table(out / "layer_stats.csv", table)
    write_csv_atomic(out / "batch_stats.csv",
                     batch_table(stats, "faithful" if args.faithful else "fixed"))
    chosen = selections(table, args.fraction)
    clamped = table.index[table["clamped"]].tolist()
    write_json_atomic(out / "layer_stats.json", {
        "model": args.model, "faithful": args.faithful, "eps": args.eps, "scores": scores,
        "calibration": calib, "fraction": args.fraction, "selections": chosen,
        "clamped_layers": clamped,
    })
    if "avss" in table:
        plots.use_style()
        fig = plots.study_layer_profile(table, pruned=chosen.get("avss/count", []))
        plots.save(fig, out / "figures" / "layer_profile.png")
        plt.close(fig)
    record.finish({"selections": chosen, "clamped_layers": clamped, "calibration": calib},
                  load_model_s=load_s, stats_s=stats_s)
    save_record(record, out / "record.json")
    shown = [c for c in ("variance", "sparsity", "near_zero_count", *scores) if c in table]
    print(table[shown].to_string(float_format=lambda x: f"{x:.4g}"))
    for key, layers in chosen.items():
        print(f"{key:>24}: {layers}")
    print(f"wrote {out}/layer_stats.csv, layer_stats.json, batch_stats.csv, record.json, record.md")
    return 0
