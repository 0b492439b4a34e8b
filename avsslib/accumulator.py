"""The accumulator of per-batch records, and every per-layer statistic derived from them.

A ``StatsAccumulator`` keeps the records of ``avsslib.reductions.batch_record`` (float64 sums,
one row per layer and batch) and the ``(n_layers, d)`` token sums of the block outputs, and
derives every fitted value from them (``avsslib.accumulator_values.DerivedValues``, its base
class, through ``avsslib.reductions.derive``): the variances, sparsities,
mean, RMS, token variance, the similarity and block-update statistics, per-batch values and
``to_frame``. Values aggregate over batches as an *unweighted* mean of per-batch values
(``aggregate="batch"``, the official code's ``np.mean``) or with every sample or element
weighing the same (``"pooled"``). Because every value derives from the records, ``merge`` of
accumulators over disjoint batches equals one over all of them, and ``subset`` gives the
statistics of any multiset of the batches without another forward pass. It runs no model
(``avsslib.stats.LayerStats`` adds the block tap of ``avsslib.tap``) and writes no file; the
versioned ``state_dict`` (``STATE_FORMAT``) is saved by the caller.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar

import numpy as np
import torch

from avsslib.accumulator_values import (
    AGGREGATES,
    VARIANCE_MODES,
    Aggregate,
    DerivedValues,
    VarianceMode,
    _check_choice,
)
from avsslib.errors import ConfigError

__all__ = [
    "AGGREGATES",
    "AccumulatorOptions",
    "DEFAULT_EPS_GRID",
    "DEFAULT_REL_GRID",
    "OLD_STATE_FORMATS",
    "STATE_FORMAT",
    "VARIANCE_MODES",
    "StatsAccumulator",
]

DEFAULT_EPS_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
DEFAULT_REL_GRID: tuple[float, ...] = (0.001, 0.01, 0.1)
"""Relative thresholds ``r`` of the scale-aware sparsities (``|h| < r * rms``, ``|u| < r``)."""
STATE_FORMAT = "avsslib.LayerStats/2"
"""The ``format`` of ``state_dict``'s states."""
OLD_STATE_FORMATS: tuple[str, ...] = ("avsslib.LayerStats/1",)
"""Formats ``load_state_dict`` still reads (format 1: no scale-aware columns, ``rel_grid=()``)."""

A = TypeVar("A", bound="StatsAccumulator")


class AccumulatorOptions(TypedDict, total=False):
    """The keyword options of ``StatsAccumulator`` (a subclass passes them on unchanged)."""

    faithful: bool
    variance_mode: VarianceMode
    aggregate: Aggregate | None
    mask_pad: bool | None
    pass_mask: bool | None
    similarity: bool
    rel_grid: Iterable[float]


