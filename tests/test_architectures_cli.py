"""Every architecture of ``avsslib.arch.ARCHITECTURES`` through every model command of the CLI.

For each entry: a tiny random model built from the real config class, with the features its
real checkpoints have (grouped-query attention, sliding-window layer types, tied or untied
embeddings, parallel attention and residual, 0-d scalar buffers such as Gemma's embedding
scale), saved with ``save_pretrained`` beside a byte-level tokenizer. Then, as a user would:
``avss score``, ``avss prune``, ``avss eval`` (a harness task and perplexity) on the pruned
directory, ``avss hallucination`` on a few questions and ``avss mitigate`` for one step. Each
command must exit 0 and write its run record, and the pruned directory must load with plain
``transformers`` and generate.

Encoders (``ENCODERS``) are loaded as masked language models: ``score`` and ``prune`` work on
them; the commands that need a causal language model refuse them with exit status 2 and a
message that says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avsslib.arch import ARCHITECTURES, is_causal_lm_architecture
from avsslib.cli import main

ENCODERS = sorted(t for t in ARCHITECTURES if not is_causal_lm_architecture(t))
DECODERS = sorted(t for t in ARCHITECTURES if is_causal_lm_architecture(t))
N_LAYERS = 3

BASE = dict(
    vocab_size=259,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# What real checkpoints of each architecture have, at tiny size. A window of 8 tokens is shorter
# than the 16-token calibration texts, so the sliding-window path really runs.
FEATURES: dict[str, dict] = {
    "llama": {"tie_word_embeddings": False},
    "mistral": {"sliding_window": 8},
    "mixtral": {"num_local_experts": 2, "num_experts_per_tok": 1, "sliding_window": 8},
    "qwen2": {
        "use_sliding_window": True,
        "sliding_window": 8,
        "max_window_layers": 1,
        "tie_word_embeddings": True,
    },
    "qwen3": {
        "use_sliding_window": True,
        "sliding_window": 8,
        "max_window_layers": 1,
        "head_dim": 8,
    },
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "sliding_window": 8},
    "gemma3_text": {"head_dim": 8, "sliding_window": 8},
    "smollm3": {"tie_word_embeddings": True},
    "phi": {"partial_rotary_factor": 0.5},
    "gptj": {"rotary_dim": 4},
    "gpt_neox": {"use_parallel_residual": True, "tie_word_embeddings": False},
    "falcon": {"parallel_attn": True, "new_decoder_architecture": False, "multi_query": True},
    "stablelm": {"use_parallel_residual": True},
}


def _config(model_type: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **BASE | FEATURES.get(model_type, {}))


def _check_features(model_type: str, model: torch.nn.Module) -> None:
    """The tiny model has the feature its FEATURES line asks for (a typo there would otherwise
    test a plainer model than intended)."""
    cfg = model.config
    want = FEATURES.get(model_type, {})
    if "sliding_window" in want and getattr(cfg, "layer_types", None) is not None:
        assert "sliding_attention" in cfg.layer_types, cfg.layer_types
    if model_type.startswith("gemma"):
        assert any(b.dim() == 0 for b in model.buffers()), "expected a 0-d scalar buffer"
    if "tie_word_embeddings" in want and model.get_output_embeddings() is not None:
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert tied == want["tie_word_embeddings"]


def _save_tiny(model_type: str, path: Path, tokenizer) -> Path:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    torch.manual_seed(0)
    auto = AutoModelForCausalLM if model_type in DECODERS else AutoModelForMaskedLM
    model = auto.from_config(_config(model_type)).eval()
    _check_features(model_type, model)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _run(*argv: str) -> int:
    try:
        return main(list(argv))
    finally:  # the commands call set_seed, whose deterministic-kernels switch is process-wide
        torch.use_deterministic_algorithms(False)


CALIB = ("--n", "4", "--seq-len", "16", "--batch-size", "2")


def _record_written(out: Path) -> dict:
    record = json.loads((out / "record.json").read_text())
    assert len(record["model"]["state_sha256"]) == 64
    assert (out / "record.md").is_file()
    return record


@pytest.mark.parametrize("model_type", DECODERS)
def test_every_command_on_a_saved_checkpoint(
    model_type, data_dir, tmp_path, byte_tokenizer_factory
):
    model_dir = _save_tiny(model_type, tmp_path / "model", byte_tokenizer_factory())
    m, out = str(model_dir), tmp_path

    assert (
        _run(
            "score",
            "--model",
            m,
            *CALIB,
            "--scores",
            "avss,block_influence",
            "--out",
            str(out / "score"),
            "--quiet",
        )
        == 0
    )
    assert _record_written(out / "score")["model"]["model_type"] == model_type

    assert (
        _run(
            "prune",
            "--model",
            m,
            "--score",
            "avss",
            "--fraction",
            "0.34",
            *CALIB,
            "--out",
            str(out / "pruned"),
            "--quiet",
        )
        == 0
    )
    _record_written(out / "pruned")
    assert len(json.loads((out / "pruned" / "selection.json").read_text())["pruned_layers"]) == 1

    assert (
        _run(
            "eval",
            "--model",
            str(out / "pruned"),
            "--tasks",
            "sciq_mc,wikitext2_ppl",
            "--n",
            "2",
            "--num-fewshot",
            "0",
            "--ppl-window",
            "32",
            "--ppl-stride",
            "32",
            "--n-boot",
            "20",
            "--out",
            str(out / "eval"),
            "--quiet",
        )
        == 0
    )
    metrics = _record_written(out / "eval")["metrics"]
    assert {"sciq_mc", "wikitext2_ppl"} <= set(json.dumps(metrics).replace('"', " ").split())

    assert (
        _run(
            "hallucination",
            "--model",
            m,
            "--datasets",
            "nq_open",
            "--n",
            "3",
            "--max-new-tokens",
            "3",
            "--min-per-class",
            "1",
            "--eps",
            "1e-3",
            "--calib-fraction",
            "1.0",
            "--out",
            str(out / "hall"),
            "--quiet",
        )
        == 0
    )
    _record_written(out / "hall")
    assert (out / "hall" / "prone_layers.json").is_file()

    assert (
        _run(
            "mitigate",
            "--model",
            m,
            "--dataset",
            "truthfulqa",
            "--layers",
            "0",
            "--n-train",
            "1",
            "--n-eval",
            "1",
            "--eval-tasks",
            "truthfulqa_mc1",
            "--batch-size",
            "1",
            "--grad-accum",
            "1",
            "--kl-texts",
            "1",
            "--ppl-windows",
            "1",
            "--n-boot",
            "10",
            "--out",
            str(out / "mit"),
            "--quiet",
        )
        == 0
    )
    _record_written(out / "mit")

    # the pruned directory is a plain transformers checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "pruned").eval()
    tok = AutoTokenizer.from_pretrained(out / "pruned")
    ids = tok("The answer is", return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(
            **ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id
        )
    assert gen.shape[1] == ids["input_ids"].shape[1] + 3


@pytest.mark.parametrize("model_type", ENCODERS)
def test_encoders_score_and_prune_and_refuse_generation(
    model_type, data_dir, tmp_path, capsys, byte_tokenizer_factory
):
    model_dir = _save_tiny(model_type, tmp_path / "model", byte_tokenizer_factory())
    m, out = str(model_dir), tmp_path
    assert (
        _run(
            "score",
            "--model",
            m,
            *CALIB,
            "--scores",
            "avss,block_influence",
            "--out",
            str(out / "score"),
            "--quiet",
        )
        == 0
    )
    _record_written(out / "score")
    assert (
        _run(
            "prune",
            "--model",
            m,
            "--score",
            "avss",
            "--fraction",
            "0.34",
            *CALIB,
            "--out",
            str(out / "pruned"),
            "--quiet",
        )
        == 0
    )
    _record_written(out / "pruned")
    assert len(json.loads((out / "pruned" / "selection.json").read_text())["pruned_layers"]) == 1
    capsys.readouterr()
    assert (
        _run(
            "eval",
            "--model",
            m,
            "--tasks",
            "sciq_mc",
            "--n",
            "2",
            "--out",
            str(out / "eval"),
            "--quiet",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert model_type in err and "causal language model" in err
    assert not (out / "eval" / "record.json").exists()


def test_unexpected_error_is_reported_as_a_bug(tmp_path, monkeypatch, capsys):
    """A non-input error prints one paragraph (the command, 'a bug in avsslib', the report
    file), exits 1 and leaves a report with the traceback and the environment; --debug raises."""
    import avsslib.cli.data as data_cmd

    def boom(args):
        raise ZeroDivisionError("forced for the test")

    monkeypatch.setenv("AVSS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data_cmd, "run", boom)
    assert main(["data"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("avss data: internal error: ZeroDivisionError")
    assert "a bug in avsslib" in err and "--debug" in err
    reports = list((tmp_path / "cache" / "crash-reports").glob("avss-data-*.txt"))
    assert len(reports) == 1 and str(reports[0]) in err
    text = reports[0].read_text()
    assert "Traceback" in text and "forced for the test" in text and "boom" in text
    assert "torch:" in text and "transformers:" in text and "cuda:" in text
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "data"])
