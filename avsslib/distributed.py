"""Data-parallel layer statistics over several processes (``torch.distributed``, ``torchrun``).

Every process (rank) holds the whole model, streams its own shard of the calibration batches
through a ``LayerStats``, and the ranks then add their statistics up with ``all_reduce``, so
that every rank holds what one ``LayerStats`` fitted on all the batches holds. Rank 0 computes
the scores. A model too large for one device is a different problem: split it over the devices
of one process with ``avsslib.models.load_model(..., device_map="auto")``.

Usage, in a script launched by ``torchrun --nproc_per_node N script.py``::

    from avsslib.distributed import distributed_layer_stats, init_distributed

    env = init_distributed()                 # a no-op (rank 0 of 1) without torchrun
    model = model.to(env.device)
    stats, scores = distributed_layer_stats(model, batches)   # scores: rank 0 only, else None

Exactness. ``shard`` cuts the batch list into *contiguous* blocks in rank order, and
``all_reduce_stats`` lays the ranks' per-batch records side by side in rank order, so the
merged records are the single pass's records in the single pass's order, bit for bit; the
``(n_layers, d)`` token sums are added in a different order (float64 rounding, as in
``LayerStats.merge``). In faithful mode dropout draws differ between ranks and a single pass,
so only the fixed mode (``eval()``, the default) reproduces a single pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from avsslib.accumulator import STATE_FORMAT
from avsslib.errors import AvssError, ConfigError
from avsslib.scores import REGISTRY, compute_scores
from avsslib.stats import LayerStats

__all__ = [
    "STATS_SCORES",
    "DistEnv",
    "all_reduce_stats",
    "distributed_layer_stats",
    "init_distributed",
    "shard",
]

T = TypeVar("T")

STATS_SCORES: tuple[str, ...] = tuple(
    name for name, entry in REGISTRY.items() if entry.needs_stats and not entry.needs_model
)
"""The registered scores computed from statistics alone (what rank 0 can score after the
all-reduce without running the model again)."""

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its host, the
    ``device`` it should use, the ``backend`` (``None`` when not distributed) and whether
    ``init_distributed`` created the process group (``owns_group``: destroy it at the end)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    owns_group: bool

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None, device: str | None = None) -> DistEnv:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); a no-op without it.

    ``device``: ``"cuda"`` (rank ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``, made current), ``"cpu"``,
    or ``None`` (CUDA when available). ``backend``: ``None`` picks ``nccl`` for CUDA and ``gloo``
    for CPU. Without torchrun's variables, returns rank 0 of 1 on ``device`` and starts nothing.
    When a process group already exists it is used as it is (``owns_group=False``).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    present = [v for v in _TORCHRUN_VARS if v in os.environ]
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistEnv(rank, world, local, _rank_device(kind, local), dist.get_backend(), False)
    if not present:
        return DistEnv(0, 1, 0, _rank_device(kind, 0), None, False)
    if len(present) < len(_TORCHRUN_VARS):
        missing = sorted(set(_TORCHRUN_VARS) - set(present))
        raise ConfigError(
            f"the environment sets {present} but not {missing}: launch with torchrun "
            "(which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), or unset "
            "them all to run as a single process."
        )
    rank, world, local = (int(os.environ[v]) for v in _TORCHRUN_VARS)
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run a single process.")
    device_obj = _rank_device(kind, local)
    backend = backend or ("nccl" if kind == "cuda" else "gloo")
    if backend == "nccl":
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast
    if kind == "cuda":
        torch.cuda.set_device(device_obj)
    extra: dict[str, Any] = {"device_id": device_obj} if kind == "cuda" else {}
    dist.init_process_group(backend=backend, rank=rank, world_size=world, **extra)
    return DistEnv(rank, world, local, device_obj, backend, True)


def _rank_device(kind: str, local_rank: int) -> torch.device:
    if kind != "cuda":
        return torch.device(kind)
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"LOCAL_RANK={local_rank} but this host has {count} CUDA device(s): start at most "
            f"{count} processes per node (torchrun --nproc_per_node {max(count, 1)})."
        )
    return torch.device("cuda", local_rank)


def shard(batches: Iterable[T], rank: int, world_size: int) -> list[T]:
    """This rank's share of ``batches``: a *contiguous* block, in order.

    The first ``len(batches) % world_size`` ranks get one batch more than the others, so the
    sizes differ by at most one and the shards of ranks ``0, 1, ...`` concatenated give
    ``batches`` back in order. A rank gets no batch when there are fewer batches than ranks.
    Deterministic: it depends only on the number of batches, ``rank`` and ``world_size``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(
            f"shard needs 0 <= rank < world_size and world_size >= 1, got rank={rank}, "
            f"world_size={world_size}."
        )
    items = batches if isinstance(batches, Sequence) else list(batches)
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return list(items[start:stop])


