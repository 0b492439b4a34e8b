"""Evaluation: bootstrap intervals, retention, perplexity, the task YAMLs and the harness runs."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch

from avsslib import evaluate as ev
from avsslib.errors import ConfigError
from avsslib.evaluate import (
    TASKS,
    EvalResult,
    MetricScores,
    TaskResult,
    bootstrap_ci,
    perplexity,
    retention,
    statistic,
)
from avsslib.harness_plumbing import lean_harness
from avsslib.tasks import utils as task_utils

HARNESS_TASKS = [t for t, s in TASKS.items() if s.runner == "harness"]


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_constant_values_give_zero_width():
    assert bootstrap_ci(np.full(50, 0.7)) == pytest.approx((0.7, 0.7))
    assert bootstrap_ci([3.0]) == (3.0, 3.0)


def test_bootstrap_interval_width_and_coverage():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, size=400)
    low, high = bootstrap_ci(x, n_boot=2000, seed=0)
    assert low < x.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * x.std() / math.sqrt(len(x)), rel=0.15)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    # coverage of the true mean over repeated samples: close to 95% (percentile bootstrap,
    # n = 40, runs a little under nominal)
    covered = [
        lo <= 0.0 <= hi
        for lo, hi in (bootstrap_ci(rng.normal(0, 1, 40), n_boot=300, seed=s) for s in range(200))
    ]
    assert 0.85 <= np.mean(covered) <= 0.99


def test_bootstrap_ratio_statistic():
    # every window has the same NLL per token -> perplexity exp(1.5) in every resample
    rows = np.array([[1.5 * k, k] for k in (3, 10, 7, 1)], dtype=float)
    ppl = statistic("perplexity")
    assert ppl(rows) == pytest.approx(math.exp(1.5))
    assert bootstrap_ci(rows, ppl) == pytest.approx((math.exp(1.5), math.exp(1.5)))
    assert statistic("bits_per_byte")(rows) == pytest.approx(1.5 / math.log(2))


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="0 examples"):
        bootstrap_ci([])
    with pytest.raises(ConfigError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)


# ---------------------------------------------------------------- retention


def _result(
    task_metrics: dict[str, dict[str, tuple[str, bool, np.ndarray]]], ids=None
) -> EvalResult:
    tasks = {}
    for task, metrics in task_metrics.items():
        scores = {
            name: MetricScores(statistic(kind)(v), kind, hib, np.asarray(v, dtype=float))
            for name, (kind, hib, v) in metrics.items()
        }
        n = len(next(iter(scores.values())).per_example)
        tasks[task] = TaskResult(task, tuple(ids or (f"q{i}" for i in range(n))), scores, {}, 0.0)
    return EvalResult(tasks)


def test_retention_ratio_and_perplexity_inversion():
    acc_o = np.array([1, 1, 1, 1, 0], dtype=float)  # 0.8
    acc_p = np.array([1, 1, 0, 1, 0], dtype=float)  # 0.6
    ppl_o = np.array([[np.log(10) * 4, 4]] * 5)  # PPL 10
    ppl_p = np.array([[np.log(20) * 4, 4]] * 5)  # PPL 20
    orig = _result(
        {"qa": {"acc": ("mean", True, acc_o)}, "lm": {"ppl": ("perplexity", False, ppl_o)}}
    )
    pruned = _result(
        {"qa": {"acc": ("mean", True, acc_p)}, "lm": {"ppl": ("perplexity", False, ppl_p)}}
    )
    df = retention(orig, pruned, n_boot=200).set_index("task")
    assert df.loc["qa", "retention"] == pytest.approx(0.75)
    assert not df.loc["qa", "inverted"]
    assert df.loc["lm", "retention"] == pytest.approx(0.5)  # PPL_orig / PPL_pruned
    assert df.loc["lm", "inverted"]
    assert df.loc["lm", "ci_low"] == pytest.approx(0.5) and df.loc[
        "lm", "ci_high"
    ] == pytest.approx(0.5)
    assert df.loc["qa", "ci_low"] <= 0.75 <= df.loc["qa", "ci_high"]


def test_retention_bootstrap_is_paired():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 1.0, size=60)
    orig = _result({"t": {"score": ("mean", True, x)}})
    # same examples, same scores, listed in another order: every paired resample gives 1.0
    perm = rng.permutation(60)
    pruned = _result({"t": {"score": ("mean", True, x[perm])}}, ids=[f"q{i}" for i in perm])
    row = retention(orig, pruned).iloc[0]
    assert (row.retention, row.ci_low, row.ci_high) == pytest.approx((1.0, 1.0, 1.0))
    # halving every score: the ratio of means is 0.5 in every resample
    half = _result({"t": {"score": ("mean", True, x / 2)}})
    assert retention(orig, half).iloc[0][["ci_low", "ci_high"]].tolist() == pytest.approx(
        [0.5, 0.5]
    )
    other = _result({"t": {"score": ("mean", True, x)}}, ids=[f"z{i}" for i in range(60)])
    with pytest.raises(ConfigError, match="different examples"):
        retention(orig, other)
    # zero denominators: retention inf, interval undefined when some resample is 0/0
    zeros, one_hit = np.zeros(60), np.eye(60)[0]
    assert retention(
        _result({"t": {"s": ("mean", True, zeros)}}), _result({"t": {"s": ("mean", True, x)}})
    ).iloc[0][["retention", "ci_low"]].tolist() == [math.inf, math.inf]
    zero = retention(
        _result({"t": {"s": ("mean", True, zeros)}}), _result({"t": {"s": ("mean", True, one_hit)}})
    ).iloc[0]
    assert zero.retention == math.inf and math.isnan(zero.ci_low)
    with pytest.raises(ConfigError, match="no task in common"):
        retention(orig, _result({"u": {"score": ("mean", True, x)}}))


def test_eval_result_round_trip_and_table():
    res = _result(
        {
            "t": {
                "acc": ("mean", True, np.array([1.0, 0.0, 1.0, 1.0])),
                "ppl": ("perplexity", False, np.array([[2.0, 1.0], [4.0, 3.0]] * 2)),
            }
        }
    )
    back = EvalResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.tasks["t"].ids == res.tasks["t"].ids
    np.testing.assert_array_equal(
        back.tasks["t"].metrics["ppl"].per_example, res.tasks["t"].metrics["ppl"].per_example
    )
    table = back.table(n_boot=100).set_index("metric")
    assert table.loc["acc", "value"] == 0.75 and table.loc["acc", "n"] == 4
    assert table.loc["ppl", "value"] == pytest.approx(math.exp(6 / 4))
    assert not table.loc["ppl", "higher_is_better"]


# ---------------------------------------------------------------- task metrics (utils.py)


def test_wikiqa_ranking_metrics_by_hand():
    # ranked: idx0 (0), idx1 (1), idx3 (1), idx2 (0) -> correct at ranks 2 and 3
    m = task_utils.ranking_metrics(np.array([0.9, 0.8, 0.1, 0.5]), np.array([0, 1, 0, 1]))
    assert m == pytest.approx({"acc": 0.0, "map": (1 / 2 + 2 / 3) / 2, "mrr": 0.5})
    m = task_utils.ranking_metrics(np.array([0.1, 0.7, 0.3]), np.array([0, 1, 0]))
    assert m == {"acc": 1.0, "map": 1.0, "mrr": 1.0}
    # ties keep file order: the first candidate wins
    assert task_utils.ranking_metrics(np.zeros(3), np.array([0, 0, 1]))["mrr"] == pytest.approx(
        1 / 3
    )
    with pytest.raises(ValueError):
        task_utils.ranking_metrics(np.zeros(2), np.zeros(2))


def test_wikiqa_process_results_normalises_by_characters():
    doc = {"sentences": ["a" * 10, "b" * 100], "labels": [0, 1]}
    # raw: -5 > -20 picks the short wrong one; per char: -0.5 < -0.2 picks the long right one
    out = task_utils.wikiqa_process_results(doc, [(-5.0, False), (-20.0, False)])
    assert out["acc"] == 0.0 and out["mrr"] == 0.5 and out["map"] == 0.5
    assert out["acc_norm"] == 1.0 and out["mrr_norm"] == 1.0 and out["map_norm"] == 1.0


def test_truthfulqa_mc2_mass_on_true_answers():
    lls = [(math.log(p), False) for p in (0.2, 0.3, 0.5)]
    out = task_utils.truthfulqa_mc2_process_results({"mc2_labels": [1, 0, 1]}, lls)
    assert out["acc"] == pytest.approx(0.7)


# ---------------------------------------------------------------- perplexity


class CharTokenizer:
    """Characters to ids 3..127 (tiny_llama's vocabulary); BOS 1, EOS 2."""

    bos_token_id, eos_token_id, name_or_path = 1, 2, "chars"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(c) % 125 for c in text]}

    def convert_ids_to_tokens(self, i):
        return {1: "<s>", 2: "</s>"}.get(i, chr(i))


