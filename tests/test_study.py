"""Calibration batches, per-layer score tables, selections and the resumable pruning study."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from avsslib.calibration import calibration_batches, calibration_set
from avsslib.errors import ConfigError
from avsslib.prune import pruned_view
from avsslib.study import (
    StudyConfig,
    StudyResult,
    layer_scores,
    load_study,
    primary_metric_rows,
    pruning_study,
    rank_layers,
    score_agreement,
    selections,
)


class CharTokenizer:
    """One token per character (ids 3..), an optional BOS (id 1), pad id 0; HF-like call."""

    def __init__(self, pad_token_id: int | None = 0, eos_token_id: int | None = 2) -> None:
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.name_or_path = "char"

    def __call__(self, texts, *, truncation, max_length, add_special_tokens):
        rows = [([1] if add_special_tokens else []) + [3 + ord(c) % 100 for c in t] for t in texts]
        return {"input_ids": [r[:max_length] if truncation else r for r in rows]}


# ---------------------------------------------------------------- calibration batches


def test_calibration_batches_shapes_masks_and_right_padding():
    tok = CharTokenizer()
    texts = ["abcdef", "ab", "abcdefghijkl", "a", "xyz"]
    batches = calibration_batches(tok, texts, seq_len=8, batch_size=2)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(2, 7), (2, 8), (1, 4)]
    lengths = [7, 3, 8, 2, 4]  # BOS + characters, truncated to 8
    rows = [(b, i) for b in batches for i in range(len(b["input_ids"]))]
    for (b, i), n in zip(rows, lengths, strict=True):
        mask, ids = b["attention_mask"][i], b["input_ids"][i]
        assert mask.tolist() == [1] * n + [0] * (len(mask) - n)  # right padding
        assert ids[n:].eq(0).all() and ids[0] == 1  # pad id 0, BOS first
        assert b["input_ids"].dtype == b["attention_mask"].dtype == torch.long
    assert batches[0]["input_ids"][0, 1:7].tolist() == [3 + ord(c) % 100 for c in "abcdef"]


def test_calibration_batches_pad_to_max_length_and_options():
    tok = CharTokenizer()
    batches = calibration_batches(
        tok,
        ["ab", "abcd", "", "abc"],
        seq_len=6,
        batch_size=8,
        pad_to_max_length=True,
        add_special_tokens=False,
    )
    (b,) = batches  # the empty text is dropped
    assert tuple(b["input_ids"].shape) == (3, 6)
    assert b["attention_mask"].sum(1).tolist() == [2, 4, 3]
    # no pad token: the EOS id pads (the official causal-LM scripts)
    (b,) = calibration_batches(CharTokenizer(pad_token_id=None), ["a", "abc"], seq_len=4)
    assert b["input_ids"][0, 2:].tolist() == [2, 2]


def test_calibration_batches_errors():
    tok = CharTokenizer()
    with pytest.raises(ConfigError, match="seq_len"):
        calibration_batches(tok, ["a"], seq_len=0)
    with pytest.raises(ConfigError, match="batch_size"):
        calibration_batches(tok, ["a"], batch_size=0)
    with pytest.raises(ConfigError, match="no.*token|gave any token"):
        calibration_batches(tok, ["", ""], add_special_tokens=False)
    with pytest.raises(ConfigError, match="pad token"):
        calibration_batches(CharTokenizer(None, None), ["a"])


def test_calibration_set_describes_the_sample(data_dir):
    batches, desc = calibration_set(
        CharTokenizer(), "sst2", "validation", n=10, seq_len=16, batch_size=4, seed=3
    )
    assert len(batches) == desc["n_batches"] == 3 and desc["n_texts"] == 10
    assert desc["n_tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
    assert desc["dataset"] == "sst2" and desc["seed"] == 3 and desc["seq_len"] == 16
    assert desc["data_files"] and all(len(h) == 64 for h in desc["data_files"].values())
    again, _ = calibration_set(
        CharTokenizer(), "sst2", "validation", n=10, seq_len=16, batch_size=4, seed=3
    )
    assert all(
        torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True)
    )


# ---------------------------------------------------------------- tables and selections


def _random_batches(vocab: int = 128, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (6, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[4, 5:] = 0
    return [
        {"input_ids": ids[:4], "attention_mask": mask[:4]},
        {"input_ids": ids[4:], "attention_mask": mask[4:]},
    ]


def test_rank_layers_breaks_ties_by_layer_index():
    assert rank_layers([0.5, 0.1, 0.5, 0.3]).tolist() == [2, 0, 3, 1]


def test_layer_scores_table_and_avss_ranks_equal_v_over_s_ranks(tiny_llama):
    scores = ("avss", "block_influence", "angular", "ppl_removal", "random", "tail")
    stats, table = layer_scores(
        tiny_llama, _random_batches(), scores=scores, eps=1e-2, seed=3, progress=False
    )
    n = len(tiny_llama.model.layers)
    assert list(table.index) == list(range(n)) and table.index.name == "layer"
    for column in (
        "variance",
        "sparsity",
        "near_zero_count",
        "element_count",
        "mean",
        "rms",
        "token_variance",
        "clamped",
        "navss",
        "avss_cumulative",
        *scores,
        *(f"rank_{s}" for s in scores),
    ):
        assert column in table, column
    v, s = stats.variance_, stats.sparsity_
    assert (s > 0).all()  # eps = 1e-2: no clamping in this test
    assert table["rank_avss"].tolist() == rank_layers(v / s).tolist()
    assert table["rank_tail"].tolist() == list(range(n - 1, -1, -1))
    assert (
        table["element_count"].tolist()
        == [int(sum(b["attention_mask"].sum() for b in _random_batches())) * 32] * n
    )
    assert table["navss"].sum() == pytest.approx(1.0)
    assert table["avss_cumulative"].iloc[-1] == pytest.approx(1.0)
    assert table["random"].tolist() == pytest.approx(np.random.default_rng(3).random(n).tolist())
    with pytest.raises(ConfigError, match="unknown score"):
        layer_scores(tiny_llama, _random_batches(), scores=["nope"])


def test_selections_keys_and_sizes():
    m = 12
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "avss": rng.random(m) + 0.1,
            "block_influence": rng.random(m),
            "tail": np.arange(m, 0, -1.0),
            "variance": rng.random(m),
        }
    )
    chosen = selections(table, 0.25)
    assert set(chosen) == {
        "avss/count",
        "avss/mass",
        "avss/code_bug",
        "block_influence/count",
        "tail/count",
    }
    assert len(chosen["avss/count"]) == round(0.25 * m) == 3
    assert chosen["avss/count"] == sorted(np.argsort(table["avss"].to_numpy())[:3].tolist())
    assert chosen["tail/count"] == [9, 10, 11]
    prefix = np.flatnonzero(np.cumsum(table["avss"] / table["avss"].sum()) <= 0.25).tolist()
    assert chosen["avss/code_bug"] == prefix
    # half to even: 0.25 * 10 = 2.5 -> 2 layers
    assert len(selections(table.iloc[:10], 0.25)["avss/count"]) == 2
    # a statistic named like a score (update_variance is both) is not a selection unless scored
    table["update_variance"] = rng.random(m)
    assert "update_variance/count" in selections(table, 0.25)
    assert set(selections(table, 0.25, ["avss", "tail"])) == {
        "avss/count",
        "avss/mass",
        "avss/code_bug",
        "tail/count",
    }


def test_score_agreement_known_answers():
    x = np.arange(6.0)
    df = score_agreement({"a": x, "b": x**2, "c": -x, "d": np.ones(6)})
    row = df.set_index(["a", "b"])
    assert row.loc[("a", "b"), "spearman"] == pytest.approx(1.0)
    assert row.loc[("a", "c"), "kendall_tau"] == pytest.approx(-1.0)
    assert np.isnan(row.loc[("a", "d"), "spearman"])
    assert len(df) == 6 and set(df["kind"]) == {"scores"}


def test_primary_metric_rows_picks_one_metric_per_task():
    df = pd.DataFrame(
        {
            "task": ["sciq_mc", "sciq_mc", "other", "other"],
            "metric": ["acc_norm", "acc", "m1", "m2"],
            "retention": [1, 2, 3, 4],
        }
    )
    assert primary_metric_rows(df)["retention"].tolist() == [2, 3]


def test_pruned_view_shares_weights_and_equals_pruned_copy(tiny_llama):
    from avsslib.prune import pruned_copy

    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    before = tiny_llama(input_ids=ids).logits
    view = pruned_view(tiny_llama, [0, 2])
    with torch.no_grad():
        assert torch.equal(
            view(input_ids=ids).logits, pruned_copy(tiny_llama, [0, 2])(input_ids=ids).logits
        )
    assert len(view.model.layers) == view.config.num_hidden_layers == 2
    assert view.model.layers[1].self_attn.layer_idx == 1
    assert view.model.layers[0].mlp.up_proj.weight is tiny_llama.model.layers[1].mlp.up_proj.weight
    assert view.lm_head.weight.data_ptr() == tiny_llama.lm_head.weight.data_ptr()
    assert len(tiny_llama.model.layers) == tiny_llama.config.num_hidden_layers == 4  # untouched
    assert torch.equal(tiny_llama(input_ids=ids).logits, before)


def test_load_study_on_an_empty_directory(tmp_path):
    with pytest.raises(ConfigError, match="no study files"):
        load_study(tmp_path)


# ---------------------------------------------------------------- the study, end to end


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::avsslib.scores.SparsityClampWarning")
def test_pruning_study_end_to_end_and_resumes(smol, data_dir, tmp_path, monkeypatch):
    import avsslib.evaluate as ev

    calls: list[int] = []
    real = ev.evaluate

    def counting(model, *args, **kwargs):
        calls.append(len(model.model.layers))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ev, "evaluate", counting)
    config = StudyConfig(
        out=tmp_path,
        model="smollm2-135m",
        seed=42,
        quiet=True,
        tasks=("sciq_mc", "wikitext2_ppl"),
        n_eval=4,
        n=8,
        seq_len=32,
        scores=("avss", "tail"),
        no_faithful_eval=True,
        sweep_fractions=(0.25, 0.5),
        sweep_scores=("avss",),
        ppl_window=32,
        ppl_stride=32,
        n_boot=50,
    )
    model, tokenizer = smol
    try:
        first = pruning_study(config, model=model, tokenizer=tokenizer)
        n_calls = len(calls)
        mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "eval").iterdir()}
        # the former keyword form: the same study, read back, with a DeprecationWarning
        with pytest.warns(DeprecationWarning, match="StudyConfig"):
            second = pruning_study(
                "smollm2-135m",
                out_dir=tmp_path,
                tasks=("sciq_mc", "wikitext2_ppl"),
                n_eval=4,
                calib=dict(n=8, seq_len=32),
                scores=("avss", "tail"),
                evaluate_faithful=False,
                sweep_fractions=(0.25, 0.5),
                sweep_scores=("avss",),
                ppl_window=32,
                ppl_stride=32,
                n_boot=50,
                progress=False,
                loaded=smol,
            )
        with pytest.warns(DeprecationWarning, match=r"\.status"):
            assert second["status"] == second.status
        # tables of a partial run: a new sweep point is not evaluated, only reported missing
        partial_dir = tmp_path / "partial"
        shutil.copytree(tmp_path, partial_dir, ignore=shutil.ignore_patterns("record.*"))
        third = pruning_study(
            dataclasses.replace(
                config, out=partial_dir, sweep_fractions=(0.25, 0.5, 0.1), no_new_evals=True
            ),
            model=model,
            tokenizer=tokenizer,
        )
    finally:  # set_seed's deterministic-kernels switch is process-wide
        torch.use_deterministic_algorithms(False)

    for name in (
        "layer_stats.csv",
        "layer_stats_faithful.csv",
        "batch_stats.csv",
        "layer_stats.json",
        "selections.json",
        "retention.csv",
        "sweep.csv",
        "agreement.csv",
        "record.json",
        "record.md",
        "figures/layer_profile.png",
        "figures/retention.png",
        "figures/sweep.png",
    ):
        assert (tmp_path / name).is_file(), name
    configs = first.configs
    assert set(mtimes) == {f"{c}.json" for c in configs}
    assert configs["avss-count"] == configs["sweep-avss-0.25"] and len(configs["avss-count"]) == 8
    assert len(configs["sweep-avss-0.5"]) == 15 and configs["tail-count"] == list(range(22, 30))
    # one evaluation per distinct set of pruned layers, the unpruned model first
    distinct = {tuple(v) for v in configs.values()}
    assert n_calls == len(distinct) and calls[0] == 30
    assert first.status["sweep-avss-0.25"] == "reused"
    # the second call evaluates nothing and rewrites no evaluation file
    assert len(calls) == n_calls and set(second.status.values()) == {"cached"}
    assert second.timing["stats"] == "cached"
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "eval").iterdir()} == mtimes
    pd.testing.assert_frame_equal(first.retention, second.retention)

    assert len(calls) == n_calls and third.status["sweep-avss-0.1"] == "missing"
    assert "sweep-avss-0.1" not in set(third.retention["config"])
    assert (partial_dir / "record.partial.json").is_file() and not (
        partial_dir / "record.json"
    ).exists()

    study = load_study(tmp_path)
    ret = study["retention"]
    original = ret[(ret["config"] == "original") & (ret["original"] != 0)]
    assert len(original) >= 1 and (original["retention"] == 1.0).all()
    assert set(ret["config"]) == set(configs)
    ppl = ret[(ret["metric"] == "token_perplexity") & (ret["config"] == "avss-count")].iloc[0]
    assert ppl["retention"] == pytest.approx(ppl["original"] / ppl["pruned"])
    assert ppl["n"] == 4 and ppl["n_pruned"] == 8
    assert set(study["sweep"]["fraction"]) == {0.25, 0.5}
    assert set(study["agreement"]["kind"]) == {"scores", "mode", "seed", "calibration"}
    assert study["layer_stats"]["rank_avss"].tolist() == first.layer_stats["rank_avss"].tolist()
    rows = study["selections"].set_index(["stats", "score", "rule"])
    assert rows.loc[("fixed", "avss", "count"), "layers"] == configs["avss-count"]
    assert rows.loc[("faithful", "tail", "count"), "n_pruned"] == 8
    sel = json.loads((tmp_path / "selections.json").read_text())
    assert sel["k_count"] == 8 and set(sel["faithful"]) >= {
        "avss/count",
        "avss/mass",
        "avss/code_bug",
    }
    saved = json.loads((tmp_path / "eval" / "avss-count.json").read_text())
    assert saved["pruned_layers"] == configs["avss-count"] and saved["n_layers_after"] == 22
    record = study["record"]
    assert (
        record["model"]["num_layers"] == 30
        and "sciq/llm-adapters_sciq_test_mc4.json" in record["data_files"]
    )


# ---------------------------------------------------------------- the study's configuration


@pytest.mark.parametrize(
    ("changes", "option", "fix"),
    [
        ({"tasks": ("nope",)}, "--tasks", "choose among"),
        ({"tasks": ()}, "--tasks", "none given"),
        ({"dtype": "int8"}, "--dtype", "choose one of"),
        ({"scores": ("avss", "nope")}, "--scores", "registered scores"),
        ({"sweep_scores": ("angular",), "scores": ("avss",)}, "--sweep-scores", "add them"),
        ({"fraction": 1.0}, "--fraction", "strictly between 0 and 1"),
        ({"sweep_fractions": (0.25, 0.0)}, "--sweep-fractions", "strictly between 0 and 1"),
        ({"agreement_calibs": ("sst2",)}, "--agreement-calibs", "NAME:SPLIT"),
        ({"eps": 0.0}, "--eps", "positive number"),
        ({"n": 0}, "--n", "positive integer"),
        ({"n_eval": 0}, "--n-eval", "positive integer"),
        ({"ppl_stride": 0}, "--ppl-stride", "positive integer"),
        ({"seed": -1}, "--seed", "from 0 to 2\\*\\*32 - 1"),
        ({"agreement_seeds": (0, 2**32)}, "--agreement-seeds", "from 0 to 2\\*\\*32 - 1"),
    ],
)
def test_study_config_validate_names_the_option_and_the_fix(tmp_path, changes, option, fix):
    config = StudyConfig(out=tmp_path, **changes)
    with pytest.raises(ConfigError, match=f"^{option}[ :].*{fix}"):
        config.validate()


def test_study_config_presets_and_command_line(tmp_path):
    full = StudyConfig(out=tmp_path).validate()
    assert full.n == 64 and full.seq_len == 128 and "ppl_removal" in full.scores
    quick = StudyConfig(out=tmp_path, quick=True, n=32).validate()
    assert quick.n == 32 and quick.seq_len == 16 * 4 and quick.n_eval == 20
    assert "ppl_removal" not in quick.scores and quick.ppl_stride is None
    assert quick.calib_spec() == {
        "name": "wikitext2",
        "split": "validation",
        "n": 32,
        "seq_len": 64,
        "batch_size": 8,
        "seed": 0,
    }
    line = StudyConfig(out=tmp_path, quick=True, no_faithful_eval=True).describe()
    assert line.startswith(f"avss study --model smollm2-135m --out {tmp_path} --dtype float32")
    assert " --quick --tasks sciq_mc,wikitext2_ppl --n-eval 20 " in line
    assert "--no-faithful-eval" in line and "--ppl-stride" not in line


def test_study_result_kinds_pick_the_main_rows(tmp_path):
    retention = pd.DataFrame(
        {
            "config": ["original", "avss-count", "sweep-avss-0.25"],
            "task": ["sciq_mc"] * 3,
            "metric": ["acc"] * 3,
        }
    )
    result = StudyResult(
        out=tmp_path,
        fraction=0.25,
        layer_stats=None,
        layer_stats_faithful=None,
        selections={},
        configs={},
        kinds={"original": "original", "avss-count": "main", "sweep-avss-0.25": "sweep"},
        retention=retention,
        sweep=None,
        agreement=None,
        status={"original": "cached", "avss-count": "missing"},
        timing={},
        record={},
    )
    assert result.main_retention()["config"].tolist() == ["original", "avss-count"]
    assert result.missing() == ["avss-count"]
    with pytest.warns(DeprecationWarning), pytest.raises(KeyError):
        result["nope"]
