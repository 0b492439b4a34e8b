"""avsslib.results (the one reader of committed runs), the book's number format, and the README's
generated findings block.

``test_verdicts_recomputed_from_files`` recomputes every verdict row from the CSV and JSON files
under ``results/`` with its own code (pandas, numpy and json only, no ``avsslib.results``) and
compares it with the rows the book and the README show.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avsslib import plots
from avsslib import results as R
from avsslib.errors import DataError
from avsslib.protocol import is_sweep

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"


# ------------------------------------------------------------------------------- number format


def test_number_format():
    assert [plots.fmt_pct(x) for x in (0.812, 0.0523, 0.0033, 1.0)] == [
        "81%",
        "5.2%",
        "0.33%",
        "100%",
    ]
    assert plots.fmt_pct(float("nan")) == plots.DASH and plots.fmt_pct(None) == plots.DASH
    assert plots.fmt_ci(0.81, 0.76, 0.86) == "81% [76, 86]"
    assert plots.fmt_ci(0.052, 0.02, 0.087, kind="pp") == "+5.2 pp [2.0, 8.7]"
    assert plots.fmt_ci(0.2, 0.08, 0.33, kind="rel") == "+20% [8, 33]"
    assert plots.fmt_ci(0.5, float("nan"), float("nan")) == "50%"
    assert plots.fmt_ci(float("inf"), 0, 1) == plots.DASH
    assert [plots.fmt_num(x) for x in (24.0, 0.1, 224970.996, 30.376, True)] == [
        "24",
        "0.1",
        "224,971",
        "30.4",
        "yes",
    ]
    assert plots.fmt_value(float("inf")) == plots.DASH and plots.fmt_value(None) == plots.DASH
    assert plots.fmt_value("text") == "text" and plots.fmt_value(np.int64(3)) == "3"


def test_layer_list_plural_words():
    assert plots.layer_list([0, 1, 2, 3, 5, 7, 9, 10]) == "0\u20133, 5, 7, 9, 10"
    assert plots.layer_list([27]) == "27" and plots.layer_list([]) == "none"
    assert plots.parse_layers("0 1 9") == [0, 1, 9] and plots.parse_layers(float("nan")) == []
    assert plots.plural(1, "dataset") == "1 dataset" and plots.plural(2, "dataset") == "2 datasets"
    assert plots.plural(0, "token") == "no token"
    assert plots.words(["a", "b", "c"]) == "a, b and c" and plots.words([]) == "none"


def test_table_shows_rows_in_a_dropdown_and_a_csv():
    frame = pd.DataFrame({"layer": range(40), "value": np.linspace(0, 1, 40), "x": [None] * 40})
    html = plots.table(frame, index=False, name="demo")._repr_html_()
    visible, _, rest = html.partition("<details")
    assert visible.count("<tr>") == plots.VISIBLE_ROWS and rest.count("<tr>") == 40
    assert "Full table (40 rows)" in html and 'download="demo.csv"' in html
    assert "nan" not in html and "None" not in html and plots.DASH in html
    assert not re.search(r"\d\.\d{6}", html)
    small = plots.table(frame.head(3), index=False)._repr_html_()
    assert "<details" not in small and "overflow-x:auto" in small
    chosen = plots.table(
        frame, index=False, show=(frame["layer"] % 10 == 0).to_numpy()
    )._repr_html_()
    assert chosen.partition("<details")[0].count("<tr>") == 4
    styled = plots.table(pd.DataFrame({"count": [24.0, 3.0]}).style, index=False)._repr_html_()
    assert ">24<" in styled and "24.0" not in styled


def test_a_table_of_short_cells_is_compact_and_one_of_prose_is_not():
    """Compact tables keep their cells on one line on a phone (book/_static/avss.css)."""
    width = plots.COMPACT_CELL_CHARS
    numbers = pd.DataFrame({"task": ["a task name far longer than the limit"], "n": ["x" * width]})
    assert (
        'class="avss-table avss-table-compact"' in plots.table(numbers, index=False)._repr_html_()
    )
    prose = numbers.assign(n="x" * (width + 1))
    assert 'class="avss-table"' in plots.table(prose, index=False)._repr_html_()
    # with the index shown, the first data column counts too; tags do not count
    assert "compact" not in plots.table(numbers, index=True)._repr_html_()
    tagged = pd.DataFrame({"claim": ["c"], "v": ["<strong>" + "y" * width + "</strong>"]})
    assert "compact" in plots.table(tagged, index=False, escape=False)._repr_html_()
    assert "compact" not in plots.table(tagged, index=False)._repr_html_()  # shown as text
    assert "compact" not in plots.table(numbers.style, index=False)._repr_html_()


def test_verdict_table_puts_the_verdict_beside_the_claim():
    header = R.verdict_table(RESULTS)._repr_html_().partition("</thead>")[0]
    columns = re.findall(r"<th[^>]*>([^<]*)</th>", header)
    assert columns[:3] == ["claim", "verdict", "model (n)"], columns


# ------------------------------------------------------------------------ reader on a fake tree


def _metrics(ids, before, after, task="truthfulqa_mc1", metric="acc"):
    def side(values):
        return {
            "tasks": {
                task: {
                    "ids": ids,
                    "metrics": {
                        metric: {
                            "per_example": list(values),
                            "value": float(np.mean(values)),
                            "kind": "mean",
                            "higher_is_better": True,
                        }
                    },
                }
            }
        }

    return {"before": side(before), "after": side(after), "change": [], "training": {"layers": []}}


def _summary_row(model, dataset, mode, seed, before, after, task="truthfulqa_mc1", metric="acc"):
    b, a = float(np.mean(before)), float(np.mean(after))
    return {
        "model": model,
        "dataset": dataset,
        "mode": mode,
        "seed": seed,
        "task": task,
        "metric": metric,
        "before": b,
        "after": a,
        "delta_abs": a - b,
        "delta_rel": a / b - 1,
        "abs_ci_low": 0,
        "abs_ci_high": 0,
        "n": len(before),
    }


def _fake_mitigation(
    root: Path,
    runs: dict[tuple[str, int], list[int]],
    before: list[int],
    ids: list[str] | None = None,
) -> None:
    model, dataset = "tiny", "truthfulqa"
    rows = []
    for (mode, seed), after in runs.items():
        folder = root / model / "mitigation" / dataset / f"{mode}-seed{seed}"
        folder.mkdir(parents=True)
        run_ids = (
            ids if (ids is not None and mode == "random") else [str(i) for i in range(len(before))]
        )
        (folder / "metrics.json").write_text(json.dumps(_metrics(run_ids, before, after)))
        rows.append(_summary_row(model, dataset, mode, seed, before, after))
    pd.DataFrame(rows).to_csv(root / model / "mitigation" / "summary.csv", index=False)


def test_prone_minus_random_is_paired_and_seed_averaged(tmp_path):
    before = [0, 0, 1, 1, 0, 1, 0, 0, 1, 0]
    runs = {
        ("eavss", 0): [1, 0, 1, 1, 0, 1, 0, 0, 1, 0],
        ("eavss", 1): [1, 1, 1, 1, 0, 1, 0, 0, 1, 0],
        ("random", 0): [0, 0, 1, 1, 0, 1, 0, 0, 1, 1],
    }
    _fake_mitigation(tmp_path, runs, before)
    diff = R.prone_minus_random(tmp_path, n_boot=200)
    row = diff.iloc[0]
    expected = np.mean(
        (np.array(runs["eavss", 0]) + runs["eavss", 1]) / 2 - np.array(runs["random", 0])
    )
    assert row["difference"] == pytest.approx(expected)
    assert row["seeds_eavss"] == 2 and row["seeds_other"] == 1 and row["n"] == 10
    assert row["ci_low"] <= row["difference"] <= row["ci_high"]
    changes = R.mitigation_changes(tmp_path, n_boot=200).set_index("mode")
    assert changes.loc["eavss", "seeds"] == 2
    assert changes.loc["eavss", "delta_abs"] == pytest.approx(0.15)
    assert changes.loc["eavss", "delta_rel"] == pytest.approx(0.15 / 0.4)


def test_runs_on_other_questions_are_refused(tmp_path):
    before = [0, 1, 1, 0]
    _fake_mitigation(
        tmp_path,
        {("eavss", 0): [1, 1, 1, 0], ("random", 0): [0, 1, 1, 1]},
        before,
        ids=["9", "8", "7", "6"],
    )
    with pytest.raises(DataError, match="different questions"):
        R.prone_minus_random(tmp_path, n_boot=10)


def test_uninformative_metrics():
    assert R.uninformative("sst2", "acc", 0.516) is not None  # chance is 50%
    assert R.uninformative("sciq_mc", "acc", 0.766) is None
    assert R.uninformative("nq_open_em", "exact_match", 0.013) is not None
    assert R.uninformative("wikitext2_ppl", "token_perplexity", 30.4) is None
    assert R.uninformative("triviaqa_em", "exact_match", float("nan")) is not None


def test_empty_results_folder(tmp_path):
    assert R.models(tmp_path) == [] and R.verdicts(tmp_path).empty
    assert R.inventory(tmp_path).empty and R.mitigation_changes(tmp_path).empty


def test_study_sizes_are_the_original_rows_n(tmp_path):
    folder = tmp_path / "m" / "avss"
    folder.mkdir(parents=True)
    rows = [
        ("original", "sst2", "acc", 872),
        ("original", "wikitext2_ppl", "token_perplexity", 596),
        ("original", "sciq_mc", "acc", 1000),
        ("original", "sciq_mc", "acc_norm", 1000),
        ("avss-count", "sciq_mc", "acc", 7),  # pruned rows do not count
    ]
    pd.DataFrame(rows, columns=["config", "task", "metric", "n"]).to_csv(
        folder / "retention.csv", index=False
    )
    (tmp_path / "other").mkdir()  # a model folder without a study has no row
    sizes = R.study_sizes(tmp_path)
    assert sizes.to_dict("records") == [
        {"model": "m", "examples per task": "SciQ 1,000, SST-2 872, WikiText-2 596 windows"}
    ]


def test_bad_json_names_the_file(tmp_path):
    folder = tmp_path / "m" / "avss" / "eval"
    folder.mkdir(parents=True)
    (folder / "original.json").write_text("{not json")
    (folder / "x.json").write_text("{}")
    with pytest.raises(DataError, match="original.json"):
        R.study_retention(tmp_path / "m" / "avss")


# ------------------------------------------------------------ verdicts recomputed from the files
# Independent of avsslib.results: the same documented rules, written again from the files.

CHANCE = {("sciq_mc", "acc"): 0.25, ("sst2", "acc"): 0.5}
PRIMARY = {
    "sciq_mc": "acc",
    "sst2": "acc",
    "triviaqa_em": "exact_match",
    "wikitext2_ppl": "token_perplexity",
    "truthfulqa_mc1": "acc",
    "truthfulqa_mc2": "acc",
    "nq_open_em": "exact_match",
    "wikiqa": "map",
}


def _counts(task, metric, original):
    if not np.isfinite(original):
        return False
    if (task, metric) in CHANCE and original <= CHANCE[task, metric] + 0.05:
        return False
    return metric == "token_perplexity" or original >= 0.05


def _ci(values, n_boot=1000):
    idx = np.random.default_rng(0).integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def _mode_scores(folder: Path, mode: str, task: str, metric: str):
    runs = sorted(
        p
        for p in folder.glob(f"{mode}-seed*/metrics.json")
        if re.fullmatch(rf"{mode}-seed\d+", p.parent.name)
    )
    data = [json.loads(p.read_text()) for p in runs]
    before = np.array(data[0]["before"]["tasks"][task]["metrics"][metric]["per_example"], float)
    after = np.mean(
        [d["after"]["tasks"][task]["metrics"][metric]["per_example"] for d in data], axis=0
    )
    return before, after, len(runs)


def _expected_rows() -> list[dict]:
    rows = []
    for model_dir in sorted(
        p for p in RESULTS.iterdir() if (p / "avss" / "retention.csv").is_file()
    ):
        ret = pd.read_csv(model_dir / "avss" / "retention.csv")
        ret = ret[(ret["fraction"] == 0.25) & (ret["config"] == "avss-count")]
        ret = ret[[PRIMARY.get(t) == m for t, m in zip(ret["task"], ret["metric"], strict=True)]]
        counted = ret[
            [
                _counts(t, m, o)
                for t, m, o in zip(ret["task"], ret["metric"], ret["original"], strict=True)
            ]
        ]
        verdict = (
            "does not hold"
            if (counted["ci_high"] < 0.9).any()
            else "holds"
            if (counted["ci_low"] > 0.9).all()
            else "not testable here"
        )
        sciq = counted[counted["task"] == "sciq_mc"].iloc[0]
        rows.append(
            {
                "model": model_dir.name,
                "claim": R.AVSS_CLAIM,
                "verdict": verdict,
                "measured": f"SciQ retention {plots.fmt_ci(sciq.retention, sciq.ci_low, sciq.ci_high)}",
            }
        )
    best_gain = None
    for model_dir in sorted(
        p for p in RESULTS.iterdir() if (p / "mitigation" / "summary.csv").is_file()
    ):
        summary = pd.read_csv(model_dir / "mitigation" / "summary.csv")
        keys = summary[["dataset", "task", "metric"]].drop_duplicates()
        for d, t, metric in keys.itertuples(index=False):
            if PRIMARY.get(t, metric) != metric:
                continue
            folder = model_dir / "mitigation" / d
            before, after_e, _ = _mode_scores(folder, "eavss", t, metric)
            base = before.mean()
            change = after_e.mean() - base
            boot = _ci(after_e - before)
            measured = (
                f"{R.task_name(t, metric)} "
                f"{plots.fmt_ci(change, *np.quantile(boot, [0.025, 0.975]), kind='pp')}"
            )
            if not _counts(t, metric, base):
                verdict = "not testable here"
            else:
                _, after_r, _ = _mode_scores(folder, "random", t, metric)
                low = np.quantile(_ci(after_e - after_r), 0.025)
                verdict = "holds" if low > 0 else "does not hold"
                idx = np.random.default_rng(0).integers(0, len(before), size=(1000, len(before)))
                rel_boot = after_e[idx].mean(axis=1) / before[idx].mean(axis=1) - 1
                rel = after_e.mean() / base - 1
                if best_gain is None or rel > best_gain["rel"]:
                    best_gain = {
                        "model": model_dir.name,
                        "rel": rel,
                        "low": np.quantile(rel_boot, 0.025),
                        "high": np.quantile(rel_boot, 0.975),
                        "task": t,
                        "metric": metric,
                    }
            rows.append(
                {
                    "model": model_dir.name,
                    "claim": R.PRONE_CLAIM,
                    "verdict": verdict,
                    "measured": measured,
                    "dataset": d,
                    "task": t,
                }
            )
    rows += _expected_beyond_rows()
    if best_gain is not None:
        g = best_gain
        rows.append(
            {
                "model": g["model"],
                "claim": R.GAIN_CLAIM,
                "verdict": "holds" if g["low"] > 0 and g["high"] >= 0.12 else "does not hold",
                "measured": f"{R.task_name(g['task'], g['metric'])} "
                f"{plots.fmt_ci(g['rel'], g['low'], g['high'], kind='rel')}",
            }
        )
    return rows


BASELINES = {"avss", "block_influence", "angular", "random", "tail"}
REF_NAMES = {"block_influence": "block influence", "angular": "angular distance"}


def _fold_scores(folder: Path, folds: int) -> dict:
    """mode -> seed -> (task, metric) -> {id: (before, after)} over complete fold sets."""
    out: dict = {}
    for run in sorted(folder.glob("*-seed*-fold*")):
        m = re.fullmatch(r"(.+)-seed(\d+)-fold(\d+)", run.name)
        if not m or not (run / "metrics.json").is_file():
            continue
        data = json.loads((run / "metrics.json").read_text())
        for task, b in data["before"]["tasks"].items():
            a = data["after"]["tasks"][task]
            for metric, mb in b["metrics"].items():
                if mb.get("kind", "mean") != "mean":
                    continue
                slot = out.setdefault(m[1], {}).setdefault(int(m[2]), {})
                per = slot.setdefault((task, metric), {})
                for qid, x, y in zip(
                    b["ids"], mb["per_example"], a["metrics"][metric]["per_example"], strict=True
                ):
                    per[str(qid)] = (float(x), float(y))
    return out


def _paired(diff: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    idx = np.random.default_rng(0).integers(0, len(diff), size=(2000, len(diff)))
    low, high = np.quantile(diff[idx].mean(axis=1), [alpha / 2, 1 - alpha / 2])
    return float(diff.mean()), float(low), float(high)


def _expected_beyond_rows() -> list[dict]:
    rows = []
    for folder in sorted(RESULTS.glob("*/mitigation-*fold/*/")):
        scores = _fold_scores(folder, int(re.search(r"(\d+)fold", folder.parent.name)[1]))
        if "random" not in scores:
            continue
        for task, metric in sorted(next(iter(scores["random"].values()))):
            if PRIMARY.get(task) != metric:
                continue

            def after(mode, task=task, metric=metric, scores=scores):
                per = [scores[mode][s][task, metric] for s in sorted(scores[mode])]
                ids = sorted(per[0])
                return ids, np.mean([[p[i][1] for i in ids] for p in per], axis=0)

            ids, rand = after("random")
            best = None
            for mode, name in (
                ("eavss", "prone layers"),
                ("probe", "probe-selected layers"),
                ("avss", "lowest-AVSS layers"),
            ):
                if mode in scores:
                    d, low, high = _paired(after(mode)[1] - rand)
                    if best is None or d > best[1]:
                        best = (name, d, low, high, *_paired(after(mode)[1] - rand, 0.05 / 3))
            wins = [
                m
                for m in ("eavss", "probe", "avss")
                if m in scores and _paired(after(m)[1] - rand, alpha=0.05 / 3)[1] > 0
            ]
            rows.append(
                {
                    "model": folder.parents[1].name,
                    "claim": R.LAYER_CLAIM,
                    "verdict": "holds" if wins else "does not hold",
                    "measured": f"{R.task_name(task, metric)}: {best[0]} − random "
                    f"{plots.fmt_ci(best[1], best[2], best[3], kind='pp')} (98.3% interval for 3 "
                    f"choices {plots.fmt_ci(*best[4:], kind='pp').split(' pp ')[1]})",
                }
            )
    for path in sorted(RESULTS.glob("*/scale_scores/retention.csv")):
        r = pd.read_csv(path)
        r = r[(r["fraction"] == 0.25) & (r["task"] == "sciq_mc") & (r["metric"] == "acc")]
        r = r[r["score"].notna() & ~is_sweep(r["config"])]
        r = r[r["rule"].fillna("count") == "count"].set_index("score")
        variant = r[~r.index.isin(BASELINES)]["retention"].idxmax()
        ref = r.loc[list(REF_NAMES), "retention"].max()
        v = r.loc[variant]
        rows.append(
            {
                "model": path.parents[1].name,
                "claim": R.REPAIR_CLAIM,
                "verdict": "holds" if v["ci_high"] >= ref else "does not hold",
                "measured": f"{variant} SciQ retention "
                f"{plots.fmt_ci(v['retention'], v['ci_low'], v['ci_high'])}",
            }
        )
    for path in sorted(RESULTS.glob("*/healing/healing.csv")):
        h = pd.read_csv(path)
        a = h[(h["config"] == "avss-count") & (h["task"] == "sciq_mc") & (h["metric"] == "acc")]
        a = a.iloc[0]
        rows.append(
            {
                "model": path.parents[1].name,
                "claim": R.HEAL_CLAIM,
                "verdict": "holds"
                if a["ci_low_after"] > 0.9
                else "does not hold"
                if a["ci_high_after"] < 0.9
                else "not testable here",
                "measured": "SciQ retention after healing "
                f"{plots.fmt_ci(a['retention_after'], a['ci_low_after'], a['ci_high_after'])}",
            }
        )
    return rows


@pytest.mark.skipif(not RESULTS.is_dir(), reason="no committed results/")
def test_verdicts_recomputed_from_files():
    shown = R.verdicts(RESULTS)
    expected = _expected_rows()
    assert len(shown) == len(expected), (shown[["claim", "model"]], expected)
    for row in expected:
        match = shown[
            (shown["claim"] == row["claim"])
            & (shown["model"] == R.model_name(row["model"]))
            & (shown["measured [95% CI]"] == row["measured"])
        ]
        assert len(match) == 1, (
            f"no verdict row for {row}:\n{shown[['claim', 'model', 'measured [95% CI]']]}"
        )
        assert match["verdict"].iloc[0] == row["verdict"], row
    assert set(shown["verdict"]) <= {"holds", "does not hold", "not testable here"}


@pytest.mark.skipif(not RESULTS.is_dir(), reason="no committed results/")
def test_readme_findings_block_is_up_to_date():
    spec = importlib.util.spec_from_file_location(
        "results_tables", REPO / "tools" / "results_tables.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert tool.BEGIN in readme and tool.END in readme
    first_screen = readme.split("\n## ", 1)[0]
    assert tool.BEGIN in first_screen, "the findings must come before the README's first section"
    assert tool.rewrite_readme(REPO / "README.md", RESULTS, check=True), (
        "README.md's findings block is out of date: run `python tools/results_tables.py --readme`"
    )


@pytest.mark.skipif(not RESULTS.is_dir(), reason="no committed results/")
def test_stage_devices_come_from_each_run_record():
    records = R.run_records(RESULTS)
    costs = R.stage_costs(RESULTS)
    for r in records.itertuples():
        recorded = json.loads((RESULTS / r.folder / "record.json").read_text())["device"]
        assert recorded.endswith(r.device)
    cpu_stages = set(records.loc[records["device"] == "cpu", "stage"])
    for stage in cpu_stages:  # a CPU stage is never listed under a GPU only
        assert "cpu" in set(costs.loc[costs["stage"] == stage, "device"])
    assert not math.isnan(costs["minutes"].sum())


def test_library_versions_record_avsslib_and_commit():
    from avsslib.report import library_versions

    versions = library_versions()
    assert versions["avsslib"] != "absent"
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|absent", versions["avsslib_commit"])


# ------------------------------------------------------------------------ thin result chapters

EXERCISE = re.compile(r"```\{(exercise|solution)-start\}[\s\S]*?```\{\1-end\}")
CELL = re.compile(r"```\{code-cell\}[^\n]*\n((?::tags:[^\n]*\n)?)([\s\S]*?)```")


@pytest.mark.parametrize(
    "stem",
    [
        "05_hallucination_prone_layers",
        "06_mitigation",
        "07_paper_scale",
        "08_reproduce_yourself",
        "10_why_avss_fails",
    ],
)
def test_result_chapters_are_thin(stem):
    text = (REPO / "notebooks" / f"{stem}.md").read_text(encoding="utf-8")
    # the closing exercises (stubs for the reader, folded solutions) are not the chapter's code
    text = EXERCISE.sub("", text)
    cells = CELL.findall(text)
    visible = sum(
        len([line for line in body.splitlines() if line.strip()])
        for tags, body in cells
        # shown code only: not the launch cell (remove-cell), not folded input or solutions
        if not any(t in tags for t in ("hide-input", "remove-input", "remove-cell", "solution"))
    )
    assert visible <= 40, f"{stem}: {visible} visible lines of code (at most 40)"
    assert not any(re.search(r"^\s*def ", body, flags=re.M) for _, body in cells), (
        f"{stem} defines a function: move it into avsslib"
    )
    if stem in ("07_paper_scale", "08_reproduce_yourself"):  # conclusions are Markdown (glue)
        assert not any("print(" in body for _, body in cells), f"{stem} prints"


def test_notebook_numbers_follow_the_reading_order():
    stems = re.findall(r"file:\s*notebooks/(\d\d)_", (REPO / "_toc.yml").read_text())
    assert stems == sorted(stems) and len(set(stems)) == len(stems)
    assert stems == [f"{i:02d}" for i in range(len(stems))]


def test_mitigation_sentence_names_model_and_intervals(tmp_path):
    before = [0, 0, 1, 1, 0, 1, 0, 0, 1, 0]
    _fake_mitigation(
        tmp_path,
        {
            ("eavss", 0): [1, 0, 1, 1, 0, 1, 0, 0, 1, 0],
            ("random", 0): [0, 0, 1, 1, 0, 1, 0, 0, 1, 1],
        },
        before,
    )
    text = R.mitigation_sentence(tmp_path, "tiny")
    assert text.startswith("On tiny,") and "12%" in text and "Prone minus random" in text
    assert re.search(r"\+25% \[\d+, \d+\]", text), text  # 0.4 -> 0.5: +25% relative
    assert "No committed" in R.mitigation_sentence(tmp_path, "other")


def test_bench_eval_reads_each_benchmark_file(tmp_path):
    """One row per ``bench_eval_*.json``: the study set's ratio and its bound from the floor,
    TruthfulQA's ratio and the largest log-likelihood difference over the tasks."""

    def task(name, ratio, diff):
        return {"task": name, "ratio": ratio, "max_abs_ll_diff": diff}

    (tmp_path / "bench").mkdir()
    data = {
        "date": "2026-12-07T00:37:24+00:00",
        "device": "cuda: NVIDIA H100 80GB HBM3",
        "n": 500,
        "tasks": [task("truthfulqa_mc1", 2.5, 1e-4), task("triviaqa_em", 6.0, None)],
        "study": {"harness_s": 30.0, "ours_s": 12.0, "ratio": 2.5, "floor_s": 6.0},
    }
    (tmp_path / "bench" / "bench_eval_x_h100.json").write_text(json.dumps(data))
    older = {**data, "device": "cpu", "study": {**data["study"], "floor_s": None}, "tasks": []}
    (tmp_path / "bench" / "bench_eval_x_cpu.json").write_text(json.dumps(older))
    earlier = {**data, "date": "2026-12-06T23:59:00+00:00", "n": 1000}  # same device, older
    earlier["tokenizers_parallelism"] = "false"
    (tmp_path / "bench" / "bench_eval_x_h100_threads.json").write_text(
        json.dumps({**data, "date": "2026-12-07T05:15:00+00:00", "tokenizers_parallelism": None})
    )
    (tmp_path / "bench" / "bench_eval_x_h100_before.json").write_text(json.dumps(earlier))
    table = R.bench_eval(tmp_path)
    assert list(table["date"]) == [
        "2026-12-06 23:59",
        "2026-12-07 00:37",
        "2026-12-07 00:37",
        "2026-12-07 05:15",
    ]
    assert list(table["tokenizer threads"]) == ["off", "–", "–", "on"]
    at = (table["date"] == "2026-12-07 00:37") & (table["device"] == "NVIDIA H100 80GB HBM3")
    (row,) = (r for _, r in table[at].iterrows())
    assert (row["date"], row["questions"], row["TruthfulQA MC1 x"]) == (
        "2026-12-07 00:37",
        500,
        2.5,
    )
    assert (row["study x"], row["study: at most x"], row["largest |dLL|"]) == (2.5, 5.0, 1e-4)
    cpu = table.set_index("device").loc["cpu"]
    assert math.isnan(cpu["study: at most x"]) and math.isnan(cpu["largest |dLL|"])
    assert math.isnan(cpu["TruthfulQA MC1 x"])
    sentence = R.bench_eval_sentence(R.bench_eval(tmp_path))
    assert (
        "an NVIDIA H100 80GB HBM3 (up to 500 questions per task, tokenizer threads on, "
        "2026-12-07 05:15 UTC)" in sentence
    )
    assert "study's task set 2.5 times, where at most 5 was possible" in sentence
    assert sentence.endswith("in any of these runs is 1.0e-04.")
    assert "The harness itself" not in sentence  # the same harness time in every run
    slower = {**data, "date": "2026-12-07T06:00:00+00:00", "n": 1000}  # compared at 1000
    slower["study"] = {**data["study"], "harness_s": 45.0}
    (tmp_path / "bench" / "bench_eval_x_h100_slower.json").write_text(json.dumps(slower))
    sentence = R.bench_eval_sentence(R.bench_eval(tmp_path))
    assert (
        "The harness itself took 45 s on the study's task set in the latest sitting and 30 s in "
        "the run before (2026-12-06 23:59 UTC), +50%: each ratio holds within its own sitting only."
    ) in sentence


