"""``avss reproduce``: the paper-scale pipeline of one or more models, resumable
(:mod:`avsslib.reproduce`).

``avss reproduce --models smollm2-135m,qwen2.5-coder-1.5b --scale full --results results``
runs, for each model, the AVSS study, the hallucination-prone layers and the contrastive
mitigation with its ablations (modes ``eavss``, ``probe``, ``random``, ``avss``, ``full``) over seeds, then
writes the summary tables the book's paper-scale chapter reads. Mode ``probe`` (layers whose
linear probe best separates hallucinated from truthful answers) adds a ``probe/`` stage;
``--folds 2`` runs the 2-fold protocol on every question instead of a held-out sample. Rerun the same command after an
interruption: finished stages are skipped. ``--stages``, ``--seeds``, ``--modes`` and
``--mitigation-datasets`` narrow a run (e.g. to fit a GPU lease); ``--scale ci`` is a CPU smoke
run of minutes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from avsslib.cli.common import add_device_options, parse_list, resolve_device

HELP = "run (or resume) the whole pipeline of the papers on one or more models at a chosen scale"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avsslib.reproduce import SCALES

    parser.add_argument(
        "--models",
        default="smollm2-135m",
        help="comma-separated zoo names, directories or hub ids (default smollm2-135m)",
    )
    parser.add_argument(
        "--scale",
        choices=tuple(SCALES),
        default="full",
        help="sizes: ci (CPU smoke), book, full (GPU) (default full)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help="results directory; each model writes results/<model>/ (default results)",
    )
    parser.add_argument(
        "--stages",
        default="study,hallucination,mitigation",
        help="comma-separated stages (default all: study,hallucination,mitigation)",
    )
    parser.add_argument(
        "--seeds", help="comma-separated mitigation seeds (default: the scale's, 0,1,2)"
    )
    parser.add_argument(
        "--modes", help="comma-separated mitigation modes (default eavss,probe,random,avss,full)"
    )
    parser.add_argument("--mitigation-datasets", help="comma-separated datasets to mitigate on")
    parser.add_argument(
        "--study-args",
        default="",
        help='extra `avss study` options, appended (they win), e.g. "--n-eval 300"',
    )
    parser.add_argument("--hallucination-n", type=int, help="answers labelled per dataset")
    parser.add_argument("--n-train", type=int, help="mitigation training questions")
    parser.add_argument("--n-eval", type=int, help="mitigation evaluation questions")
    parser.add_argument(
        "--folds",
        type=int,
        help="k-fold protocol (avsslib.folds): label every question, choose layers "
        "per fold, evaluate every question once (mitigation-<K>fold/)",
    )
    add_device_options(parser)
    parser.add_argument(
        "--drop-weights",
        action="store_true",
        help="delete each mitigation run's trained weights and checkpoint once it "
        "is evaluated (metrics and records stay; saves GBs on large models)",
    )
    parser.add_argument("--quiet", action="store_true", help="no stage progress lines")


def study_options(text: str) -> dict[str, Any]:
    """``--study-args`` (``avss study`` options) as :class:`~avsslib.study_config.StudyConfig`
    field values: ``"--n-eval 300 --quick"`` -> ``{"n_eval": 300, "quick": True}``."""
    import shlex

    from avsslib.cli import study
    from avsslib.errors import ConfigError

    parser = argparse.ArgumentParser(prog="avss study", add_help=False)
    study.add_arguments(parser)
    tokens = shlex.split(text)
    given = []
    for token in tokens:
        if token.startswith("--"):
            action = parser._option_string_actions.get(token.split("=")[0])
            if action is None or action.dest in ("out", "model", "device", "dtype"):
                raise ConfigError(
                    f"--study-args: {token!r} is not an option of avss study that a stage "
                    "may set (--model, --out, --device and --dtype are the driver's)."
                )
            given.append(action.dest)
    try:
        args = parser.parse_args(["--out", "unused", *tokens])
    except SystemExit:
        raise ConfigError(f"--study-args {text!r}: not valid avss study options.") from None
    config = study.config_from_args(args)
    return {dest: getattr(config, dest) for dest in dict.fromkeys(given)}


def run(args: argparse.Namespace) -> int:
    from avsslib.errors import ConfigError
    from avsslib.reproduce import MODES, reproduce

    overrides: dict = {}
    if args.seeds:
        seeds = parse_list(args.seeds, "--seeds", int)
        if any(s < 0 for s in seeds):
            raise ConfigError(f"--seeds {args.seeds!r}: seeds must be >= 0.")
        overrides["seeds"] = tuple(seeds)
    if args.modes:
        modes = parse_list(args.modes, "--modes")
        if bad := [m for m in modes if m not in MODES]:
            raise ConfigError(f"--modes: unknown {bad}; choose among {', '.join(MODES)}.")
        overrides["modes"] = tuple(modes)
    if args.mitigation_datasets:
        overrides["mitigation_datasets"] = tuple(
            parse_list(args.mitigation_datasets, "--mitigation-datasets")
        )
    if args.study_args:
        from avsslib.reproduce import SCALES

        overrides["study"] = {**SCALES[args.scale].study, **study_options(args.study_args)}
    for name in ("hallucination_n", "n_train", "n_eval"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value}: must be >= 1.")
            overrides[name] = value
    if args.folds is not None:
        if args.folds < 2:
            raise ConfigError(f"--folds {args.folds}: the k-fold protocol needs at least 2 folds.")
        overrides["folds"] = args.folds
    if args.drop_weights:
        overrides["keep_weights"] = False
    models = parse_list(args.models, "--models")
    if not models:
        raise ConfigError("--models is empty: name at least one model.")
    device = resolve_device(args.device)
    for model in models:
        reproduce(
            model,
            args.results,
            args.scale,
            device=device,
            dtype=args.dtype,
            stages=tuple(parse_list(args.stages, "--stages")),
            overrides=overrides,
            progress=not args.quiet,
        )
    print(f"results in {args.results}/ ({', '.join(models)})")
    return 0
