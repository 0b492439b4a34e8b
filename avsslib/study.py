"""The AVSS pruning study: statistics, scores, selections,
pruning, evaluation, retention, agreement, figures and a run record, in one resumable call.

Building blocks (notebooks use them one by one):

* :func:`layer_scores`: fit :class:`avsslib.stats.LayerStats` on calibration batches and put
  every statistic, every score and every score's rank in one table (one row per layer).
* :func:`selections`: the layers each rule and baseline prunes at a fraction
  (``"avss/count"``, ``"avss/mass"``, ``"avss/code_bug"``, ``"block_influence/count"``, ...).
* :func:`score_agreement`: Spearman and Kendall correlations between per-layer scores.

The whole study: :func:`pruning_study` writes, under ``out_dir``::

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
                               written with ``evaluate_missing=False`` and configurations missing)
    figures/layer_profile.png, figures/retention.png, figures/sweep.png

It is **resumable**: a configuration whose ``eval/<config>.json`` holds the same config hash
(model weights, pruned layers, tasks, sample sizes, evaluation protocol, versions) is read back,
not evaluated again; configurations that prune the same layers share one evaluation; statistics
are recomputed only when their key (model, calibration data, scores, eps, seed) changed.
:func:`load_study` reads every table back for notebooks.

Configuration names (file names under ``eval/``): ``original``; ``<score>-<rule>`` for the
fixed-mode selections (``avss-count``, ``avss-mass``, ``avss-code_bug``,
``block_influence-count``, ...); ``faithful-avss-<rule>`` for faithful-mode AVSS selections;
``sweep-<score>-<fraction>`` for sweep points (count rule).
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from avsslib.arch import blocks, require_causal_lm
from avsslib.errors import ConfigError
from avsslib.fs import content_hash, read_cached, read_json
from avsslib.protocol import is_sweep, sweep_config
from avsslib.prune import pruned_view
from avsslib.scores import REGISTRY, avss_values, compute_scores, cumulative, navss
from avsslib.selection import MASS_SCORES, select_all, select_layers
from avsslib.stats import LayerStats

__all__ = [
    "DEFAULT_AGREEMENT_CALIBS",
    "DEFAULT_CALIB",
    "DEFAULT_SCORES",
    "FAST_SCORES",
    "DTYPES",
    "PRIMARY_METRICS",
    "STUDY_FORMAT",
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

STUDY_FORMAT = "avsslib.study/1"
"""Version of the study's file layout and hashing; part of every cache key."""

DEFAULT_SCORES: tuple[str, ...] = (
    "avss",
    "block_influence",
    "angular",
    "ppl_removal",
    "random",
    "tail",
)
"""The scores of the pruning study."""
FAST_SCORES: tuple[str, ...] = tuple(s for s in DEFAULT_SCORES if s != "ppl_removal")
"""The study's scores that come from the one statistics pass (``avss score``'s default):
``ppl_removal`` runs the model again for every layer."""
DEFAULT_CALIB: dict[str, Any] = {
    "name": "wikitext2",
    "split": "validation",
    "n": 64,
    "seq_len": 128,
}
DEFAULT_AGREEMENT_CALIBS: tuple[dict[str, str], ...] = (
    {"name": "wikitext2", "split": "validation"},
    {"name": "sst2", "split": "validation"},  # the official SST2.py calibration set
)
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")

PRIMARY_METRICS: dict[str, str] = {
    "wikitext2_ppl": "token_perplexity",
    "wikitext2_word_ppl": "word_perplexity",
    "sst2": "acc",
    "sciq_mc": "acc",
    "triviaqa_em": "exact_match",
    "nq_open_em": "exact_match",
    "truthfulqa_mc1": "acc",
    "truthfulqa_mc2": "acc",
    "wikiqa": "acc",
}
"""The metric each task is summarised by in figures (every metric is in the CSV files)."""

_CALIB_KEYS = (
    "name",
    "split",
    "n",
    "seq_len",
    "batch_size",
    "seed",
    "min_chars",
    "add_special_tokens",
)


