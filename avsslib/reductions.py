"""The per-batch reductions of block outputs (tensor in, record out) and what a record means.

``reduce_block_output`` does all the work on a block's hidden states ``h`` (a few reductions
over the hidden dimension, float32, on ``h``'s device, no host synchronisation) and
``batch_record`` turns the stacked reductions of every layer into one batch's *record*: one
float64 row of plain sums per layer, columns named by ``record_columns``. Every column except
``rport_var`` is a sum over the batch's counted samples or tokens, so the record of a union of
batches is the sum of their records; ``derive`` reads a statistic (a variance, a fraction, a
mean) off records or their sums. Pure functions: no hooks, no state (``avsslib.tap`` collects
the block outputs in forward hooks, ``avsslib.accumulator`` adds the records up). Writes no
file.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "FIXED_COLUMNS",
    "SIM_COLUMNS",
    "UPDATE_COLUMNS",
    "batch_record",
    "derive",
    "record_columns",
    "reduce_block_output",
]

FIXED_COLUMNS: tuple[str, ...] = (
    "samples",  # number of samples with at least one counted token
    "tokens",  # number of counted tokens (element count = tokens * d)
    "sample_var",  # sum over samples of the unbiased variance over d of the pooled state
    "rport_var",  # population variance over d of the batch's token-mean state
    "sum",  # sum of h over counted elements
    "sum_sq",  # sum of h**2 over counted elements
    "token_sum_sq",  # sum over counted tokens of (sum over d of h)**2
)
"""The record columns every record has, in order (then one ``near_<eps>`` count per threshold
of the near-zero grid and one ``relnear_<r>`` count per relative threshold)."""
SIM_COLUMNS: tuple[str, ...] = ("cos_dist", "angle")
"""With the similarity rows: sums over counted tokens of ``1 - cos`` and ``arccos / pi``."""
UPDATE_COLUMNS: tuple[str, ...] = ("upd_sum", "upd_sum_sq", "upd_token_sum_sq")
"""With similarity and relative thresholds: sums over counted elements of the block update
``u``, ``u**2`` and over counted tokens of ``(sum over d of u)**2``; then one ``updnear_<r>``
count of ``|u| < r`` per relative threshold."""


def record_columns(
    eps_grid: tuple[float, ...], rel_grid: tuple[float, ...], similarity: bool
) -> tuple[str, ...]:
    """The names of a record's columns (its last axis), as ``batch_record`` lays them out for
    ``len(eps_grid)`` near-zero and ``len(rel_grid)`` relative thresholds, with or without
    the similarity rows."""
    near = tuple(f"near_{e:g}" for e in eps_grid)
    rel = tuple(f"relnear_{r:g}" for r in rel_grid)
    sim = SIM_COLUMNS if similarity else ()
    upd = (
        UPDATE_COLUMNS + tuple(f"updnear_{r:g}" for r in rel_grid)
        if similarity and rel_grid
        else ()
    )
    return FIXED_COLUMNS + near + rel + sim + upd


def reduce_block_output(
    h: torch.Tensor,
    w: torch.Tensor,
    eps_grid: tuple[float, ...],
    h_in: torch.Tensor | None = None,
    rel_grid: tuple[float, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token and per-sample reductions of block outputs: all the work on ``h`` itself.

    A few reductions over the hidden dimension, no host synchronisation, outputs far smaller
    than ``h``; everything else happens once per batch in ``batch_record``. Float32
    throughout; near-zero tests are strict (``|h| < eps``) in float32, like the official
    ``h.abs() < 1e-5`` on float32 states. Leading dimensions (``...``) are carried through,
    so several layers' outputs can be reduced in one call.

    Args:
        h: block outputs, shape ``(..., B, T, d)``, any float dtype.
        w: token mask, shape ``(B, T)``, float32, 1.0 for counted positions and 0.0 for pads.
        eps_grid: near-zero thresholds.
        h_in: the blocks' inputs, shape of ``h``, for the similarity rows (optional).
        rel_grid: relative thresholds ``r`` (scale-aware rows; ``()`` for none).

    Returns:
        ``tok``: float32, shape ``(..., C, B, T)``, rows ``sum_d h``, ``sum_d h^2``, one
        near-zero count per threshold, one count of ``|h| < r * rms(token)`` per ``r`` and, with
        ``h_in``, ``<h_in, h>`` and ``|h_in|`` and, with ``h_in`` and ``rel_grid``, the update
        rows ``sum_d (h - h_in)``, ``sum_d (h - h_in)^2`` and one count of
        ``|h - h_in| < r * rms(h_in)`` per ``r``;
        ``pooled``: float32, shape ``(..., B, d)``, the masked token sum ``sum_t w_bt h_bt``.
    """
    x = h.float()
    a = x.abs()
    d = x.shape[-1]
    compiling = torch.compiler.is_compiling()
    # comparisons written as 0.0/1.0 into one float buffer: ~4x faster than bool on CPU
    indicator = None if compiling else torch.empty_like(a)

    def count(values: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
        if indicator is None:
            return (values < threshold).sum(-1, dtype=torch.float32)
        return torch.lt(values, threshold, out=indicator).sum(-1)

    sum_sq = torch.linalg.vector_norm(x, dim=-1).square()
    rows = [x.sum(-1), sum_sq]
    rows += [count(a, eps) for eps in eps_grid]
    if rel_grid:
        rms = (sum_sq / d).sqrt().unsqueeze(-1)
        rows += [count(a, rms * r) for r in rel_grid]
    if h_in is not None:
        x_in = h_in.float()
        norm_in = torch.linalg.vector_norm(x_in, dim=-1)
        rows += [torch.linalg.vecdot(x_in, x, dim=-1), norm_in]
        if rel_grid:
            delta = x - x_in
            rows += [delta.sum(-1), torch.linalg.vector_norm(delta, dim=-1).square()]
            delta = delta.abs_()
            rms_in = (norm_in / math.sqrt(d)).unsqueeze(-1)
            rows += [count(delta, rms_in * r) for r in rel_grid]
    pooled = (x * w.unsqueeze(-1)).sum(-2)
    return torch.stack(rows, dim=-3), pooled


def batch_record(
    tok: torch.Tensor, pooled: torch.Tensor, w: torch.Tensor, n_near: int, n_rel: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's record rows from the stacked outputs of ``reduce_block_output``.

    Args:
        tok: float32, shape ``(L, C, B, T)`` (``C = 2 + n_near + n_rel``, plus 2 similarity
            rows and, with ``n_rel``, ``2 + n_rel`` update rows).
        pooled: float32, shape ``(L, B, d)``.
        w: token mask, shape ``(B, T)``.
        n_near: number of near-zero thresholds.
        n_rel: number of relative thresholds.

    Returns:
        ``record``: float64, shape ``(L, K)``, columns as ``record_columns``;
        ``unit``: float64, shape ``(L, d)``, the sum over counted tokens of ``h``.
    """
    n_layers, _, _, _ = tok.shape
    d = pooled.shape[-1]
    w64 = w.double().reshape(-1)  # (B*T,)
    t = tok.double().flatten(2)  # (L, C, B*T)
    s1, s2 = t[:, 0], t[:, 1]
    j = 2 + n_near + n_rel
    rows = [s1, s2, s1 * s1, t[:, 2:j]]
    if t.shape[1] > j:  # similarity rows
        dot, norm_in = t[:, j], t[:, j + 1]
        cos = (dot / (norm_in * s2.sqrt())).clamp(-1.0, 1.0)
        rows += [1.0 - cos, torch.arccos(cos) / math.pi]
        if n_rel:  # block update, / rms(h_in)
            scale = (norm_in / math.sqrt(d)).clamp(min=torch.finfo(torch.float32).tiny)
            u1 = t[:, j + 2] / scale
            rows += [u1, t[:, j + 3] / (scale * scale), u1 * u1, t[:, j + 4 : j + 4 + n_rel]]
    rows = [r.unsqueeze(1) if r.dim() == 2 else r for r in rows]
    token_sums = torch.cat(rows, 1) @ w64  # (L, C')

    n_b = w.double().sum(1)  # (B,) tokens per sample
    valid = (n_b > 0).double()
    p = pooled.double()  # (L, B, d)
    sample_var = (p / n_b.clamp(min=1.0).view(1, -1, 1)).var(dim=-1) @ valid  # (L,)
    unit = p.sum(1)  # (L, d)
    n_tok = w64.sum()
    rport_var = unit.var(dim=-1, correction=0) / (n_tok * n_tok)  # (L,)
    counts = torch.stack([valid.sum(), n_tok]).expand(n_layers, 2)
    head = torch.stack([sample_var, rport_var], 1)
    return torch.cat([counts, head, token_sums], 1), unit


def derive(rec: np.ndarray, columns: tuple[str, ...], name: str, d: int) -> np.ndarray:
    """One statistic from records: what the record columns mean.

    Args:
        rec: records (or sums of records), float64, shape ``(n, L, K)``.
        columns: their column names (``record_columns``).
        name: ``sample_var`` (code variance), ``rport_var``, ``flat_var`` (population variance
            of all elements), ``near_<eps>``, ``relnear_<r>``, ``updnear_<r>`` (fractions of
            elements), ``mean_elem``, ``mean_square``, ``token_var`` (unbiased variance over
            ``d``, mean over tokens), ``cos_dist_mean``, ``angle_mean`` (means over tokens),
            ``upd_mean_square``, ``upd_flat_var``, ``upd_token_var`` (the block update's).
        d: the hidden size.

    Returns the values, shape ``(n, L)``; NaN where no token counts. ``KeyError`` for another
    ``name``.
    """
    c = {n: rec[..., i] for i, n in enumerate(columns)}
    with np.errstate(invalid="ignore", divide="ignore"):
        tokens = np.where(c["tokens"] > 0, c["tokens"], np.nan)
        elements = tokens * d
        if name == "sample_var":
            return c["sample_var"] / np.where(c["samples"] > 0, c["samples"], np.nan)
        if name == "rport_var":
            return np.where(c["tokens"] > 0, c["rport_var"], np.nan)
        if name.startswith(("near_", "relnear_", "updnear_")):
            return c[name] / elements
        if name == "mean_elem":
            return c["sum"] / elements
        # the same moments of h (columns sum, ...) and of the block update (upd_sum, ...)
        p, moment = ("upd_", name[4:]) if name.startswith("upd_") else ("", name)
        if moment == "mean_square":
            return c[p + "sum_sq"] / elements
        if moment == "flat_var":  # population variance of all elements
            return c[p + "sum_sq"] / elements - (c[p + "sum"] / elements) ** 2
        if moment == "token_var":  # unbiased variance over d, mean over tokens
            return (c[p + "sum_sq"] - c[p + "token_sum_sq"] / d) / (d - 1) / tokens
        if name == "cos_dist_mean":
            return c["cos_dist"] / tokens
        if name == "angle_mean":
            return c["angle"] / tokens
    raise KeyError(name)
