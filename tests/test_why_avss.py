"""avsslib.why_avss and avsslib.plots_beyond on small synthetic result folders whose answers are
known by hand, and once on the committed results/ folder."""

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from avsslib import plots_beyond as PB
from avsslib import why_avss as W

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]

_BASE = dict(stats="fixed", rule="count", fraction=0.25, n_pruned=2, layers="0 1", task="sciq_mc")


def _row(config, score, retention, **kw):
    row = dict(_BASE, config=config, score=score, metric="acc", original=0.8)
    row.update(retention=retention, ci_low=retention - 0.1, ci_high=retention + 0.1, n=100)
    row["pruned"] = 0.8 * retention
    return {**row, **kw}


def _study(
    folder: Path, scores: dict[str, float], parameters=None, hub_id=None, extras=True
) -> None:
    """A pruning study's retention.csv; ``extras``: with the rows the size comparison must leave
    out (other metrics, statistics modes, rules and the sweep) as the main study has them."""
    folder.mkdir(parents=True)
    rows = [_row("original", None, 1.0, stats=None, rule=None, fraction=0.0, ci_low=1, ci_high=1)]
    rows += [_row(f"{s}-count", s, r) for s, r in scores.items()]
    rows += (
        []
        if not extras
        else [
            _row("avss-count", "avss", 0.99, metric="acc_norm"),
            _row("faithful-avss-count", "avss", 0.98, stats="faithful"),
            _row("avss-mass", "avss", 0.97, rule="mass"),
            _row("sweep-avss-0.5", "avss", 0.96, fraction=0.5),
            _row("avss-count", "avss", 0.95, task="sst2"),
        ]
    )
    pd.DataFrame(rows).to_csv(folder / "retention.csv", index=False)
    if parameters is not None:
        model = {"parameters": parameters, **({"hub_id": hub_id} if hub_id else {})}
        (folder / "record.json").write_text(json.dumps({"model": model, "device": "cpu"}))


SMALL = {"avss": 0.3, "block_influence": 0.8, "angular": 0.85, "random": 0.6, "tail": 0.4}
BIG = {"avss": 0.5, "block_influence": 0.9, "angular": 0.7, "random": 0.55, "tail": 0.2}


@pytest.fixture
def sizes(tmp_path):
    """Three models: ``small`` (1e8 parameters, AVSS's interval [0.2, 0.4] below random's
    [0.5, 0.7]; a scale_scores study whose best variant is ``update_avss`` at 0.88), ``big``
    (2e9, named by its hub id; AVSS [0.4, 0.6] overlaps random [0.45, 0.65]) and ``nameless``
    (no run record)."""
    _study(tmp_path / "small" / "avss", SMALL, parameters=1e8)
    _study(tmp_path / "big" / "avss", BIG, parameters=2e9, hub_id="Org/Big-Model-2B-Instruct")
    _study(tmp_path / "nameless" / "avss", SMALL)
    scale = {**SMALL, "var_ratio": 0.35, "update_avss": 0.88}
    _study(tmp_path / "small" / "scale_scores", scale, parameters=1e8, extras=False)
    pd.DataFrame([dict(kind="scores", a="update_avss", b="angular", spearman=0.75)]).to_csv(
        tmp_path / "small" / "scale_scores" / "agreement.csv", index=False
    )
    return tmp_path


def test_retention_by_size_reads_the_main_rows_of_every_model_in_size_order(sizes):
    f = W.retention_by_size(sizes)
    assert list(f.drop_duplicates("model")["model"]) == ["small", "big", "nameless"]
    assert list(f.drop_duplicates("model")["name"]) == ["small", "Big-Model-2B", "nameless"]
    base = f[f["kind"] == "baseline"]
    assert len(base) == 15 and (base["study"] == "avss").all()  # 5 scores x 3 models, no extras
    got = base.set_index(["model", "score"])["retention"]
    assert got[("small", "avss")] == pytest.approx(0.3)
    assert got[("big", "angular")] == pytest.approx(0.7)
    assert list(base[base["model"] == "big"]["score"]) == list(W.SIZE_SCORES)
    repair = f[f["kind"] == "best repair"].iloc[0]
    assert (repair.model, repair.score, repair.study) == ("small", "update_avss", "scale_scores")
    assert repair.retention == pytest.approx(0.88)
    assert np.isnan(f[f["model"] == "nameless"]["parameters"]).all()


