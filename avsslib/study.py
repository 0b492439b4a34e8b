"""The AVSS pruning study: statistics, scores, selections, pruning, evaluation, retention,
agreement, figures and a run record, in one resumable call,
``pruning_study(StudyConfig(out=DIR, model=...)) -> StudyResult`` (the command ``avss study``,
whose options are the fields of :class:`~avsslib.study_config.StudyConfig`).

It writes, under ``config.out``::

    layer_stats.csv            fixed-mode statistics, scores and ranks, one row per layer
    layer_stats_faithful.csv   the same in faithful mode (pads counted, dropout on, batch means)
    batch_stats.csv            per-batch variance V and sparsity S (both modes)
    layer_stats.json           calibration descriptions, the statistics key, AVSS per
                               calibration sample (stability), clamped layers
    selections.json            layers chosen by every rule and baseline (fixed and faithful
                               statistics) at ``fraction``, and at every sweep fraction
    eval/<config>.json         one per configuration: pruned layers, EvalResult, config hash
    retention.csv              per configuration x task x metric: original, pruned, retention, CI
    sweep.csv                  retention against the pruned fraction, per score (count rule)
    agreement.csv              rank correlations between scores, calibration sets, seeds, modes
    record.json, record.md     the run record and its result card (record.partial.json when
                               written with ``no_new_evals`` and configurations missing)
    figures/layer_profile.png, figures/retention.png, figures/sweep.png

It is **resumable**: a configuration whose ``eval/<config>.json`` holds the same config hash
(model weights, pruned layers, tasks, sample sizes, evaluation protocol, versions) is read back,
not evaluated again; configurations that prune the same layers share one evaluation; statistics
are recomputed only when their key (model, calibration data, scores, eps, seed) changed.

Configurations (:mod:`avsslib.study_eval`; names are the file names under ``eval/``):
``original``; ``<score>-<rule>`` for the fixed-mode selections (``avss-count``, ``avss-mass``,
``avss-code_bug``, ``block_influence-count``, ...) and ``faithful-avss-<rule>`` for the
faithful-mode AVSS selections (kind ``main``); ``sweep-<score>-<fraction>`` for sweep points
(kind ``sweep``, count rule).

The building blocks notebooks use one by one (:func:`layer_scores`, :func:`selections`,
:func:`score_agreement`, :func:`load_study`, ...) live in :mod:`avsslib.study_tables`, the
configuration and result types in :mod:`avsslib.study_config`; all are importable from here.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from avsslib import study_config
from avsslib.errors import ConfigError
from avsslib.options import named_values
from avsslib.selection import select_layers
from avsslib.study_config import *  # noqa: F403 (every name of study_config is importable here)
from avsslib.study_config import STUDY_FORMAT, StudyConfig, config_from_keywords
from avsslib.study_eval import PrunedConfig, configurations, evaluate_configs
from avsslib.study_report import (
    StudyResult,
    agreement_table,
    finish_record,
    write_figures,
    write_tables,
)
from avsslib.study_steps import StudyRun, calibration_and_record, statistics
from avsslib.study_tables import (
    PRIMARY_METRICS,
    batch_table,
    layer_scores,
    load_study,
    primary_metric_rows,
    rank_layers,
    read_layer_table,
    retention_table,
    save_layer_table,
    score_agreement,
    score_names,
    selections,
)

__all__ = [
    *study_config.__all__,
    "PRIMARY_METRICS",
    "StudyResult",
    "batch_table",
    "layer_scores",
    "load_study",
    "primary_metric_rows",
    "pruning_study",
    "rank_layers",
    "read_layer_table",
    "retention_table",
    "save_layer_table",
    "score_agreement",
    "score_names",
    "selections",
]


# ---------------------------------------------------------------------- the study
def pruning_study(
    config: StudyConfig | str | None = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
    **legacy: Any,
) -> StudyResult:
    """Run the AVSS pruning study of ``config`` and write its result files (module docstring)
    into ``config.out``; an existing study there is resumed.

    ``model``/``tokenizer``: an already loaded model to use instead of loading ``config.model``
    (it is left unpruned). Steps, each its own helper below: load the model and calibration
    data and start the run record, statistics and scores (cached by key), selections and
    configurations, evaluation (resumable), the tables, the figures, the record.

    The former keyword form ``pruning_study(model_name, out_dir=..., tasks=..., ...)`` still
    works with a ``DeprecationWarning`` (:func:`config_from_keywords` maps it)."""
    if not isinstance(config, StudyConfig):
        warnings.warn(
            "pruning_study(model_name, out_dir=..., ...) is deprecated: pass a StudyConfig, "
            "e.g. pruning_study(StudyConfig(out=DIR, model=NAME, n_eval=100)).",
            DeprecationWarning,
            stacklevel=2,
        )
        loaded = legacy.pop("loaded", None)
        if loaded is not None:
            model, tokenizer = loaded
        config = config_from_keywords(config, **legacy)
    elif legacy:
        raise ConfigError(
            f"pruning_study(config, ...): unexpected keyword(s) {sorted(legacy)}; "
            "set them as fields of the StudyConfig."
        )
    t_start = time.perf_counter()
    run = _start(config.validate(), model, tokenizer)
    fixed, faithful, stability, stats_status, stats_s = statistics(run)
    chosen, configs = _selections(run, fixed, faithful)
    results, status, eval_s = _evaluate(run, configs)
    if run.cfg.no_new_evals:  # tables of what a partial (e.g. interrupted) run evaluated
        configs = {k: v for k, v in configs.items() if k in results}
    agreement = agreement_table(
        fixed, faithful, stability, run.agreement, run.cfg.agreement_seeds, run.scores
    )
    assert run.cfg.n_boot is not None
    tables = write_tables(
        run.out, results, configs, agreement, n_boot=run.cfg.n_boot, seed=run.cfg.seed
    )
    pruned = chosen["fixed"].get("avss/count", [])
    write_figures(run.out / "figures", fixed, pruned, configs, *tables[:2])
    timing = {
        "load_model_s": run.load_s,
        "stats_s": stats_s,
        "stats": stats_status,
        "eval_s": eval_s,
        "status": status,
    }
    finish_record(run.record, run.out, tables[0], configs, chosen, fixed, timing, t_start)
    return StudyResult(
        out=run.out,
        fraction=run.cfg.fraction,
        layer_stats=fixed,
        layer_stats_faithful=faithful,
        selections=chosen,
        configs={k: v.layers for k, v in configs.items()},
        kinds={k: v.kind for k, v in configs.items()},
        retention=tables[0],
        sweep=tables[1],
        agreement=tables[2],
        status=status,
        timing={**timing, "total_s": run.record.timing["total_s"]},
        record=run.record.to_dict(),
    )


def _start(cfg: StudyConfig, model: Any, tokenizer: Any) -> StudyRun:
    """Seed, load the model (unless given), check the fractions against its depth, build the
    calibration batches (fixed and faithful) and start the run record."""
    from avsslib.arch import blocks, require_causal_lm
    from avsslib.models import default_device, load_model
    from avsslib.seeding import set_seed

    set_seed(cfg.seed)
    t0 = time.perf_counter()
    if model is None:
        model, tokenizer = load_model(
            cfg.model,
            dtype=getattr(torch, cfg.dtype),
            device=default_device(cfg.device),
            trust_remote_code=cfg.trust_remote_code,
        )
    require_causal_lm(model, "the pruning study (it evaluates the pruned models)")
    load_s = time.perf_counter() - t0
    n_layers = len(blocks(model))
    assert cfg.sweep_fractions is not None
    for f in [cfg.fraction, *cfg.sweep_fractions]:
        if round(f * n_layers) >= n_layers:
            raise ConfigError(
                f"fraction {f} of {n_layers} layers prunes every layer; use a smaller one."
            )
    spec = cfg.calib_spec()
    run = StudyRun(
        cfg=cfg,
        out=Path(cfg.out),
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        agreement=[{**spec, **c} for c in cfg.agreement_specs()],
        n_layers=n_layers,
        load_s=load_s,
    )
    calibration_and_record(run)
    return run


def _selections(
    run: StudyRun, fixed: pd.DataFrame, faithful: pd.DataFrame
) -> tuple[dict[str, dict[str, list[int]]], dict[str, PrunedConfig]]:
    """Every rule's layers in both modes and at every sweep fraction (``selections.json``),
    and the configurations to evaluate."""
    from avsslib.fs import write_json_atomic

    cfg = run.cfg
    assert cfg.sweep_fractions is not None
    chosen = {
        "fixed": selections(fixed, cfg.fraction, run.scores),
        "faithful": selections(faithful, cfg.fraction, run.faithful_scores),
    }
    sweep_layers = {
        s: {f: select_layers(fixed[s].to_numpy(), f, "count") for f in cfg.sweep_fractions}
        for s in cfg.sweep_scores
    }
    write_json_atomic(
        run.out / "selections.json",
        {
            "fraction": cfg.fraction,
            "n_layers": run.n_layers,
            "k_count": round(cfg.fraction * run.n_layers),
            **chosen,
            "sweep": {s: {f"{f:g}": v for f, v in d.items()} for s, d in sweep_layers.items()},
        },
    )
    configs = configurations(chosen, sweep_layers, cfg.fraction, not cfg.no_faithful_eval)
    return chosen, configs


def _evaluate(
    run: StudyRun, configs: Mapping[str, PrunedConfig]
) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """Evaluate every configuration resumably (:func:`avsslib.study_eval.evaluate_configs`)."""
    cfg = run.cfg
    assert cfg.tasks is not None
    same = ("seed", "batch_size", "num_fewshot", "max_length", "ppl_window")
    eval_kwargs = {
        "n": cfg.n_eval,
        **named_values(cfg, *same),
        "ppl_stride": cfg.ppl_stride if cfg.ppl_stride is not None else cfg.ppl_window,
    }
    protocol = {
        "format": STUDY_FORMAT,
        "model": run.identity(),
        "versions": run.versions(),
        "tasks": list(cfg.tasks),
        **eval_kwargs,
    }
    results, status, eval_s = evaluate_configs(
        run.model,
        run.tokenizer,
        configs,
        cfg.tasks,
        run.out / "eval",
        protocol,
        eval_kwargs,
        run.progress,
        not cfg.no_new_evals,
    )
    if "original" not in results:
        raise ConfigError(
            f"{run.out}: the unpruned model has not been evaluated yet, so there is "
            "no retention to tabulate; run the study without "
            "no_new_evals (--no-new-evals) first."
        )
    return results, status, eval_s
