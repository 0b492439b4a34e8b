"""The committed runs in words: the verdict table as Markdown and as the book's HTML table, the
README's findings and the mitigation chapter's summary sentence, every number formatted from
the result files through :mod:`avsslib.plots`. Writes nothing."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from avsslib.results.base import (
    CHAPTER_TITLES,
    FRACTION,
    HEAL_CLAIM,
    LAYER_CLAIM,
    MODE_NAMES,
    PAPER_MAX_GAIN,
    PRONE_CLAIM,
    REPAIR_CLAIM,
    model_name,
    task_name,
)
from avsslib.results.claims import VERDICT_COLUMNS, verdicts
from avsslib.results.mitigation import mitigation_changes, prone_minus_random
from avsslib.results.pruning import avss_against_random


def verdict_markdown(
    frame: pd.DataFrame, *, link: str = "{chapter}.md", columns: Iterable[str] = VERDICT_COLUMNS
) -> str:
    """The verdict table as Markdown; ``link`` formats the evidence column (``{chapter}``)."""
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            value = str(row[c])
            if c == "evidence":
                value = (
                    f"[{CHAPTER_TITLES.get(row['chapter'], row['chapter'])}]"
                    f"({link.format(chapter=row['chapter'])})"
                )
            if c == "verdict":
                value = f"**{value}**"
            cells.append(value.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_table(root: str | Path, *, link: str = "../notebooks/{chapter}.html"):
    """The verdict table for the book's first page (:func:`avsslib.plots.table`): claim; the
    verdict with its reason (second, as in the README, so that a phone shows it beside the
    claim); model and sample size; the measured value, the random-layer baseline
    and the best other score, each with its 95% interval; a link to the chapter with the
    evidence (``link`` formats ``{chapter}``, relative to the page that shows it)."""
    import html

    from avsslib.plots import table

    frame = verdicts(root)
    esc = html.escape
    shown = pd.DataFrame(
        {
            "claim": frame["claim"].map(esc),
            "verdict": [
                f"<strong>{esc(v)}</strong><br><small>{esc(w)}</small>"
                for v, w in zip(frame["verdict"], frame["why"], strict=True)
            ],
            "model (n)": [
                f"{esc(m)}<br><small>{esc(n)}</small>"
                for m, n in zip(frame["model"], frame["n"], strict=True)
            ],
            "measured [95% CI]": frame["measured [95% CI]"].map(esc),
            "random layers": frame["random layers"].map(esc),
            "best other": frame["best other"].map(esc),
            "evidence": [
                f'<a href="{link.format(chapter=c)}">chapter {int(c[:2])}</a>'
                for c in frame["chapter"]
            ],
        }
    )
    return table(
        shown,
        index=False,
        escape=False,
        name="verdicts",
        note="Intervals: 95% bootstrap over evaluation examples (paired where two models "
        "or modes are compared); pp: percentage points.",
    )


def findings(root: str | Path) -> list[str]:
    """The findings in sentences, each generated from the verdict rows and result files.

    A little over 80 lines: one short block per claim, in the order of the README.
    """
    from avsslib.plots import fmt_ci, plural, words

    root = Path(root)
    v = verdicts(root)
    out = []
    avss = v[v["paper"] == "AVSS"]
    if len(avss):
        fails = avss[avss["verdict"] == "does not hold"]
        out.append(
            f'AVSS\'s "over 90% retained at 25% pruned" does not hold on '
            f"{len(fails)} of {plural(len(avss), 'model')} "
            f"({words(fails['model'])}): "
            + "; ".join(
                f"{r.model} keeps {r['measured [95% CI]'].replace(' retention', '')}, random "
                f"layers {r['random layers']}, {r['best other']}"
                for _, r in avss.iterrows()
            )
            + "."
        )
    worse = avss_against_random(root)
    worse = worse[worse["ci_high"] < 0]
    if len(worse):
        out.append(
            "AVSS prunes worse than random layers of the same count on "
            + words(
                f"{model_name(r.model)} {task_name(r.task)} (retention "
                f"{fmt_ci(r.difference, r.ci_low, r.ci_high, kind='pp')} against random)"
                for r in worse.itertuples()
            )
            + "."
        )
    mit = v[v["claim"] == PRONE_CLAIM]
    tested = mit[mit["verdict"] != "not testable here"]
    if len(tested):
        wins = tested[tested["verdict"] == "holds"]
        out.append(
            f"Prone layers chosen by EAVSS train better than random layers in "
            f"{len(wins)} of {plural(len(tested), 'informative comparison')} "
            f"(paired 95% intervals of prone minus random); "
            f"{plural(len(mit) - len(tested), 'comparison')} with a base score at chance "
            "or near zero cannot tell."
        )
    changes = mitigation_changes(root)
    if len(changes):
        ok = changes[changes["why"].isna()]
        best = ok.loc[ok["delta_abs"].idxmax()] if len(ok) else None
        if best is not None:
            out.append(
                f"The largest gain comes from {MODE_NAMES[best['mode']]}: "
                f"{model_name(best.model)} {task_name(best.task, best.metric)} "
                f"{fmt_ci(best.delta_abs, best.abs_ci_low, best.abs_ci_high, kind='pp')} "
                f"({fmt_ci(best.delta_rel, best.rel_ci_low, best.rel_ci_high, kind='rel')} relative)."
            )
    beyond = v[v["paper"] == "beyond"]
    for _, r in beyond[beyond["claim"] == REPAIR_CLAIM].iterrows():
        out.append(
            f"{'A' if r['verdict'] == 'holds' else 'No'} scale-aware repair of AVSS reaches the "
            f"scores that compare a block's input with its output on {r['model']}: "
            f"{r['measured [95% CI]']} at {FRACTION:.0%} pruned, against {r['best other']} "
            f"and random layers {r['random layers']}."
        )
    for _, r in beyond[beyond["claim"] == HEAL_CLAIM].iterrows():
        out.append(
            f"LoRA healing {'rescues' if r['verdict'] == 'holds' else 'does not rescue'} AVSS "
            f"pruning on {r['model']}: {r['measured [95% CI]']} ({r['why'].split(';')[0]}); "
            f"random layers heal to {r['random layers']}"
            + (
                " (the best of the pruned models)."
                if str(r["best other"]).startswith("random layers")
                else f", {r['best other']}."
            )
        )
    layer = beyond[beyond["claim"] == LAYER_CLAIM]
    if len(layer):
        wins = layer[layer["verdict"] == "holds"]
        out.append(
            f"Evaluated on every question ({layer['n'].iloc[0]}), the best layer choice trains "
            f"better than random layers in {len(wins)} of {plural(len(layer), 'comparison')}: "
            + "; ".join(
                f"{r['model']} {r['measured [95% CI]'].replace(': ', ', ', 1)} ({r['best other']})"
                for _, r in layer.iterrows()
            )
            + "."
        )
    return out


def mitigation_sentence(root: str | Path, model: str) -> str:
    """What the committed mitigation runs of ``model`` show, in sentences: the largest relative
    change among informative metrics (any mode) and with the prone layers, each with its 95%
    interval, against the EAVSS abstract's 12%; prone minus random layers per metric (paired);
    and which metrics are left out as uninformative."""
    from avsslib.plots import fmt_ci, plural

    changes = mitigation_changes(root)
    changes = changes[changes["model"] == model] if len(changes) else changes
    diff = prone_minus_random(root)
    diff = diff[(diff["model"] == model) & diff["why"].isna()] if len(diff) else diff
    ok = changes[changes["why"].isna() & changes["delta_rel"].notna()] if len(changes) else changes
    prone = ok[ok["mode"] == "eavss"] if len(ok) else ok
    if not len(prone):
        return f"No committed mitigation run of {model} with an informative metric under {root}."
    best, top = ok.loc[ok["delta_rel"].idxmax()], prone.loc[prone["delta_rel"].idxmax()]
    text = (
        f"On {model_name(model)}, the largest relative change among informative metrics is "
        f"{fmt_ci(best.delta_rel, best.rel_ci_low, best.rel_ci_high, kind='rel')} "
        f"({MODE_NAMES[best['mode']]}, {task_name(best.task, best.metric)}, "
        f"{plural(best.seeds, 'seed')}); with the prone layers it is at most "
        f"{fmt_ci(top.delta_rel, top.rel_ci_low, top.rel_ci_high, kind='rel')} "
        f"({task_name(top.task, top.metric)}). The EAVSS abstract reports up to "
        f"{PAPER_MAX_GAIN:.0%}. Prone minus random layers, paired over the same questions: "
        + "; ".join(
            f"{task_name(r.task, r.metric)} {fmt_ci(r.difference, r.ci_low, r.ci_high, kind='pp')}"
            for r in diff.itertuples()
        )
        + "."
    )
    left_out = changes[changes["why"].notna()].drop_duplicates(["task", "metric"])
    if len(left_out):
        text += (
            " Not counted (base score at chance or near zero): "
            + "; ".join(f"{task_name(r.task, r.metric)} ({r.why})" for r in left_out.itertuples())
            + "."
        )
    return text


#: GPU benchmark runs of one model on one device within this many minutes of its latest run count
#: as one sitting: runs made one after another in one call, e.g. with the tokenizer threads off,
#: on and off again, which compare with each other (runs on other days and machines do not).
SITTING_MINUTES = 15

_THREADS = {
    "off": "with the tokenizer threads off",
    "on": "with them on",
    "–": "threads not recorded",
}


_DECODE = {"graph": "greedy steps as a CUDA graph, ", "static": "greedy steps on a static cache, "}
"""How a benchmark row's greedy steps ran, in its sentence's head (nothing for ``dynamic``)."""

_GROWING_CACHE = "with the greedy steps on a growing cache"
"""The dynamic way of decoding, in a sitting's groups and in the GPU spread alike."""