TEXT = "the quick brown fox jumps over the lazy dog"


@torch.no_grad()
def test_perplexity_single_window_equals_one_forward(tiny_llama):
    tok = CharTokenizer()
    ids = [1] + tok(TEXT)["input_ids"]
    logp = torch.log_softmax(tiny_llama(torch.tensor([ids])).logits[0].double(), -1)
    nll = -sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))
    out = perplexity(tiny_llama, tok, TEXT, window=64, stride=64)
    assert out.tokens.tolist() == [len(TEXT)]
    assert out.nll.sum() == pytest.approx(nll, rel=1e-5)
    assert out.value == pytest.approx(math.exp(nll / len(TEXT)), rel=1e-5)
    assert out.protocol["prefix_token"] == "<s>" and out.protocol["scored_tokens"] == len(TEXT)
    # without the prefix token the first character is context only
    assert (
        perplexity(tiny_llama, tok, TEXT, window=64, stride=64, prefix=False).tokens.sum()
        == len(TEXT) - 1
    )


@torch.no_grad()
@pytest.mark.parametrize("window,stride,batch", [(8, 3, 4), (8, 8, 2), (5, 1, 8), (64, 8, 2)])
def test_perplexity_sliding_windows_brute_force(tiny_llama, window, stride, batch):
    tok = CharTokenizer()
    stream = [1] + tok(TEXT)["input_ids"]
    x, length = stream[:-1], len(stream) - 1
    expected = 0.0
    starts = [
        min(k * stride, max(0, length - window)) for k in range(length)
    ]  # last one ends at the end
    for i in range(length):  # position i predicts stream[i + 1]
        k = next(k for k in range(length) if min(starts[k] + window, length) > i)
        context = torch.tensor([x[starts[k] : i + 1]])
        expected -= torch.log_softmax(tiny_llama(context).logits[0, -1].double(), -1)[
            stream[i + 1]
        ].item()
    out = perplexity(tiny_llama, tok, TEXT, window=window, stride=stride, batch_size=batch)
    assert out.tokens.sum() == length
    assert out.nll.sum() == pytest.approx(expected, rel=1e-5)
    assert (
        perplexity(tiny_llama, tok, TEXT, window=window, stride=stride, max_tokens=20).tokens.sum()
        == 20
    )