class StatsAccumulator(DerivedValues):
    """Per-batch records of per-layer sums, added up, and the statistics derived from them.

    Parameters as ``LayerStats``'s: ``eps``, ``eps_grid`` (``eps`` is added), ``rel_grid`` and
    ``similarity`` fix the record columns; ``faithful``, ``mask_pad`` and ``pass_mask`` say how
    records were taken (they must agree to merge or load); ``variance_mode`` and ``aggregate``
    (``None``: ``"batch"`` if ``faithful`` else ``"pooled"``) what the fitted attributes report.
    Fed by ``add_batch``, ``merge`` or ``load_state_dict``. Fitted attributes end with an
    underscore and are numpy float64 arrays of shape ``(n_layers,)`` unless stated otherwise.
    """

    def __init__(
        self,
        eps: float = 1e-5,
        eps_grid: Iterable[float] = DEFAULT_EPS_GRID,
        *,
        faithful: bool = False,
        variance_mode: VarianceMode = "code",
        aggregate: Aggregate | None = None,
        mask_pad: bool | None = None,
        pass_mask: bool | None = None,
        similarity: bool = True,
        rel_grid: Iterable[float] = DEFAULT_REL_GRID,
    ) -> None:
        grid = sorted({float(e) for e in eps_grid} | {float(eps)})
        if not all(math.isfinite(e) and e > 0 for e in grid):
            raise ConfigError(f"eps and eps_grid must be positive finite numbers, got {grid}.")
        rel = sorted({float(r) for r in rel_grid})
        if not all(math.isfinite(r) and r > 0 for r in rel):
            raise ConfigError(f"rel_grid must hold positive finite numbers, got {rel}.")
        _check_choice("variance_mode", variance_mode, VARIANCE_MODES)
        if aggregate is not None:
            _check_choice("aggregate", aggregate, AGGREGATES)
        self.eps = float(eps)
        self.eps_grid = tuple(grid)
        self.rel_grid = tuple(rel)
        self.faithful = bool(faithful)
        self.variance_mode = variance_mode
        self.aggregate = aggregate if aggregate is not None else ("batch" if faithful else "pooled")
        self.mask_pad = (not faithful) if mask_pad is None else bool(mask_pad)
        self.pass_mask = pass_mask
        self.similarity = bool(similarity)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self: A) -> A:
        """Forget every record."""
        self._records: list[torch.Tensor] = []  # per batch: (L, K) float64, on device
        self._unit_sums: torch.Tensor | None = None  # (L, d) float64; None: empty or a subset
        self._shape: tuple[int, int] | None = None  # (n_layers, d)
        self._host: tuple[np.ndarray, np.ndarray | None] | None = None
        return self

    def accumulation_params(self) -> dict[str, Any]:
        """Parameters that change what is accumulated (must agree to merge or load)."""
        return {
            "eps_grid": list(self.eps_grid),
            "rel_grid": list(self.rel_grid),
            "faithful": self.faithful,
            "mask_pad": self.mask_pad,
            "pass_mask": self.pass_mask,
            "similarity": self.similarity,
        }

    def _params(self) -> dict[str, Any]:
        """The constructor arguments ``state_dict`` saves (a subclass adds its own)."""
        return {
            **self.accumulation_params(),
            "eps": self.eps,
            "variance_mode": self.variance_mode,
            "aggregate": self.aggregate,
        }

    def add_batch(self: A, record: torch.Tensor, unit_sums: torch.Tensor) -> A:
        """Add one batch: its ``record`` (float64, ``(n_layers, len(columns))``) and
        ``unit_sums`` (float64, ``(n_layers, d)``, the sum over counted tokens of ``h``), as
        ``avsslib.reductions.batch_record`` returns them; returns ``self``. No host sync."""
        n_layers, d = unit_sums.shape
        if self._shape is not None and self._shape != (n_layers, d):
            raise ConfigError(
                f"this batch gives per-layer statistics of shape {(n_layers, d)} but earlier "
                f"batches gave {self._shape}: a different model?"
            )
        if tuple(record.shape) != (n_layers, len(self.columns)):
            raise ConfigError(
                f"a record of shape {tuple(record.shape)} does not fit {n_layers} layers and "
                f"the {len(self.columns)} columns {self.columns}."
            )
        if not self._records:
            self._unit_sums = unit_sums
        elif self._unit_sums is not None:
            self._unit_sums = self._unit_sums.to(unit_sums.device) + unit_sums
        self._shape = (n_layers, d)
        self._records.append(record)
        self._host = None
        return self

    def merge(self: A, other: StatsAccumulator) -> A:
        """Add ``other``'s batches to this instance (in place); returns ``self``.

        Exact: after ``a.merge(b)``, every fitted value equals what one instance fed with
        ``a``'s batches followed by ``b``'s gives, bit for bit, because values derive from the
        concatenated per-batch records. The one exception is the pooled ``r_port`` variance,
        whose ``(n_layers, d)`` token sums are added in a different order (float64 rounding).
        """
        if self.accumulation_params() != other.accumulation_params():
            raise ConfigError(
                "cannot merge LayerStats with different accumulation parameters: "
                f"{self.accumulation_params()} vs {other.accumulation_params()}."
            )
        if not other._records:
            return self
        if not self._records:
            self._records = [r.clone() for r in other._records]
            self._unit_sums = None if other._unit_sums is None else other._unit_sums.clone()
        else:
            if self._shape != other._shape:
                raise ConfigError(
                    f"cannot merge statistics of shape {other._shape} into {self._shape} "
                    "(n_layers, hidden size): different models."
                )
            device = self._records[0].device
            self._records += [r.to(device) for r in other._records]
            if self._unit_sums is None or other._unit_sums is None:
                self._unit_sums = None
            else:
                self._unit_sums = self._unit_sums + other._unit_sums.to(device)
        self._shape = other._shape
        self._host = None
        return self

    def subset(self, batches: Sequence[int] | np.ndarray) -> StatsAccumulator:
        """A new ``StatsAccumulator`` (same parameters) holding the records of ``batches``:
        indices into the batches held here, repeats allowed (a bootstrap resample).

        Every statistic of the subset is what an accumulator fed with those batches gives,
        except the pooled ``r_port`` variance, which needs token sums per unit that are kept
        only for all batches together: a subset that is not every batch exactly once has none
        (reading it raises ``ConfigError``; ``state_dict`` too)."""
        idx = np.asarray(batches, dtype=np.int64)
        n = self.n_batches_
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            raise ConfigError(
                f"batches must be a non-empty list of indices in 0..{n - 1}, got {idx.tolist()}."
            )
        out = StatsAccumulator(**StatsAccumulator._params(self))  # not a subclass's extras
        out._records = [self._records[i] for i in idx.tolist()]
        every_once = np.array_equal(np.sort(idx), np.arange(n))
        out._unit_sums = self._unit_sums if every_once else None
        out._shape = self._shape
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore this instance: parameters and CPU tensors.

        Keys: ``format``, ``params`` (constructor arguments), ``columns``, ``records``
        (float64, shape ``(n_batches, n_layers, K)``), ``unit_sums`` (float64,
        ``(n_layers, d)``). Save it with ``torch.save``.
        """
        self._check_fitted()
        if self._unit_sums is None:
            raise ConfigError(
                "a subset of the batches has no per-unit token sums and cannot be saved; "
                "save the accumulator it was taken from."
            )
        return {
            "format": STATE_FORMAT,
            "params": self._params(),
            "columns": list(self.columns),
            "records": torch.stack(self._records).cpu(),
            "unit_sums": self._unit_sums.cpu(),
        }

    def load_state_dict(self: A, state: Mapping[str, Any]) -> A:
        """Replace the accumulated state with ``state`` (from ``state_dict``); returns ``self``.

        The accumulation parameters must match this instance's; the reporting parameters
        (``eps``, ``variance_mode``, ``aggregate``) are this instance's own. Use
        ``from_state_dict`` to rebuild an instance with the saved parameters.
        """
        state = _upgrade_state(state)
        saved = {k: state["params"][k] for k in self.accumulation_params()}
        if saved != self.accumulation_params():
            raise ConfigError(
                f"state was accumulated with {saved}, this LayerStats uses "
                f"{self.accumulation_params()}; build it with LayerStats.from_state_dict()."
            )
        self._records = list(torch.as_tensor(state["records"], dtype=torch.float64).unbind(0))
        self._unit_sums = torch.as_tensor(state["unit_sums"], dtype=torch.float64).clone()
        self._shape = (int(self._unit_sums.shape[0]), int(self._unit_sums.shape[1]))
        self._host = None
        return self

    @classmethod
    def from_state_dict(cls: type[A], state: Mapping[str, Any]) -> A:
        """A new instance with the saved parameters and state (saved parameters this class
        does not take, such as ``LayerStats``'s ``compile`` for a ``StatsAccumulator``, are
        left out)."""
        state = _upgrade_state(state)
        accepted = {  # a subclass may pass its options on (**options): every __init__ counts
            name
            for klass in cls.__mro__
            if "__init__" in vars(klass)
            for name in inspect.signature(vars(klass)["__init__"]).parameters
        }
        params = {k: v for k, v in state["params"].items() if k in accepted}
        return cls(**params).load_state_dict(state)

    def __repr__(self) -> str:
        state = f"{self.n_batches_} batches" if self._records else "empty"
        return (
            f"{type(self).__name__}(eps={self.eps:g}, variance_mode={self.variance_mode!r}, "
            f"aggregate={self.aggregate!r}, similarity={self.similarity}; {state})"
        )


# ---------------------------------------------------------------------- helpers
def _upgrade_state(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A state of the current format: format-1 states (before the scale-aware statistics) get
    ``rel_grid = []``, which describes their columns exactly; other formats are refused."""
    fmt = state.get("format")
    if fmt == STATE_FORMAT:
        return state
    if fmt in OLD_STATE_FORMATS:
        return {**state, "format": STATE_FORMAT, "params": {**state["params"], "rel_grid": []}}
    raise ConfigError(
        f"not a LayerStats state (format {fmt!r}, expected {STATE_FORMAT!r} or one of "
        f"{OLD_STATE_FORMATS})."
    )