_SITTING_LABELS = {
    "tokenizer threads": _THREADS,
    "decode": {
        "dynamic": _GROWING_CACHE,
        "static": "with the greedy steps on a static cache",
        "graph": "with the greedy steps as a CUDA graph",
    },
}
"""How a group of runs within a sitting is named, per column that differs (sorted values)."""

_DECODE_WAYS = {
    "dynamic": _GROWING_CACHE,
    "static": "on a static cache",
    "graph": "with the steps as a CUDA graph",
}


def bench_eval_sentence(table: pd.DataFrame) -> str:
    """The evaluation benchmarks (:func:`avsslib.results.bench_eval`) in words: for the latest
    CPU run, and for each model's latest GPU sitting (its runs on that device within
    :data:`SITTING_MINUTES` of the latest), how much faster TruthfulQA MC1 and the study's task
    set ran than with ``HFLM`` and the most that was possible, per tokenizer-thread setting
    where a sitting has several; where the harness's own time on the study set in the latest
    sitting of the model benchmarked most often moved by more than a fifth from the run before
    it at the same size, that too; then the largest log-likelihood difference in any run."""
    if not len(table):
        return "No evaluation benchmark is committed."
    order = table.sort_values("date", kind="stable")
    cpu, gpu = order[order["device"] == "cpu"], order[order["device"] != "cpu"]
    parts = [_bench_sitting(cpu.tail(1))] if len(cpu) else []
    sittings = {}
    for model in dict.fromkeys(gpu["model"]):  # models in the order they were first benchmarked
        runs = gpu[gpu["model"] == model]
        runs = runs[runs["device"] == runs["device"].iloc[-1]]
        when = pd.to_datetime(runs["date"])
        sittings[model] = runs[when >= when.max() - pd.Timedelta(minutes=SITTING_MINUTES)]
        parts.append(_bench_sitting(sittings[model]))
    text = " ".join(parts)
    if sittings:
        most = gpu["model"].value_counts().index[0]
        text += _gpu_spread(gpu[gpu["model"] == most]) + _harness_drift(gpu, sittings[most])
    return (
        f"{text} The largest log-likelihood difference between the two backends in any of "
        f"these runs is {table['largest |dLL|'].max():.1e}."
    )