def test_perplexity_rejects_bad_protocol(tiny_llama):
    with pytest.raises(ConfigError, match="stride"):
        perplexity(tiny_llama, CharTokenizer(), TEXT, window=8, stride=9)
    with pytest.raises(ConfigError, match="nothing to score"):
        perplexity(tiny_llama, CharTokenizer(), "a", prefix=False)


def test_perplexity_tokenizes_a_text_once_per_tokenizer(tiny_llama):
    """A study scores one text with one tokenizer for every configuration: the token ids are
    computed once, and the result is the same as with a fresh tokenizer."""

    class CountingTokenizer(CharTokenizer):
        calls = 0

        def __call__(self, text, **kwargs):
            type(self).calls += 1
            return super().__call__(text, **kwargs)

    tok = CountingTokenizer()
    first = perplexity(tiny_llama, tok, TEXT, window=8, stride=8)
    again = perplexity(tiny_llama, tok, TEXT, window=8, stride=8, max_tokens=20)
    assert CountingTokenizer.calls == 1
    assert again.tokens.sum() == 20
    assert (
        first.nll.tolist()
        == perplexity(tiny_llama, CharTokenizer(), TEXT, window=8, stride=8).nll.tolist()
    )
    for k in range(5):  # a few texts are kept, the oldest dropped first
        perplexity(tiny_llama, tok, f"{TEXT} {k}", window=8, stride=8)
    perplexity(tiny_llama, tok, TEXT, window=8, stride=8)
    assert CountingTokenizer.calls == 7


# ---------------------------------------------------------------- task YAMLs (no model)


def _load_task(name, folder, **kw):
    from lm_eval.tasks import TaskManager

    protocol = ev.materialise_task(name, folder, **kw)
    with ev._offline():
        task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][
            name
        ]
    return task, protocol


