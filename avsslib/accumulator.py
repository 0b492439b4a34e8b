"""The accumulator of per-batch records, and every per-layer statistic derived from them.

A ``StatsAccumulator`` keeps the records of ``avsslib.reductions.batch_record`` (float64 sums,
one row per layer and batch) and the ``(n_layers, d)`` token sums of the block outputs, and
derives every fitted value from them (``avsslib.reductions.derive``): the variances, sparsities,
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

import contextlib
import inspect
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from avsslib.errors import AvssError, ConfigError
from avsslib.reductions import derive, record_columns

__all__ = [
    "AGGREGATES",
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
VARIANCE_MODES: tuple[str, ...] = ("code", "r_port", "flat")
AGGREGATES: tuple[str, ...] = ("batch", "pooled")

VarianceMode = Literal["code", "r_port", "flat"]
Aggregate = Literal["batch", "pooled"]

STATE_FORMAT = "avsslib.LayerStats/2"
"""The ``format`` of ``state_dict``'s states."""
OLD_STATE_FORMATS: tuple[str, ...] = ("avsslib.LayerStats/1",)
"""Formats ``load_state_dict`` still reads (format 1: no scale-aware columns, ``rel_grid=()``)."""

_VARIANCE_COLUMN = {"code": "sample_var", "r_port": "rport_var", "flat": "flat_var"}

A = TypeVar("A", bound="StatsAccumulator")


