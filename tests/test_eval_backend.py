"""avsslib.eval_backend: our harness backend (CachedLM) against the harness's HFLM.

Parity: per request the same log-likelihood (float32; tolerance below), the same is_greedy,
the same generated strings and the same per-example metrics, on every harness task of TASKS,
on tiny random models of several architectures and (slow) on the embedded model.

Tolerance: the harness's own answers move with its batch size by float32 rounding (HFLM at
batch 8 against batch 3 on WikiQA with the embedded model: 4.6e-5 at |LL| ~ 400, where one
float32 ulp is 3e-5), so a log-likelihood must match within 1e-4, relaxed to 1e-6 relative
beyond |LL| = 100.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import avsslib.evaluate as ev
from avsslib.errors import ConfigError
from avsslib.eval_backend import REUSE_ARCHITECTURES, CachedLM, common_prefix, select_rows
from avsslib.eval_greedy import GRAPH_ARCHITECTURES
from avsslib.evaluate import TASKS

HARNESS_TASKS = [t for t, s in TASKS.items() if s.runner == "harness"]
PARITY_ARCHITECTURES = ["llama", "qwen2", "gpt2", "gpt_neox"]


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(1.0, abs(a) / 100)


@pytest.fixture(scope="module")
def tiny_causal_lm(tiny_model):
    """``tiny_causal_lm(model_type, vocab, **extra)``: the conftest factory with 2 blocks and a
    1024-token context."""
    return lambda model_type, vocab, **extra: tiny_model(
        model_type, vocab_size=vocab, num_hidden_layers=2, max_position_embeddings=1024, **extra
    )


@pytest.fixture(scope="module")
def tok(smol):
    return smol[1]


def backends(model, tok, **kw):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, **kw), CachedLM(model, tok, **kw)


# ---------------------------------------------------------------- building blocks


def test_common_prefix():
    assert common_prefix([(1, 2, 3), (1, 2, 4), (1, 2)]) == (1, 2)
    assert common_prefix([(5,), (1, 2)]) == ()
    assert common_prefix([(1, 2, 3)]) == (1, 2, 3)
    assert common_prefix([]) == ()


def test_no_requests_no_answers(tiny_causal_lm, tok):
    harness, ours = backends(tiny_causal_lm("llama", len(tok)), tok, batch_size=2)
    assert ours._loglikelihood_tokens([]) == [] == harness._loglikelihood_tokens([])


def test_default_token_budget(tiny_causal_lm, tok):
    from avsslib.kv_cache import default_max_batch_tokens, position_bytes

    model = tiny_causal_lm("llama", len(tok))
    c = model.config
    kv = c.num_hidden_layers * 2 * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    per = 2 * kv * 4 + (4 * c.hidden_size + 2 * c.intermediate_size) * 4 + c.vocab_size
    assert position_bytes(model) == per
    assert default_max_batch_tokens(model, 8) == 4096  # a CPU model: 512 a row
    assert default_max_batch_tokens(model, 8, free_bytes=1) == 4096  # never below that
    assert default_max_batch_tokens(model, 8, free_bytes=4 * 6000 * per) == 6000
    assert default_max_batch_tokens(model, 8, free_bytes=10**15) == 4 * 4096  # at most 4x
    odd = SimpleNamespace(config=SimpleNamespace(), parameters=lambda: iter([torch.zeros(1)]))
    assert default_max_batch_tokens(odd, 8, free_bytes=10**15) == 4096  # sizes unreadable
    assert CachedLM(model, tok, batch_size=8).max_batch_tokens == 4096
    assert CachedLM(model, tok, batch_size=8, max_batch_tokens=100).max_batch_tokens == 100


def test_select_rows_copies_and_leaves_the_source_alone():
    from transformers import DynamicCache

    cache = DynamicCache()
    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    cache.update(k.clone(), v.clone(), 0)
    picked = select_rows(cache, torch.tensor([1, 1, 0]))
    assert picked.get_seq_length() == 5 and picked.layers[0].keys.shape[0] == 3
    assert torch.equal(picked.layers[0].keys[0], k[1]) and torch.equal(
        picked.layers[0].values[2], v[0]
    )
    picked.update(torch.zeros(3, 3, 2, 4), torch.zeros(3, 3, 2, 4), 0)  # extending the copy ...
    picked.layers[0].keys[0, 0, 0, 0] = 99.0  # ... or writing into it
    assert cache.get_seq_length() == 5 and torch.equal(
        cache.layers[0].keys, k
    )  # ... leaves the source
    assert torch.equal(cache.layers[0].values, v)


@pytest.mark.parametrize("model_type", sorted(REUSE_ARCHITECTURES))
def test_token_requests_equal_hflm_every_reuse_architecture(model_type, tok, tiny_causal_lm):
    """Synthetic token requests on every architecture that reuses caches: shared prefixes,
    contexts of one token, several continuations per context, left truncation (max_length 24),
    and the same contexts with one-token continuations only (the single-pass path)."""
    model = tiny_causal_lm(model_type, 128)
    harness, ours = backends(model, tok, batch_size=3, max_length=24)
    assert ours.reuse_cache, ours.reuse_reason
    ours.max_batch_tokens, ours.max_logit_tokens = 40, 12  # several batches and chunks
    rnd = random.Random(0)
    preamble = [rnd.randrange(3, 128) for _ in range(7)]
    requests = []
    for q in range(6):
        context = preamble + [
            rnd.randrange(3, 128) for _ in range(rnd.randrange(0, 12 if q else 30))
        ]
        for _ in range(rnd.randrange(1, 4)):
            requests.append(
                (None, context, [rnd.randrange(3, 128) for _ in range(rnd.randrange(1, 6))])
            )
    requests.append((None, [5], [6, 7, 8]))  # a context of one token
    requests.append((("a", "b"), [9], [10]))
    one_token = [(key, context, continuation[:1]) for key, context, continuation in requests]
    for shared_only in (
        requests,
        [r for r in requests if r[1][:7] == preamble],
        one_token,
        [r for r in one_token if r[1][:7] == preamble],
    ):
        expected = harness._loglikelihood_tokens(shared_only, disable_tqdm=True)
        got = ours._loglikelihood_tokens(shared_only, disable_tqdm=True)
        assert len(got) == len(expected)
        for (e, eg), (g, gg) in zip(expected, got, strict=True):
            assert close(e, g) and eg == gg, (model_type, e, g)


@pytest.mark.parametrize(
    "model_type,extra,reason",
    [
        ("mistral", {"sliding_window": 8}, "not among"),  # not covered
        (
            "qwen2",
            {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0},
            "sliding",
        ),
    ],
)
def test_unsupported_models_fall_back_to_hflm(model_type, extra, reason, tok, tiny_causal_lm):
    model = tiny_causal_lm(model_type, 128, **extra)
    harness, ours = backends(model, tok, batch_size=2, max_length=16)
    assert not ours.reuse_cache and reason in ours.reuse_reason
    requests = [(None, [3, 4, 5, 6], [7, 8]), (None, [3, 4, 5, 6], [9])]
    assert ours._loglikelihood_tokens(requests) == harness._loglikelihood_tokens(requests)


@pytest.mark.parametrize(
    ("adds_bos", "add_bos_token"), [(False, None), (True, None), (True, False)]
)
def test_batched_encoding_is_the_harness_encoding(
    adds_bos, add_bos_token, tok, tiny_causal_lm, monkeypatch
):
    """``CachedLM.loglikelihood`` tokenizes a call's strings in batches: the table equals
    ``HFLM.tok_encode`` string by string (with a tokenizer that adds a BOS token or not, a string
    that starts with the prefix token), every string the harness's ``_encode_pair`` asks for is in
    it, and ``_loglikelihood_tokens`` receives the harness's own token lists."""
    import copy

    from lm_eval.api.instance import Instance

    from avsslib.eval_encoding import encode_strings, pair_strings

    if adds_bos:
        tok = copy.deepcopy(tok)
        tok.add_bos_token = True
        assert tok("hi")["input_ids"][0] == tok.bos_token_id
    model = tiny_causal_lm("llama", len(tok))
    harness, ours = backends(model, tok, batch_size=4, add_bos_token=add_bos_token)
    bos = tok.decode(harness.prefix_token_id)
    pairs = [
        ("Q: what is 2 + 2?\nA:", " 4"),
        ("Q: what is 2 + 2?\nA:", " four"),
        ("trailing spaces  ", "go to the continuation"),
        (bos + "starts with the prefix token", " yes"),
        ("", "an empty context"),
        ("\u00e9t\u00e9 \u2014 unicode", " \u00e0 la"),
    ]
    strings = pair_strings(pairs)
    assert len(strings) == 9  # the empty context is left to the harness
    table = encode_strings(ours, strings)
    assert {s: table[s] for s in strings} == {s: harness.tok_encode(s) for s in strings}

    seen: dict[str, list] = {}
    encoded: list[str] = []
    for name, lm in (("harness", harness), ("ours", ours)):
        lm._loglikelihood_tokens = lambda reqs, name=name, **kw: (
            seen.setdefault(name, reqs) and [(0.0, False)] * len(reqs)
        )
        if name == "ours":  # what reaches the tokenizer one string at a time

            def one_string(text, _encode=tok.encode, **kw):
                encoded.append(text)
                return _encode(text, **kw)

            monkeypatch.setattr(tok, "encode", one_string)
        lm.loglikelihood([Instance("loglikelihood", {}, pair, k) for k, pair in enumerate(pairs)])
    assert seen["ours"] == seen["harness"]
    assert encoded == ["an empty context"]  # encoded by the harness with other special tokens
    assert ours._encoded == {}  # the table lives for one call


