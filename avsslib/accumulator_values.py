"""Every per-layer statistic derived from the per-batch records of a ``StatsAccumulator``.

``DerivedValues`` is the half of ``avsslib.accumulator.StatsAccumulator`` that reads: from the
records (float64 sums, one row per layer and batch, columns ``record_columns``) and the token
sums per unit it derives (``avsslib.reductions.derive``) the variances, sparsities, mean, RMS,
token variance, the similarity and block-update statistics, per-batch values and ``to_frame``,
aggregated over batches as an unweighted mean of per-batch values (``"batch"``) or pooled
(``"pooled"``). ``StatsAccumulator`` keeps, combines and saves the records. Writes no file.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from avsslib.errors import AvssError, ConfigError
from avsslib.reductions import derive, record_columns

__all__ = ["AGGREGATES", "VARIANCE_MODES", "Aggregate", "DerivedValues", "VarianceMode"]

VARIANCE_MODES: tuple[str, ...] = ("code", "r_port", "flat")
AGGREGATES: tuple[str, ...] = ("batch", "pooled")

VarianceMode = Literal["code", "r_port", "flat"]
Aggregate = Literal["batch", "pooled"]

_VARIANCE_COLUMN = {"code": "sample_var", "r_port": "rport_var", "flat": "flat_var"}


class DerivedValues:
    """The fitted values of the records held in ``_records`` and ``_unit_sums`` (set by the
    subclass, ``StatsAccumulator``): fitted attributes end with an underscore and are numpy
    float64 arrays of shape ``(n_layers,)`` unless stated otherwise."""

    eps: float
    eps_grid: tuple[float, ...]
    rel_grid: tuple[float, ...]
    similarity: bool
    variance_mode: VarianceMode
    aggregate: Aggregate
    _records: list[torch.Tensor]  # per batch: (L, K) float64, on device
    _unit_sums: torch.Tensor | None  # (L, d) float64; None: empty or a subset
    _shape: tuple[int, int] | None  # (n_layers, d)
    _host: tuple[np.ndarray, np.ndarray | None] | None  # host copies, None: stale

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the record columns (the last axis of ``records_``)."""
        return record_columns(self.eps_grid, self.rel_grid, self.similarity)

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


def _check_choice(param: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{param}={value!r} is not one of {choices}.")


@contextlib.contextmanager
def _quiet_nanmean() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layer -> NaN, silently
        yield