class StatsAccumulator:
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

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the record columns (the last axis of ``records_``)."""
        return record_columns(self.eps_grid, self.rel_grid, self.similarity)

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
        accepted = inspect.signature(cls.__init__).parameters
        params = {k: v for k, v in state["params"].items() if k in accepted}
        return cls(**params).load_state_dict(state)

    # ------------------------------------------------------------------ derivation
    def _check_fitted(self) -> None:
        if not self._records:
            raise AvssError(
                f"{type(self).__name__} has no data yet: call fit(model, batches) or "
                "update(model, batch) first (or add_batch, merge, load_state_dict)."
            )

    def _arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Host copies: records ``(n_batches, L, K)`` and unit sums ``(L, d)`` (one sync)."""
        self._check_fitted()
        if self._host is None:
            units = None if self._unit_sums is None else self._unit_sums.cpu().numpy()
            self._host = (torch.stack(self._records).cpu().numpy(), units)
        return self._host

    def _col(self, name: str) -> int:
        return self.columns.index(name)

    @property
    def _d(self) -> int:
        self._check_fitted()
        assert self._shape is not None
        return self._shape[1]

    def _per_batch(self, name: str) -> np.ndarray:
        """Per-batch values ``(n_batches, L)`` of a statistic (NaN for a batch with no tokens)."""
        rec, _ = self._arrays()
        return derive(rec, self.columns, name, self._d)

    def _pooled(self, name: str) -> np.ndarray:
        rec, unit = self._arrays()
        total = rec.sum(0)
        if name == "rport_var":
            if unit is None:
                raise ConfigError(
                    "the pooled r_port variance needs the per-unit sums of the chosen batches, "
                    "which are kept only for all batches together; use variance_mode='code' "
                    "or 'flat', or aggregate='batch'."
                )
            with np.errstate(invalid="ignore", divide="ignore"):
                return (unit / total[:, self._col("tokens"), None]).var(axis=1)
        return derive(total[None], self.columns, name, self._d)[0]

    def _value(self, name: str, aggregate: str | None) -> np.ndarray:
        aggregate = self.aggregate if aggregate is None else aggregate
        _check_choice("aggregate", aggregate, AGGREGATES)
        if aggregate == "pooled":
            return self._pooled(name)
        with np.errstate(invalid="ignore"), _quiet_nanmean():
            return np.nanmean(self._per_batch(name), axis=0)

    def _check_rel(self, r: float, update: bool = False) -> str:
        if r not in self.rel_grid:
            raise ConfigError(
                f"r={r:g} is not in rel_grid {self.rel_grid}; refit with it "
                "(LayerStats(rel_grid=...))."
            )
        if update and not self.similarity:
            raise ConfigError(
                "block-update statistics need the block inputs: use LayerStats(similarity=True)."
            )
        return f"{'updnear' if update else 'relnear'}_{r:g}"

    def _check_update(self) -> None:
        if not (self.similarity and self.rel_grid):
            raise ConfigError(
                "block-update statistics were not collected; use "
                "LayerStats(similarity=True) with a non-empty rel_grid."
            )

    def _check_similarity(self) -> None:
        if not self.similarity:
            raise ConfigError("similarity statistics were not collected; use similarity=True.")

    # ------------------------------------------------------------------ fitted values
    def get_variance(
        self, mode: VarianceMode | None = None, aggregate: Aggregate | None = None
    ) -> np.ndarray:
        """Per-layer variance in ``mode`` (default ``variance_mode``) aggregated by
        ``aggregate`` (default ``self.aggregate``); shape ``(n_layers,)``."""
        mode = self.variance_mode if mode is None else mode
        _check_choice("variance_mode", mode, VARIANCE_MODES)
        return self._value(_VARIANCE_COLUMN[mode], aggregate)

    def get_sparsity(
        self, eps: float | None = None, aggregate: Aggregate | None = None
    ) -> np.ndarray:
        """Per-layer fraction of counted elements with ``|h| < eps`` (``eps`` from the grid)."""
        eps = self.eps if eps is None else float(eps)
        if eps not in self.eps_grid:
            raise ConfigError(f"eps={eps:g} is not in eps_grid {self.eps_grid}; refit with it.")
        return self._value(f"near_{eps:g}", aggregate)

    def get_rel_sparsity(self, r: float, aggregate: Aggregate | None = None) -> np.ndarray:
        """Per-layer fraction of counted elements with ``|h| < r * rms`` of their own token
        (``r`` from ``rel_grid``); shape ``(n_layers,)``."""
        return self._value(self._check_rel(float(r)), aggregate)

    def get_update_sparsity(self, r: float, aggregate: Aggregate | None = None) -> np.ndarray:
        """Per-layer fraction of elements of the block update ``u = (h_out - h_in) / rms(h_in)``
        with ``|u| < r`` (``r`` from ``rel_grid``); shape ``(n_layers,)``."""
        return self._value(self._check_rel(float(r), update=True), aggregate)

    @property
    def update_variance_(self) -> np.ndarray:
        """Per-layer population variance of all counted elements of the block update
        ``u = (h_out - h_in) / rms(h_in)`` (dimensionless)."""
        self._check_update()
        return self._value("upd_flat_var", None)

    @property
    def update_rms_(self) -> np.ndarray:
        """Per-layer root mean square of the block update ``u`` (dimensionless: the update's
        size in units of the input's RMS)."""
        self._check_update()
        return np.sqrt(self._value("upd_mean_square", None))

    @property
    def update_token_variance_(self) -> np.ndarray:
        """Per-layer unbiased variance over the hidden units of one token's update ``u``, mean
        over tokens."""
        self._check_update()
        return self._value("upd_token_var", None)

    @property
    def mean_square_(self) -> np.ndarray:
        """Per-layer mean of ``h^2`` over the counted elements (``rms_ ** 2``)."""
        return self._value("mean_square", None)

    @property
    def variance_(self) -> np.ndarray:
        """Per-layer variance (``variance_mode``, ``aggregate``)."""
        return self.get_variance()

    @property
    def sparsity_(self) -> np.ndarray:
        """Per-layer near-zero fraction at ``eps`` (``aggregate``)."""
        return self.get_sparsity()

    @property
    def near_zero_counts_(self) -> np.ndarray:
        """Per-layer number of counted elements with ``|h| < eps`` (integer-valued float64)."""
        return self._arrays()[0][:, :, self._col(f"near_{self.eps:g}")].sum(0)

    @property
    def near_zero_grid_(self) -> np.ndarray:
        """Near-zero counts at every threshold, shape ``(n_layers, len(eps_grid))``."""
        rec, _ = self._arrays()
        cols = [self._col(f"near_{e:g}") for e in self.eps_grid]
        return rec[:, :, cols].sum(0)

    @property
    def element_counts_(self) -> np.ndarray:
        """Per-layer number of counted token-level elements (tokens x hidden size)."""
        return self._arrays()[0][:, :, self._col("tokens")].sum(0) * self._d

    @property
    def mean_(self) -> np.ndarray:
        """Per-layer mean of the counted elements."""
        return self._value("mean_elem", None)

    @property
    def rms_(self) -> np.ndarray:
        """Per-layer root mean square of the counted elements, ``sqrt(sum h^2 / N)``."""
        return np.sqrt(self._value("mean_square", None))

    @property
    def token_variance_(self) -> np.ndarray:
        """Per-layer unbiased variance over the hidden units of one token, mean over tokens."""
        return self._value("token_var", None)

    @property
    def cosine_distance_(self) -> np.ndarray:
        """Per-layer mean over counted tokens of ``1 - cos(block input, block output)``."""
        self._check_similarity()
        return self._value("cos_dist_mean", None)

    @property
    def angular_distance_(self) -> np.ndarray:
        """Per-layer mean over counted tokens of ``arccos(cos(input, output)) / pi``."""
        self._check_similarity()
        return self._value("angle_mean", None)

    @property
    def batch_variances_(self) -> np.ndarray:
        """Per-batch variance (``variance_mode``), shape ``(n_batches, n_layers)``."""
        return self._per_batch(_VARIANCE_COLUMN[self.variance_mode])

    @property
    def batch_sparsities_(self) -> np.ndarray:
        """Per-batch near-zero fraction at ``eps``, shape ``(n_batches, n_layers)``."""
        return self._per_batch(f"near_{self.eps:g}")

    @property
    def records_(self) -> np.ndarray:
        """The raw per-batch sums, shape ``(n_batches, n_layers, len(columns))``."""
        return self._arrays()[0]

    @property
    def n_batches_(self) -> int:
        return len(self._records)

    @property
    def n_layers_(self) -> int:
        return int(self._arrays()[0].shape[1])

    @property
    def hidden_size_(self) -> int:
        """The hidden size ``d`` of the block outputs."""
        return self._d

    @property
    def n_samples_(self) -> int:
        return int(self._arrays()[0][:, 0, 0].sum())

    @property
    def n_tokens_(self) -> int:
        return int(self._arrays()[0][:, 0, 1].sum())

    def to_frame(self):
        """A ``pandas.DataFrame`` with one row per layer (index ``layer``) and one column per
        fitted statistic: the three variances, sparsity and counts at every ``eps``, mean, rms,
        token variance, the relative sparsity at every ``r`` of ``rel_grid`` and, with
        ``similarity``, the cosine and angular distances and the block update's variance,
        RMS, token variance and sparsity at every ``r``. (On a ``subset`` without per-unit
        sums the pooled ``variance_r_port`` column is NaN.)"""
        import pandas as pd

        pooled_rport_unknown = self._unit_sums is None and self.aggregate == "pooled"
        frame = {
            "variance": self.variance_,
            "variance_code": self.get_variance("code"),
            "variance_r_port": (
                np.full(self.n_layers_, np.nan)
                if pooled_rport_unknown
                else self.get_variance("r_port")
            ),
            "variance_flat": self.get_variance("flat"),
            "sparsity": self.sparsity_,
            "near_zero_count": self.near_zero_counts_,
            "element_count": self.element_counts_,
        }
        for j, e in enumerate(self.eps_grid):
            frame[f"sparsity@{e:g}"] = self.get_sparsity(e)
            frame[f"near_zero_count@{e:g}"] = self.near_zero_grid_[:, j]
        frame.update(mean=self.mean_, rms=self.rms_, token_variance=self.token_variance_)
        for r in self.rel_grid:
            frame[f"rel_sparsity@{r:g}"] = self.get_rel_sparsity(r)
        if self.similarity:
            frame.update(
                cosine_distance=self.cosine_distance_, angular_distance=self.angular_distance_
            )
            if self.rel_grid:
                frame.update(
                    update_variance=self.update_variance_,
                    update_rms=self.update_rms_,
                    update_token_variance=self.update_token_variance_,
                )
                for r in self.rel_grid:
                    frame[f"update_sparsity@{r:g}"] = self.get_update_sparsity(r)
        df = pd.DataFrame(frame)
        df.index.name = "layer"
        return df

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


def _check_choice(param: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{param}={value!r} is not one of {choices}.")


@contextlib.contextmanager
def _quiet_nanmean() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layer -> NaN, silently
        yield