@pytest.mark.parametrize("name", HARNESS_TASKS)
def test_task_yaml_loads_in_task_manager(name, tmp_path, data_dir):
    task, protocol = _load_task(name, tmp_path, n=3, seed=1)
    docs = list(task.test_docs())
    assert len(docs) == protocol["records"] == 3
    text = task.doc_to_text(docs[0])
    assert isinstance(text, str)
    if name == "wikitext2_word_ppl":
        assert docs[0]["text"].lstrip().startswith("=") and " @-@ " not in task.doc_to_target(
            docs[0]
        )
    else:
        field = "sentence" if name == "sst2" else "question"
        assert docs[0][field] in text
    if name == "sciq_mc":
        support = (docs[0]["context"] or "").lstrip()
        assert text == f"{support}\nQuestion: {docs[0]['question']}\nAnswer:"
        assert task.doc_to_target(docs[0]) == docs[0]["label"]
    if name == "sst2":
        assert task.config.num_fewshot == 4 and len(list(task.fewshot_docs())) == ev.FEWSHOT_POOL
    if name.startswith("truthfulqa"):
        assert text.startswith("Q: What is human life expectancy") and text.endswith("\nA:")
        mc = "mc1" if name.endswith("mc1") else "mc2"
        assert task.doc_to_target(docs[0]) == docs[0][f"{mc}_labels"].index(1)
    if name in ("triviaqa_em", "nq_open_em"):
        assert task.doc_to_target(docs[0]) == docs[0]["answers"]
        assert task.config.generation_kwargs["until"] == ["\n", ".", ","]


def test_num_fewshot_override_and_checks(tmp_path, data_dir):
    task, _ = _load_task("sst2", tmp_path, n=2, num_fewshot=0)
    assert task.config.num_fewshot == 0
    with pytest.raises(ConfigError, match="few-shot pool"):
        ev.evaluate(None, None, ["sst2", "sciq_mc"], num_fewshot=2)
    with pytest.raises(ConfigError, match="known tasks"):
        ev.evaluate(None, None, ["sciq"])


# ---------------------------------------------------------------- end to end (embedded tokenizer)


