"""avsslib.models: the architecture table (every entry on a tiny random model), loading local
directories and the hub, the zoo cache and its integrity checks, and the embedded model (slow)."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from avsslib import models, zoo
from avsslib.arch import ARCHITECTURES, Architecture, blocks, layer_count_field
from avsslib.errors import ModelError
from avsslib.models import MANIFEST, load_model
from avsslib.report import model_fingerprint

N_LAYERS = 3


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """``tiny(model_type, bare=False)``: the conftest factory with 3 blocks."""
    return lambda model_type, bare=False: tiny_model(
        model_type, bare=bare, num_hidden_layers=N_LAYERS, max_position_embeddings=64
    )


# ------------------------------------------------------------------ the architecture table


@pytest.mark.parametrize("bare", [False, True], ids=["wrapper", "bare"])
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_blocks_every_architecture(model_type: str, bare: bool, tiny) -> None:
    model = tiny(model_type, bare=bare)
    layers = blocks(model)
    assert isinstance(layers, torch.nn.ModuleList)
    assert len(layers) == getattr(model.config, layer_count_field(model)) == N_LAYERS
    # The table points at the blocks the forward pass really runs, once each, in order.
    calls: list[int] = []
    handles = [
        b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(layers)
    ]
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for h in handles:
        h.remove()
    assert calls == list(range(N_LAYERS))
    first = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert first.shape[:2] == (1, 5) and torch.isfinite(first).all()


def test_bare_model_blocks_are_the_wrappers_blocks(tiny) -> None:
    model = tiny("opt")
    assert blocks(model) is model.model.decoder.layers
    assert blocks(model.model) is model.model.decoder.layers  # bare OPTModel: "decoder.layers"


def test_layer_count_field(tiny) -> None:
    assert layer_count_field(tiny("llama")) == "num_hidden_layers"
    assert layer_count_field(tiny("gpt2")) == "n_layer"
    assert layer_count_field(tiny("distilbert")) == "n_layers"


def test_unknown_architecture_error_names_the_table() -> None:
    model = torch.nn.Module()
    model.config = SimpleNamespace(model_type="mamba")
    with pytest.raises(ModelError) as info:
        blocks(model)
    text = str(info.value)
    assert "'mamba'" in text and "llama" in text and "gpt_neox" in text
    assert "ARCHITECTURES" in text and "avsslib/arch.py" in text
    with pytest.raises(ModelError, match="config.model_type"):
        blocks(torch.nn.Linear(2, 2))


def test_table_entry_pointing_nowhere_is_reported(monkeypatch: pytest.MonkeyPatch, tiny) -> None:
    monkeypatch.setitem(ARCHITECTURES, "llama", Architecture("model.blocks"))
    with pytest.raises(ModelError, match="no ModuleList at 'model.blocks' or 'blocks'"):
        blocks(tiny("llama"))


def test_blocks_of_peft_model(tiny_llama) -> None:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(tiny_llama), LoraConfig(r=2, target_modules=["q_proj"])
    )
    assert blocks(peft_model) is peft_model.get_base_model().model.layers
    assert len(blocks(peft_model)) == 4


# ------------------------------------------------------------------ local directories, hub


def _tiny_tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate("abcdefgh")}
    tok = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def test_local_directory_round_trip(tiny_llama, tmp_path: Path) -> None:
    tiny_llama.save_pretrained(tmp_path)
    _tiny_tokenizer().save_pretrained(tmp_path)
    model, tok = load_model(tmp_path, dtype=torch.bfloat16)
    assert not model.training and model.dtype == torch.bfloat16
    assert tok.pad_token == "</s>" and tok.padding_side == "right"  # eos stands in for pad
    batch = tok(["a b c", "d"], return_tensors="pt", padding=True)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    fp = model_fingerprint(model)
    assert fp["source"] == "local" and fp["id"] == str(tmp_path.resolve())
    assert (fp["num_layers"], fp["hidden_size"], fp["dtype"]) == (4, 32, "bfloat16")
    for name, p in model.named_parameters():
        assert torch.equal(p.float(), tiny_llama.get_parameter(name).to(torch.bfloat16).float())


def test_local_directory_without_weights(tiny_llama, tmp_path: Path) -> None:
    tiny_llama.config.save_pretrained(tmp_path)
    with pytest.raises(ModelError) as info:
        load_model(tmp_path)
    assert str(tmp_path) in str(info.value) and "model.safetensors" in str(info.value)


def test_local_directory_truncated_weights(tiny_llama, tmp_path: Path) -> None:
    tiny_llama.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    with pytest.raises(ModelError, match="model.safetensors is truncated or corrupt"):
        load_model(tmp_path)


def test_local_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing")


def test_hub_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as info:
        load_model("avsslib-tests/no-such-model")
    text = str(info.value)
    assert "no-such-model" in text and "HF_HOME" in text and "smollm2-135m" in text


def test_fingerprint_of_foreign_model(tiny_llama) -> None:
    fp = model_fingerprint(tiny_llama)
    assert fp["source"] == "unknown" and fp["num_layers"] == 4 and fp["model_type"] == "llama"


# ------------------------------------------------------------------ cache integrity (synthetic)


@pytest.fixture
def fake_cache(tmp_path: Path) -> Path:
    """A directory shaped like a zoo cache: a small safetensors file, a JSON file, a manifest."""
    from safetensors.torch import save_file

    save_file(
        {"w": torch.arange(64.0).reshape(8, 8), "b": torch.ones(8)}, tmp_path / "model.safetensors"
    )
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    zoo._write_manifest(tmp_path, name="fake")
    return tmp_path


def test_verify_cache_good(fake_cache: Path) -> None:
    assert zoo._verify_cache(fake_cache, full=False) is None
    assert zoo._verify_cache(fake_cache, full=True) is None


def test_verify_cache_truncated_or_missing(fake_cache: Path) -> None:
    weights = fake_cache / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 4)
    assert "model.safetensors has" in zoo._verify_cache(fake_cache, full=False)
    weights.unlink()
    assert "missing" in zoo._verify_cache(fake_cache, full=False)
    (fake_cache / MANIFEST).unlink()
    assert "partial" in zoo._verify_cache(fake_cache, full=False)
    (fake_cache / MANIFEST).write_text('{"files": {}}')
    assert "does not list" in zoo._verify_cache(fake_cache, full=False)
    (fake_cache / MANIFEST).write_text('{"files": ')
    assert "unreadable" in zoo._verify_cache(fake_cache, full=False)


def test_verify_cache_same_size_corruption(fake_cache: Path) -> None:
    weights = fake_cache / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip bits inside the last tensor: same size, header intact
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert zoo._verify_cache(fake_cache, full=False) is None  # size + mtime unchanged ...
    assert "SHA-256" in zoo._verify_cache(fake_cache, full=True)  # ... only verify finds it
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "SHA-256" in zoo._verify_cache(fake_cache, full=False)  # new mtime: re-hashed


def test_verify_cache_copied_without_times(fake_cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(fake_cache, copy, copy_function=shutil.copyfile)  # new mtimes
    os.utime(copy / "config.json", ns=(0, 10**9))
    assert zoo._verify_cache(copy, full=False) is None
    recorded = json.loads((copy / MANIFEST).read_text())["files"]["config.json"]["mtime_ns"]
    assert recorded == 10**9  # re-recorded after a successful re-hash


def test_safetensors_header_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelError, match="header length"):
        zoo._check_safetensors(bad)


def test_missing_zoo_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AVSS_CACHE_DIR", str(tmp_path))
    entry = models.ZOO["smollm2-135m"]
    fake = models.ZooModel(
        **{**entry.__dict__, "name": "fake", "parts": (("avsslib-no-such-dist", "x/y.gguf"),)}
    )
    monkeypatch.setitem(models.ZOO, "fake", fake)
    with pytest.raises(ModelError, match="avsslib-no-such-dist==0.1.2.*make setup"):
        load_model("fake")
    status = {row["name"]: row for row in models.zoo_status()}
    assert status["fake"]["installed"] is False and status["fake"]["cached"] is False


def test_cli_lists_zoo(capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path) -> None:
    from avsslib.cli import main

    monkeypatch.setenv("AVSS_CACHE_DIR", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "qwen2.5-coder-1.5b" in out and str(tmp_path) in out


# ------------------------------------------------------------------ the embedded model (slow)


@pytest.mark.slow
def test_smol_loads_and_generates(smol) -> None:
    model, tok = smol
    assert not model.training and len(blocks(model)) == 30
    assert model.config.hidden_size == 576 and tok.padding_side == "right"
    ids = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 49152)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1] :]).strip().startswith("Paris")
    fp = model_fingerprint(model)
    assert fp["source"] == "zoo" and fp["num_layers"] == 30 and fp["dtype"] == "float32"
    assert fp["gguf_sha256"] == models.ZOO["smollm2-135m"].gguf_sha256


@pytest.mark.slow
def test_smol_cache_is_reused(smol, caplog: pytest.LogCaptureFixture) -> None:
    target = models.zoo_cache_path("smollm2-135m")
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["gguf_sha256"] == models.ZOO["smollm2-135m"].gguf_sha256
    assert "quantization_config" not in (target / "config.json").read_text()
    with caplog.at_level(logging.INFO, logger="avsslib.models"):
        model, _ = load_model("smollm2-135m", dtype=torch.bfloat16)
    assert not any("dequantizing" in r.getMessage() for r in caplog.records)
    assert model.dtype == torch.bfloat16
    ref = smol[0].model.layers[3].mlp.up_proj.weight
    assert torch.equal(model.model.layers[3].mlp.up_proj.weight, ref.to(torch.bfloat16))


@pytest.mark.slow
def test_smol_truncated_cache_is_rebuilt(
    smol, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = models.zoo_cache_path("smollm2-135m")
    copy = tmp_path / "smollm2-135m"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    with open(source / "model.safetensors", "rb") as src:  # a truncated copy of the weights
        (copy / "model.safetensors").write_bytes(src.read(1 << 20))
    monkeypatch.setenv("AVSS_CACHE_DIR", str(tmp_path))
    with (
        caplog.at_level(logging.INFO, logger="avsslib.models"),
        pytest.warns(UserWarning, match="corrupt or partial.*model.safetensors"),
    ):
        model, _ = load_model("smollm2-135m")
    assert any("dequantizing" in r.getMessage() for r in caplog.records)
    assert zoo._verify_cache(copy, full=True) is None
    assert (copy / "model.safetensors").stat().st_size == (
        source / "model.safetensors"
    ).stat().st_size
    assert torch.equal(model.model.norm.weight, smol[0].model.norm.weight)
    assert not list(tmp_path.glob(".smollm2-135m.*-*"))  # no build or stale directory left


def test_gguf_dir_overrides_the_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a node without pip the assembled GGUF file can be given through AVSS_GGUF_DIR."""
    entry = models.ZOO["qwen2.5-coder-1.5b"]
    monkeypatch.setenv("AVSS_GGUF_DIR", str(tmp_path))
    monkeypatch.setattr(zoo, "_installed_part", lambda dist, rel: None)
    with pytest.raises(ModelError, match="needs the wheel"):  # not there: the wheels' error
        zoo._zoo_parts(entry)
    (tmp_path / entry.gguf_name).write_bytes(b"GGUF")
    assert zoo._zoo_parts(entry) == [tmp_path / entry.gguf_name]


@pytest.mark.parametrize(
    "name, requirements",
    [("qwen2.5-coder-1.5b", "qwen-wheels.txt"), ("qwen2.5-coder-0.5b", "qwen05-wheels.txt")],
)
def test_zoo_entry_matches_its_pinned_requirements(name: str, requirements: str) -> None:
    """Every wheel of a split zoo GGUF is pinned (same version, with a sha256) in its
    requirements file, in part order, and the file names it in the entry's install hint."""
    entry = models.ZOO[name]
    path = Path(__file__).resolve().parents[1] / "requirements" / requirements
    pins = [
        line.split()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [p[0] for p in pins] == list(entry.wheels)
    assert all(
        len(p) == 2 and p[1].startswith("--hash=sha256:") and len(p[1]) == 14 + 64 for p in pins
    )
    assert requirements in entry.install
    assert len({rel for _, rel in entry.parts}) == len(entry.parts)
