"""Data-parallel statistics (avsslib.distributed): two gloo processes give a single pass's values.

The two-process test spawns real processes (torch.multiprocessing, gloo on 127.0.0.1) that
fit a tiny random Llama on their shards and all-reduce; the parent compares with one
``LayerStats`` fitted on all the batches. Several cases run in one spawn to keep it short.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avsslib.distributed import (
    STATS_SCORES,
    all_reduce_stats,
    distributed_layer_stats,
    init_distributed,
    shard,
)
from avsslib.errors import AvssError, ConfigError
from avsslib.scores import compute_scores
from avsslib.stats import LayerStats

# (name, number of batches, LayerStats keyword arguments); 2 ranks each
CASES = [
    ("even", 4, {}),
    ("uneven", 5, {}),
    ("per_batch", 7, {"aggregate": "batch", "variance_mode": "r_port"}),
    ("fewer_batches_than_ranks", 1, {}),
]
RTOL = 1e-6


#: the model of these tests: 4 blocks, hidden 64 (the ``tiny_model`` fixture of conftest.py)
SIZES = dict(vocab_size=256, hidden_size=64, intermediate_size=128, max_position_embeddings=64)


def make_batches(n: int) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of 3 x 12 random tokens with right padding of varying length."""
    g = torch.Generator().manual_seed(n)
    out = []
    for i in range(n):
        ids = torch.randint(1, 256, (3, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 12 - 1 - i % 6 :] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    """One rank: every case through distributed_layer_stats; rank 0 saves what it got."""
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    env = init_distributed(device="cpu")
    assert env.distributed and env.owns_group and env.backend == "gloo"
    try:
        model = torch.load(Path(folder) / "model.pt", weights_only=False)  # the parent's model
        for name, n, kwargs in CASES:
            stats, table = distributed_layer_stats(model, make_batches(n), **kwargs)
            assert (table is None) == (rank != 0)
            if rank == 0:
                torch.save(
                    {"state": stats.state_dict(), "table": table.to_dict("list")},
                    Path(folder) / f"{name}.pt",
                )
        # ranks built with different parameters: every rank raises, nobody hangs
        try:
            distributed_layer_stats(model, make_batches(2), similarity=rank == 0)
        except ConfigError as exc:
            (Path(folder) / f"mismatch{rank}.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_64: torch.nn.Module
) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("dist")
    model = tiny_llama_64
    torch.save(model, folder / "model.pt")
    mp.spawn(_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
    return folder, model


def _assert_same(merged: LayerStats, one: LayerStats) -> None:
    np.testing.assert_array_equal(merged.records_, one.records_)  # records: copied exactly
    a, b = merged.to_frame(), one.to_frame()
    assert list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=RTOL, atol=0)


@pytest.mark.filterwarnings("ignore::avsslib.scores.SparsityClampWarning")
@pytest.mark.parametrize("name,n,kwargs", CASES, ids=[c[0] for c in CASES])
def test_two_ranks_equal_one_pass(two_ranks, name: str, n: int, kwargs: dict) -> None:
    folder, model = two_ranks
    saved = torch.load(folder / f"{name}.pt", weights_only=False)
    one = LayerStats(**kwargs).fit(model, make_batches(n), progress=False)
    merged = LayerStats.from_state_dict(saved["state"])
    assert merged.n_batches_ == n
    _assert_same(merged, one)
    for mode in ("code", "r_port", "flat"):
        for aggregate in ("batch", "pooled"):
            np.testing.assert_allclose(
                merged.get_variance(mode, aggregate),
                one.get_variance(mode, aggregate),
                rtol=RTOL,
                atol=0,
            )
    expected = compute_scores(STATS_SCORES, one)
    assert set(saved["table"]) == set(STATS_SCORES) >= {"avss", "block_influence"}
    for score in STATS_SCORES:
        np.testing.assert_allclose(saved["table"][score], expected[score], rtol=RTOL, atol=0)


def test_mismatched_ranks_raise_on_every_rank(two_ranks) -> None:
    folder, _ = two_ranks
    for rank in (0, 1):
        message = (folder / f"mismatch{rank}.txt").read_text()
        assert "different accumulation parameters" in message


def test_world_size_one_group_and_no_group(tiny_llama_64) -> None:
    batches = make_batches(3)
    one = LayerStats().fit(tiny_llama_64, batches, progress=False)
    # no process group: nothing to reduce, distributed_layer_stats is a plain fit
    alone, table = distributed_layer_stats(tiny_llama_64, batches)
    _assert_same(alone, one)
    assert list(table.columns) == list(STATS_SCORES)
    # a real process group of one rank
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        reduced, _ = distributed_layer_stats(tiny_llama_64, batches)
        _assert_same(reduced, one)
        with pytest.raises(AvssError, match="no rank has any batch"):
            all_reduce_stats(LayerStats())
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_llama_64(tiny_model) -> torch.nn.Module:
    return tiny_model("llama", **SIZES)


# ---------------------------------------------------------------------- shard / init
@pytest.mark.parametrize("n", [0, 1, 5, 7, 8])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_is_contiguous_and_balanced(n: int, world: int) -> None:
    items = list(range(n))
    parts = [shard(items, r, world) for r in range(world)]
    assert sum(parts, []) == items  # rank order gives the batches back
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert shard(iter(items), world - 1, world) == parts[-1]  # any iterable


def test_shard_rejects_bad_rank() -> None:
    with pytest.raises(ConfigError, match="rank"):
        shard([1, 2], 2, 2)
    with pytest.raises(ConfigError, match="world_size"):
        shard([1, 2], 0, 0)


def test_init_without_torchrun_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = init_distributed(device="cpu")
    assert (env.rank, env.world_size, env.distributed, env.is_main) == (0, 1, False, True)
    assert not dist.is_initialized()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="torchrun"):
        init_distributed(device="cpu")


