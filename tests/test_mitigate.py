"""Contrastive mitigation: losses against hand computations, triples from real records, the
frozen-parameter guarantee (full parameters and LoRA), resumable training, saving and loading
trained layers, KL to the base model, paired changes."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from avsslib.arch import blocks
from avsslib.errors import ConfigError, ModelError
from avsslib.evaluate import EvalResult, MetricScores, TaskResult
from avsslib.mitigate import (
    EncodedTriple,
    TrainConfig,
    ablation_layers,
    build_triples,
    collate,
    encode_triples,
    info_nce,
    kl_to_base,
    load_trained_layers,
    masked_mean,
    paired_change,
    supcon,
    train,
)

# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def one_thread(request):
    """The tiny model's ops are too small for threads: on a busy 2-core machine two threads make
    backward passes ~5x slower. Tests on the embedded model keep the default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic(n: int = 8, seed: int = 0) -> list[EncodedTriple]:
    """Encoded triples of random token ids (vocab 3..127; 0 is padding)."""
    g = torch.Generator().manual_seed(seed)

    def ids(lo: int, hi: int) -> tuple[int, ...]:
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return tuple(torch.randint(3, 128, (length,), generator=g).tolist())

    return [
        EncodedTriple(ids(3, 6), ids(1, 4), tuple(ids(1, 4) for _ in range(i % 3 + 1)))
        for i in range(n)
    ]


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def block_of(name: str) -> int | None:
    """Block index of a Llama parameter name, None outside the blocks."""
    parts = name.split(".")
    return int(parts[2]) if name.startswith("model.layers.") else None


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids).logits


CFG = dict(layers=(1, 3), batch_size=2, grad_accum=1, warmup_ratio=0.0, seed=0)


class ByteTokenizer:
    """Enough of a tokenizer for kl_to_base on the tiny model: bytes mod 125 + 3, right-padded."""

    def __call__(self, texts, return_tensors="pt", padding=True, truncation=True, max_length=64):
        rows = [[b % 125 + 3 for b in t.encode()][:max_length] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}


# ---------------------------------------------------------------- losses


def test_info_nce_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.6, 0.8]])
    n = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])
    tau = 0.5  # similarities 0.6, 0, -1 -> 1.2, 0, -2
    expected = -math.log(math.exp(1.2) / (math.exp(1.2) + 1 + math.exp(-2)))
    assert info_nce(a, p, n, tau=tau).item() == pytest.approx(expected, rel=1e-6)
    # vectors are normalised inside: scaling changes nothing
    assert info_nce(3 * a, 0.5 * p, 7 * n, tau=tau).item() == pytest.approx(expected, rel=1e-6)
    # a masked negative drops out of the denominator
    masked = info_nce(a, p, n, torch.tensor([[True, False]]), tau=tau).item()
    assert masked == pytest.approx(-math.log(math.exp(1.2) / (math.exp(1.2) + 1)), rel=1e-6)


def test_info_nce_in_batch_negatives():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    n = torch.zeros(2, 0, 2)  # no dataset negatives
    tau = 1.0
    assert info_nce(a, p, n, tau=tau).item() == pytest.approx(0.0, abs=1e-7)
    # question 0: s(a0,p0)=0.6, in-batch s(a0,p1)=0.8; question 1: s(a1,p1)=0.6, s(a1,p0)=0.8
    expected = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.8)))
    assert info_nce(a, p, n, tau=tau, in_batch=True).item() == pytest.approx(expected, rel=1e-6)


def test_supcon_matches_hand_computation():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([1, 1, 0])
    # anchor 0: others 1 (same, s=0), 2 (s=-1); anchor 1: 0 (same, s=0), 2 (s=0); anchor 2 skipped
    l0 = -math.log(1 / (1 + math.exp(-1)))
    l1 = -math.log(1 / 2)
    assert supcon(z, labels, tau=1.0).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert supcon(z, torch.tensor([0, 1, 2]), tau=1.0).item() == 0.0


