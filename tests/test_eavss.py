"""HSAV/HSS/EAVSS on synthetic statistics with hand-computed answers; answer-token masking on a
tiny Llama against a manual computation; a short end-to-end run of `avss hallucination`."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from avsslib.eavss import (
    default_k,
    eavss_profile,
    eavss_scores,
    hallucination_stats,
    k_sweep,
    prone_layers,
    prone_sweep,
    teacher_forcing_batches,
)
from avsslib.errors import AvssError, ConfigError
from avsslib.labels import LabelledExample
from avsslib.scores import SparsityClampWarning, avss_values


class CharTokenizer:
    """One token per character (id = 3 + ord % 120), BOS = 1, EOS = 2, pad = 0."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [3 + ord(c) % 120 for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


# Four layers. By hand (N[f] = f / sum f):
#   N[V_H] = [.1, .2, .3, .4]            N[S_H] = [.25, .125, .125, .5]
#   P: EAVSS = [.4, 1.6, 2.4, .8] (sum 5.2)   AVSS_T = N[V_T]/N[S_T] = [4, 4, 16, 4] / 7 (sum 4)
#      delta = EAVSS/5.2 - AVSS_T/4 = [1/13 - 1/7, 4/13 - 1/7, 6/13 - 4/7, 2/13 - 1/7]
#   C: HSAV = V_H/V_T = [1, 2, .75, 4] -> N = [4, 8, 3, 16] / 31;  HSS = S_H/S_T = [2, 1, 1, 4]
#      -> N = [.25, .125, .125, .5];  EAVSS = [16, 64, 24, 32] / 31
V_H, S_H = [1.0, 2.0, 3.0, 4.0], [0.2, 0.1, 0.1, 0.4]
V_T, S_T = [1.0, 1.0, 4.0, 1.0], [0.1, 0.1, 0.1, 0.1]


def test_family_p_by_hand():
    df = eavss_profile(V_H, S_H, V_T, S_T, "P", k=1)
    np.testing.assert_allclose(df["hsav"], V_H)
    np.testing.assert_allclose(df["hss"], S_H)
    np.testing.assert_allclose(df["eavss"], [0.4, 1.6, 2.4, 0.8])
    np.testing.assert_allclose(df["avss_t"], np.array([4, 4, 16, 4]) / 7)
    delta = [1 / 13 - 1 / 7, 4 / 13 - 1 / 7, 6 / 13 - 4 / 7, 2 / 13 - 1 / 7]
    np.testing.assert_allclose(df["delta"], delta)
    assert df.attrs == {"family": "P", "k": 1, "by": "delta"}
    assert df.index[df["prone"]].tolist() == [1]
    assert df["prone_rank"].tolist() == [2, 0, 3, 1]
    assert prone_layers(df, 2) == [1, 3]  # by delta
    assert prone_layers(df, 1, by="eavss") == [2]  # the literal option differs
    assert prone_layers(df, 2, by="eavss") == [1, 2]
    # family P's EAVSS is AVSS on the hallucinated set
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(df["eavss"], avss_values(V_H, S_H))


def test_family_c_by_hand():
    df = eavss_profile(V_H, S_H, V_T, S_T, "C", k=2)
    np.testing.assert_allclose(df["hsav"], [1.0, 2.0, 0.75, 4.0])
    np.testing.assert_allclose(df["hss"], [2.0, 1.0, 1.0, 4.0])
    np.testing.assert_allclose(df["eavss"], np.array([16, 64, 24, 32]) / 31)
    assert df["delta"].isna().all()
    assert df.attrs["by"] == "eavss"
    assert df.index[df["prone"]].tolist() == [1, 3]
    assert prone_sweep(df, [1, 2, 3]) == {1: [1], 2: [1, 3], 3: [1, 2, 3]}
    with pytest.raises(ConfigError, match="no delta"):
        prone_layers(df, 1, by="delta")


def test_eavss_scores_reads_stats_objects_and_counts():
    h = SimpleNamespace(
        variance_=np.array(V_H),
        sparsity_=np.array(S_H),
        near_zero_counts_=np.array([2.0, 1, 1, 4]),
        element_counts_=np.full(4, 10.0),
    )
    t = SimpleNamespace(variance_=np.array(V_T), sparsity_=np.array(S_T))
    df = eavss_scores(h, t, "C", k=1)
    pd.testing.assert_frame_equal(
        df.drop(columns=["near_zero_h", "elements_h"]), eavss_profile(V_H, S_H, V_T, S_T, "C", k=1)
    )
    assert df["near_zero_h"].tolist() == [2, 1, 1, 4] and "near_zero_t" not in df


def test_sparsity_clamp_in_denominators_warns():
    s_t = [0.1, 0.0, 0.1, 0.1]
    with pytest.warns(SparsityClampWarning, match=r"S_T .* layers \[1\]"):
        df = eavss_profile(V_H, S_H, V_T, s_t, "C", k=1)
    assert df.loc[1, "hss"] == pytest.approx(0.1 / 1e-12)
    assert df.loc[1, "s_t"] == 0.0  # the input is reported unclamped
    assert np.isfinite(df["eavss"]).all()
    with pytest.warns(SparsityClampWarning, match="S_H"):
        eavss_profile(V_H, [0.0, 0.1, 0.1, 0.1], V_T, S_T, "P", k=1)