def test_distributed_rejects_scores_that_run_the_model(tiny_llama_64) -> None:
    with pytest.raises(ConfigError, match="ppl_removal"):
        distributed_layer_stats(tiny_llama_64, make_batches(1), scores=["avss", "ppl_removal"])


# ---------------------------------------------------------------------- device_map
def test_load_model_with_device_map(tiny_llama_64, tmp_path: Path) -> None:
    """device_map is passed to from_pretrained; the statistics are those of the plain model."""
    from test_models import _tiny_tokenizer

    from avsslib.models import load_model

    tiny_llama_64.save_pretrained(tmp_path)
    _tiny_tokenizer().save_pretrained(tmp_path)
    batches = make_batches(2)
    one = LayerStats().fit(tiny_llama_64, batches, progress=False)
    for device_map in ("auto", {"": "cpu"}):
        model, _ = load_model(tmp_path, device_map=device_map)
        assert not model.training
        _assert_same(LayerStats().fit(model, batches, progress=False), one)


def test_blocks_behind_accelerate_hooks(tiny_llama_64, tmp_path: Path) -> None:
    """Blocks dispatched by accelerate (half of them offloaded, run through its hooks) give
    the plain model's records exactly; the CPU stand-in for blocks on several devices."""
    import copy

    from accelerate import dispatch_model

    batches = make_batches(2)
    one = LayerStats().fit(tiny_llama_64, batches, progress=False)
    device_map = {**two_device_map(), "model.layers.2": "disk", "model.layers.3": "disk"}
    device_map = {k: "cpu" if v in (0, 1) else v for k, v in device_map.items()}
    split = dispatch_model(
        copy.deepcopy(tiny_llama_64),
        device_map=device_map,
        offload_dir=str(tmp_path),
        main_device="cpu",
    )
    assert hasattr(split.model.layers[3], "_hf_hook")
    np.testing.assert_array_equal(
        LayerStats().fit(split, batches, progress=False).records_, one.records_
    )


def two_device_map() -> dict[str, int]:
    """Embeddings and blocks 0-1 on device 0; blocks 2-3, the final norm and the head on 1."""
    return {
        "model.embed_tokens": 0,
        "model.rotary_emb": 0,
        "model.layers.0": 0,
        "model.layers.1": 0,
        "model.layers.2": 1,
        "model.layers.3": 1,
        "model.norm": 1,
        "lm_head": 1,
    }


def test_two_device_map_covers_the_model(tiny_llama_64) -> None:
    from accelerate.utils import check_device_map

    check_device_map(tiny_llama_64, two_device_map())  # raises when a module is left out


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_blocks_on_two_gpus_equal_one_gpu(tiny_llama_64) -> None:
    """A model split over cuda:0 and cuda:1 (accelerate) gives one device's statistics."""
    import copy

    from accelerate import dispatch_model

    batches = make_batches(3)
    one = LayerStats().fit(copy.deepcopy(tiny_llama_64).to("cuda:0"), batches, progress=False)
    split = dispatch_model(copy.deepcopy(tiny_llama_64), device_map=two_device_map())
    assert split.model.layers[3].self_attn.q_proj.weight.device == torch.device("cuda", 1)
    two = LayerStats().fit(split, batches, progress=False)
    np.testing.assert_allclose(
        two.to_frame().to_numpy(), one.to_frame().to_numpy(), rtol=1e-5, atol=1e-7
    )