def test_masked_mean_and_collate_layout():
    h = torch.arange(12.0).reshape(1, 4, 3)
    assert torch.equal(
        masked_mean(h, torch.tensor([[False, True, True, False]])), torch.tensor([[4.5, 5.5, 6.5]])
    )
    items = [EncodedTriple((5, 6, 7), (8, 9), ((10,), (11, 12))), EncodedTriple((5, 6), (13,), ())]
    b = collate(items, pad_id=0)
    assert b.input_ids.tolist() == [
        [5, 6, 7, 8, 9],
        [5, 6, 13, 0, 0],
        [5, 6, 7, 10, 0],
        [5, 6, 7, 11, 12],
    ]
    assert b.attention_mask.sum(1).tolist() == [5, 3, 4, 5]
    assert b.answer_mask.tolist()[0] == [False, False, False, True, True]
    assert b.anchor_index.tolist() == [2, 1]
    assert b.negative_rows.tolist() == [[2, 3], [0, 0]] and b.negative_mask.tolist() == [
        [True, True],
        [False, False],
    ]
    only = collate(items, pad_id=0, negatives=False)
    assert only.input_ids.shape == (2, 5) and only.negative_rows.shape == (2, 0)


# ---------------------------------------------------------------- triples and layer choice


def test_triples_from_real_records(data_dir):
    from avsslib.data import load_dataset

    sciq = load_dataset("sciq_mc", n=3, seed=0)
    triples = build_triples("sciq_mc", sciq)
    for t, ex in zip(triples, sciq, strict=True):
        assert t.positive == ex.answer and t.id == ex.id and t.source == "sciq_mc"
        assert (
            sorted(t.negatives) == sorted(c for c in ex.choices if c != ex.answer)
            and len(t.negatives) == 3
        )
        assert t.anchor == f"Answer the question.\nQ: {ex.question.strip()}\nA:"
        assert t.positive_text == f"{t.anchor} {ex.answer}"

    tqa = load_dataset("truthfulqa", n=3, seed=0)
    t = build_triples("truthfulqa", tqa, max_negatives=2)[0]
    assert t.positive == tqa[0].best_answer and t.negatives == tqa[0].incorrect_answers[:2]
    # the model's own answer comes first; one equal to a correct answer is dropped
    own = [
        (tqa[0].question.upper(), "A made-up answer"),
        (tqa[0].question, tqa[0].correct_answers[0] + "."),
    ]
    t = build_triples("truthfulqa", tqa[:1], own_negatives=own, max_negatives=3)[0]
    assert (
        t.negatives == ("A made-up answer", *tqa[0].incorrect_answers[:2])
        and t.source == "truthfulqa+model"
    )
    only_own = build_triples("truthfulqa", tqa[:1], own_negatives=own, dataset_negatives=False)[0]
    assert only_own.negatives == ("A made-up answer",)

    wiki = load_dataset("wikiqa", "test", n=30, seed=0)
    triples = build_triples("wikiqa", wiki, max_negatives=10)
    answerable = [q for q in wiki if q.has_positive]
    assert len(triples) == len(answerable) < len(wiki)
    for t, q in zip(triples, answerable, strict=True):
        assert t.positive == q.sentences[q.labels.index(1)].strip()
        assert set(t.negatives) <= {
            s.strip() for s, y in zip(q.sentences, q.labels, strict=True) if y == 0
        }

    with pytest.raises(ConfigError, match="max_negatives"):
        build_triples("sciq_mc", sciq, max_negatives=-1)