@pytest.mark.parametrize(
    ("adds_bos", "add_bos_token"), [(False, None), (True, None), (True, False), (False, True)]
)
def test_prompt_encoding_is_the_harness_encoding(adds_bos, add_bos_token, tok, tiny_causal_lm):
    """Generation prompts tokenized in one call equal ``HFLM.tok_batch_encode`` on each prompt
    alone (``prompt_tokens``), left truncation included, whatever the tokenizer adds and
    whether a prompt starts with the BOS token."""
    import copy

    from avsslib.eval_encoding import encode_prompts

    if adds_bos:
        tok = copy.deepcopy(tok)
        tok.add_bos_token = True
    model = tiny_causal_lm("llama", len(tok))
    _, ours = backends(model, tok, batch_size=4, max_length=64, add_bos_token=add_bos_token)
    prompts = [
        "Question: who wrote Hamlet?\nAnswer:",
        tok.bos_token + "Question: starts with BOS\nAnswer:",
        "word " * 80,  # longer than the 64 - 16 kept
        "\u00e9t\u00e9 \u2014 unicode",
    ]
    batched = encode_prompts(ours, prompts, 64 - 16)
    assert batched == [ours.prompt_tokens(p, 16) for p in prompts]
    assert len(batched[2]) == 48


# ---------------------------------------------------------------- task parity