def test_size_table_and_sentence_state_the_known_numbers(sizes):
    f = W.retention_by_size(sizes)
    t = W.size_table(f).set_index("model")
    assert t.loc["small", "parameters"] == "100M" and t.loc["Big-Model-2B", "parameters"] == "2B"
    assert t.loc["small", "AVSS"] == "30% [20, 40]"
    assert t.loc["small", "best scale-aware repair"].startswith("update_avss: 88% [78, 98]")
    assert t.loc["Big-Model-2B", "best scale-aware repair"] == "\u2013"
    text = W.size_sentence(f)
    assert "on 3 models of 100M to 2B parameters" in text
    assert "AVSS keeps 30% [20, 40] (small), 50% [40, 60] (Big-Model-2B)" in text
    assert "90% [80, 100] (Big-Model-2B, block influence)" in text  # the better reference
    assert "85% [75, 95] (small, angular distance)" in text
    # small: [0.2, 0.4] < 0.5; big: 0.6 >= 0.45; nameless: the same numbers as small
    assert "random layers on 2 of 3 models" in text
    assert "(small, `update_avss`)" in text and "nameless: no parameter count" in text


def test_size_figure_places_the_models_with_a_parameter_count(sizes):
    fig = PB.retention_by_size(W.retention_by_size(sizes))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["small\n(100M)", "Big-Model-2B\n(2B)"]
    assert ax.get_xscale() == "log"
    assert len(ax.containers) == len(W.SIZE_SCORES) + 1  # one error-bar series each + repair
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == "AVSS" and legend[-1] == "best scale-aware repair"


def _diagnosis(folder: Path) -> None:
    folder.mkdir(parents=True)
    mode = dict(
        spearman_avss_depth=0.9,
        spearman_variance_depth=0.8,
        spearman_rms_depth=0.7,
        spearman_avss_rms=0.6,
        r2_log_variance=0.5,
        overlap_depth=3,
        k=4,
        near_zero_min=0,
        near_zero_max=12,
        near_zero_median=5.0,
        elements_per_layer=1234567,
        clamped_layers=[6],
        stability=dict(
            p_any_clamped=0.25,
            p_clamp_decides_rank=0.125,
            p_clamp_decides=0.0,
            p_set_observed=0.5,
            kendall_median=0.75,
        ),
    )
    (folder / "summary.json").write_text(json.dumps({"fixed": mode, "faithful": mode}))
    pd.DataFrame(
        [
            dict(mode="fixed", layer=5, eps=1e-5, count=4, count_low=1.09, count_high=10.24),
            dict(mode="fixed", layer=6, eps=1e-5, count=0, count_low=0.0, count_high=3.689),
        ]
    ).to_csv(folder / "sparsity.csv", index=False)


def test_diagnosis_sentences_and_table(tmp_path):
    _diagnosis(tmp_path / "m" / "diagnosis")
    table = W.diagnosis_table(tmp_path)
    assert list(table["mode"]) == ["fixed", "faithful"]
    assert table["pruned blocks among the first k"].iloc[0] == "3 of 4"
    depth = W.depth_sentences(tmp_path)
    assert "rank correlation of 0.9 with depth and 0.6 with the stream's RMS" in depth
    assert "explains 50%" in depth and "3 of the 4 blocks" in depth
    counts = W.counting_sentences(tmp_path)
    assert counts.count("* **m,") == 2 and "1,234,567 elements" in counts
    assert (
        "clamped in 25%" in counts and "in only 50%" in counts and "observed ranking 0.75" in counts
    )
    assert "exact 95% interval 0 to 3.69" in counts
    fig = PB.near_zero_counts(W.sparsity(tmp_path))
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "m"


def test_healing_rows_pair_the_bars_and_sentences_name_the_budget(tmp_path):
    folder = tmp_path / "m" / "healing"
    folder.mkdir(parents=True)
    cols = dict(task="sciq_mc", metric="acc", n=10, recovered_ci_low=0.1, recovered_ci_high=0.3)
    pd.DataFrame(
        [
            dict(
                config=c,
                retention_before=b,
                ci_low_before=b,
                ci_high_before=b,
                retention_after=a,
                ci_low_after=a,
                ci_high_after=a,
                recovered=0.2,
                **cols,
            )
            for c, b, a in (("avss-count", 0.3, 0.4), ("random-count", 0.5, 0.9))
        ]
    ).to_csv(folder / "healing.csv", index=False)
    heal = {"steps": 20, "batch_size": 2, "seq_len": 64, "tokens": 2560, "lr": 2e-4, "rank": 4}
    record = {"config": {"heal": heal}, "metrics": {"text": {"dataset": "wt", "split": "val"}}}
    (folder / "record.json").write_text(json.dumps(record))
    rows = W.healing_rows(tmp_path)
    assert list(rows["label"]) == [
        "avss-count (before)",
        "avss-count (after)",
        "random-count (before)",
        "random-count (after)",
    ]
    assert list(rows["retention"]) == [0.3, 0.4, 0.5, 0.9]
    text = W.healing_sentences(tmp_path)
    assert "20 steps of 2 x 64 tokens (2,560 tokens), learning rate 0.0002, LoRA rank 4" in text
    assert (
        "`random-count`, SciQ accuracy: retention 50% [50, 50] before, 90% [90, 90] after" in text
    )
    assert "recovers 20% [10, 30]" in text


