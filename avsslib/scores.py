"""Per-layer importance scores: pure functions from statistics to arrays.

One convention for every score: **importance, higher = keep**. A score is an array of shape
``(n_layers,)``; the layers with the *lowest* values are the ones to prune
(``avsslib.selection.select_layers``).

Scores live in ``REGISTRY`` (name -> ``Score``) and share one signature::

    fn(stats, *, model=None, batches=None, seed=0) -> np.ndarray

``stats`` is a fitted ``LayerStats`` (or any object with the attributes the score reads, e.g.
``variance_`` and ``sparsity_``); scores that run the model (``needs_model``) get ``model`` and
``batches``. Add a score with the ``register`` decorator.

Registered here:

* ``avss``: NAV / NAS, the normalised variance over the normalised sparsity. It equals the official ``V / S`` times one constant shared by all layers, so rankings,
  NAVSS and the cumulative sums are the same (tested). Sparsities are clamped at ``1e-12`` with a ``SparsityClampWarning`` naming the layers with no near-zero value.
* ``block_influence``: mean ``1 - cos(block input, block output)`` (ShortGPT).
* ``angular``: mean ``arccos(cos(input, output)) / pi`` (Gromov et al., ``n = 1``).
* ``ppl_removal``: the increase of the mean token loss when the block alone is skipped
  (measured by ``avsslib.removal``); needs the model and batches.
* ``random``: uniform random importance from ``numpy.random.default_rng(seed)``.
* ``tail``: ``n_layers - index``: prunes the last layers first.

Scale-aware variants of AVSS (``avsslib.stats`` accumulates their statistics in the same
pass; ``r`` runs over :data:`avsslib.stats.DEFAULT_REL_GRID`, e.g. ``avss_rel_0.01``):

* ``avss_rel_<r>``: NAV / NAS with the sparsity counted at a threshold relative to each token's
  RMS (``|h| < r * rms``) instead of the absolute ``eps``;
* ``var_ratio``: the variance over the mean square of the elements (``variance_ /
  mean_square_``): a spread that does not grow with the residual stream's norm;
* ``scalefree_avss_<r>``: ``var_ratio`` normalised over the relative sparsity normalised
  (both factors scale-free);
* ``update_variance``: the variance of the block update ``u = (h_out - h_in) / rms(h_in)``
  (what the block adds, in units of its input) instead of the residual stream;
* ``update_avss_<r>``: NAV / NAS computed on the block update, its sparsity ``|u| < r``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from avsslib.errors import AvssError, ConfigError
from avsslib.moved import moved_names

__all__ = [
    "REGISTRY",
    "SPARSITY_CLAMP",
    "Score",
    "SparsityClampWarning",
    "avss_values",
    "clamp_sparsity",
    "compute_scores",
    "cumulative",
    "navss",
    "register",
    "score",
]

SPARSITY_CLAMP = 1e-12
"""Sparsities below this value are raised to it before dividing."""


class SparsityClampWarning(UserWarning):
    """Some layer had no near-zero activation at all: its sparsity was clamped."""


def clamp_sparsity(s: np.ndarray, clamp: float, name: str, *, stacklevel: int = 2) -> np.ndarray:
    """``s`` raised to ``clamp`` where it is below; a :class:`SparsityClampWarning` names those
    layers (``name``: what ``s`` is called in the message; ``stacklevel`` as seen from the caller,
    2 = the caller's caller)."""
    low = np.flatnonzero(s < clamp)
    if low.size:
        warnings.warn(
            f"{name} is below {clamp:g} (no near-zero activation) at layers {low.tolist()}: "
            f"clamped to {clamp:g}, so the ratios there are huge; consider a larger eps or "
            "more data.",
            SparsityClampWarning,
            stacklevel=stacklevel + 1,
        )
    return np.maximum(s, clamp)


ScoreFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Score:
    """A registered score: the function, whether it runs the model, and one line of help."""

    name: str
    fn: ScoreFn
    needs_model: bool  # runs the model: score() needs model= and batches=
    needs_stats: bool  # reads a fitted LayerStats
    description: str


REGISTRY: dict[str, Score] = {}


def register(
    name: str, *, needs_model: bool = False, needs_stats: bool = True, replace: bool = False
) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding ``fn`` to ``REGISTRY`` under ``name`` (its docstring's first line is the
    description). ``fn(stats, *, model, batches, seed)`` returns importance, higher = keep.

    A name already registered is refused (``ConfigError`` naming the function that holds it):
    two scores under one name would silently change what every table calls that score. Pass
    ``replace=True`` to swap an implementation deliberately (e.g. in a notebook experiment)."""

    def decorate(fn: ScoreFn) -> ScoreFn:
        if name in REGISTRY and not replace:
            held = REGISTRY[name].fn
            raise ConfigError(
                f"score {name!r} is already registered (by {held.__module__}.{held.__qualname__}); "
                "choose another name, or pass register(..., replace=True) to replace it."
            )
        doc = (fn.__doc__ or "").strip().splitlines()
        REGISTRY[name] = Score(name, fn, needs_model, needs_stats, doc[0] if doc else "")
        return fn

    return decorate


# ---------------------------------------------------------------------- AVSS arithmetic
def avss_values(
    variance: Sequence[float] | np.ndarray,
    sparsity: Sequence[float] | np.ndarray,
    clamp: float = SPARSITY_CLAMP,
) -> np.ndarray:
    """``AVSS(l) = NAV(l) / NAS(l)`` with ``NAV = V / sum V`` and ``NAS = S / sum S``.

    Args:
        variance: per-layer activation variance ``V``, shape ``(M,)``.
        sparsity: per-layer near-zero fraction ``S``, shape ``(M,)``; values below ``clamp``
            are raised to ``clamp`` (a ``SparsityClampWarning`` names those layers).
        clamp: the floor of ``S``.

    Returns: float64 array of shape ``(M,)``; higher = more important.

    Raises ``AvssError`` for NaN or infinite inputs (naming the layers; float16 overflow gives
    them), negative values or an all-zero variance, fewer than two layers, or shapes that
    differ; ``ConfigError`` for ``clamp <= 0``.
    """
    v = np.asarray(variance, dtype=np.float64)
    s = np.asarray(sparsity, dtype=np.float64)
    if v.shape != s.shape or v.ndim != 1:
        raise AvssError(
            f"variance and sparsity must be 1-D arrays of the same length, got shapes "
            f"{v.shape} and {s.shape}."
        )
    if v.size < 2:
        raise AvssError(f"AVSS normalises over layers and needs at least 2 layers, got {v.size}.")
    if not clamp > 0:
        raise ConfigError(f"clamp must be > 0, got {clamp}.")
    for test, why in (
        (
            np.isnan,
            "is NaN at layers {}: those layers saw no counted token (all padding?) or "
            "their activations overflowed (float16). Check the batches and the attention mask, "
            "or compute the statistics in float32.",
        ),
        (
            np.isinf,
            "is infinite at layers {}: the activations overflowed (float16 holds at "
            "most 65504). Compute the statistics in float32 (--dtype float32) or bfloat16.",
        ),
    ):
        bad = np.flatnonzero(test(v) | test(s))
        if bad.size:
            raise AvssError("variance or sparsity " + why.format(bad.tolist()))
    if (v < 0).any() or (s < 0).any() or not v.sum() > 0:
        raise AvssError(
            f"variance must be >= 0 with a positive sum over layers and sparsity >= 0, got "
            f"variance {v.tolist()} and sparsity {s.tolist()}: these are not activation "
            "statistics (constant activations?). Check the statistics passed in."
        )
    s = clamp_sparsity(s, clamp, "sparsity")
    return (v / v.sum()) / (s / s.sum())


def navss(avss: Sequence[float] | np.ndarray) -> np.ndarray:
    """Normalised AVSS, ``AVSS / sum AVSS`` (sums to 1); shape ``(M,)``."""
    a = np.asarray(avss, dtype=np.float64)
    return a / a.sum()


def cumulative(navss_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Cumulative NAVSS in layer order, ``C(l) = sum_{k <= l} NAVSS(k)``.

    This is the quantity the official ``AVSS.py`` thresholds (the ``code_bug`` rule)."""
    return np.cumsum(np.asarray(navss_values, dtype=np.float64))


# ---------------------------------------------------------------------- registered scores
@register("avss")
def _avss(stats: Any, **_: Any) -> np.ndarray:
    """NAV / NAS from the statistics' variance_ and sparsity_."""
    return avss_values(stats.variance_, stats.sparsity_)


@register("block_influence")
def _block_influence(stats: Any, **_: Any) -> np.ndarray:
    """Mean 1 - cos(block input, block output) over tokens (ShortGPT's BI)."""
    return np.asarray(stats.cosine_distance_, dtype=np.float64)


@register("angular")
def _angular(stats: Any, **_: Any) -> np.ndarray:
    """Mean arccos(cos(input, output)) / pi over tokens (Gromov et al., n = 1)."""
    return np.asarray(stats.angular_distance_, dtype=np.float64)


def _rel_grid() -> tuple[float, ...]:
    from avsslib.stats import DEFAULT_REL_GRID

    return DEFAULT_REL_GRID


def _var_ratio_values(stats: Any) -> np.ndarray:
    v = np.asarray(stats.variance_, dtype=np.float64)
    ms = np.asarray(stats.mean_square_, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / ms


@register("var_ratio")
def _var_ratio(stats: Any, **_: Any) -> np.ndarray:
    """Variance over mean square of the elements (scale-free spread of the residual stream)."""
    return _var_ratio_values(stats)


@register("update_variance")
def _update_variance(stats: Any, **_: Any) -> np.ndarray:
    """Variance of the block update (h_out - h_in) / rms(h_in) over all counted elements."""
    return np.asarray(stats.update_variance_, dtype=np.float64)


def _register_relative(r: float) -> None:
    """Register the three scale-aware AVSS variants at relative threshold ``r``."""

    def rel(stats: Any, **_: Any) -> np.ndarray:
        return avss_values(stats.variance_, stats.get_rel_sparsity(r))

    def scalefree(stats: Any, **_: Any) -> np.ndarray:
        return avss_values(_var_ratio_values(stats), stats.get_rel_sparsity(r))

    def update(stats: Any, **_: Any) -> np.ndarray:
        return avss_values(stats.update_variance_, stats.get_update_sparsity(r))

    rel.__doc__ = f"NAV / NAS with the sparsity |h| < {r:g} x the token's RMS."
    scalefree.__doc__ = f"var_ratio normalised over the sparsity |h| < {r:g} x RMS normalised."
    update.__doc__ = f"NAV / NAS of the block update u = (h_out - h_in) / rms(h_in), |u| < {r:g}."
    register(f"avss_rel_{r:g}")(rel)
    register(f"scalefree_avss_{r:g}")(scalefree)
    register(f"update_avss_{r:g}")(update)


for _r in _rel_grid():
    _register_relative(_r)


@register("random", needs_stats=False)
def _random(
    stats: Any, *, model: torch.nn.Module | None = None, seed: int = 0, **_: Any
) -> np.ndarray:
    """Uniform random importance, seeded (numpy default_rng(seed))."""
    return np.random.default_rng(seed).random(_n_layers(stats, model))


@register("tail", needs_stats=False)
def _tail(stats: Any, *, model: torch.nn.Module | None = None, **_: Any) -> np.ndarray:
    """n_layers - index: the last layers are the least important."""
    n = _n_layers(stats, model)
    return np.arange(n, 0, -1, dtype=np.float64)


@register("ppl_removal", needs_model=True, needs_stats=False)
def _ppl_removal(
    stats: Any,
    *,
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    progress: bool = True,
    **_: Any,
) -> np.ndarray:
    """Increase of the mean token loss (nats) when the block alone is skipped."""
    from avsslib.removal import removal_losses

    base, removed = removal_losses(model, batches, progress=progress)
    return removed - base


# ---------------------------------------------------------------------- front door
def score(
    name: str,
    stats: Any = None,
    *,
    model: torch.nn.Module | None = None,
    batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> np.ndarray:
    """The registered score ``name``: importance per layer, shape ``(n_layers,)``, higher = keep."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown score {name!r}; registered scores: {sorted(REGISTRY)}.")
    entry = REGISTRY[name]
    if entry.needs_model and (model is None or batches is None):
        raise ConfigError(f"score {name!r} runs the model: pass model= and batches=.")
    if entry.needs_stats and stats is None:
        raise ConfigError(f"score {name!r} is computed from statistics: pass a fitted LayerStats.")
    result = entry.fn(stats, model=model, batches=batches, seed=seed, **kwargs)
    return np.asarray(result, dtype=np.float64)


def compute_scores(
    names: Iterable[str],
    stats: Any = None,
    *,
    model: torch.nn.Module | None = None,
    batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    seed: int = 0,
    progress: bool = False,
):
    """Several scores side by side: a ``pandas.DataFrame`` indexed by ``layer`` with one
    column per score name (importance, higher = keep). ``progress``: progress bars and time
    estimates of the scores that run the model (``ppl_removal``)."""
    import pandas as pd

    columns = {
        name: score(
            name,
            stats,
            model=model,
            batches=batches,
            seed=seed,
            **({"progress": progress} if name in REGISTRY and REGISTRY[name].needs_model else {}),
        )
        for name in names
    }
    lengths = {name: len(v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise AvssError(f"scores have different numbers of layers: {lengths}.")
    frame = pd.DataFrame(columns)
    frame.index.name = "layer"
    return frame


def _n_layers(stats: Any, model: torch.nn.Module | None) -> int:
    if stats is not None:
        n = getattr(stats, "n_layers_", None)
        return int(n) if n is not None else len(stats.variance_)
    if model is not None:
        from avsslib.arch import blocks

        return len(blocks(model))
    raise ConfigError("pass a fitted LayerStats or a model to know the number of layers.")


__getattr__ = moved_names(
    __name__,
    dict.fromkeys(("mean_token_loss", "removal_losses", "removal_losses_plain"), "avsslib.removal"),
)