def test_ablation_layers():
    assert ablation_layers("eavss", 30, layers=[11, 3, 7]) == [3, 7, 11]
    rnd = ablation_layers("random", 30, layers=[3, 7, 11], seed=5)
    assert rnd == sorted(np.random.default_rng(5).choice(30, 3, replace=False).tolist())
    assert (
        rnd
        == ablation_layers("random", 30, k=3, seed=5)
        != ablation_layers("random", 30, k=3, seed=6)
    )
    scores = [5.0, 1.0, 4.0, 0.5, 3.0, 1.0]
    assert ablation_layers("avss", 6, scores=scores, k=3) == [1, 3, 5]
    assert ablation_layers("avss", 6, layers=[0, 2]) == [0, 2]
    assert ablation_layers("full", 4) == [0, 1, 2, 3]
    # probe: the k highest accuracies (ties to the lower layer), same budget as the prone set
    accuracy = [0.55, 0.80, 0.60, 0.80, 0.50, 0.70]
    assert ablation_layers("probe", 6, scores=accuracy, k=3) == [1, 3, 5]
    assert ablation_layers("probe", 6, scores=accuracy, layers=[0, 2]) == [1, 3]
    assert ablation_layers("probe", 6, layers=[4, 2]) == [2, 4]
    with pytest.raises(ConfigError, match="needs k"):
        ablation_layers("probe", 6, scores=accuracy)
    with pytest.raises(ConfigError, match="5 probe scores"):
        ablation_layers("probe", 6, scores=accuracy[:5], k=2)
    with pytest.raises(ConfigError):
        ablation_layers("eavss", 4, layers=[1, 4])
    with pytest.raises(ConfigError):
        ablation_layers("prone", 4, layers=[1])


# ---------------------------------------------------------------- training