def _params_tag(stats: LayerStats) -> float:
    """The accumulation parameters as a number exactly representable in float64 (48 bits)."""
    text = json.dumps(stats.accumulation_params(), sort_keys=True)
    return float(int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big"))


def _comm_device(group: Any) -> torch.device:
    """The device collectives of ``group`` take tensors on: the current CUDA device for NCCL."""
    if "nccl" in str(dist.get_backend(group)):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_stats(stats: LayerStats, group: Any = None) -> LayerStats:
    """Sum the statistics of every rank of ``group``, in place; returns ``stats``.

    Every rank of the group must call it (a collective). Afterwards every rank's ``stats``
    equals the ``LayerStats.merge`` of all ranks' statistics in rank order: the per-batch
    records are laid side by side (each rank writes its own rows into a zero buffer and the
    buffers are summed, so each record is copied exactly) and the float64 token sums are added.
    Works for any backend (``gloo`` on CPU, ``nccl`` on GPU: tensors travel on the current CUDA
    device). A rank may have no batch at all. Without an initialised process group (a single
    process) ``stats`` is returned unchanged.

    Raises ``ConfigError`` (on every rank alike) when the ranks' ``LayerStats`` were built with
    different accumulation parameters or fitted on models of different shapes, and
    ``AvssError`` when no rank has any batch.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return stats
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    device = _comm_device(group)
    have = stats.n_batches_ > 0
    mine = stats.state_dict() if have else None  # the accumulator's public state
    records = mine["records"].to(device) if mine is not None else None
    units = mine["unit_sums"].to(device) if mine is not None else None
    n_cols = len(stats.columns)

    # 1) who has what: (n_batches, n_layers, K, d, parameter tag) per rank
    header = torch.zeros(world, 5, dtype=torch.float64, device=device)
    n_layers, d = (
        (records.shape[1], units.shape[1]) if records is not None and units is not None else (0, 0)
    )
    header[rank] = torch.tensor(
        [stats.n_batches_, n_layers, n_cols, d, _params_tag(stats)], dtype=torch.float64
    )
    dist.all_reduce(header, group=group)
    table = header.cpu().tolist()
    if len({row[4] for row in table}) > 1 or len({row[2] for row in table}) > 1:
        raise ConfigError(
            "all_reduce_stats: the ranks' LayerStats were built with different accumulation "
            "parameters (eps_grid, faithful, mask_pad, pass_mask, similarity); build the same "
            "LayerStats(...) on every rank."
        )
    shapes = {(int(r[1]), int(r[3])) for r in table if r[0] > 0}
    if len(shapes) > 1:
        raise ConfigError(
            f"all_reduce_stats: the ranks fitted models of different shapes (n_layers, hidden "
            f"size) {sorted(shapes)}; every rank must run the same model."
        )
    counts = [int(r[0]) for r in table]
    total = sum(counts)
    if total == 0:
        raise AvssError(
            "all_reduce_stats: no rank has any batch; give the ranks data "
            "(shard(batches, rank, world_size)) and fit before reducing."
        )
    n_layers, d = shapes.pop()

    # 2) the records side by side in rank order, and the token sums added
    all_records = torch.zeros(total, n_layers, n_cols, dtype=torch.float64, device=device)
    all_units = torch.zeros(n_layers, d, dtype=torch.float64, device=device)
    if records is not None and units is not None:
        start = sum(counts[:rank])
        all_records[start : start + counts[rank]] = records
        all_units += units
    dist.all_reduce(all_records, group=group)
    dist.all_reduce(all_units, group=group)

    state = {
        "format": STATE_FORMAT,
        "params": stats.accumulation_params(),
        "records": all_records,
        "unit_sums": all_units,
    }
    return stats.load_state_dict(state)


def distributed_layer_stats(
    model: torch.nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    scores: Iterable[str] | None = STATS_SCORES,
    group: Any = None,
    progress: bool = False,
    **stats_kwargs: Any,
) -> tuple[LayerStats, Any]:
    """Statistics of ``model`` on all of ``batches``, each rank fitting its ``shard``.

    Every rank passes the same ``batches`` (the full list: each takes its contiguous shard)
    and its own copy of the model, already on its device. ``stats_kwargs`` go to
    ``LayerStats`` (the same on every rank). Returns ``(stats, table)``: ``stats`` is the
    all-reduced ``LayerStats`` (identical on every rank); ``table`` is, on rank 0, the
    ``avsslib.scores.compute_scores`` frame of ``scores`` (default: every score computed from
    statistics alone, ``STATS_SCORES``), on other ranks and with ``scores=None`` it is ``None``.
    Without a process group this is one ``LayerStats`` fitted on all the batches.
    """
    names = None if scores is None else list(dict.fromkeys(scores))
    if names is not None:
        wrong = [n for n in names if n not in STATS_SCORES]
        if wrong:
            raise ConfigError(
                f"distributed_layer_stats scores only from statistics; {wrong} are not among "
                f"{list(STATS_SCORES)} (scores that run the model, like ppl_removal, need "
                "avsslib.scores.score(name, model=..., batches=...) on one process)."
            )
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(group), dist.get_world_size(group)
    else:
        rank, world = 0, 1
    stats = LayerStats(**stats_kwargs)
    stats.fit(model, shard(batches, rank, world), progress=progress and rank == 0)
    all_reduce_stats(stats, group=group)
    table = compute_scores(names, stats) if names is not None and rank == 0 else None
    return stats, table