@pytest.mark.parametrize(
    "bad",
    [dict(v_h=[1.0, np.nan, 1.0, 1.0]), dict(v_t=[1.0, 0.0, 1.0, 1.0]), dict(s_h=[0.1, 0.1, 0.1])],
)
def test_profile_rejects_bad_statistics(bad):
    args = dict(v_h=V_H, s_h=S_H, v_t=V_T, s_t=S_T) | bad
    with pytest.raises(AvssError):
        eavss_profile(family="C", **args)


def test_k_defaults_and_prone_ties():
    assert [default_k(m) for m in (4, 6, 30, 32)] == [1, 2, 8, 8]
    assert k_sweep(30) == [1, 2, 4, 8] and k_sweep(3) == [1, 2]
    df = eavss_profile([1.0] * 4, [0.1] * 4, [1.0] * 4, [0.1] * 4, "C", k=2)
    assert df.index[df["prone"]].tolist() == [0, 1]  # all tied: lower indices first
    for k in (0, 5, 1.5):
        with pytest.raises(ConfigError):
            prone_layers(df, k)
    with pytest.raises(ConfigError):
        eavss_profile(V_H, S_H, V_T, S_T, "X")


def test_plots_draw_profiles_and_rank_heatmap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from avsslib import plots

    for family in ("P", "C"):
        fig = plots.eavss_layer_profile(eavss_profile(V_H, S_H, V_T, S_T, family, k=2))
        hatched = [p for p in fig.axes[2].patches if p.get_hatch()]
        assert len(fig.axes) == 3 and len(hatched) == 2  # the two prone layers
        plt.close(fig)
    matrix = pd.DataFrame({"a": [1.0, 100.0, 1e6, 2.0], "b": [4.0, 3.0, 2.0, np.nan]})
    fig = plots.prone_heatmap(matrix, prone={"a": [2]})
    shown = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    np.testing.assert_allclose(shown[:, 0], [0, 2 / 3, 1, 1 / 3])  # ranks, not magnitudes
    np.testing.assert_allclose(shown[:3, 1], [1, 0.5, 0])
    assert np.isnan(shown[3, 1])
    plt.close(fig)


# ---------------------------------------------------------------------- masking on a tiny Llama
def _examples() -> list[LabelledExample]:
    spec = [
        ("short q", [40, 41, 42], "hallucinated"),
        ("a much longer question", [50], "hallucinated"),
        ("mid one", [60, 61], "hallucinated"),
        ("other", [70, 71, 72, 73], "truthful"),
        ("empty", [], "truthful"),
    ]
    return [
        LabelledExample(
            id=f"x/{i}",
            dataset="nq_open",
            split="validation",
            question=q,
            prompt=f"Q: {q}\nA:",
            answer="",
            answer_ids=ids,
            label=label,
            rule="alias_em_or_contains",
            evidence={},
            template="",
            chat_template=False,
        )
        for i, (q, ids, label) in enumerate(spec)
    ]


def test_teacher_forcing_batches_mask_answer_positions():
    tok = CharTokenizer()
    ex = _examples()[:3]
    (batch,) = teacher_forcing_batches(tok, ex, positions="answer", batch_size=4)
    for r, e in enumerate(ex):
        prompt = tok(e.prompt)["input_ids"]
        n = len(prompt) + len(e.answer_ids)
        assert batch["input_ids"][r, :n].tolist() == prompt + e.answer_ids
        assert (batch["input_ids"][r, n:] == tok.pad_token_id).all()  # right padding
        assert batch["attention_mask"][r].tolist() == (
            [0] * len(prompt) + [1] * len(e.answer_ids) + [0] * (batch["input_ids"].shape[1] - n)
        )
    (full,) = teacher_forcing_batches(tok, ex, positions="all", batch_size=4)
    assert full["attention_mask"].sum() == sum(
        len(tok(e.prompt)["input_ids"]) + len(e.answer_ids) for e in ex
    )