def test_bench_eval_sentence_groups_a_sitting_by_tokenizer_threads(tmp_path):
    """Runs of one model on one device within minutes of each other are one sitting: the
    sentence gives each thread setting's range; another model gets its own sentence, and the
    table names the model."""
    (tmp_path / "bench").mkdir()

    def run(minute, threads, ratio, model="smollm2-135m"):
        data = {
            "date": f"2026-12-07T13:{minute:02d}:00+00:00",
            "device": "cuda: NVIDIA H100 80GB HBM3",
            "model": model,
            "n": 1000,
            "tokenizers_parallelism": threads,
            "tasks": [{"task": "truthfulqa_mc1", "ratio": ratio + 1, "max_abs_ll_diff": 1e-4}],
            "study": {"harness_s": 40.0, "ours_s": 40.0 / ratio, "ratio": ratio, "floor_s": 8.0},
        }
        name = f"bench_eval_{model}_{minute}.json"
        (tmp_path / "bench" / name).write_text(json.dumps(data))

    run(1, None, 9.0)  # an older run, outside the sitting
    run(27, "false", 3.5)
    run(28, None, 4.5)
    run(30, "false", 4.0)
    run(32, None, 3.0, model="qwen2.5-coder-0.5b")
    table = R.bench_eval(tmp_path)
    assert list(table["model"]) == ["SmolLM2-135M"] * 4 + ["Qwen2.5-Coder-0.5B"]
    sentence = R.bench_eval_sentence(table)
    assert "(SmolLM2-135M, up to 1,000 questions per task, 3 runs one after another" in sentence
    assert (
        "with the tokenizer threads off, TruthfulQA MC1 ran 4.5 to 5 times faster than with "
        "`HFLM` and the study's task set 3.5 to 4 times, where at most 5 was possible; with them "
        "on, TruthfulQA MC1 ran 5.5 times faster"
    ) in sentence
    assert "10 times" not in sentence  # the run at 13:01 is outside the sitting
    assert (
        "Over the 2 GPU runs of SmolLM2-135M at up to 1,000 questions per task with the tokenizer "
        "threads on, the study's task set ran 4.5 to 9 times faster than with `HFLM`."
    ) in sentence
    assert "(Qwen2.5-Coder-0.5B, up to 1,000 questions per task, tokenizer threads on," in sentence
    assert "The harness itself" not in sentence