# ---------------------------------------------------------------------- tables
def rank_layers(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Position of each layer in the pruning order: 0 = least important (pruned first).

    Ascending stable sort, so ties go to the earlier layer, exactly as
    :func:`avsslib.selection.select_layers` breaks them; shape ``(n_layers,)``, int64.
    """
    v = np.asarray(values, dtype=np.float64)
    ranks = np.empty(v.size, dtype=np.int64)
    ranks[np.argsort(v, kind="stable")] = np.arange(v.size)
    return ranks


def layer_scores(
    model: torch.nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    scores: Iterable[str] = DEFAULT_SCORES,
    faithful: bool = False,
    seed: int = 0,
    eps: float = 1e-5,
    progress: bool = True,
) -> tuple[LayerStats, pd.DataFrame]:
    """Per-layer statistics and scores of ``model`` on ``batches``.

    Fits ``LayerStats(eps=eps, faithful=faithful)`` (fixed mode: eval, pads masked, pooled;
    faithful: dropout on, pads counted, per-batch means; see :mod:`avsslib.stats`), then every
    score of ``scores`` (names in :data:`avsslib.scores.REGISTRY`; ``random`` uses ``seed``,
    ``ppl_removal`` runs the model once per layer). In faithful mode dropout draws from torch's
    global generator: call :func:`avsslib.seeding.set_seed` first for repeatable numbers.

    Returns ``(stats, table)``; ``table`` is indexed by ``layer`` (0-based) with the columns of
    ``LayerStats.to_frame()`` (variance, sparsity, near-zero and element counts, mean, rms,
    token variance, cosine and angular distance, ...), ``clamped`` (no near-zero element at
    ``eps``: the sparsity was clamped), one column per score (importance, higher = keep),
    ``navss`` and ``avss_cumulative`` (layer order) when AVSS is scored, and ``rank_<score>``
    (:func:`rank_layers`: 0 = pruned first).
    """
    names = list(dict.fromkeys(scores))
    unknown = [s for s in names if s not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown score(s) {unknown}; registered scores: {sorted(REGISTRY)}.")
    stats = LayerStats(eps=eps, faithful=faithful).fit(model, batches, progress=progress)
    table = stats.to_frame()
    table["clamped"] = table["near_zero_count"] == 0
    scored = compute_scores(
        names, stats, model=model, batches=batches, seed=seed, progress=progress
    )
    for name in names:
        table[name] = scored[name].to_numpy()
    if "avss" in names:
        table["navss"] = navss(table["avss"].to_numpy())
        table["avss_cumulative"] = cumulative(table["navss"].to_numpy())
    for name in names:
        table[f"rank_{name}"] = rank_layers(table[name].to_numpy())
    return stats, table


def score_names(table: pd.DataFrame, scores: Iterable[str] | None = None) -> list[str]:
    """The score columns of a :func:`layer_scores` table.

    ``scores``: the scores that were computed (those of them present in ``table``, in that
    order). Without it, every column named like a registered score, in column order; that
    includes a statistic that shares a score's name (``update_variance`` is both).
    """
    if scores is not None:
        return [s for s in dict.fromkeys(scores) if s in table.columns]
    return [c for c in table.columns if c in REGISTRY]


def selections(
    scores_df: pd.DataFrame, fraction: float = 0.25, scores: Iterable[str] | None = None
) -> dict[str, list[int]]:
    """Layers every rule would prune, per score column of ``scores_df`` (or of ``scores``,
    the scores that were computed: see :func:`score_names`).

    Keys ``"<score>/<rule>"``: all three rules (``count``, ``mass``, ``code_bug``) for the
    mass scores (AVSS), the ``count`` rule for the baselines. Values: ascending layer indices
    (positions in ``scores_df``, which must be ordered by layer). See
    :mod:`avsslib.selection` for the rules and the rounding of ``fraction * n_layers``.
    """
    out: dict[str, list[int]] = {}
    for name in score_names(scores_df, scores):
        values = scores_df[name].to_numpy(dtype=np.float64)
        if name in MASS_SCORES:
            for rule, layers in select_all(values, fraction, score=name).items():
                out[f"{name}/{rule}"] = layers
        else:
            out[f"{name}/count"] = select_layers(values, fraction, "count", score=name)
    return out


def score_agreement(
    columns: Mapping[str, Sequence[float] | np.ndarray],
    kind: str = "scores",
    pairs: Iterable[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Spearman rho and Kendall tau (tau-b) between per-layer value vectors.

    ``columns``: name -> values of shape ``(n_layers,)``; ``pairs``: which pairs (default:
    every pair, in order). Returns columns ``kind``, ``a``, ``b``, ``spearman``,
    ``kendall_tau``, ``n_layers`` (NaN where a vector is constant).
    """
    from scipy.stats import kendalltau, spearmanr

    pairs = list(pairs) if pairs is not None else list(itertools.combinations(columns, 2))
    rows = []
    for a, b in pairs:
        x = np.asarray(columns[a], dtype=np.float64)
        y = np.asarray(columns[b], dtype=np.float64)
        constant = np.ptp(x) == 0 or np.ptp(y) == 0
        rho = np.nan if constant else float(spearmanr(x, y).statistic)
        tau = np.nan if constant else float(kendalltau(x, y).statistic)
        rows.append(dict(kind=kind, a=a, b=b, spearman=rho, kendall_tau=tau, n_layers=len(x)))
    return pd.DataFrame(rows, columns=["kind", "a", "b", "spearman", "kendall_tau", "n_layers"])


def save_layer_table(path: str | Path, table: pd.DataFrame) -> pd.DataFrame:
    """Write a per-layer table (indexed by ``layer``) as CSV, atomically, and return it as read
    back (floats rounded to 12 significant digits), so that selections computed from the
    returned table equal those computed later from the file."""
    from avsslib.fs import write_csv_atomic

    write_csv_atomic(path, table.reset_index())
    return read_layer_table(path)


def read_layer_table(path: str | Path) -> pd.DataFrame:
    """A per-layer CSV written by :func:`save_layer_table`, indexed by ``layer``."""
    return pd.read_csv(path, index_col="layer")


def primary_metric_rows(df: pd.DataFrame, metrics: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Rows of a retention table (columns ``task``, ``metric``) for each task's primary metric
    (``metrics``, default :data:`PRIMARY_METRICS`; the task's first metric otherwise)."""
    metrics = {**PRIMARY_METRICS, **(metrics or {})}
    keep = []
    for task, group in df.groupby("task", sort=False):
        wanted = metrics.get(str(task))
        if wanted not in set(group["metric"]):
            wanted = group["metric"].iloc[0]
        keep.append(group[group["metric"] == wanted])
    return pd.concat(keep) if keep else df.iloc[:0]


# ---------------------------------------------------------------------- helpers
def _calib_spec(calib: Mapping[str, Any] | None, batch_size: int) -> dict[str, Any]:
    spec = {**DEFAULT_CALIB, "batch_size": batch_size, "seed": 0, **(calib or {})}
    unknown = sorted(set(spec) - set(_CALIB_KEYS))
    if unknown:
        raise ConfigError(f"calib: unknown key(s) {unknown}; allowed: {', '.join(_CALIB_KEYS)}.")
    return spec


def _calib_kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k in _CALIB_KEYS}


def _keyed(description: Mapping[str, Any]) -> dict[str, Any]:
    """A calibration description without machine-specific fields (the tokenizer's path)."""
    return {k: v for k, v in description.items() if k != "tokenizer"}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _label(spec: Mapping[str, Any]) -> str:
    return f"{spec['name']}/{spec['split']}/seed{spec['seed']}"


# ---------------------------------------------------------------------- the study
def pruning_study(
    model_name: str,
    *,
    out_dir: str | Path,
    tasks: Sequence[str] = ("wikitext2_ppl", "sst2", "sciq_mc", "triviaqa_em"),
    n_eval: int | None = 200,
    calib: Mapping[str, Any] | None = None,
    fraction: float = 0.25,
    scores: Sequence[str] = DEFAULT_SCORES,
    sweep_fractions: Sequence[float] = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5),
    sweep_scores: Sequence[str] = ("avss", "block_influence", "random"),
    agreement_calibs: Sequence[Mapping[str, Any]] = DEFAULT_AGREEMENT_CALIBS,
    agreement_seeds: Sequence[int] = (0, 1),
    evaluate_faithful: bool = True,
    evaluate_missing: bool = True,
    seed: int = 42,
    eps: float = 1e-5,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 8,
    max_length: int | None = 2048,
    ppl_window: int = 512,
    ppl_stride: int = 512,
    num_fewshot: int | None = None,
    n_boot: int = 1000,
    progress: bool = True,
    command: str | None = None,
    loaded: tuple[Any, Any] | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Run the AVSS pruning study on one model and write its result files (module docstring).

    Args:
        model_name: zoo name, local directory or hub id (:func:`avsslib.models.load_model`).
        out_dir: output directory (created; an existing study there is resumed).
        tasks, n_eval: evaluation tasks (:data:`avsslib.evaluate.TASKS`) and examples per task
            (windows for ``wikitext2_ppl``), sampled with ``seed``.
        calib: calibration set, keys ``name``, ``split``, ``n``, ``seq_len`` and optionally
            ``batch_size`` (default ``batch_size``), ``seed`` (sample seed, default 0),
            ``min_chars``, ``add_special_tokens`` (:func:`avsslib.calibration.calibration_set`);
            defaults :data:`DEFAULT_CALIB`. Faithful statistics use the same texts padded to
            ``seq_len`` (``pad_to_max_length=True``).
        fraction: the pruned share of the main comparison (count rule: ``round(fraction * M)``
            layers).
        scores: scores computed in fixed mode (faithful mode computes them all but
            ``ppl_removal``, which does not depend on the statistics).
        sweep_fractions, sweep_scores: the retention-vs-fraction sweep (count rule).
        agreement_calibs, agreement_seeds: AVSS is also fitted on each calibration set (dicts
            with ``name``, ``split``; the other keys from ``calib``) with each sample seed, for
            the stability rows of ``agreement.csv``.
        evaluate_faithful: also evaluate the faithful-mode AVSS selections.
        seed: global seed (:func:`avsslib.seeding.set_seed`), evaluation sample, ``random``
            score and bootstrap seed.
        eps: near-zero threshold of the sparsity.
        device, dtype: where and in which precision the model runs (``float32``,
            ``bfloat16``, ``float16``; faithful statistics should stay in float32).
        batch_size, max_length, ppl_window, ppl_stride, num_fewshot: evaluation protocol
            (:func:`avsslib.evaluate.evaluate`).
        n_boot: bootstrap resamples of the retention intervals.
        progress: show progress bars.
        command: the command line recorded in ``record.json`` (default: this call).
        loaded: an already loaded ``(model, tokenizer)`` to use instead of loading
            ``model_name`` (it is left unpruned).
        trust_remote_code: let ``load_model`` run Python code shipped with the model (off:
            a model directory or hub id never executes code from it).

    Returns a dict with ``out_dir``, ``layer_stats``, ``layer_stats_faithful`` (DataFrames),
    ``selections`` (``{"fixed": ..., "faithful": ...}``), ``configs`` (name -> pruned layers),
    ``retention``, ``sweep``, ``agreement`` (DataFrames), ``status`` (name -> ``evaluated``,
    ``cached`` or ``reused``), ``timing`` and ``record`` (the run record as a dict).
    """
    import avsslib.evaluate as ev
    from avsslib.calibration import calibration_set
    from avsslib.data import data_file_hashes
    from avsslib.fs import write_csv_atomic, write_json_atomic
    from avsslib.models import load_model
    from avsslib.report import RunRecord, save_record
    from avsslib.seeding import set_seed

    t_start = time.perf_counter()
    out = Path(out_dir)
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in ev.TASKS]
    if unknown or not tasks:
        raise ConfigError(
            f"tasks: unknown task(s) {unknown or '(none given)'}; known: {', '.join(ev.TASKS)}."
        )
    if dtype not in DTYPES:
        raise ConfigError(f"dtype = {dtype!r}: choose one of {DTYPES}.")
    scores = list(dict.fromkeys(scores))
    missing = [s for s in sweep_scores if s not in scores]
    if missing:
        raise ConfigError(f"sweep_scores {missing} are not among the computed scores {scores}.")
    for f in [fraction, *sweep_fractions]:
        if not 0.0 < f < 1.0:
            raise ConfigError(
                f"fraction {f}: every pruned fraction must lie strictly between 0 and 1."
            )
    spec = _calib_spec(calib, batch_size)
    agreement = [{**spec, **dict(c)} for c in agreement_calibs]

    # ------------------------------------------------------------ model and data
    set_seed(seed)
    t0 = time.perf_counter()
    if loaded is not None:
        model, tokenizer = loaded
    else:
        model, tokenizer = load_model(
            model_name,
            dtype=getattr(torch, dtype),
            device=device,
            trust_remote_code=trust_remote_code,
        )
    require_causal_lm(model, "the pruning study (it evaluates the pruned models)")
    load_s = time.perf_counter() - t0
    n_layers = len(blocks(model))
    for f in [fraction, *sweep_fractions]:
        if round(f * n_layers) >= n_layers:
            raise ConfigError(
                f"fraction {f} of {n_layers} layers prunes every layer; use a smaller one."
            )
    batches, calib_desc = calibration_set(tokenizer, **_calib_kwargs(spec))
    faithful_batches, faithful_desc = calibration_set(
        tokenizer, **_calib_kwargs(spec), pad_to_max_length=True
    )
    data_files = dict(calib_desc["data_files"])
    for c in agreement:
        data_files.update(data_file_hashes(c["name"], c["split"]))
    data_files.update(ev.task_data_files(tasks))

    config = {
        "model": model_name,
        "tasks": tasks,
        "n_eval": n_eval,
        "calib": spec,
        "fraction": fraction,
        "scores": scores,
        "sweep_fractions": list(sweep_fractions),
        "sweep_scores": list(sweep_scores),
        "agreement_calibs": [dict(c) for c in agreement_calibs],
        "agreement_seeds": list(agreement_seeds),
        "evaluate_faithful": evaluate_faithful,
        "seed": seed,
        "eps": eps,
        "device": str(device),
        "dtype": dtype,
        "batch_size": batch_size,
        "max_length": max_length,
        "ppl_window": ppl_window,
        "ppl_stride": ppl_stride,
        "num_fewshot": num_fewshot,
        "n_boot": n_boot,
    }
    if command is None:
        command = (
            "pruning_study("
            + ", ".join(
                [repr(model_name), f"out_dir={str(out)!r}"]
                + [f"{k}={v!r}" for k, v in config.items() if k != "model"]
            )
            + ")"
        )
    record = RunRecord.start(command, config, seed, model=model, data_files=data_files)
    identity = {
        "id": record.model.get("id"),
        "state_sha256": record.model.get("state_sha256"),
        "dtype": record.model.get("dtype"),
        "device": next(model.parameters()).device.type,
    }
    versions = {k: record.versions.get(k) for k in ("torch", "transformers", "lm_eval", "avsslib")}

    # ------------------------------------------------------------ statistics (cached by key)
    t0 = time.perf_counter()
    faithful_scores = [s for s in scores if s != "ppl_removal"]
    stats_key = content_hash(
        {
            "format": STUDY_FORMAT,
            "model": identity,
            "versions": versions,
            "scores": scores,
            "eps": eps,
            "seed": seed,
            "calibration": _keyed(calib_desc),
            "faithful_calibration": _keyed(faithful_desc),
            "agreement": agreement,
            "agreement_seeds": list(agreement_seeds),
        }
    )
    files = [out / n for n in ("layer_stats.csv", "layer_stats_faithful.csv", "batch_stats.csv")]
    meta = read_cached(out / "layer_stats.json", stats_key, requires=files)
    if meta is not None:
        fixed = read_layer_table(files[0])
        faithful = read_layer_table(files[1])
        stability = {k: np.asarray(v, dtype=np.float64) for k, v in meta["stability"].items()}
        stats_status = "cached"
    else:
        set_seed(seed)
        fixed_stats, fixed = layer_scores(
            model, batches, scores=scores, seed=seed, eps=eps, progress=progress
        )
        set_seed(seed)
        faithful_stats, faithful = layer_scores(
            model,
            faithful_batches,
            scores=faithful_scores,
            faithful=True,
            seed=seed,
            eps=eps,
            progress=progress,
        )
        stability = _stability(
            model,
            tokenizer,
            spec,
            agreement,
            agreement_seeds,
            eps,
            progress,
            known={_label(spec): fixed["avss"].to_numpy()} if "avss" in scores else {},
        )
        fixed = save_layer_table(files[0], fixed)
        faithful = save_layer_table(files[1], faithful)
        write_csv_atomic(
            files[2],
            pd.concat([batch_table(fixed_stats, "fixed"), batch_table(faithful_stats, "faithful")]),
        )
        write_json_atomic(
            out / "layer_stats.json",
            {
                "format": STUDY_FORMAT,
                "key": stats_key,
                "model": identity,
                "calibration": calib_desc,
                "faithful_calibration": faithful_desc,
                "scores": scores,
                "faithful_scores": faithful_scores,
                "eps": eps,
                "seed": seed,
                "clamped_layers": {
                    "fixed": fixed.index[fixed["clamped"]].tolist(),
                    "faithful": faithful.index[faithful["clamped"]].tolist(),
                },
                "stability": stability,
            },
        )
        del fixed_stats, faithful_stats
        stats_status = "computed"
    stats_s = time.perf_counter() - t0

    # ------------------------------------------------------------ selections and configurations
    chosen = {
        "fixed": selections(fixed, fraction, scores),
        "faithful": selections(faithful, fraction, faithful_scores),
    }
    sweep_layers = {
        s: {f: select_layers(fixed[s].to_numpy(), f, "count") for f in sweep_fractions}
        for s in sweep_scores
    }
    write_json_atomic(
        out / "selections.json",
        {
            "fraction": fraction,
            "n_layers": n_layers,
            "k_count": round(fraction * n_layers),
            **chosen,
            "sweep": {s: {f"{f:g}": v for f, v in d.items()} for s, d in sweep_layers.items()},
        },
    )
    configs = _configurations(chosen, sweep_layers, fraction, evaluate_faithful)

    # ------------------------------------------------------------ evaluation (resumable)
    eval_kwargs = dict(
        n=n_eval,
        seed=seed,
        batch_size=batch_size,
        num_fewshot=num_fewshot,
        max_length=max_length,
        ppl_window=ppl_window,
        ppl_stride=ppl_stride,
    )
    protocol = {
        "format": STUDY_FORMAT,
        "model": identity,
        "versions": versions,
        "tasks": tasks,
        **eval_kwargs,
    }
    results, status, eval_s = _evaluate_configs(
        model,
        tokenizer,
        configs,
        tasks,
        out / "eval",
        protocol,
        eval_kwargs,
        progress,
        evaluate_missing,
    )
    if not evaluate_missing:  # tables of what a partial (e.g. interrupted) run evaluated
        configs = {k: v for k, v in configs.items() if k in results}
        if "original" not in results:
            raise ConfigError(
                f"{out}: the unpruned model has not been evaluated yet, so there is "
                "no retention to tabulate; run the study without "
                "evaluate_missing=False (--no-new-evals) first."
            )

    # ------------------------------------------------------------ retention, sweep, agreement
    retention_df = retention_table(results, configs, n_boot, seed)
    sweep_df = (
        retention_df[is_sweep(retention_df["config"])]
        .drop(columns=["config", "stats", "rule"])
        .reset_index(drop=True)
    )
    agreement_df = _agreement(fixed, faithful, stability, spec, agreement, agreement_seeds, scores)
    write_csv_atomic(out / "retention.csv", retention_df)
    write_csv_atomic(out / "sweep.csv", sweep_df)
    write_csv_atomic(out / "agreement.csv", agreement_df)

    # ------------------------------------------------------------ figures
    _figures(
        out / "figures",
        fixed,
        chosen["fixed"].get("avss/count", []),
        retention_df,
        sweep_df,
        fraction,
    )

    # ------------------------------------------------------------ run record
    main = retention_df[
        (retention_df["fraction"] == fraction) | (retention_df["config"] == "original")
    ]
    main = main[~is_sweep(main["config"])]
    table = [
        dict(
            task=f"{row.task} [{row.config}]",
            metric=f"{row.metric} retention",
            value=row.retention,
            ci_low=row.ci_low,
            ci_high=row.ci_high,
            n=row.n,
        )
        for row in primary_metric_rows(main).itertuples()
    ]
    timing = {
        "load_model_s": load_s,
        "stats_s": stats_s,
        "stats": stats_status,
        "eval_s": eval_s,
        "status": status,
    }
    record.finish(
        {
            "table": table,
            "selections": chosen,
            "configs": {k: v["layers"] for k, v in configs.items()},
            "clamped_layers": fixed.index[fixed["clamped"]].tolist(),
        },
        **timing,
    )
    record.timing["total_s"] = time.perf_counter() - t_start
    missing = sorted(k for k, v in status.items() if v == "missing")
    # a partial study (configurations missing) must not look finished to a resuming driver
    save_record(record, out / ("record.partial.json" if missing else "record.json"))
    if not missing:  # complete now: an earlier partial record is out of date
        for stale in ("record.partial.json", "record.partial.md"):
            (out / stale).unlink(missing_ok=True)
    return {
        "out_dir": out,
        "layer_stats": fixed,
        "layer_stats_faithful": faithful,
        "selections": chosen,
        "configs": {k: v["layers"] for k, v in configs.items()},
        "retention": retention_df,
        "sweep": sweep_df,
        "agreement": agreement_df,
        "status": status,
        "timing": {**timing, "total_s": record.timing["total_s"]},
        "record": record.to_dict(),
    }


def retention_table(
    results: Mapping[str, Any], configs: Mapping[str, Mapping[str, Any]], n_boot: int, seed: int
) -> pd.DataFrame:
    """``retention.csv``: per configuration x task x metric, retention against ``original``
    with its paired bootstrap interval (:func:`avsslib.evaluate.retention`), after columns
    naming the configuration (config, stats, score, rule, fraction, n_pruned, layers)."""
    from avsslib.evaluate import retention

    tables = []
    for name, cfg in configs.items():
        r = retention(results["original"], results[name], n_boot=n_boot, seed=seed)
        head = {
            "config": name,
            "stats": cfg["stats"],
            "score": cfg["score"],
            "rule": cfg["rule"],
            "fraction": cfg["fraction"],
            "n_pruned": len(cfg["layers"]),
            "layers": " ".join(map(str, cfg["layers"])),
        }
        tables.append(r.assign(**head)[[*head, *r.columns]])
    return pd.concat(tables, ignore_index=True)


def _configurations(
    chosen: Mapping[str, Mapping[str, list[int]]],
    sweep_layers: Mapping[str, Mapping[float, list[int]]],
    fraction: float,
    evaluate_faithful: bool,
) -> dict[str, dict[str, Any]]:
    """Every configuration to evaluate, by name (module docstring): its statistics mode, score,
    rule, fraction and pruned layers."""
    configs: dict[str, dict[str, Any]] = {
        "original": dict(stats=None, score=None, rule=None, fraction=0.0, layers=[])
    }
    for mode, prefix in (("fixed", ""), ("faithful", "faithful-")):
        if mode == "faithful" and not evaluate_faithful:
            continue
        for key, layers in chosen[mode].items():
            score, rule = key.split("/")
            if mode == "faithful" and score not in MASS_SCORES:
                continue
            configs[f"{prefix}{score}-{rule}"] = dict(
                stats=mode, score=score, rule=rule, fraction=fraction, layers=layers
            )
    for s, by_fraction in sweep_layers.items():
        for f, layers in by_fraction.items():
            configs[sweep_config(s, f)] = dict(
                stats="fixed", score=s, rule="count", fraction=f, layers=layers
            )
    return configs


def _evaluate_configs(
    model: torch.nn.Module,
    tokenizer: Any,
    configs: Mapping[str, Mapping[str, Any]],
    tasks: Sequence[str],
    folder: Path,
    protocol: Mapping[str, Any],
    eval_kwargs: Mapping[str, Any],
    progress: bool,
    evaluate_missing: bool = True,
) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """Evaluate every configuration, resumably: a configuration whose ``folder/<name>.json``
    holds the same config hash (``protocol`` + pruned layers) is read back (``cached``), one
    that prunes the same layers as an earlier one shares its result (``reused``), the others
    are evaluated on a :func:`pruned_view` (``evaluated``) and written at once.

    Returns ``(results, status, eval_s)``: name -> ``EvalResult``, name -> status, and the
    seconds each evaluated configuration took."""
    from tqdm.auto import tqdm

    import avsslib.evaluate as ev

    n_layers = len(blocks(model))
    device = next(model.parameters()).device
    results: dict[str, Any] = {}
    by_hash: dict[str, tuple[str, dict[str, Any]]] = {}
    status: dict[str, str] = {}
    eval_s: dict[str, float] = {}
    bar = tqdm(configs.items(), desc="configurations", unit="config", disable=not progress)
    for name, cfg in bar:
        bar.set_postfix_str(name)
        config_hash = content_hash({**protocol, "layers": cfg["layers"]})
        path = folder / f"{name}.json"
        saved = read_cached(path, config_hash, key_field="config_hash")
        if saved is not None:
            result_dict, status[name] = saved["result"], "cached"
        elif config_hash not in by_hash and not evaluate_missing:
            status[name] = "missing"  # left out of the tables (evaluate_missing=False)
            continue
        elif config_hash in by_hash:
            same_as, result_dict = by_hash[config_hash]
            status[name] = "reused"
            _write_eval(
                path, name, cfg, config_hash, protocol, n_layers, result_dict, same_as, None
            )
        else:
            t0 = time.perf_counter()
            pruned = pruned_view(model, cfg["layers"]) if cfg["layers"] else model
            result = ev.evaluate(pruned, tokenizer, list(tasks), **eval_kwargs)
            del pruned
            _free(device)
            eval_s[name] = time.perf_counter() - t0
            result_dict, status[name] = result.to_dict(), "evaluated"
            _write_eval(
                path, name, cfg, config_hash, protocol, n_layers, result_dict, None, eval_s[name]
            )
        by_hash.setdefault(config_hash, (name, result_dict))
        results[name] = ev.EvalResult.from_dict(result_dict)
    return results, status, eval_s


def _write_eval(
    path: Path,
    name: str,
    cfg: Mapping[str, Any],
    config_hash: str,
    protocol: Mapping[str, Any],
    n_layers: int,
    result: Mapping[str, Any],
    same_as: str | None,
    eval_s: float | None,
) -> None:
    from avsslib.fs import write_json_atomic

    write_json_atomic(
        path,
        {
            "config": name,
            "config_hash": config_hash,
            **{k: cfg[k] for k in ("stats", "score", "rule", "fraction")},
            "pruned_layers": list(cfg["layers"]),
            "n_layers_before": n_layers,
            "n_layers_after": n_layers - len(cfg["layers"]),
            "protocol": dict(protocol),
            "same_as": same_as,
            "result": dict(result),
            "timing": {"eval_s": eval_s},
        },
    )


def batch_table(stats: LayerStats, mode: str) -> pd.DataFrame:
    """Per-batch V and S of every layer, long format: mode, batch, layer, variance, sparsity."""
    v, s = stats.batch_variances_, stats.batch_sparsities_  # (n_batches, n_layers)
    batch, layer = np.meshgrid(np.arange(v.shape[0]), np.arange(v.shape[1]), indexing="ij")
    return pd.DataFrame(
        {
            "mode": mode,
            "batch": batch.ravel(),
            "layer": layer.ravel(),
            "variance": v.ravel(),
            "sparsity": s.ravel(),
        }
    )


def _stability(
    model: torch.nn.Module,
    tokenizer: Any,
    spec: Mapping[str, Any],
    agreement: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    eps: float,
    progress: bool,
    known: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """AVSS (fixed mode) on every agreement calibration set x sample seed; label -> (n_layers,)."""
    import warnings

    from tqdm.auto import tqdm

    from avsslib.calibration import calibration_set

    out: dict[str, np.ndarray] = {}
    grid = [{**c, "seed": s} for c in agreement for s in seeds]
    for c in tqdm(grid, desc="AVSS stability", disable=not progress or not grid):
        label = _label(c)
        if label in known and all(c[k] == spec[k] for k in _CALIB_KEYS if k in spec):
            out[label] = np.asarray(known[label])
            continue
        batches, _ = calibration_set(tokenizer, **_calib_kwargs(c))
        stats = LayerStats(eps=eps, similarity=False).fit(model, batches, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # clamping is logged in layer_stats.json
            out[label] = avss_values(stats.variance_, stats.sparsity_)
    return out


def _agreement(
    fixed: pd.DataFrame,
    faithful: pd.DataFrame,
    stability: Mapping[str, np.ndarray],
    spec: Mapping[str, Any],
    agreement: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    scores: Sequence[str],
) -> pd.DataFrame:
    names = score_names(fixed, scores)
    parts = [score_agreement({n: fixed[n].to_numpy() for n in names}, "scores")]
    if "avss" in names and "avss" in faithful:
        parts.append(
            score_agreement(
                {
                    "avss/fixed": fixed["avss"].to_numpy(),
                    "avss/faithful": faithful["avss"].to_numpy(),
                },
                "mode",
            )
        )
    labels = {
        (c["name"], c["split"], s): _label({**c, "seed": s}) for c in agreement for s in seeds
    }
    calibs = list(dict.fromkeys((c["name"], c["split"]) for c in agreement))
    seed_pairs = [
        (labels[(*c, a)], labels[(*c, b)])
        for c in calibs
        for a, b in itertools.combinations(seeds, 2)
    ]
    calib_pairs = [
        (labels[(*a, s)], labels[(*b, s)])
        for s in seeds
        for a, b in itertools.combinations(calibs, 2)
    ]
    parts.append(score_agreement(stability, "seed", seed_pairs))
    parts.append(score_agreement(stability, "calibration", calib_pairs))
    return pd.concat(parts, ignore_index=True)


def _figures(
    folder: Path,
    fixed: pd.DataFrame,
    pruned: Sequence[int],
    retention_df: pd.DataFrame,
    sweep_df: pd.DataFrame,
    fraction: float,
) -> None:
    import matplotlib.pyplot as plt

    from avsslib import plots

    plots.use_style()
    main = retention_df[(retention_df["fraction"] == fraction) & ~is_sweep(retention_df["config"])]
    figures = {
        "layer_profile.png": plots.study_layer_profile(fixed, pruned=pruned),
        "retention.png": plots.retention_bars(primary_metric_rows(main), label="config"),
    }
    if not sweep_df.empty:  # a partial study (--no-new-evals) may have no sweep point yet
        figures["sweep.png"] = plots.retention_sweep(primary_metric_rows(sweep_df))
    for file, fig in figures.items():
        plots.save(fig, folder / file)
        plt.close(fig)


# ---------------------------------------------------------------------- reading back
def load_study(out_dir: str | Path) -> dict[str, Any]:
    """Read a study written by :func:`pruning_study` back, for notebooks.

    Returns DataFrames under ``layer_stats`` and ``layer_stats_faithful`` (indexed by
    ``layer``), ``batch_stats``, ``retention``, ``sweep``, ``agreement`` and ``selections``
    (one row per mode x key: ``stats``, ``score``, ``rule``, ``layers`` as a list,
    ``n_pruned``), plus ``record`` (the run record dict). Missing files are left out.
    """
    out = Path(out_dir)
    result: dict[str, Any] = {}
    for name in ("layer_stats", "layer_stats_faithful"):
        if (out / f"{name}.csv").is_file():
            result[name] = read_layer_table(out / f"{name}.csv")
    for name in ("batch_stats", "retention", "sweep", "agreement"):
        if (out / f"{name}.csv").is_file():
            result[name] = pd.read_csv(out / f"{name}.csv")
    chosen = read_json(out / "selections.json")
    if chosen is not None:
        rows = [
            dict(
                stats=mode,
                score=key.split("/")[0],
                rule=key.split("/")[1],
                layers=layers,
                n_pruned=len(layers),
            )
            for mode in ("fixed", "faithful")
            for key, layers in chosen.get(mode, {}).items()
        ]
        result["selections"] = pd.DataFrame(rows)
    record = read_json(out / "record.json") or read_json(out / "record.partial.json")
    if record is not None:
        result["record"] = record
    if not result:
        raise ConfigError(
            f"{out} holds no study files (layer_stats.csv, retention.csv, ...); "
            "run pruning_study or `avss study --out` there first."
        )
    return result
