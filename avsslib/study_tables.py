"""The pruning study's building blocks and its tables, for notebooks and for
:func:`avsslib.study.pruning_study` (which writes them; this module writes only what a caller asks
for, :func:`save_layer_table`):

* :func:`layer_scores`: fit :class:`avsslib.stats.LayerStats` on calibration batches and put
  every statistic, every score and every score's rank in one table (one row per layer);
  :func:`rank_layers`, :func:`score_names`, :func:`save_layer_table` / :func:`read_layer_table`.
* :func:`selections`: the layers each rule and baseline prunes at a fraction
  (``"avss/count"``, ``"avss/mass"``, ``"avss/code_bug"``, ``"block_influence/count"``, ...).
* :func:`score_agreement`: Spearman and Kendall correlations between per-layer scores.
* :func:`retention_table`, :func:`batch_table`, :func:`primary_metric_rows`: the rows of
  ``retention.csv`` and ``batch_stats.csv``, and each task's primary metric.
* :func:`load_study` reads a written study back.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from avsslib.errors import ConfigError
from avsslib.fs import read_json
from avsslib.scores import REGISTRY, compute_scores, cumulative, navss
from avsslib.selection import MASS_SCORES, select_all, select_layers
from avsslib.stats import LayerStats
from avsslib.study_config import DEFAULT_SCORES

if TYPE_CHECKING:
    from avsslib.study_eval import PrunedConfig

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


def retention_table(
    results: Mapping[str, Any],
    configs: Mapping[str, PrunedConfig | Mapping[str, Any]],
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    """``retention.csv``: per configuration x task x metric, retention against ``original``
    with its paired bootstrap interval (:func:`avsslib.evaluate.retention`), after columns
    naming the configuration (config, stats, score, rule, fraction, n_pruned, layers).
    ``configs``: name -> :class:`avsslib.study_eval.PrunedConfig` (or a dict of its fields)."""
    import dataclasses

    from avsslib.evaluate import retention

    tables = []
    for name, config in configs.items():
        cfg = config if isinstance(config, Mapping) else dataclasses.asdict(config)
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