def test_scale_score_sentences_compare_with_the_better_reference(sizes):
    text = W.scale_score_sentences(sizes)
    assert text.startswith("**small** (n = 100 SciQ questions, device cpu)")
    assert "AVSS keeps 30% [20, 40]" in text and "random blocks 60% [50, 70]" in text
    # update_avss 0.88 [0.78, 0.98] reaches angular's 0.85
    assert "`update_avss` with 88% [78, 98]: its interval reaches" in text
    assert "(angular distance, 85%)" in text
    agreement = W.agreement_sentences(sizes)
    assert "with block influence \u2013, angular distance 0.75" in agreement
    rows = W.scale_score_rows(sizes)
    assert set(rows["label"]) == set(SMALL) | {"var_ratio", "update_avss"}  # one model: no prefix


def test_nothing_committed_says_what_to_run(tmp_path):
    assert "avss diagnose" in W.depth_sentences(tmp_path)
    assert W.counting_sentences(tmp_path) == "No diagnosis yet."
    assert "avss study --scores" in W.scale_score_sentences(tmp_path)
    assert "avss heal" in W.healing_sentences(tmp_path)
    assert "avss study" in W.size_sentence(W.retention_by_size(tmp_path))
    assert W.diagnosis_table(tmp_path).empty
    assert W.healing_rows(tmp_path).empty and W.size_table(W.retention_by_size(tmp_path)).empty
    for fig in (
        PB.depth_trend({}),
        PB.near_zero_counts({}),
        PB.scale_score_bars(W.scale_score_rows(tmp_path)),
        PB.healing_bars(W.healing_rows(tmp_path)),
        PB.retention_by_size(W.retention_by_size(tmp_path)),
    ):
        assert not fig.axes[0].axison  # the placeholder: text, no axes


def test_fmt_params():
    assert [PB.fmt_params(n) for n in (134_515_008, 1_777_088_000, 494_032_768, 950)] == [
        "135M",
        "1.78B",
        "494M",
        "950",
    ]
    assert PB.fmt_params(float("nan")) == PB.fmt_params(None) == "\u2013"


def test_committed_retention_by_size_matches_the_files():
    """Every committed model with a pruning study is in the size comparison, at its recorded
    parameter count, with the retention.csv rows read independently here."""
    root = REPO / "results"
    studies = sorted(p.parent.parent.name for p in root.glob("*/avss/retention.csv"))
    assert studies, "no committed pruning study"
    f = W.retention_by_size(root)
    assert sorted(f["model"].unique()) == studies
    order = f.drop_duplicates("model")["parameters"].to_numpy()
    assert (np.diff(order) > 0).all()
    for model in studies:
        record = json.loads((root / model / "avss" / "record.json").read_text())
        r = pd.read_csv(root / model / "avss" / "retention.csv")
        r = r[(r["task"] == "sciq_mc") & (r["metric"] == "acc")].set_index("config")
        g = f[(f["model"] == model) & (f["kind"] == "baseline")].set_index("score")
        assert (g["parameters"] == record["model"]["parameters"]).all()
        for score in W.SIZE_SCORES:
            want = r.loc[f"{score}-count"]
            assert g.loc[score, "retention"] == pytest.approx(want["retention"])
            assert g.loc[score, "ci_low"] == pytest.approx(want["ci_low"])
            assert g.loc[score, "ci_high"] == pytest.approx(want["ci_high"])
        has_repair = (root / model / "scale_scores" / "retention.csv").is_file()
        assert ((f["model"] == model) & (f["kind"] == "best repair")).any() == has_repair
    text = W.size_sentence(f)
    assert f"on {len(studies)} model" in text and text.endswith(".")


def test_size_tick_labels_wrap_long_model_names():
    from avsslib.plots_beyond import _wrap_name

    assert _wrap_name("SmolLM2-135M") == "SmolLM2-135M"
    assert _wrap_name("Qwen2.5-Coder-0.5B") == "Qwen2.5-Coder-\n0.5B"
    assert _wrap_name("a-b-c", width=3) == "a-b-\nc"


def test_in_short_states_the_range_and_the_count_below_random(sizes, tmp_path_factory):
    text = W.in_short(sizes)
    # AVSS keeps 30%, 50% and 30% (see the sizes fixture); small and nameless lie below random
    assert text.startswith("In short: on 3 models with a pruning study, AVSS keeps 30% to 50%")
    assert "wholly below that of random layers on 2 of them." in text
    empty = tmp_path_factory.mktemp("empty")
    assert "avss study" in W.in_short(empty)
