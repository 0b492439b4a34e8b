"""Run records, atomic result files, result cards and seeding."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from avsslib import report
from avsslib.report import RunRecord, result_card, save_record, write_csv_atomic, write_json_atomic
from avsslib.seeding import set_seed


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_json_is_sorted_rounded_and_strict(tmp_path):
    path = write_json_atomic(
        tmp_path / "r.json",
        {
            "b": 0.1 + 0.2,
            "a": np.float32(0.5),
            "n": np.int64(3),
            "arr": np.array([1.0, np.nan]),
            "inf": float("inf"),
            "t": (1, 2),
            "p": tmp_path,
        },
    )
    text = path.read_text()
    assert text.endswith("\n")
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["b"] == 0.3  # 0.30000000000000004 rounded to 12 significant digits
    assert data["a"] == 0.5 and data["n"] == 3 and data["t"] == [1, 2]
    assert data["arr"] == [1.0, None] and data["inf"] is None
    assert data["p"] == str(tmp_path)


def test_json_failure_mid_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"value": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        # "a" serialises first (sorted keys), then the object json cannot encode
        write_json_atomic(path, {"a": list(range(1000)), "z": object()})
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_atomic_write_cleans_up_after_a_partial_write(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old\n")

    def half_then_fail(fh):
        fh.write("new, but only half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        report._atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_csv_round_trip(tmp_path):
    df = pd.DataFrame({"task": ["a", "b"], "value": [1 / 3, 2.0]})
    path = write_csv_atomic(tmp_path / "sub" / "m.csv", df)
    back = pd.read_csv(path)
    assert back["task"].tolist() == ["a", "b"]
    assert back["value"].tolist() == pytest.approx([1 / 3, 2.0], rel=1e-11)
    assert "\r" not in path.read_text()


def test_run_record_timing_and_determinism(tmp_path, tiny_llama):
    records = []
    for _ in range(2):
        rec = RunRecord.start(
            "avss eval --tasks x", {"n": 4}, 0, model=tiny_llama, data_files={"f.jsonl": "ab" * 32}
        )
        records.append(
            rec.finish(
                {
                    "table": [
                        {
                            "task": "x",
                            "metric": "acc",
                            "value": 0.5,
                            "ci_low": 0.25,
                            "ci_high": 0.75,
                            "n": 4,
                        }
                    ]
                },
                step_s=1.5,
            )
        )
    a, b = (r.to_dict() for r in records)
    assert set(a["timing"]) == {"start", "end", "wall_s", "step_s"}
    assert a["timing"]["wall_s"] >= 0
    a.pop("timing"), b.pop("timing")
    assert a == b  # everything but timing is reproducible
    for key in ("python", "torch", "transformers", "lm_eval", "numpy", "avsslib"):
        assert key in a["versions"]
    assert a["device"] == "cpu"
    assert len(a["model"]["state_sha256"]) == 64 and a["model"]["num_layers"] == 4


def test_state_hash_sees_weight_changes(tiny_llama):
    before = report.state_sha256(tiny_llama)
    assert report.state_sha256(tiny_llama) == before
    w = tiny_llama.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        w[0, 0] += 1.0
        try:
            assert report.state_sha256(tiny_llama) != before
        finally:
            w[0, 0] -= 1.0


class _Holder(torch.nn.Module):
    """A module with one buffer of each kind a real checkpoint can carry."""

    def __init__(self, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("t", (torch.randn(shape) * 3).to(dtype))


_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int8,
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.complex64,
]


@pytest.mark.parametrize("dtype", _DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (1,), (3, 5), (0, 4)], ids=["0d", "1", "3x5", "empty"])
def test_state_hash_every_shape_and_dtype(dtype, shape):
    module = _Holder(dtype, shape)
    digest = report.state_sha256(module)
    assert len(digest) == 64 and digest == report.state_sha256(_Holder(dtype, shape))
    expected = module.t.reshape(-1).view(torch.uint8).numpy().tobytes() if module.t.numel() else b""
    assert report.tensor_bytes(module.t) == expected
    if module.t.numel():  # the bytes enter the hash: change one element, the hash changes
        flipped = module.t.reshape(-1).view(torch.uint8).clone()
        flipped[0] ^= 1
        module.t = flipped.view(dtype).reshape(shape)
        assert report.state_sha256(module) != digest


def test_state_hash_scalar_buffer_is_its_value():
    a, b = torch.nn.Module(), torch.nn.Module()
    a.register_buffer("embed_scale", torch.tensor(24.0))
    b.register_buffer("embed_scale", torch.tensor(24.5))
    assert report.state_sha256(a) != report.state_sha256(b)
    # a 0-d scalar and a 1-element vector of the same value are different tensors
    c = torch.nn.Module()
    c.register_buffer("embed_scale", torch.tensor([24.0]))
    assert report.state_sha256(c) != report.state_sha256(a)


def test_state_hash_non_contiguous_equals_its_copy():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    view, copy = torch.nn.Module(), torch.nn.Module()
    view.register_buffer("w", base.t())  # a transposed view, not contiguous
    copy.register_buffer("w", base.t().contiguous())
    assert not view.w.is_contiguous()
    assert report.state_sha256(view) == report.state_sha256(copy)


def test_state_hash_meta_and_offloaded(tiny_llama):
    """A model whose weights accelerate offloaded (meta placeholders + a weights map) hashes as
    the same weights in memory; an empty meta model hashes without data and differs."""
    import copy

    from accelerate import cpu_offload

    expected = report.state_sha256(tiny_llama)
    offloaded = cpu_offload(copy.deepcopy(tiny_llama), execution_device=torch.device("cpu"))
    assert next(offloaded.parameters()).device.type == "meta"
    assert report.state_sha256(offloaded) == expected
    with torch.device("meta"):
        empty = type(tiny_llama)(tiny_llama.config)
    digest = report.state_sha256(empty)
    assert len(digest) == 64 and digest != expected
    with pytest.raises(ValueError, match="meta"):
        report.tensor_bytes(next(empty.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_state_hash_same_on_cpu_and_cuda(tiny_llama):
    import copy

    model = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    model.register_buffer("scale", torch.tensor(2.0))
    assert report.state_sha256(model) == report.state_sha256(copy.deepcopy(model).cuda())


def test_card_and_save_record(tmp_path):
    rec = RunRecord("avss eval --tasks sciq_mc", {"n": 4}, 7, device="cpu")
    rec.metrics = {
        "table": [
            {
                "task": "sciq_mc",
                "metric": "acc",
                "value": 0.5,
                "ci_low": 0.25,
                "ci_high": 0.75,
                "n": 4,
            }
        ],
        "protocols": {"sciq_mc": {"window": 1}},
    }
    card = result_card(rec)
    assert "| sciq_mc | acc | 0.5 | [0.25, 0.75] | 4 |" in card
    assert "**Seed:** 7" in card and '"window": 1' in card
    path = save_record(rec, tmp_path / "record.json")
    assert json.loads(path.read_text())["seed"] == 7
    # the CPU thread count is part of the record: float64 training results depend on it
    assert json.loads(path.read_text())["threads"] == torch.get_num_threads() >= 1
    assert f"**CPU threads:** {torch.get_num_threads()}" in card
    assert (tmp_path / "record.md").read_text() == card


def test_set_seed_repeats_every_generator():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    try:
        set_seed(123)
        first = draw()
        set_seed(123)
        assert draw() == first
        set_seed(124)
        assert draw() != first
        assert torch.are_deterministic_algorithms_enabled()
    finally:  # the setting is process-wide: leave other tests as they were
        torch.use_deterministic_algorithms(False)