def _manual(model, tok, examples, positions, eps):
    """Code-mode variance and sparsity from unpadded single-example forwards with hooks."""
    from avsslib.arch import blocks

    outs: dict[int, torch.Tensor] = {}
    handles = [
        b.register_forward_hook(
            lambda m, a, o, k=k: outs.__setitem__(k, (o[0] if isinstance(o, tuple) else o)[0])
        )
        for k, b in enumerate(blocks(model))
    ]
    per_layer_var = [[] for _ in handles]
    near = np.zeros(len(handles))
    count = 0
    try:
        for e in examples:
            prompt = tok(e.prompt)["input_ids"]
            ids = torch.tensor([prompt + e.answer_ids])
            with torch.no_grad():
                model(input_ids=ids)
            start = len(prompt) if positions == "answer" else 0
            for k in range(len(handles)):
                h = outs[k][start:].double()  # (n_counted, d)
                per_layer_var[k].append(h.mean(0).var().item())
                near[k] += (outs[k][start:].abs() < eps).sum().item()
            count += (ids.shape[1] - start) * outs[0].shape[-1]
    finally:
        for handle in handles:
            handle.remove()
    return np.array([np.mean(v) for v in per_layer_var]), near / count


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_statistics_count_only_answer_tokens(tiny_llama, positions):
    tok = CharTokenizer()
    examples = _examples()
    eps = 1e-2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hs = hallucination_stats(
            tiny_llama, tok, examples, positions=positions, batch_size=2, eps=eps, progress=False
        )
    skipped = positions == "answer"
    assert hs.n_skipped_empty == int(skipped)
    assert any("empty answer" in str(w.message) for w in caught) == skipped
    assert (hs.n_hallucinated, hs.n_truthful) == (3, 1 if skipped else 2)
    h_set = [e for e in examples if e.label == "hallucinated"]
    if positions == "answer":
        assert hs.hallucinated.n_tokens_ == 3 + 1 + 2  # answer tokens only
    v, s = _manual(tiny_llama, tok, h_set, positions, eps)
    np.testing.assert_allclose(hs.hallucinated.variance_, v, rtol=1e-4)
    np.testing.assert_allclose(hs.hallucinated.get_sparsity(eps), s, atol=2e-3)
    t_set = [e for e in examples if e.label == "truthful" and (e.answer_ids or not skipped)]
    v, s = _manual(tiny_llama, tok, t_set, positions, eps)
    np.testing.assert_allclose(hs.truthful.variance_, v, rtol=1e-4)
    df = hs.scores("P", k=1)
    assert len(df) == 4 and df["prone"].sum() == 1


def test_hallucination_stats_empty_class(tiny_llama):
    hs = hallucination_stats(tiny_llama, CharTokenizer(), _examples()[:3], progress=False)
    assert hs.truthful is None and hs.n_truthful == 0
    with pytest.raises(AvssError, match="0 truthful"):
        hs.scores("P")


# ---------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_cli_end_to_end(tmp_path, data_dir):
    from avsslib.cli import main

    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(
            [
                "hallucination",
                "--datasets",
                "nq_open,truthfulqa",
                "--n",
                "6",
                "--max-new-tokens",
                "8",
                "--min-per-class",
                "1",
                "--eps",
                "1e-3",
                "--calib-fraction",
                "1.0",
                "--out",
                str(out),
                "--quiet",
            ]
        )
    assert rc == 0
    summary = json.loads((out / "label_summary.json").read_text())
    splits = json.loads((out / "splits.json").read_text())["datasets"]
    prone = json.loads((out / "prone_layers.json").read_text())
    for name in ("nq_open", "truthfulqa"):
        lines = (out / "labels" / f"{name}.jsonl").read_text().splitlines()
        labels = [json.loads(line)["label"] for line in lines]
        assert len(labels) == 6 == summary[name]["n"]
        assert summary[name]["n_hallucinated"] == labels.count("hallucinated")
        assert len(splits[name]["calibration"]) == 6 and splits[name]["evaluation"] == []
        if name in prone["prone"]:
            entry = prone["prone"][name]["P"]
            assert entry["k"] == 8 and len(entry["layers"]) == 8
            table = pd.read_csv(out / "profiles" / f"{name}_P.csv")
            assert len(table) == 30 and table["prone"].sum() == 8
        else:
            assert (
                "truthful" in prone["skipped"][name]
                and min(labels.count("truthful"), labels.count("hallucinated")) == 0
            )
    record = json.loads((out / "record.json").read_text())
    assert record["command"].startswith("avss hallucination")
    assert (out / "record.md").exists()
    assert set(prone["sparsity"]) == set(prone["prone"])

    # generated labels carry their key (resume); labels copied with --labels-from do not
    assert (out / "labels" / "nq_open.key.json").exists()
    copy = tmp_path / "copy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(
            [
                "hallucination",
                "--datasets",
                "nq_open",
                "--n",
                "6",
                "--max-new-tokens",
                "8",
                "--min-per-class",
                "1",
                "--eps",
                "1e-3",
                "--calib-fraction",
                "1.0",
                "--labels-from",
                str(out),
                "--out",
                str(copy),
                "--quiet",
            ]
        )
    assert rc == 0 and not (copy / "labels" / "nq_open.key.json").exists()
    assert (copy / "labels" / "nq_open.jsonl").read_text() == (
        out / "labels" / "nq_open.jsonl"
    ).read_text()


def test_mean_jaccard_over_pairs():
    from avsslib.eavss import mean_jaccard

    assert mean_jaccard([[1, 2], [1, 2]]) == 1.0
    assert mean_jaccard([[1, 2], [3, 4]]) == 0.0
    assert abs(mean_jaccard([[1, 2], [2, 3], [1, 2]]) - (1 / 3 + 1 + 1 / 3) / 3) < 1e-12
    assert mean_jaccard([[1, 2]]) != mean_jaccard([[1, 2]])  # NaN for one set
