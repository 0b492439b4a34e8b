"""The losses of the contrastive mitigation: InfoNCE, SupCon, answer-token means of block
outputs, the projection heads, and the hooks that capture block outputs."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from avsslib.arch import blocks

# ---------------------------------------------------------------- losses


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_mask: torch.Tensor | None = None,
    *,
    tau: float = 0.07,
    in_batch: bool = False,
) -> torch.Tensor:
    """InfoNCE, mean over the batch: ``-log e^{s(a,p)} / (e^{s(a,p)} + sum_k e^{s(a,n_k)})``.

    ``anchor``, ``positive``: (B, D); ``negatives``: (B, K, D) with ``negative_mask`` (B, K)
    True where a negative exists (default all). Vectors are L2-normalised here, so
    ``s(u, v) = <u/|u|, v/|v|> / tau`` (cosine over temperature). ``in_batch=True`` adds the
    positives of the other questions as negatives. Returns a scalar.
    """
    a, p, n = (F.normalize(x.float(), dim=-1) for x in (anchor, positive, negatives))
    pos = (a * p).sum(-1, keepdim=True) / tau
    neg = torch.einsum("bd,bkd->bk", a, n) / tau
    if negative_mask is not None:
        neg = neg.masked_fill(~negative_mask, -math.inf)
    parts = [pos, neg]
    if in_batch and len(a) > 1:
        eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
        parts.append((a @ p.T / tau).masked_fill(eye, -math.inf))
    return -torch.log_softmax(torch.cat(parts, dim=1), dim=1)[:, 0].mean()


def supcon(z: torch.Tensor, labels: torch.Tensor, *, tau: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "L_out") over M vectors ``z`` (M, D)
    with class ``labels`` (M,) (here 1 = truthful answer, 0 = hallucinated): each vector pulls
    the others of its class and pushes the rest. Vectors without a same-class partner are
    skipped; 0 when none has one. Returns a scalar."""
    z = F.normalize(z.float(), dim=-1)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logp = torch.log_softmax((z @ z.T / tau).masked_fill(eye, -math.inf), dim=1)
    same = (labels[:, None] == labels[None, :]) & ~eye
    count = same.sum(1)
    ok = count > 0
    if not ok.any():
        return z.sum() * 0.0
    return -(logp.masked_fill(~same, 0.0).sum(1)[ok] / count[ok]).mean()


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (N, T, D) over the positions where ``mask`` (N, T) is True -> (N, D),
    in float32 (zeros for a row without any)."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


@contextlib.contextmanager
def capture_blocks(
    model: torch.nn.Module, layers: Iterable[int]
) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks on ``blocks(model)[l]``: inside the block, ``store[l]`` is block ``l``'s
    output hidden states (N, T, D) of the latest forward pass (first element when a block
    returns a tuple), still attached to the autograd graph."""
    store: dict[int, torch.Tensor] = {}
    mods = blocks(model)
    handles = []
    for layer in layers:

        def hook(_m: torch.nn.Module, _args: Any, output: Any, layer: int = layer) -> None:
            store[layer] = output[0] if isinstance(output, tuple) else output

        handles.append(mods[layer].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


class ProjectionHead(torch.nn.Sequential):
    """The optional ``g_l``: Linear(d, d) - ReLU - Linear(d, out_dim); discarded after training."""

    def __init__(self, d: int, out_dim: int = 256) -> None:
        super().__init__(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, out_dim))


__all__ = [
    "ProjectionHead",
    "capture_blocks",
    "info_nce",
    "masked_mean",
    "supcon",
]