def test_bench_eval_names_the_way_greedy_steps_ran(tmp_path):
    """Files without ``decode`` read as ``dynamic``; a CUDA-graph run says so in its sitting's
    head, and the spread over runs is given per way."""
    (tmp_path / "bench").mkdir()
    for hour, ratio, decode in ((10, 4.0, None), (11, 5.0, None), (12, 7.0, "graph")):
        data = {
            "date": f"2026-12-07T{hour}:00:00+00:00",
            "device": "cuda: NVIDIA H100 80GB HBM3",
            "model": "smollm2-135m",
            "n": 1000,
            "tokenizers_parallelism": None,
            "tasks": [{"task": "truthfulqa_mc1", "ratio": 6.0, "max_abs_ll_diff": 1e-4}],
            "study": {"harness_s": 40.0, "ours_s": 40.0 / ratio, "ratio": ratio, "floor_s": 5.0},
        }
        if decode:
            data["decode"] = decode
        (tmp_path / "bench" / f"bench_eval_smol_{hour}.json").write_text(json.dumps(data))
    table = R.bench_eval(tmp_path)
    assert list(table["decode"]) == ["dynamic", "dynamic", "graph"]
    sentence = R.bench_eval_sentence(table)
    assert "tokenizer threads on, greedy steps as a CUDA graph, 2026-12-07 12:00 UTC)" in sentence
    assert (
        "the study's task set ran 4 to 5 times faster than with `HFLM` with the greedy steps on a "
        "growing cache (2 runs) and 7 times with the steps as a CUDA graph (1 run)."
    ) in sentence
    # a sitting that compares the two ways: one group each, the threads said once in the head
    later = json.loads((tmp_path / "bench" / "bench_eval_smol_12.json").read_text())
    later["date"], later["decode"] = "2026-12-07T12:02:00+00:00", "dynamic"
    later["study"] = {**later["study"], "ratio": 6.0}
    (tmp_path / "bench" / "bench_eval_smol_12b.json").write_text(json.dumps(later))
    sentence = R.bench_eval_sentence(R.bench_eval(tmp_path))
    assert (
        "(SmolLM2-135M, up to 1,000 questions per task, 2 runs one after another, tokenizer "
        "threads on, 2026-12-07 12:00 to 12:02 UTC), with the greedy steps on a growing cache, "
        "TruthfulQA MC1 ran 6 times faster than with `HFLM` and the study's task set 6 times, "
        "where at most 8 was possible; with the greedy steps as a CUDA graph, TruthfulQA MC1 ran 6 "
        "times"
    ) in sentence