def _span(values: Iterable[float]) -> str:
    """``"4.41"`` for one value (or equal ones), ``"3.57 to 4.05"`` for several."""
    from avsslib.plots import fmt_num

    values = sorted(values)
    low, high = fmt_num(values[0]), fmt_num(values[-1])
    return low if low == high else f"{low} to {high}"


def _bench_sitting(runs: pd.DataFrame) -> str:
    """One sentence for benchmark rows of one device (and model): what ran, then the ratios,
    per tokenizer-thread setting and way of decoding where these differ within the rows."""
    from avsslib.plots import plural

    first, last = runs.iloc[0], runs.iloc[-1]
    device = "the 2-core CPU" if last.device == "cpu" else f"an {last.device}"
    model = "" if last.device == "cpu" or last.model == "–" else f"{last.model}, "
    varying = [c for c in _SITTING_LABELS if runs[c].nunique() > 1]
    same = "" if "decode" in varying else _DECODE.get(str(last["decode"]), "")
    if "tokenizer threads" not in varying and last["tokenizer threads"] != "–":
        same = f"tokenizer threads {last['tokenizer threads']}, {same}"
    if len(runs) == 1:
        when = f"{same}{last.date} UTC"
    else:
        when = f"{len(runs)} runs one after another, {same}{first.date} to {last.date[-5:]} UTC"
    head = f"On {device} ({model}up to {plural(int(last.questions), 'question')} per task, {when}),"
    groups = list(runs.groupby(varying, sort=True, dropna=False)) if varying else [((), runs)]
    said = []
    for key, rows in groups:
        values = key if isinstance(key, tuple) else (key,)
        label = ", ".join(
            _SITTING_LABELS[c].get(str(v), f"{c} {v}") for c, v in zip(varying, values, strict=True)
        )
        said.append(
            (f"{label}, " if label else "")
            + f"TruthfulQA MC1 ran {_span(rows['TruthfulQA MC1 x'])} times faster than with "
            f"`HFLM` and the study's task set {_span(rows['study x'])} times, where at most "
            f"{_span(rows['study: at most x'])} was possible"
        )
    return f"{head} {'; '.join(said)}."