@pytest.fixture(scope="module")
def tiny_with_tokenizer(smol, tiny_model):
    """A 2-block random Llama over the embedded model's tokenizer: harness plumbing in seconds."""
    _, tok = smol
    model = tiny_model(
        "llama",
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return model, tok


@pytest.mark.slow
def test_every_task_end_to_end(tiny_with_tokenizer, data_dir):
    model, tok = tiny_with_tokenizer
    res = ev.evaluate(
        model, tok, list(TASKS), n=3, seed=0, batch_size=4, ppl_window=64, ppl_stride=64
    )
    assert list(res.tasks) == list(TASKS)
    for name, t in res.tasks.items():
        assert len(t.ids) == len(set(t.ids)) == 3, name
        for metric, m in t.metrics.items():
            assert len(m.per_example) == 3
            assert statistic(m.kind)(m.per_example) == pytest.approx(m.value, rel=1e-9), (
                name,
                metric,
            )
        assert t.wall_s > 0
    assert res.tasks["sst2"].protocol["num_fewshot"] == 4
    assert res.tasks["truthfulqa_mc1"].protocol["num_fewshot"] == 0
    assert res.tasks["wikitext2_ppl"].protocol["windows"] == 3
    assert res.tasks["triviaqa_em"].protocol["generation_kwargs"]["max_gen_toks"] == 32
    acc = res.tasks["sciq_mc"].metrics["acc"].per_example
    assert set(acc) <= {0.0, 1.0}
    # a model compared with itself keeps everything (where the metric is not 0)
    same = retention(res, res, n_boot=50)
    same = same[same["original"] != 0]
    assert len(same) > 0 and same["retention"].tolist() == pytest.approx([1.0] * len(same))


@pytest.mark.slow
def test_lean_harness_changes_no_number(tiny_with_tokenizer, data_dir, monkeypatch):
    """Every harness task with and without :func:`lean_harness`: the same ids, per-example
    scores, metric values and protocols; the harness's own functions are back afterwards."""
    import lm_eval.evaluator
    import lm_eval.utils

    def harness_functions():
        e = lm_eval.evaluator
        return (lm_eval.utils.apply_template, e.add_env_info, e.get_git_commit_hash)

    headers = []  # the harness's results headers, counted
    add_env_info = lm_eval.evaluator.add_env_info
    monkeypatch.setattr(
        lm_eval.evaluator,
        "add_env_info",
        lambda storage: headers.append(1) or add_env_info(storage),
    )
    originals = harness_functions()
    model, tok = tiny_with_tokenizer

    def run():
        out = ev.evaluate(model, tok, HARNESS_TASKS, n=3, seed=1, batch_size=4).to_dict()
        out.pop("timing")
        return out

    lean = run()
    assert harness_functions() == originals and headers == []  # evaluate ran lean
    monkeypatch.setattr(ev, "lean_harness", contextlib.nullcontext)
    assert run() == lean
    assert len(headers) == len(HARNESS_TASKS)  # one header per simple_evaluate when plain


def test_lean_harness_compiles_a_template_once(monkeypatch):
    import lm_eval.utils as utils

    sources = []
    compile_source = utils.env.from_string
    monkeypatch.setattr(
        utils.env, "from_string", lambda source: sources.append(source) or compile_source(source)
    )
    docs = [{"q": "a"}, {"q": "b"}, {"q": "a"}]
    with lean_harness():
        lean = [utils.apply_template("{{q}}?", d) for d in docs]
    assert sources == ["{{q}}?"]
    assert lean == [utils.apply_template("{{q}}?", d) for d in docs] == ["a?", "b?", "a?"]
    assert len(sources) == 4  # the harness's own function again: one compilation per call


@pytest.mark.slow
def test_same_seed_same_numbers(tiny_with_tokenizer, data_dir):
    model, tok = tiny_with_tokenizer
    runs = [
        ev.evaluate(model, tok, ["sst2", "triviaqa_em"], n=3, seed=4, batch_size=2).to_dict()
        for _ in range(2)
    ]
    for run in runs:
        run.pop("timing")
    assert runs[0] == runs[1]
    other = ev.evaluate(model, tok, ["sst2"], n=3, seed=5).to_dict()
    assert other["tasks"]["sst2"]["ids"] != runs[0]["tasks"]["sst2"]["ids"]


@pytest.mark.slow
@pytest.mark.parametrize("which,window", [("smol", 512), ("tiny", 16)])
def test_harness_rolling_loglikelihood_equals_ours(which, window, smol, tiny_with_tokenizer):
    """The harness's loglikelihood_rolling total of one document equals minus our summed NLL:
    with window >= length (smol, one window) and over several disjoint windows (tiny)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = smol if which == "smol" else tiny_with_tokenizer
    text = "Robert Boulter is an English film, television and theatre actor. " * 3
    ours = perplexity(model, tok, text, window=window, stride=window)
    assert (ours.protocol["windows"] == 1) == (which == "smol")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=window)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    (harness,) = lm.loglikelihood_rolling([request], disable_tqdm=True)
    assert harness == pytest.approx(-ours.nll.sum(), rel=1e-5)


@pytest.mark.slow
def test_embedded_model_sciq(smol, data_dir):
    model, tok = smol
    res = ev.evaluate(model, tok, ["sciq_mc"], n=6, seed=0)
    t = res.tasks["sciq_mc"]
    assert t.protocol["records"] == 6 and t.protocol["lm_eval"]
    assert 0.0 <= t.metrics["acc"].value <= 1.0


@pytest.mark.slow
def test_cli_eval_writes_result_files(tiny_with_tokenizer, tmp_path, data_dir):
    from avsslib.cli import main

    model, tok = tiny_with_tokenizer
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    try:
        status = main(
            [
                "eval",
                "--model",
                str(tmp_path / "model"),
                "--tasks",
                "sciq_mc,wikitext2_ppl",
                "--n",
                "2",
                "--out",
                str(out),
                "--ppl-window",
                "32",
                "--ppl-stride",
                "32",
                "--n-boot",
                "50",
            ]
        )
    finally:  # the command calls set_seed, whose deterministic-kernels switch is process-wide
        torch.use_deterministic_algorithms(False)
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.csv",
        "metrics.json",
        "record.json",
        "record.md",
    ]
    record = json.loads((out / "record.json").read_text())
    assert record["command"].startswith("avss eval --model ")
    assert "sciq/llm-adapters_sciq_test_mc4.json" in record["data_files"]
    assert set(record["timing"]["tasks_s"]) == {"sciq_mc", "wikitext2_ppl"}
    assert record["metrics"]["protocols"]["wikitext2_ppl"]["window"] == 32
    back = EvalResult.from_dict(json.loads((out / "metrics.json").read_text()))
    assert len(back.tasks["sciq_mc"].ids) == 2
    assert all(i.startswith("sciq/test/") for i in back.tasks["sciq_mc"].ids)