def _run(lm, name: str, folder: Path, seed: int = 0) -> list[dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[name],
        log_samples=True,
        bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    return sorted(out["samples"][name], key=lambda s: s["doc_id"])


def assert_task_parity(
    model, tok, tasks, n: int, max_length: int, check_every: int = 1, decode: str | None = None
) -> None:
    harness, ours = backends(model, tok, batch_size=4, max_length=max_length)
    assert ours.reuse_cache, ours.reuse_reason
    ours.check_every = check_every
    ours.decode = decode or ours.decode
    with ev._offline(), tempfile.TemporaryDirectory() as tmp:
        for name in tasks:
            folder = Path(tmp) / name
            ev.materialise_task(name, folder, n=2 if name == "wikitext2_word_ppl" else n, seed=0)
            a, b = _run(harness, name, folder), _run(ours, name, folder)
            assert [s["doc_id"] for s in a] == [s["doc_id"] for s in b]
            metrics = [
                k
                for k in a[0]
                if k
                in {
                    "acc",
                    "acc_norm",
                    "exact_match",
                    "map",
                    "mrr",
                    "map_norm",
                    "mrr_norm",
                    "word_perplexity",
                    "byte_perplexity",
                    "bits_per_byte",
                }
            ]
            assert metrics, name
            for sa, sb in zip(a, b, strict=True):
                for ra, rb in zip(sa["resps"], sb["resps"], strict=True):
                    x, y = ra[0], rb[0]
                    if isinstance(x, str):
                        assert x == y, (name, x, y)
                    elif isinstance(x, tuple | list):
                        assert close(x[0], y[0]) and x[1] == y[1], (name, x, y)
                    else:
                        assert close(x, y), (name, x, y)
                for m in metrics:
                    va, vb = np.asarray(sa[m], dtype=float), np.asarray(sb[m], dtype=float)
                    if m.endswith(("perplexity", "per_byte")):  # (log-likelihood, count) pairs
                        assert close(va[0], vb[0]) and va[1] == vb[1], (name, m)
                    elif set(va.ravel()) | set(vb.ravel()) <= {0.0, 1.0}:  # a decision: identical
                        assert np.array_equal(va, vb), (name, m, va, vb)
                    else:  # a rank (map, mrr) or a probability mass (truthfulqa_mc2)
                        assert np.allclose(va, vb, rtol=1e-3, atol=1e-12), (name, m, va, vb)


@pytest.mark.parametrize("model_type", PARITY_ARCHITECTURES)
def test_every_task_parity_tiny_models(model_type, tok, data_dir, tiny_causal_lm):
    model = tiny_causal_lm(model_type, len(tok))
    assert_task_parity(model, tok, HARNESS_TASKS, n=2, max_length=128)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_generation_read_back_in_blocks_is_the_harness_generation(
    model_type, tok, data_dir, tiny_causal_lm
):
    """On CUDA the greedy tokens are read back in blocks (``check_every``): rows that finish
    inside a block run on, and their text must still be the harness's."""
    generation = ["triviaqa_em", "nq_open_em"]  # the generation tasks of TASKS
    model = tiny_causal_lm(model_type, len(tok))
    assert_task_parity(model, tok, generation, n=6, max_length=128, check_every=3)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_generation_on_a_static_cache_is_the_harness_generation(
    model_type, tok, data_dir, tiny_causal_lm
):
    """``decode="static"`` (the step a CUDA graph replays, run eagerly here) against HFLM on
    the generation tasks, rows finishing at different steps while the batch keeps them."""
    model = tiny_causal_lm(model_type, len(tok))
    assert_task_parity(
        model, tok, ["triviaqa_em", "nq_open_em"], n=6, max_length=128, decode="static"
    )


@pytest.mark.parametrize("model_type", sorted(GRAPH_ARCHITECTURES))
def test_static_decode_steps_equal_dynamic_ones_every_graph_architecture(
    model_type, tok, tiny_causal_lm
):
    """The same greedy tokens and (within float32 rounding) logits from a ``StaticCache`` with
    an explicit mask as from the growing ``DynamicCache``, on left-padded prompts of several
    lengths, before and after dropping rows, on every architecture a graph may decode."""
    from avsslib.eval_greedy import DynamicSteps, StaticSteps
    from avsslib.kv_cache import pad_ids

    model = tiny_causal_lm(model_type, 128)
    _, ours = backends(model, tok, batch_size=3, max_length=64)
    rnd = random.Random(1)
    prompts = [[rnd.randrange(3, 128) for _ in range(n)] for n in (9, 4, 1, 7)]
    runs = []
    for static in (False, True):
        width = max(map(len, prompts))
        mask = pad_ids([[1] * len(p) for p in prompts], width, 0, left=True)
        cache = ours._new_cache()
        logits = ours._forward(
            input_ids=pad_ids(prompts, width, 0, left=True),
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 1),
            cache=cache,
        ).logits[:, -1]
        steps = (
            StaticSteps(ours, cache, mask, mask.sum(-1), 6, graph=False)
            if static
            else DynamicSteps(ours, cache, mask, mask.sum(-1))
        )
        seen = []
        for step in range(5):
            if step == 3:  # rows 1 and 2 finished: both ways drop them
                assert steps.shrink(2, 4)
                index = torch.tensor([0, 3])
                steps.keep(index)
                logits = logits[index]
            tokens = logits.argmax(-1)
            seen.append((tokens, logits.clone()))
            logits = steps(tokens)
        runs.append(seen)
    for (ta, la), (tb, lb) in zip(*runs, strict=True):
        assert torch.equal(ta, tb), model_type
        assert torch.allclose(la, lb, atol=1e-5, rtol=1e-4), (model_type, (la - lb).abs().max())


