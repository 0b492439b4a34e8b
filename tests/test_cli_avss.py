"""The ``avss score``, ``avss prune`` and ``avss study`` commands, on a tiny random Llama that
uses the embedded model's tokenizer (saved as a local model directory)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from avsslib.arch import blocks
from avsslib.cli import main
from avsslib.models import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_dir(smol, tiny_model, tmp_path_factory):
    """A 4-block random Llama (hidden 16) over SmolLM2's tokenizer, saved with save_pretrained."""
    _, tok = smol
    model = tiny_model(
        "llama",
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    finally:  # the commands call set_seed, whose deterministic-kernels switch is process-wide
        torch.use_deterministic_algorithms(False)


CALIB = ["--n", "6", "--seq-len", "16", "--batch-size", "4"]


def test_score_writes_tables_figure_and_record(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "scores"
    assert (
        _main(
            [
                "score",
                "--model",
                str(tiny_dir),
                *CALIB,
                "--eps",
                "1e-3",
                "--scores",
                "avss,block_influence,tail",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    for name in (
        "layer_stats.csv",
        "layer_stats.json",
        "batch_stats.csv",
        "record.json",
        "record.md",
        "figures/layer_profile.png",
    ):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "layer_stats.csv")
    assert table["layer"].tolist() == [0, 1, 2, 3]
    assert {"avss", "rank_avss", "block_influence", "tail", "sparsity", "near_zero_count"} <= set(
        table
    )
    meta = json.loads((out / "layer_stats.json").read_text())
    assert meta["calibration"]["n_texts"] == 6 and meta["calibration"]["n_batches"] == 2
    assert meta["selections"]["tail/count"] == [3]  # round(0.25 * 4) = 1 layer
    assert set(meta["selections"]) == {
        "avss/count",
        "avss/mass",
        "avss/code_bug",
        "block_influence/count",
        "tail/count",
    }
    assert len(pd.read_csv(out / "batch_stats.csv")) == 2 * 4  # batches x layers
    record = json.loads((out / "record.json").read_text())
    assert record["command"].startswith("avss score --model ") and "--scores" in record["command"]
    assert record["data_files"] and all(k.startswith("wikitext2/") for k in record["data_files"])


def test_prune_writes_a_loadable_model_directory(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "pruned"
    assert (
        _main(
            [
                "prune",
                "--model",
                str(tiny_dir),
                "--score",
                "tail",
                "--fraction",
                "0.5",
                *CALIB,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    model, _ = load_model(out)
    assert len(blocks(model)) == model.config.num_hidden_layers == 2
    selection = json.loads((out / "selection.json").read_text())
    assert selection["pruned_layers"] == [2, 3] and selection["kept_layers"] == [0, 1]
    assert selection["source"]["calibration"]["n_texts"] == 6
    assert (out / "record.json").is_file() and (out / "record.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    # an existing directory is replaced only with --overwrite
    assert _main(["prune", "--model", str(tiny_dir), "--layers", "1", "--out", str(out)]) == 2
    assert (
        _main(
            ["prune", "--model", str(tiny_dir), "--layers", "1", "--out", str(out), "--overwrite"]
        )
        == 0
    )
    model, _ = load_model(out)
    assert len(blocks(model)) == 3
    assert json.loads((out / "selection.json").read_text())["pruned_layers"] == [1]


def test_prune_from_a_scores_table(tiny_dir, tmp_path):
    table = pd.DataFrame({"layer": range(4), "avss": [4.0, 1.0, 3.0, 2.0]})
    table.to_csv(tmp_path / "layer_stats.csv", index=False)
    out = tmp_path / "pruned"
    assert (
        _main(
            [
                "prune",
                "--model",
                str(tiny_dir),
                "--from-scores",
                str(tmp_path / "layer_stats.csv"),
                "--fraction",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "selection.json").read_text())["pruned_layers"] == [1, 3]
    assert len(blocks(load_model(out)[0])) == 2
    # a table of another model, or without the score, is refused with a clear message
    table.iloc[:3].to_csv(tmp_path / "short.csv", index=False)
    assert (
        _main(
            [
                "prune",
                "--model",
                str(tiny_dir),
                "--from-scores",
                str(tmp_path / "short.csv"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert (
        _main(
            [
                "prune",
                "--model",
                str(tiny_dir),
                "--from-scores",
                str(tmp_path / "layer_stats.csv"),
                "--score",
                "block_influence",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x").exists()


def test_study_command_small(tiny_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "study"
    argv = [
        "study",
        "--model",
        str(tiny_dir),
        "--out",
        str(out),
        "--tasks",
        "sciq_mc",
        "--n-eval",
        "2",
        *CALIB,
        "--scores",
        "avss,random",
        "--sweep-scores",
        "avss",
        "--sweep-fractions",
        "0.5",
        "--agreement-calibs",
        "wikitext2:validation,sst2:validation",
        "--agreement-seeds",
        "0",
        "--n-boot",
        "20",
        "--quiet",
        "--device",
        "cpu",
    ]
    assert _main(argv) == 0
    printed = capsys.readouterr().out
    assert "avss-count" in printed and "total" in printed
    record = json.loads((out / "record.json").read_text())
    assert record["command"].startswith("avss study --model ") and "--n-eval 2" in record["command"]
    assert record["config"]["sweep_fractions"] == [0.5] and record["config"]["n_eval"] == 2
    retention = pd.read_csv(out / "retention.csv")
    assert set(retention["task"]) == {"sciq_mc"}
    assert {
        "original",
        "avss-count",
        "random-count",
        "faithful-avss-count",
        "faithful-avss-mass",
        "sweep-avss-0.5",
    } <= set(retention["config"])
    agreement = pd.read_csv(out / "agreement.csv")
    assert agreement[agreement["kind"] == "calibration"][["a", "b"]].values.tolist() == [
        ["wikitext2/validation/seed0", "sst2/validation/seed0"]
    ]
    assert _main(argv) == 0  # resumed: nothing re-evaluated
    assert json.loads((out / "record.json").read_text())["timing"]["status"]["original"] == "cached"