def test_frozen_parameter_guarantee_full_params(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    before = params(model)
    result = train(model, synthetic(6), TrainConfig(**CFG, lr=1e-3), pad_id=0, progress=False)
    after = params(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(block_of(n) in (1, 3) for n in changed)
    assert all(
        not torch.equal(before[n], after[n])
        for n in before
        if n.endswith("q_proj.weight") and block_of(n) in (1, 3)
    )
    assert sorted(result.state) == sorted(n for n in before if block_of(n) in (1, 3))
    assert len(result.history) == 3 and all(
        math.isfinite(r["loss"]) and r["cl"] > 0 for r in result.history
    )
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert not model.training


def test_frozen_parameter_guarantee_lora(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    before = params(model)
    seen: list[dict[str, torch.Tensor]] = []
    train(
        model,
        synthetic(6),
        TrainConfig(**CFG, lora=True, lora_r=4, lr=1e-2),
        pad_id=0,
        progress=False,
        callback=lambda row: seen.append(params(model)),
    )
    during = seen[-1]  # after the last step, adapters not yet merged
    lora = {n for n in during if ".lora_" in n}
    assert lora and {block_of(n) for n in lora} == {1, 3}
    base = {n.replace(".base_layer", ""): t for n, t in during.items() if ".lora_" not in n}
    assert base.keys() == before.keys() and all(torch.equal(before[n], base[n]) for n in before)
    assert any(not torch.equal(seen[0][n], during[n]) for n in lora)
    # merged: only the linear weights of blocks 1 and 3 moved; norms and everything else did not
    after = params(model)
    assert after.keys() == before.keys()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(block_of(n) in (1, 3) and n.endswith("proj.weight") for n in changed)


def test_full_mode_trains_everything_without_contrastive_term(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    before = params(model)
    result = train(
        model,
        synthetic(4),
        TrainConfig(full_model=True, batch_size=2, grad_accum=2, lr=1e-3),
        pad_id=0,
        progress=False,
    )
    after = params(model)
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert not torch.equal(before["model.norm.weight"], after["model.norm.weight"])
    assert (
        result.history[0]["cl"] == 0.0
        and result.meta["kind"] == "full"
        and len(result.history) == 1
    )


@pytest.mark.parametrize("lora", [False, True])
def test_resume_gives_the_same_weights(tiny_llama, tmp_path, lora):
    cfg = TrainConfig(
        **{**CFG, "grad_accum": 2, "batch_size": 1},
        lora=lora,
        lora_r=4,
        lr=1e-2 if lora else 1e-3,
        projection=True,
        projection_dim=8,
        checkpoint_every=2,
        epochs=2,
    )
    data = synthetic(5)
    whole = copy.deepcopy(tiny_llama)
    full_run = train(whole, data, cfg, pad_id=0, out_dir=tmp_path / "a", progress=False)

    class Stop(Exception):
        pass

    def stop(row):
        if row["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train(
            copy.deepcopy(tiny_llama),
            data,
            cfg,
            pad_id=0,
            out_dir=tmp_path / "b",
            callback=stop,
            progress=False,
        )
    resumed = copy.deepcopy(tiny_llama)
    second = train(
        resumed, data, cfg, pad_id=0, out_dir=tmp_path / "b", resume=True, progress=False
    )
    assert second.resumed_from == 2 and second.steps_run == 4 == len(full_run.history) - 2
    assert second.state.keys() == full_run.state.keys()
    assert all(torch.equal(second.state[n], full_run.state[n]) for n in full_run.state)
    assert all(
        torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters(), strict=True)
    )
    assert [r["loss"] for r in second.history] == [r["loss"] for r in full_run.history]
    with pytest.raises(ConfigError, match="another run"):
        train(
            copy.deepcopy(tiny_llama),
            data,
            dataclasses.replace(cfg, tau=0.1),
            pad_id=0,
            out_dir=tmp_path / "b",
            resume=True,
            progress=False,
        )


@pytest.mark.parametrize("lora", [False, True])
def test_save_and_load_trained_layers_reproduce_logits(tiny_llama, tmp_path, lora):
    trained = copy.deepcopy(tiny_llama)
    train(
        trained,
        synthetic(4),
        TrainConfig(**CFG, lora=lora, lora_r=4, lr=1e-2),
        pad_id=0,
        out_dir=tmp_path,
        progress=False,
    )
    fresh = copy.deepcopy(tiny_llama)
    assert not torch.equal(logits(fresh), logits(trained))
    meta = load_trained_layers(fresh, tmp_path)
    assert meta["layers"] == [1, 3] and meta["kind"] == ("lora" if lora else "blocks")
    assert torch.equal(logits(fresh), logits(trained))
    assert type(blocks(fresh)[1].self_attn.q_proj) is torch.nn.Linear
    with pytest.raises(ModelError, match="weights differ"):
        load_trained_layers(trained, tmp_path)  # not the base model any more


def test_train_config_rejects_bad_values(tiny_llama):
    for bad in (
        dict(layers=(1, 9)),
        dict(layers=(3, 1)),
        dict(layers=()),
        dict(layers=(1,), tau=0.0),
        dict(layers=(1,), lam=-1.0),
        dict(full_model=True, lora=True),
    ):
        with pytest.raises(ConfigError):
            TrainConfig(**bad).validate(4)
    with pytest.raises(ConfigError, match="no training examples"):
        train(copy.deepcopy(tiny_llama), [], TrainConfig(layers=(1,)), pad_id=0)


# ---------------------------------------------------------------- side effects and changes


def test_kl_to_base(tiny_llama):
    tok = ByteTokenizer()
    texts = ["hello world, a short text", "another one", "x" * 40]
    same = kl_to_base(tiny_llama, tiny_llama, tok, texts, batch_size=2)
    assert same.value == pytest.approx(0.0, abs=1e-9) and same.per_text[:, 1].tolist() == [
        25,
        11,
        40,
    ]
    other = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        blocks(other)[2].mlp.down_proj.weight.mul_(3.0)
    kl = kl_to_base(tiny_llama, other, tok, texts[:1])
    enc = tok(texts[:1])
    with torch.no_grad():
        p = torch.log_softmax(tiny_llama(**enc).logits, -1)
        q = torch.log_softmax(other(**enc).logits, -1)
    expected = (p.exp() * (p - q)).sum(-1).mean().item()
    assert kl.value > 0 and kl.value == pytest.approx(expected, rel=1e-5)


def _result(values: np.ndarray) -> EvalResult:
    ids = tuple(f"q{i}" for i in range(len(values)))
    return EvalResult(
        {
            "t": TaskResult(
                "t", ids, {"acc": MetricScores(float(values.mean()), "mean", True, values)}, {}, 0.0
            )
        }
    )


def test_paired_change():
    before = np.array([0.2, 0.4, 0.6, 0.8])
    table = paired_change(_result(before), _result(before + 0.1), n_boot=200)
    row = table.iloc[0]
    assert row["delta_abs"] == pytest.approx(0.1) and row["delta_rel"] == pytest.approx(0.2)
    # paired: every resample has the same difference, so the interval has zero width
    assert row["abs_ci_low"] == pytest.approx(0.1) and row["abs_ci_high"] == pytest.approx(0.1)
    assert row["rel_ci_low"] < 0.2 < row["rel_ci_high"]
    # from zero: the absolute change is defined, the relative one infinite in every resample
    # (avsslib.bootstrap's NaN policy: infinite replicates are ordered, only 0/0 gives NaN)
    zero = paired_change(_result(np.zeros(4)), _result(np.ones(4)), n_boot=50).iloc[0]
    assert zero["delta_abs"] == 1.0 and zero["delta_rel"] == math.inf
    assert (zero["rel_ci_low"], zero["rel_ci_high"]) == (math.inf, math.inf)
    # a resample without the one non-zero example is 0/0: the relative interval is undefined
    undefined = paired_change(_result(np.eye(4)[0]), _result(2 * np.eye(4)[0]), n_boot=50).iloc[0]
    assert undefined["delta_rel"] == 1.0 and math.isnan(undefined["rel_ci_low"])


def test_cli_layer_and_negative_files(tmp_path):
    from avsslib.mitigation import layers_from_file as _layers_from
    from avsslib.mitigation import read_own_negatives as _own_negatives

    (tmp_path / "a.json").write_text('{"prone_layers": [3, 7], "scores": [1.0]}')
    (tmp_path / "b.json").write_text("[1, 2]")
    (tmp_path / "c.json").write_text('{"layers": ["x"]}')
    (tmp_path / "s.csv").write_text("layer,avss\n1,0.2\n0,0.5\n2,0.1\n")
    (tmp_path / "p.json").write_text(
        '{"prone": {"truthfulqa": {"P": {"layers": [4, 9]}, "C": {"layers": [1]}}}}'
    )
    assert _layers_from(tmp_path / "a.json", "truthfulqa") == ([3, 7], None, None)
    assert _layers_from(tmp_path / "b.json", "truthfulqa") == ([1, 2], None, None)
    assert _layers_from(tmp_path / "s.csv", "truthfulqa") == (
        None,
        [0.5, 0.2, 0.1],
        "avss",
    )  # by layer
    assert _layers_from(tmp_path / "p.json", "truthfulqa", "C") == ([1], None, None)
    with pytest.raises(ConfigError, match="--prone-family"):
        _layers_from(tmp_path / "p.json", "truthfulqa")
    with pytest.raises(ConfigError, match="no prone layers for dataset 'wikiqa'"):
        _layers_from(tmp_path / "p.json", "wikiqa", "C")
    with pytest.raises(ConfigError, match="integers"):
        _layers_from(tmp_path / "c.json", "truthfulqa")
    # per-fold prone layers and probe accuracies (avss hallucination --folds 2 --probe)
    (tmp_path / "f.json").write_text(
        '{"prone": {"truthfulqa": {"P": {"layers": [4, 9]}}}, "folds": '
        '{"prone": {"truthfulqa": {"P": [{"layers": [2]}, {"layers": [5]}]}}}}'
    )
    assert _layers_from(tmp_path / "f.json", "truthfulqa", "P", 1) == ([5], None, None)
    assert _layers_from(tmp_path / "f.json", "truthfulqa", "P") == ([4, 9], None, None)
    with pytest.raises(ConfigError, match="no per-fold prone layers"):
        _layers_from(tmp_path / "p.json", "truthfulqa", "C", 0)
    (tmp_path / "probe.json").write_text(
        '{"probe": {"truthfulqa": {"accuracy": [0.5, 0.9, 0.6], '
        '"folds": [{"accuracy": [0.7, 0.5, 0.6]}]}}}'
    )
    assert _layers_from(tmp_path / "probe.json", "truthfulqa") == (None, [0.5, 0.9, 0.6], "probe")
    assert _layers_from(tmp_path / "probe.json", "truthfulqa", None, 0) == (
        None,
        [0.7, 0.5, 0.6],
        "probe",
    )
    with pytest.raises(ConfigError, match="no probe of fold 1"):
        _layers_from(tmp_path / "probe.json", "truthfulqa", None, 1)
    (tmp_path / "own.json").write_text(
        '[["Q1?", "wrong"], {"question": "Q2?", "answer": "also wrong"}]'
    )
    assert _own_negatives(tmp_path / "own.json") == [("Q1?", "wrong"), ("Q2?", "also wrong")]
    (tmp_path / "bad.json").write_text('[["Q1?"]]')
    with pytest.raises(ConfigError, match="entry 0"):
        _own_negatives(tmp_path / "bad.json")


def test_has_answer_and_triples_skip_wikiqa_questions_without_a_correct_sentence():
    from avsslib.data.records import WikiQAQuestion
    from avsslib.mitigate import has_answer

    good = WikiQAQuestion("Q1", "Who?", "T", ("a.", "b."), (0, 1))
    bad = WikiQAQuestion("Q2", "What?", "T", ("c.",), (0,))
    assert has_answer("wikiqa", good) and not has_answer("wikiqa", bad)
    assert [t.id for t in build_triples("wikiqa", [good, bad])] == ["Q1"]


def test_cli_refuses_a_split_left_empty_by_the_evaluation_before_loading(
    data_dir, capsys, tmp_path
):
    """WikiQA's test split has 243 answerable questions; --n-eval 300 holds all of them out, so
    nothing is left to train on. The command says so (and which split to use) before it loads the
    model: the model path does not exist and is never reached."""
    from avsslib.cli import main

    code = main(
        [
            "mitigate",
            "--model",
            "/no/such/model",
            "--dataset",
            "wikiqa",
            "--n-eval",
            "300",
            "--out",
            str(tmp_path / "never"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no training examples in wikiqa:test" in err and "--split train" in err
    assert "243 are held out" in err and not (tmp_path / "never").exists()
    # with the training split the data are fine and the (missing) model is the next error
    assert (
        main(
            [
                "mitigate",
                "--model",
                "/no/such/model",
                "--dataset",
                "wikiqa",
                "--split",
                "train",
                "--n-eval",
                "300",
                "--out",
                str(tmp_path / "never"),
            ]
        )
        == 2
    )
    assert "model directory /no/such/model does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_short_training_on_embedded_model(smol, data_dir, tmp_path):
    from avsslib.data import load_dataset

    model, tok = smol
    model = copy.deepcopy(model)
    triples = build_triples("truthfulqa", load_dataset("truthfulqa", n=2, seed=1), max_negatives=1)
    enc = encode_triples(triples, tok)
    assert tok.decode(enc[0].prompt + enc[0].positive) == triples[0].positive_text
    assert tok.decode(enc[1].prompt + enc[1].negatives[0]) == triples[1].negative_texts[0]
    before = params(model)
    result = train(
        model,
        enc,
        TrainConfig(layers=(20, 28), batch_size=2, grad_accum=1, lora=True),
        pad_id=tok.pad_token_id,
        out_dir=tmp_path,
        progress=False,
    )
    assert len(result.history) == 1 and math.isfinite(result.history[0]["loss"])
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and {block_of(n) for n in changed} == {20, 28}
    assert (tmp_path / "trained_layers.safetensors").exists()


@pytest.mark.slow
def test_truthfulqa_quick_eval_on_the_embedded_model(smol, data_dir):
    from avsslib.data import load_dataset
    from avsslib.mitigate import truthfulqa_quick_eval

    model, tokenizer = smol
    records = load_dataset("truthfulqa", n=3, seed=0, data_dir=data_dir)
    result = truthfulqa_quick_eval(model, tokenizer, records, max_new_tokens=8)
    task = result.tasks["truthfulqa"]
    assert task.ids == tuple(r.id for r in records)
    margin = task.metrics["margin"].per_example
    assert set(task.metrics) == {"truthful", "mc1", "margin"} and margin.shape == (3,)
    np.testing.assert_array_equal(task.metrics["mc1"].per_example, (margin > 0).astype(float))
    assert set(task.metrics["truthful"].per_example) <= {0.0, 1.0}
    with pytest.raises(ConfigError, match="no questions"):
        truthfulqa_quick_eval(model, tokenizer, [])