def test_default_decode_is_a_graph_on_cuda_sdpa_only(tiny_causal_lm):
    from avsslib.eval_greedy import default_decode, static_decode_support

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    model = tiny_causal_lm("llama", 128)
    model.config._attn_implementation = "sdpa"
    assert default_decode(model, cuda, mixed_precision=False) == "graph"
    assert default_decode(model, cpu, mixed_precision=False) == "dynamic"
    assert default_decode(model, cuda, mixed_precision=True) == "dynamic"
    model.config._attn_implementation = "eager"  # adds the mask to its scores
    assert default_decode(model, cuda, mixed_precision=False) == "dynamic"
    model.config._attn_implementation = "sdpa"
    model.config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    assert default_decode(model, cuda, mixed_precision=False) == "dynamic"
    gptj = tiny_causal_lm("gptj", 128)
    gptj.config._attn_implementation = "sdpa"
    assert static_decode_support(gptj) == (
        False,
        "model type 'gptj' is not among GRAPH_ARCHITECTURES",
    )
    window = tiny_causal_lm(
        "qwen2", 128, use_sliding_window=True, sliding_window=8, max_window_layers=0
    )
    window.config._attn_implementation = "sdpa"
    assert static_decode_support(window)[1] == "sliding-window or hybrid cache layers"