def test_bench_plumbing_reads_each_measurement(tmp_path):
    (tmp_path / "bench").mkdir()

    def row(run, n, plain_s, lean_s):
        return {"run": run, "n": n, "plain_s": plain_s, "lean_s": lean_s, "ratio": plain_s / lean_s}

    data = {
        "date": "2026-12-07T03:01:25+00:00",
        "device": "cuda: NVIDIA H100 80GB HBM3",
        "rows": [row("stub", 1000, 4.0, 1.0), row("model", 100, 50.0, 40.0)],
        "same_numbers": True,
    }
    (tmp_path / "bench" / "bench_plumbing_x_h100.json").write_text(json.dumps(data))
    older = {**data, "date": "2026-12-06T10:00:00+00:00", "device": "cpu", "same_numbers": False}
    (tmp_path / "bench" / "bench_plumbing_x_cpu.json").write_text(json.dumps(older))
    table = R.bench_plumbing(tmp_path)
    assert list(table["device"]) == ["cpu", "cpu", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]
    assert list(table["measured"]) == ["harness only", "with the model"] * 2
    last = table.iloc[-1]
    assert (last["date"], last["questions"], last["x"], last["same numbers"]) == (
        "2026-12-07 03:01",
        100,
        1.25,
        True,
    )
    assert not table["same numbers"].iloc[0]
    assert R.bench_plumbing(tmp_path / "none").empty
    data["rows"][0]["run"] = "warm"
    (tmp_path / "bench" / "bench_plumbing_x_h100.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="bench_plumbing_x_h100.json: run 'warm'"):
        R.bench_plumbing(tmp_path)
