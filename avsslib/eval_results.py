"""Results of an evaluation: per task its metrics, one score per example and its protocol.

:class:`EvalResult` (one :class:`TaskResult` per task, each metric a :class:`MetricScores`) is
what :func:`avsslib.evaluate.evaluate` returns and what a run's ``metrics.json`` holds
(:meth:`EvalResult.to_dict` / :meth:`EvalResult.from_dict`); :func:`statistic` aggregates the
per-example values of a metric kind, so that bootstrap intervals (:func:`bootstrap_ci`) and the
paired retention (:func:`avsslib.retention.retention`) resample examples;
:func:`paired_metrics` pairs the metrics of two runs' task for such paired bootstraps. Writes no
files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from avsslib.bootstrap import (
    bootstrap_ci,
    check_bootstrap,
    paired_replicates,
    resample_indices,
)
from avsslib.errors import ConfigError

__all__ = ["EvalResult", "Kind", "MetricScores", "TaskResult", "paired_metrics", "statistic"]

Kind = Literal["mean", "perplexity", "bits_per_byte"]


def statistic(kind: Kind) -> Callable[[np.ndarray], float]:
    """The aggregate of per-example values of one kind.

    * ``"mean"``: values shape (n,), the mean.
    * ``"perplexity"``: values shape (n, 2) = (NLL in nats, count of tokens/words/bytes),
      ``exp(sum NLL / sum count)`` (the harness's ``weighted_perplexity``).
    * ``"bits_per_byte"``: shape (n, 2), ``sum NLL / sum bytes / ln 2``.
    """
    if kind == "mean":
        return lambda v: float(np.mean(v))
    if kind == "perplexity":
        return lambda v: float(np.exp(v[:, 0].sum() / v[:, 1].sum()))
    if kind == "bits_per_byte":
        return lambda v: float(v[:, 0].sum() / v[:, 1].sum() / math.log(2))
    raise ConfigError(
        f"unknown metric kind {kind!r}; expected 'mean', 'perplexity' or 'bits_per_byte'."
    )


# ---------------------------------------------------------------- results


@dataclass
class MetricScores:
    """One metric of one task.

    ``value``: the aggregate (as the harness reports it). ``per_example``: shape (n,) for
    ``kind="mean"``, (n, 2) = (NLL nats, count) for the ratio kinds; row i belongs to the
    task's ``ids[i]``. ``statistic(kind)(per_example)`` equals ``value``.
    """

    value: float
    kind: Kind
    higher_is_better: bool
    per_example: np.ndarray

    def ci(self, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
        """Bootstrap interval over examples (:func:`bootstrap_ci`)."""
        return bootstrap_ci(
            self.per_example, statistic(self.kind), n_boot=n_boot, seed=seed, alpha=alpha
        )


@dataclass
class TaskResult:
    """A task's metrics, the ids of its examples (in row order) and its protocol."""

    task: str
    ids: tuple[str, ...]
    metrics: dict[str, MetricScores]
    protocol: dict[str, Any]
    wall_s: float


@dataclass
class EvalResult:
    """Results of :func:`evaluate`, one :class:`TaskResult` per task (in the order asked)."""

    tasks: dict[str, TaskResult]

    def table(self, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
        """One row per task and metric: value, bootstrap CI (``ci_low``, ``ci_high``), ``n``
        examples, ``higher_is_better``."""
        rows = []
        for name, t in self.tasks.items():
            for metric, m in t.metrics.items():
                low, high = m.ci(n_boot=n_boot, seed=seed, alpha=alpha)
                rows.append(
                    dict(
                        task=name,
                        metric=metric,
                        value=m.value,
                        ci_low=low,
                        ci_high=high,
                        n=len(t.ids),
                        higher_is_better=m.higher_is_better,
                    )
                )
        return pd.DataFrame(
            rows, columns=["task", "metric", "value", "ci_low", "ci_high", "n", "higher_is_better"]
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: per task its protocol, ids and metrics with per-example scores; the wall
        times under ``"timing"``."""
        return {
            "tasks": {
                name: {
                    "protocol": t.protocol,
                    "ids": list(t.ids),
                    "metrics": {
                        k: {
                            "value": m.value,
                            "kind": m.kind,
                            "higher_is_better": m.higher_is_better,
                            "per_example": m.per_example.tolist(),
                        }
                        for k, m in t.metrics.items()
                    },
                }
                for name, t in self.tasks.items()
            },
            "timing": {name: t.wall_s for name, t in self.tasks.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_dict` (e.g. read back from a ``metrics.json``)."""
        timing = data.get("timing", {})
        return cls(
            {
                name: TaskResult(
                    task=name,
                    ids=tuple(t["ids"]),
                    metrics={
                        k: MetricScores(
                            float(m["value"]) if m["value"] is not None else math.nan,
                            m["kind"],
                            bool(m["higher_is_better"]),
                            np.asarray(m["per_example"], dtype=np.float64),
                        )
                        for k, m in t["metrics"].items()
                    },
                    protocol=dict(t["protocol"]),
                    wall_s=float(timing.get(name, math.nan)),
                )
                for name, t in data["tasks"].items()
            }
        )


def paired_metrics(
    first: TaskResult, second: TaskResult, *, n_boot: int, seed: int, alpha: float
) -> Iterator[tuple[str, MetricScores, MetricScores, np.ndarray, np.ndarray, np.ndarray]]:
    """The metrics two runs of one task share, paired example by example for a paired bootstrap.

    Both runs must have scored the same examples (the caller checks, with its own message).
    Checks the bootstrap settings, draws one set of ``n_boot`` example-index resamples with
    ``seed`` for the task, then yields, per metric of ``first`` that ``second`` also has,
    ``(metric, first's scores, second's scores, x, y, pairs)``: ``x`` first's per-example
    values, ``y`` second's in first's example order, ``pairs`` shape (n_boot, 2) the statistic
    of both runs on each resample (:func:`avsslib.bootstrap.paired_replicates`).
    """
    position = {i: k for k, i in enumerate(second.ids)}
    order = np.array([position[i] for i in first.ids])
    check_bootstrap(len(first.ids), n_boot, alpha)
    idx = resample_indices(len(first.ids), n_boot, seed)
    for metric, mf in first.metrics.items():
        if metric not in second.metrics:
            continue
        ms = second.metrics[metric]
        x, y = mf.per_example, ms.per_example[order]
        yield metric, mf, ms, x, y, paired_replicates(x, y, statistic(mf.kind), idx)
