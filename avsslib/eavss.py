"""HSAV, HSS and EAVSS: hallucination-specific layer statistics and prone layers.

Statistics are measured separately on the hallucinated answers ``H`` and the truthful answers
``T`` of :mod:`avsslib.labels`, teacher-forced on ``prompt + the model's own answer``, with one
:class:`~avsslib.stats.LayerStats` per set (fixed mode: eval, pooled aggregation; code-mode
variance: each sample's block output averaged over its counted tokens, unbiased variance over
the hidden units, mean over samples; sparsity: the fraction of counted elements with
``|h| < eps``). ``positions="answer"`` (default) counts the answer tokens only (the positions
holding the answer's tokens; a sample with an empty answer is left out), ``"all"`` counts every
token of prompt and answer.

How the answer mask reaches ``LayerStats``: ``LayerStats`` counts the positions where the
batch's ``attention_mask`` is 1 and has no separate statistics mask. The batches of
:func:`teacher_forcing_batches` are right-padded and carry the *statistics* mask under
``attention_mask``; ``LayerStats(pass_mask=False)`` then runs the model on ``input_ids`` alone.
For a causal decoder this is exact: with right padding every real token sits at its own
position ``0..len-1`` and attends only to earlier, real tokens, so the model needs no mask.
(Encoders or left padding would need a ``stats_mask`` batch key in ``LayerStats``.)

Two families of scores, with ``N[f](l) = f(l) / sum_k f(k)`` and every sparsity clamped at
``1e-12`` (a ``SparsityClampWarning`` names the set and the layers):

* **P** (default): ``HSAV = V_H``, ``HSS = S_H``, ``EAVSS = N[HSAV] / N[HSS]`` (AVSS on ``H``);
  ``AVSS_T = N[V_T] / N[S_T]``; ``delta = EAVSS / sum EAVSS - AVSS_T / sum AVSS_T``. Prone
  layers: top ``k`` by ``delta`` (default) or by ``eavss`` (the literal option).
* **C**: ``HSAV = V_H / V_T``, ``HSS = S_H / S_T``, ``EAVSS = N[HSAV] / N[HSS]``. Prone layers:
  top ``k`` by ``eavss``. (``avss_t`` is reported too; ``delta`` is NaN.)

High scores mean hallucination-prone (these are not importances: :mod:`avsslib.scores` ranks
layers to *keep*, so ``eavss`` is not in its registry). ``k = ceil(0.25 M)`` by default; ties are
broken towards the lower layer index.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from avsslib.errors import AvssError, ConfigError
from avsslib.labels import LabelledExample, encode_prompt
from avsslib.scores import SPARSITY_CLAMP, clamp_sparsity
from avsslib.stats import LayerStats

__all__ = [
    "mean_jaccard",
    "DEFAULT_BY",
    "FAMILIES",
    "POSITIONS",
    "HallucinationStats",
    "default_k",
    "eavss_profile",
    "eavss_scores",
    "hallucination_stats",
    "k_sweep",
    "profiles_matrix",
    "prone_layers",
    "prone_sweep",
    "teacher_forcing_batches",
]

FAMILIES: tuple[str, ...] = ("P", "C")
POSITIONS: tuple[str, ...] = ("answer", "all")
DEFAULT_BY: dict[str, str] = {"P": "delta", "C": "eavss"}
"""The column each family ranks prone layers by, unless told otherwise."""

Family = Literal["P", "C"]
Positions = Literal["answer", "all"]


def _check(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {tuple(choices)}.")


# ---------------------------------------------------------------------- batches and statistics
def teacher_forcing_batches(
    tokenizer: Any,
    examples: Sequence[LabelledExample],
    *,
    positions: Positions = "answer",
    batch_size: int = 8,
) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of ``prompt ids + answer ids`` for :class:`LayerStats`.

    Each batch: ``input_ids`` (long, ``(B, T)``, padded with the pad token) and
    ``attention_mask`` (long, ``(B, T)``), which here is the **statistics mask**: 1 on the
    answer tokens (``positions="answer"``) or on every real token (``"all"``), 0 elsewhere.
    Run them through ``LayerStats(pass_mask=False)`` (module docstring). Examples keep their
    order."""
    _check("positions", positions, POSITIONS)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for e in examples:
        prompt = encode_prompt(tokenizer, e.prompt, e.chat_template)
        rows.append((prompt + list(e.answer_ids), len(prompt)))
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (ids, n_prompt) in enumerate(chunk):
            input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[r, n_prompt if positions == "answer" else 0 : len(ids)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": mask})
    return batches


@dataclasses.dataclass
class HallucinationStats:
    """The statistics of the hallucinated (``hallucinated``) and truthful (``truthful``) answers;
    ``None`` for a set with no usable example. ``n_hallucinated``/``n_truthful``: examples
    measured; ``n_skipped_empty``: examples left out for an empty answer (``positions="answer"``)."""

    hallucinated: LayerStats | None
    truthful: LayerStats | None
    n_hallucinated: int
    n_truthful: int
    n_skipped_empty: int
    positions: str

    def scores(
        self, family: Family = "P", *, k: int | None = None, by: str | None = None
    ) -> pd.DataFrame:
        """:func:`eavss_scores` of the two sets; ``AvssError`` when one set is empty."""
        if self.hallucinated is None or self.truthful is None:
            raise AvssError(
                f"EAVSS needs hallucinated and truthful answers; got {self.n_hallucinated} "
                f"hallucinated and {self.n_truthful} truthful. Label more examples (--n)."
            )
        return eavss_scores(self.hallucinated, self.truthful, family, k=k, by=by)


def hallucination_stats(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[LabelledExample],
    *,
    positions: Positions = "answer",
    batch_size: int = 8,
    eps: float = 1e-5,
    variance_mode: str = "code",
    progress: bool = True,
) -> HallucinationStats:
    """Fit one :class:`LayerStats` on the hallucinated and one on the truthful ``examples``,
    teacher-forced, counting the ``positions`` tokens (module docstring). Needs a causal LM."""
    _check("positions", positions, POSITIONS)
    can_generate = getattr(model, "can_generate", None)
    if not (callable(can_generate) and can_generate()):
        raise ConfigError(
            f"{type(model).__name__} is not a causal LM: hallucination statistics "
            "teacher-force the model's answers and need a generative model."
        )
    usable = [e for e in examples if positions == "all" or e.answer_ids]
    skipped = len(examples) - len(usable)
    if skipped:
        warnings.warn(
            f"{skipped} of {len(examples)} examples have an empty answer and no answer "
            "token to measure; they are left out of the statistics.",
            RuntimeWarning,
            stacklevel=2,
        )
    fitted: dict[str, LayerStats | None] = {}
    counts: dict[str, int] = {}
    for label in ("hallucinated", "truthful"):
        subset = [e for e in usable if e.label == label]
        counts[label] = len(subset)
        if not subset:
            fitted[label] = None
            continue
        # pooled statistics do not depend on how samples are batched: group similar lengths
        subset.sort(key=lambda e: len(e.prompt) + len(e.answer_ids))
        batches = teacher_forcing_batches(
            tokenizer, subset, positions=positions, batch_size=batch_size
        )
        stats = LayerStats(
            eps=eps,
            variance_mode=variance_mode,  # type: ignore[arg-type]
            pass_mask=False,
            mask_pad=True,
            similarity=False,
        )
        fitted[label] = stats.fit(model, batches, progress=progress)
    return HallucinationStats(
        fitted["hallucinated"],
        fitted["truthful"],
        counts["hallucinated"],
        counts["truthful"],
        skipped,
        positions,
    )


# ---------------------------------------------------------------------- scores
def default_k(n_layers: int, fraction: float = 0.25) -> int:
    """``ceil(fraction * n_layers)``: 1 of 4 layers, 8 of 30, 8 of 32."""
    return max(1, math.ceil(fraction * n_layers - 1e-9))


def k_sweep(n_layers: int) -> list[int]:
    """The sweep ``{1, 2, 4, ceil(0.25 M)}`` of prone-set sizes, ascending, capped at ``M``."""
    return sorted({k for k in (1, 2, 4, default_k(n_layers)) if k <= n_layers})


def _norm(values: np.ndarray) -> np.ndarray:
    return values / values.sum()


def _array(values: Any, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size < 2:
        raise AvssError(
            f"{name} must hold one value per layer for at least 2 layers, got shape {a.shape}."
        )
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise AvssError(
            f"{name} is not finite at layers {bad.tolist()}: that sample set had no "
            "counted token there (empty answers?). Check the labels."
        )
    return a


def eavss_profile(
    v_h: Sequence[float] | np.ndarray,
    s_h: Sequence[float] | np.ndarray,
    v_t: Sequence[float] | np.ndarray,
    s_t: Sequence[float] | np.ndarray,
    family: Family = "P",
    *,
    k: int | None = None,
    by: str | None = None,
    clamp: float = SPARSITY_CLAMP,
) -> pd.DataFrame:
    """Per-layer HSAV, HSS, EAVSS profiles from the four statistics (each shape ``(M,)``:
    variances in squared activation units, sparsities as fractions).

    Returns a frame indexed by ``layer`` (0-based) with columns ``v_h``, ``s_h``, ``v_t``,
    ``s_t`` (inputs, sparsities unclamped), ``hsav``, ``hss``, ``eavss``, ``avss_t``,
    ``eavss_tilde`` and ``avss_t_tilde`` (each normalised to sum 1), ``delta`` (family P; NaN
    for C), ``prone_rank`` (0 = most prone, by ``by``) and ``prone`` (the top ``k``).
    ``frame.attrs`` holds ``family``, ``k`` and ``by``. ``k`` defaults to :func:`default_k`,
    ``by`` to ``DEFAULT_BY[family]``."""
    _check("family", family, FAMILIES)
    v_h, s_h, v_t, s_t = (
        _array(x, n) for x, n in ((v_h, "V_H"), (s_h, "S_H"), (v_t, "V_T"), (s_t, "S_T"))
    )
    if not v_h.shape == s_h.shape == v_t.shape == s_t.shape:
        raise AvssError(
            f"the statistics have different numbers of layers: {v_h.size}, "
            f"{s_h.size}, {v_t.size}, {s_t.size}."
        )
    if not clamp > 0:
        raise ConfigError(f"clamp must be > 0, got {clamp}.")
    for name, v in (("V_H", v_h), ("V_T", v_t)):
        if (v <= 0).any():
            raise AvssError(
                f"{name} is not positive at layers {np.flatnonzero(v <= 0).tolist()}; "
                "variances must be > 0 to be normalised and divided."
            )
    sh, st = clamp_sparsity(s_h, clamp, "S_H"), clamp_sparsity(s_t, clamp, "S_T")
    if family == "P":
        hsav, hss = v_h, sh
    else:
        hsav, hss = v_h / v_t, sh / st
    eavss = _norm(hsav) / _norm(hss)
    avss_t = _norm(v_t) / _norm(st)
    frame = pd.DataFrame(
        {
            "v_h": v_h,
            "s_h": s_h,
            "v_t": v_t,
            "s_t": s_t,
            "hsav": hsav,
            "hss": hss,
            "eavss": eavss,
            "avss_t": avss_t,
            "eavss_tilde": _norm(eavss),
            "avss_t_tilde": _norm(avss_t),
        }
    )
    frame["delta"] = frame["eavss_tilde"] - frame["avss_t_tilde"] if family == "P" else np.nan
    frame.index.name = "layer"
    frame.attrs["family"] = family
    return _mark_prone(frame, k, by)


def eavss_scores(
    stats_h: Any,
    stats_t: Any,
    family: Family = "P",
    *,
    k: int | None = None,
    by: str | None = None,
    clamp: float = SPARSITY_CLAMP,
) -> pd.DataFrame:
    """:func:`eavss_profile` from two fitted statistics objects (``LayerStats`` or anything with
    ``variance_`` and ``sparsity_``): ``stats_h`` on hallucinated, ``stats_t`` on truthful
    answers. When the objects have ``near_zero_counts_`` and ``element_counts_`` (as
    ``LayerStats`` does), the frame also gets the raw counts behind each sparsity:
    ``near_zero_h``, ``elements_h``, ``near_zero_t``, ``elements_t``."""
    frame = eavss_profile(
        stats_h.variance_,
        stats_h.sparsity_,
        stats_t.variance_,
        stats_t.sparsity_,
        family,
        k=k,
        by=by,
        clamp=clamp,
    )
    for tag, stats in (("h", stats_h), ("t", stats_t)):
        if hasattr(stats, "near_zero_counts_") and hasattr(stats, "element_counts_"):
            frame[f"near_zero_{tag}"] = np.asarray(stats.near_zero_counts_, dtype=np.float64)
            frame[f"elements_{tag}"] = np.asarray(stats.element_counts_, dtype=np.float64)
    return frame


def _order(frame: pd.DataFrame, by: str) -> np.ndarray:
    family = frame.attrs.get("family")
    if by not in ("delta", "eavss"):
        raise ConfigError(f"by={by!r}: rank prone layers by 'delta' or 'eavss'.")
    if by == "delta" and family == "C":
        raise ConfigError("family C has no delta; rank its prone layers by 'eavss'.")
    if by not in frame:
        raise ConfigError(f"the profile has no column {by!r} (columns: {list(frame.columns)}).")
    values = frame[by].to_numpy(dtype=np.float64)
    return np.argsort(-values, kind="stable")  # most prone first, ties: lower index


def _mark_prone(frame: pd.DataFrame, k: int | None, by: str | None) -> pd.DataFrame:
    by = by or DEFAULT_BY[frame.attrs["family"]]
    k = default_k(len(frame)) if k is None else k
    chosen = prone_layers(frame, k, by=by)
    rank = np.empty(len(frame), dtype=int)
    rank[_order(frame, by)] = np.arange(len(frame))
    frame["prone_rank"] = rank
    frame["prone"] = frame.index.isin(chosen)
    frame.attrs.update(k=k, by=by)
    return frame


def prone_layers(frame: pd.DataFrame, k: int | None = None, *, by: str | None = None) -> list[int]:
    """The ``k`` most hallucination-prone layers of an :func:`eavss_profile` frame, ascending.

    ``by``: ``"delta"`` or ``"eavss"`` (default: the family's, ``DEFAULT_BY``); the top ``k``
    by descending value, ties to the lower index. ``k`` defaults to :func:`default_k`."""
    by = by or DEFAULT_BY[frame.attrs.get("family", "P")]
    k = default_k(len(frame)) if k is None else k
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= len(frame):
        raise ConfigError(
            f"k={k!r} must be an integer between 1 and the number of layers ({len(frame)})."
        )
    return sorted(int(frame.index[i]) for i in _order(frame, by)[:k])


def prone_sweep(
    frame: pd.DataFrame, ks: Sequence[int] | None = None, *, by: str | None = None
) -> dict[int, list[int]]:
    """:func:`prone_layers` for every ``k`` of ``ks`` (default :func:`k_sweep`)."""
    return {int(k): prone_layers(frame, int(k), by=by) for k in (ks or k_sweep(len(frame)))}


def profiles_matrix(profiles: Mapping[str, pd.DataFrame], column: str) -> pd.DataFrame:
    """One column of several profiles side by side: layers x names (e.g. datasets)."""
    return pd.DataFrame({name: p[column] for name, p in profiles.items()})


def mean_jaccard(sets: Sequence[Iterable[int]]) -> float:
    """Mean Jaccard similarity ``|A & B| / |A | B|`` over every pair of the given layer sets
    (1 for equal sets, 0 for disjoint ones); NaN with fewer than two sets."""
    as_sets = [set(int(i) for i in s) for s in sets]
    pairs = [(a, b) for i, a in enumerate(as_sets) for b in as_sets[i + 1 :]]
    if not pairs:
        return float("nan")
    return float(np.mean([len(a & b) / len(a | b) if a | b else 1.0 for a, b in pairs]))