def test_a_static_decode_the_model_cannot_run_is_refused(tok, data_dir, tiny_causal_lm):
    """A static step on eager attention would mask nothing: asking for one is an error, as is
    an unknown way of decoding."""
    from avsslib.eval_greedy import greedy_tokens

    model = tiny_causal_lm("llama", len(tok))
    _, ours = backends(model, tok, batch_size=2, max_length=64)
    model.config._attn_implementation = "eager"
    ours.decode = "static"
    with pytest.raises(ConfigError, match="sdpa"):
        greedy_tokens(ours, [[5, 6, 7]], ["\n"], 4)
    model.config._attn_implementation = "sdpa"
    ours.decode = "compiled"
    with pytest.raises(ConfigError, match="dynamic, static, graph"):
        greedy_tokens(ours, [[5, 6, 7]], ["\n"], 4)


def test_graph_bookkeeping_with_an_emulated_graph(monkeypatch, tok, data_dir, tiny_causal_lm):
    """The ``graph`` path on the CPU, with ``torch.cuda``'s graph replaced by an emulation that
    keeps a real graph's semantics: capture runs nothing and returns an output buffer, replay
    runs the step on the tensors captured (not the step object's current ones) and writes that
    buffer. Held to HFLM on the generation tasks, it checks the eager first step, the capture,
    the aliased output, and the new capture after finished rows are dropped."""
    import contextlib

    from avsslib.eval_greedy import StaticSteps

    capturing: list = []
    captures = []

    class Graph:
        def replay(self):
            self.out.copy_(self.run())

    @contextlib.contextmanager
    def graph(g):
        capturing.append(g)
        yield
        capturing.pop()

    real_step = StaticSteps._step

    def step(self):
        if not capturing:
            return real_step(self)
        g = capturing[-1]
        ids, pos, mask, cache = self.ids, self.pos, self.mask, self.cache  # the "addresses"
        g.run = lambda: self.lm._forward(
            input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache
        ).logits[:, -1]
        g.out = torch.full((ids.shape[0], self.lm.model.config.vocab_size), float("nan"))
        captures.append(ids.shape[0])
        return g.out

    real_keep, kept = StaticSteps.keep, []

    def keep(self, index):
        kept.append(len(index))
        real_keep(self, index)

    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(StaticSteps, "_step", step)
    monkeypatch.setattr(StaticSteps, "keep", keep)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    model = tiny_causal_lm("llama", len(tok))
    assert_task_parity(
        model, tok, ["triviaqa_em", "nq_open_em"], n=6, max_length=128, decode="graph"
    )
    assert kept and set(kept) <= set(captures), (kept, captures)  # captured anew after dropping


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_decode_is_the_harness_generation_on_cuda(tok, data_dir, tiny_causal_lm):
    model = tiny_causal_lm("llama", len(tok)).cuda()
    assert_task_parity(model, tok, ["triviaqa_em"], n=6, max_length=128, decode="graph")


@pytest.mark.slow
def test_every_task_parity_embedded_model(smol, data_dir):
    model, tok = smol
    assert_task_parity(model, tok, HARNESS_TASKS, n=3, max_length=256)


# ---------------------------------------------------------------- evaluate() and the CLI


def test_evaluate_records_backend_and_rejects_unknown(tok, data_dir, tiny_causal_lm):
    model = tiny_causal_lm("llama", len(tok))
    with pytest.raises(ConfigError, match="backend"):
        ev.evaluate(model, tok, ["sciq_mc"], n=2, backend="vllm")
    runs = {
        b: ev.evaluate(model, tok, ["sciq_mc"], n=2, backend=b, max_length=96)
        for b in ("avsslib", "harness")
    }
    assert runs["avsslib"].tasks["sciq_mc"].protocol["model_backend"] == "avsslib"
    assert runs["avsslib"].tasks["sciq_mc"].protocol["cache_reuse"] is True
    assert runs["avsslib"].tasks["sciq_mc"].protocol["greedy_decode"] == "dynamic"  # on a CPU
    assert runs["harness"].tasks["sciq_mc"].protocol["model_backend"] == "harness"
    for m in ("acc", "acc_norm"):
        assert np.array_equal(
            runs["avsslib"].tasks["sciq_mc"].metrics[m].per_example,
            runs["harness"].tasks["sciq_mc"].metrics[m].per_example,
        )


def test_cli_eval_backend_flag():
    import argparse

    from avsslib.cli.eval import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--tasks", "sciq_mc", "--out", "x"]
    assert parser.parse_args(base).eval_backend == "avsslib"
    assert parser.parse_args([*base, "--eval-backend", "harness"]).eval_backend == "harness"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--eval-backend", "vllm"])