def _gpu_spread(runs: pd.DataFrame) -> str:
    """The range of the study set's ratio over one model's GPU runs at its largest size with
    the tokenizer threads on (the library's default), where there are several, per way of
    running the greedy steps: runs on different nodes and days differ more than runs within
    a sitting."""
    from avsslib.plots import plural

    runs = runs[
        (runs["questions"] == runs["questions"].max()) & (runs["tokenizer threads"] == "on")
    ]
    if len(runs) < 2:
        return ""
    last = runs.iloc[-1]
    ways = list(runs.groupby("decode", sort=False, dropna=False))
    said = [
        f"{_span(rows['study x'])} times"
        + (" faster than with `HFLM`" if i == 0 else "")
        + (
            f" {_DECODE_WAYS.get(str(way), str(way))} ({plural(len(rows), 'run')})"
            if len(ways) > 1
            else ""
        )
        for i, (way, rows) in enumerate(ways)
    ]
    return (
        f" Over the {plural(len(runs), 'GPU run')} of {last.model} at up to "
        f"{plural(int(last.questions), 'question')} per task with the tokenizer threads on, the "
        f"study's task set ran {' and '.join(said)}."
    )


def _harness_drift(gpu: pd.DataFrame, sitting: pd.DataFrame) -> str:
    """Where the harness's median time on the study set in ``sitting`` differs by more than a
    fifth from the latest GPU run of the same model, device and size before it: a sentence."""
    from avsslib.plots import fmt_num

    last = sitting.iloc[-1]
    before = gpu[
        (gpu["model"] == last.model)
        & (gpu["device"] == last.device)
        & (gpu["questions"] == last.questions)
        & (gpu["date"] < sitting["date"].iloc[0])
    ]
    if not len(before):
        return ""
    now, then = sitting["study: harness s"].median(), before.iloc[-1]
    change = now / then["study: harness s"] - 1
    if abs(change) <= 0.2:
        return ""
    which = "the latest sitting" + (
        f" (median of its {len(sitting)} runs)" if len(sitting) > 1 else ""
    )
    return (
        f" The harness itself took {fmt_num(now, 3)} s on the study's task set in {which} and "
        f"{fmt_num(then['study: harness s'], 3)} s in the run before ({then.date} UTC), "
        f"{change:+.0%}: each ratio holds within its own sitting only."
    )
