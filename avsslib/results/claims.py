"""The verdict table: one rule per claim of the papers (and of the studies beyond them), each row
computed from the readers of :mod:`avsslib.results` (retention, mitigation changes, k-fold
comparisons, scale-aware scores, healing) with its measured value, the random-layer baseline
and the best other configuration. Writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avsslib.results.base import (
    AVSS_CLAIM,
    FRACTION,
    GAIN_CLAIM,
    HEAL_CLAIM,
    LAYER_CLAIM,
    MODE_NAMES,
    MODES,
    PAPER_MAX_GAIN,
    PRIMARY,
    PRONE_CLAIM,
    REPAIR_CLAIM,
    SCORE_NAMES,
    THRESHOLD,
    _primary,
    config_name,
    model_name,
    task_name,
    uninformative,
)
from avsslib.results.mitigation import (
    fold_table,
    mitigation_changes,
    prone_minus_random,
)
from avsslib.results.pruning import retention

# ------------------------------------------------------------------------------------ verdicts


@dataclass(frozen=True)
class Verdict:
    """One row of the verdict table."""

    claim: str
    paper: str
    model: str
    verdict: str  # "holds", "does not hold", "not testable here"
    n: str
    measured: str
    random: str
    best_other: str
    reason: str
    chapter: str


VERDICT_COLUMNS = [
    "claim",
    "verdict",
    "model",
    "n",
    "measured [95% CI]",
    "random layers",
    "best other",
    "why",
    "evidence",
]


def _ci(row: Any, value: str = "retention", *, prefix: str = "", suffix: str = "") -> str:
    """``"81% [76, 86]"``: ``row``'s ``value`` with its interval in the columns
    ``<prefix>ci_low<suffix>`` and ``<prefix>ci_high<suffix>`` (retention-like fractions);
    ``"–"`` for no row."""
    from avsslib.plots import fmt_ci

    if row is None:
        return "–"
    low, high = (getattr(row, f"{prefix}ci_{b}{suffix}") for b in ("low", "high"))
    return fmt_ci(getattr(row, value), low, high)


def _best_config(best: Any, value: str = "retention", suffix: str = "") -> str:
    """``"angular distance 91% [87, 96]"``: the configuration named by ``best``'s index label
    (score only) with :func:`_ci` of its ``value``; ``"–"`` for no row."""
    if best is None:
        return "–"
    return f"{config_name(str(best.name)).split(' (')[0]} {_ci(best, value, suffix=suffix)}"


def _per_group(
    table: pd.DataFrame, by: str | list[str], verdict: Callable[[Any, pd.DataFrame], Verdict | None]
) -> list[Verdict]:
    """``verdict(key, rows)`` of each group of ``table`` by ``by`` (sorted), those that are not
    ``None``; none for an empty table."""
    if table.empty:
        return []
    out = [verdict(key, g) for key, g in table.groupby(by, sort=True)]
    return [v for v in out if v is not None]


def _avss_verdicts(root: Path) -> list[Verdict]:
    return _per_group(retention(root, FRACTION), "model", _avss_verdict)


def _avss_verdict(m: Any, g: pd.DataFrame) -> Verdict | None:
    """The AVSS claim for model ``m`` from its retention rows ``g``."""
    avss = g[g["config"] == "avss-count"]
    if avss.empty:
        return None
    informative = avss[avss["why"].isna()]
    skipped = avss[avss["why"].notna()]
    n = int(avss["n"].max())
    head = informative[informative["task"] == "sciq_mc"]
    head = head if len(head) else informative.head(1)
    if informative.empty:
        return Verdict(
            AVSS_CLAIM,
            "AVSS",
            m,
            "not testable here",
            f"{n}",
            "–",
            "–",
            "–",
            "every task's original score is at chance or near zero",
            "07_paper_scale",
        )
    below = informative[informative["ci_high"] < THRESHOLD]
    above = informative[informative["ci_low"] > THRESHOLD]
    verdict = (
        "does not hold"
        if len(below)
        else "holds"
        if len(above) == len(informative)
        else "not testable here"
    )
    h = head.iloc[0]
    task, metric = h["task"], h["metric"]
    same = g[(g["task"] == task) & (g["metric"] == metric)].set_index("config")
    rand = same.loc["random-count"] if "random-count" in same.index else None
    others = same[
        same.index.str.endswith("-count")
        & ~same.index.isin(["avss-count", "random-count", "faithful-avss-count"])
    ]
    best = others.loc[others["retention"].idxmax()] if len(others) else None
    reason = (
        f"below {THRESHOLD:.0%} on {', '.join(task_name(t) for t in below['task'])}"
        if len(below)
        else f"above {THRESHOLD:.0%} on every informative task"
        if verdict == "holds"
        else "intervals straddle the 90% line"
    )
    if len(skipped):
        reason += "; not counted: " + ", ".join(
            f"{task_name(t)} {'at chance' if 'chance' in w else 'near zero' if 'zero' in w else w}"
            for t, w in zip(skipped["task"], skipped["why"], strict=True)
        )
    return Verdict(
        AVSS_CLAIM,
        "AVSS",
        m,
        verdict,
        f"{n} per task",
        f"{task_name(task)} retention {_ci(h)}",
        _ci(rand),
        _best_config(best),
        reason,
        "07_paper_scale",
    )


def _mitigation_verdicts(root: Path) -> list[Verdict]:
    """The two mitigation claims of the EAVSS paper (prone layers beat random layers; up to 12%
    relative gain), per model and dataset, from :func:`mitigation_changes`."""
    from avsslib.plots import fmt_ci

    changes = mitigation_changes(root)
    if changes.empty:
        return []
    diffs = prone_minus_random(root)
    out = []
    primary = _primary(changes)
    for (m, d, t, metric), g in primary.groupby(["model", "dataset", "task", "metric"], sort=True):
        by = g.set_index("mode")
        if "eavss" not in by.index:
            continue
        e = by.loc["eavss"]
        r = by.loc["random"] if "random" in by.index else None
        rest = by.drop(index=[i for i in ("eavss", "random") if i in by.index])
        best = rest.loc[rest["delta_abs"].idxmax()] if len(rest) else None
        counts = {k: int(by.loc[k, "seeds"]) for k in MODES if k in by.index}
        n = (
            f"{int(e.n)} questions, {next(iter(counts.values()))} seeds per mode"
            if len(set(counts.values())) == 1
            else f"{int(e.n)} questions; seeds: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        )
        claim = PRONE_CLAIM
        measured = (
            f"{task_name(t, metric)} {fmt_ci(e.delta_abs, e.abs_ci_low, e.abs_ci_high, kind='pp')}"
        )
        rand = "–" if r is None else fmt_ci(r.delta_abs, r.abs_ci_low, r.abs_ci_high, kind="pp")
        other = (
            "–"
            if best is None
            else f"{MODE_NAMES[str(best.name)].split(' (')[0]} "
            f"{fmt_ci(best.delta_abs, best.abs_ci_low, best.abs_ci_high, kind='pp')}"
        )
        row = diffs[
            (diffs["model"] == m)
            & (diffs["dataset"] == d)
            & (diffs["task"] == t)
            & (diffs["metric"] == metric)
        ]
        if isinstance(e.why, str) or row.empty:
            verdict = "not testable here"
            reason = (
                f"{task_name(t)}: {e.why}"
                if isinstance(e.why, str)
                else "no random-layer run to compare with"
            )
        else:
            dr = row.iloc[0]
            verdict = "holds" if dr.ci_low > 0 else "does not hold"
            reason = f"prone − random {fmt_ci(dr.difference, dr.ci_low, dr.ci_high, kind='pp')}" + (
                ""
                if verdict == "holds"
                else ": worse than random layers"
                if dr.ci_high < 0
                else ": no better than random layers"
            )
        out.append(
            Verdict(claim, "EAVSS", m, verdict, n, measured, rand, other, reason, "06_mitigation")
        )
    return out


def _gain_verdict(root: Path) -> list[Verdict]:
    from avsslib.plots import fmt_ci

    changes = mitigation_changes(root)
    if changes.empty:
        return []
    ok = changes[changes["why"].isna() & np.isfinite(changes["delta_rel"])]
    prone = ok[ok["mode"] == "eavss"]
    if prone.empty:
        return [
            Verdict(
                GAIN_CLAIM,
                "EAVSS",
                "–",
                "not testable here",
                "–",
                "–",
                "–",
                "–",
                "no informative metric",
                "06_mitigation",
            )
        ]
    top = prone.loc[prone["delta_rel"].idxmax()]
    same = ok[
        (ok["model"] == top.model)
        & (ok["dataset"] == top.dataset)
        & (ok["task"] == top.task)
        & (ok["metric"] == top.metric)
    ].set_index("mode")
    rand = same.loc["random"] if "random" in same.index else None
    rest = same.drop(index=[i for i in ("eavss", "random") if i in same.index])
    best = rest.loc[rest["delta_rel"].idxmax()] if len(rest) else None
    verdict = (
        "holds" if top.rel_ci_low > 0 and top.rel_ci_high >= PAPER_MAX_GAIN else "does not hold"
    )
    reason = (
        f"largest relative change of the prone layers over {len(prone)} informative "
        f"model-metric pairs; the paper reports up to {PAPER_MAX_GAIN:.0%}"
    )
    return [
        Verdict(
            GAIN_CLAIM,
            "EAVSS",
            str(top.model),
            verdict,
            f"{int(top.n)} questions; seeds {int(top.seeds)}",
            f"{task_name(top.task, top.metric)} {fmt_ci(top.delta_rel, top.rel_ci_low, top.rel_ci_high, kind='rel')}",
            "–"
            if rand is None
            else fmt_ci(rand.delta_rel, rand.rel_ci_low, rand.rel_ci_high, kind="rel"),
            "–"
            if best is None
            else f"{MODE_NAMES[str(best.name)].split(' (')[0]} "
            f"{fmt_ci(best.delta_rel, best.rel_ci_low, best.rel_ci_high, kind='rel')}",
            reason,
            "06_mitigation",
        )
    ]


def _repair_verdicts(root: Path) -> list[Verdict]:
    from avsslib.beyond import best_repair

    out = []
    for r in best_repair(root, fraction=FRACTION).itertuples():
        out.append(
            Verdict(
                REPAIR_CLAIM,
                "beyond",
                str(r.model),
                "holds" if r.reaches else "does not hold",
                f"{r.n} per task",
                f"{r.score} {task_name(r.task)} retention {_ci(r)}",
                _ci(r, "random", prefix="random_"),
                f"{SCORE_NAMES.get(r.reference, r.reference)} "
                f"{_ci(r, 'reference_retention', prefix='reference_')}",
                f"its interval {'reaches' if r.reaches else 'stays below'} "
                f"{SCORE_NAMES.get(r.reference, r.reference)}'s retention (AVSS: {r.avss:.0%}); "
                f"rank agreement with block influence {r.spearman_block_influence:.2f}, "
                f"angular distance {r.spearman_angular:.2f}",
                "10_why_avss_fails",
            )
        )
    return out


def _heal_verdicts(root: Path) -> list[Verdict]:
    from avsslib.beyond import healing

    return _per_group(healing(root), "model", _heal_verdict)


def _heal_verdict(model: Any, g: pd.DataFrame) -> Verdict | None:
    """The healing claim for ``model`` from its healing rows ``g``."""
    sciq = g[g["task"] == "sciq_mc"].set_index("config")
    if "avss-count" not in sciq.index:
        return None
    a = sciq.loc["avss-count"]
    verdict = (
        "holds"
        if a.ci_low_after > THRESHOLD
        else "does not hold"
        if a.ci_high_after < THRESHOLD
        else "not testable here"
    )
    rand = sciq.loc["random-count"] if "random-count" in sciq.index else None
    others = sciq.drop(index=["avss-count"])
    best = others.loc[others["retention_after"].idxmax()] if len(others) else None
    ppl = g[(g["task"] == "wikitext2_ppl") & (g["config"] == "avss-count")]
    reason = (
        f"before healing {_ci(a, 'retention_before', suffix='_before')}; "
        f"healing recovers {_ci(a, 'recovered', prefix='recovered_')} "
        "of the lost accuracy"
    )
    if len(ppl):
        p = ppl.iloc[0]
        reason += (
            f"; WikiText-2 perplexity {p.original:,.0f} unpruned, {p.pruned_before:,.0f} "
            f"pruned, {p.pruned_after:,.0f} after healing"
        )
    return Verdict(
        HEAL_CLAIM,
        "beyond",
        str(model),
        verdict,
        f"{int(a.n)} per task",
        f"SciQ retention after healing {_ci(a, 'retention_after', suffix='_after')}",
        _ci(rand, "retention_after", suffix="_after"),
        _best_config(best, "retention_after", suffix="_after"),
        reason,
        "10_why_avss_fails",
    )


def _layer_choice_verdicts(root: Path) -> list[Verdict]:
    from avsslib.beyond import LAYER_CHOICE_ALPHA, LAYER_CHOICES
    from avsslib.plots import fmt_ci

    table = fold_table(root)
    out: list[Verdict] = []
    if table.empty:
        return out
    table = table[
        [PRIMARY.get(t) == m for t, m in zip(table["task"], table["metric"], strict=True)]
    ]
    # "some layer choice" is the best of several: each is tested at alpha / (number of choices)
    # (Bonferroni), so that the claim's error rate stays at 5% over the family
    alpha = LAYER_CHOICE_ALPHA
    adjusted = fold_table(root, alpha=alpha).set_index(
        ["model", "dataset", "task", "metric", "mode"]
    )
    for (m, d, t, metric), g in table.groupby(["model", "dataset", "task", "metric"], sort=True):
        by = g.set_index("mode")
        choices = by.loc[[c for c in LAYER_CHOICES if c in by.index]]
        if choices.empty or "random" not in by.index:
            continue
        r = by.loc["random"]
        top = choices.loc[choices["vs_random"].idxmax()]
        why_not = uninformative(t, metric, float(r.before))
        seeds = sorted(set(g["seeds"]))
        n = f"{int(r.n)} questions, {int(r.folds)}-fold; " + (
            f"{seeds[0]} seeds per mode" if len(seeds) == 1 else f"seeds {seeds}"
        )
        vs = "; ".join(
            f"{MODE_NAMES[str(c)].split(' (')[0]} − random "
            f"{fmt_ci(x.vs_random, x.vs_random_ci_low, x.vs_random_ci_high, kind='pp')}"
            for c, x in choices.iterrows()
        )
        adjusted_note = ""
        if why_not:
            verdict, reason = "not testable here", f"{task_name(t)}: {why_not}"
        else:
            adj = adjusted.loc[(m, d, t, metric)].loc[list(choices.index)]
            verdict = "holds" if (adj["vs_random_ci_low"] > 0).any() else "does not hold"
            a = adj.loc[top.name]
            ci = fmt_ci(a.vs_random, a.vs_random_ci_low, a.vs_random_ci_high, kind="pp")
            adjusted_note = f" ({1 - alpha:.1%} interval for {len(LAYER_CHOICES)} choices {ci[ci.index('[') :]})"
            reason = (
                f"{vs}; Bonferroni over the {len(LAYER_CHOICES)} layer choices: "
                f"{MODE_NAMES[str(top.name)].split(' (')[0]} − random {ci} ({1 - alpha:.1%} interval)"
            )
        full = by.loc["full"] if "full" in by.index else None
        out.append(
            Verdict(
                LAYER_CLAIM,
                "beyond",
                str(m),
                verdict,
                n,
                f"{task_name(t, metric)}: {MODE_NAMES[str(top.name)].split(' (')[0]} − random "
                f"{fmt_ci(top.vs_random, top.vs_random_ci_low, top.vs_random_ci_high, kind='pp')}"
                + adjusted_note,
                f"change {fmt_ci(r.change, r.change_ci_low, r.change_ci_high, kind='pp')}",
                "–"
                if full is None
                else "full fine-tuning − random "
                f"{fmt_ci(full.vs_random, full.vs_random_ci_low, full.vs_random_ci_high, kind='pp')}",
                reason,
                "06_mitigation",
            )
        )
    return out


def verdicts(root: str | Path) -> pd.DataFrame:
    """The verdict table: one row per claim of the papers (and per model and dataset where they
    differ), columns :data:`VERDICT_COLUMNS` plus ``paper`` and ``chapter`` (notebook stem).

    Rules: AVSS holds when every informative task's 95% interval of the retention lies above
    90%, does not hold when one lies below; prone-layer training beats random layers when the
    paired interval of prone minus random lies above 0; the 12% claim holds when the largest
    relative change of the prone layers has an interval above 0 that reaches 12%; some layer
    choice beats random layers when one choice's paired interval against random, widened for
    the number of choices (Bonferroni), lies above 0. A metric whose original score is at
    chance or near zero never counts (:func:`uninformative`)."""
    root = Path(root)
    rows = [
        *_avss_verdicts(root),
        *_mitigation_verdicts(root),
        *_gain_verdict(root),
        *_layer_choice_verdicts(root),
        *_repair_verdicts(root),
        *_heal_verdicts(root),
    ]
    frame = pd.DataFrame(
        [
            {
                "claim": v.claim,
                "verdict": v.verdict,
                "model": model_name(v.model),
                "n": v.n,
                "measured [95% CI]": v.measured,
                "random layers": v.random,
                "best other": v.best_other,
                "why": v.reason,
                "evidence": v.chapter,
                "paper": v.paper,
                "chapter": v.chapter,
            }
            for v in rows
        ]
    )
    return frame
