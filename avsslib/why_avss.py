"""The tables and sentences of the chapter "Why AVSS fails, and what works instead": why the AVSS
ranking follows depth (``avss diagnose``), the scale-aware variants (``avss study --scores``),
LoRA healing (``avss heal``) and SciQ retention against model size. Every number the chapter
states comes from a function here; :mod:`avsslib.plots_beyond` draws the figures.

Like :mod:`avsslib.results` and :mod:`avsslib.beyond`, functions here only read committed files
(writing none) and run no model. Files read, per model folder ``results/<model>/``:

* ``diagnosis/summary.json`` and ``diagnosis/sparsity.csv``: the depth correlations, the
  near-zero counts with their Poisson intervals and the clamp's effect;
* ``avss/layer_stats.csv``, ``avss/retention.csv`` (through :func:`avsslib.results.retention`)
  and ``avss/record.json`` (the model's parameter count);
* ``scale_scores/retention.csv``, ``agreement.csv`` and ``record.json`` (through
  :mod:`avsslib.beyond`);
* ``healing/healing.csv`` and ``healing/record.json`` (the training budget).

Sentences are Markdown, numbers in the book's one format (:mod:`avsslib.plots`); with nothing
committed they say which command writes the missing files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from avsslib import beyond
from avsslib import results as R
from avsslib.errors import DataError
from avsslib.plots import fmt_ci, fmt_int, fmt_num, fmt_pct, plural, words
from avsslib.plots_beyond import fmt_params

MODES = ("fixed", "faithful")
"""Statistics modes of a diagnosis: our streaming statistics and the official code's."""

SIZE_SCORES = beyond.BASELINE_SCORES
"""Scores compared across model sizes (AVSS and the baselines of the main study)."""

SIZE_TASK = "sciq_mc"
"""The task of the size comparison (its primary metric, accuracy)."""


def _read_json(path: Path) -> Any:
    """``path`` as JSON; ``None`` when it does not exist."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(
            f"{path}: not valid JSON ({err}); restore it from git or rerun the stage that "
            "writes it."
        ) from err


def _model_dirs(root: str | Path, marker: str) -> list[Path]:
    root = Path(root)
    return sorted(p.parents[len(Path(marker).parts) - 1] for p in root.glob(f"*/{marker}"))


def _plain(x: object) -> str:
    """A setting as written (``0.0002``, not ``2.00e-04``); a dash if missing."""
    return fmt_num(None) if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def _record(folder: Path) -> dict:
    """A stage's run record (``record.json``, else ``record.partial.json``), ``{}`` if none."""
    return _read_json(folder / "record.json") or _read_json(folder / "record.partial.json") or {}


# ------------------------------------------------------------------ why: depth and counting


def diagnoses(root: str | Path) -> dict[str, dict]:
    """``{model: diagnosis/summary.json}`` of every model with a diagnosis, by model name."""
    return {
        p.name: _read_json(p / "diagnosis" / "summary.json")
        for p in _model_dirs(root, "diagnosis/summary.json")
    }


def diagnosis_table(root: str | Path) -> pd.DataFrame:
    """One row per model and statistics mode: the Spearman correlations of AVSS, variance and
    RMS with depth, of AVSS with RMS, the R² of log AVSS by log variance, and how many of the
    blocks AVSS prunes are among the first ``k``."""
    rows = []
    for model, s in diagnoses(root).items():
        for mode in (m for m in MODES if m in s):
            d = s[mode]
            rows.append(
                {
                    "model": model,
                    "mode": mode,
                    "AVSS ~ depth": d["spearman_avss_depth"],
                    "variance ~ depth": d["spearman_variance_depth"],
                    "RMS ~ depth": d["spearman_rms_depth"],
                    "AVSS ~ RMS": d["spearman_avss_rms"],
                    "R² of log AVSS by log variance": d["r2_log_variance"],
                    "pruned blocks among the first k": f"{d['overlap_depth']} of {d['k']}",
                }
            )
    return pd.DataFrame(rows)


def depth_sentences(root: str | Path) -> str:
    """One bullet per model (fixed mode): how closely AVSS follows depth and the stream's RMS,
    the share of log AVSS the log variance explains, and the overlap of the pruned blocks with
    the first blocks."""
    lines = []
    for model, s in diagnoses(root).items():
        f = s.get("fixed")
        if not f:
            continue
        lines.append(
            f"* **{R.model_name(model)}** (fixed mode): AVSS has a rank correlation of "
            f"{fmt_num(f['spearman_avss_depth'], 2)} with depth and "
            f"{fmt_num(f['spearman_avss_rms'], 2)} with the stream's RMS; the log variance alone "
            f"explains {fmt_pct(f['r2_log_variance'])} of the spread of log AVSS over the "
            f"unclamped blocks; {f['overlap_depth']} of the {f['k']} blocks AVSS prunes are "
            f"among the first {f['k']}."
        )
    return "\n".join(lines) or (
        "No diagnosis yet: run `avss diagnose --study results/<model>/avss "
        "--out results/<model>/diagnosis`."
    )


def counting_sentences(root: str | Path) -> str:
    """One bullet per model and mode: the range of near-zero counts, the clamped blocks, and what
    counting noise alone does to the ranking (the diagnosis's Poisson replicates); then the exact
    interval of a zero count where some block has one."""
    lines = []
    for model, s in diagnoses(root).items():
        for mode in (m for m in MODES if m in s):
            d, st = s[mode], s[mode]["stability"]
            lines.append(
                f"* **{R.model_name(model)}, {mode} mode**: near-zero counts {d['near_zero_min']}"
                f" to {d['near_zero_max']} (median {fmt_num(d['near_zero_median'])}) out of "
                f"{fmt_int(d['elements_per_layer'])} elements per block; clamped blocks: "
                f"{words(d['clamped_layers'])}. Under counting noise alone, some block is clamped "
                f"in {fmt_pct(st['p_any_clamped'])} of the replicates, the clamp changes some "
                f"block's rank in {fmt_pct(st['p_clamp_decides_rank'])} and the pruned set in "
                f"{fmt_pct(st['p_clamp_decides'])}; the pruned set is the observed one in only "
                f"{fmt_pct(st['p_set_observed'])} of the replicates (median Kendall τ with the "
                f"observed ranking {fmt_num(st['kendall_median'], 2)})."
            )
    if not lines:
        return "No diagnosis yet."
    zero = [t[t["count"] == 0] for t in sparsity(root).values()]
    zero = [z for z in zero if len(z)]
    if zero:
        high = pd.concat(zero)["count_high"].max()
        lines.append(
            f"\nAn observed count of zero has the exact 95% interval 0 to {fmt_num(high)}: "
            "such a block's true rate is not zero, only too small to be seen in this sample."
        )
    return "\n".join(lines)


def layer_stats(root: str | Path) -> dict[str, pd.DataFrame]:
    """``{model: avss/layer_stats.csv indexed by layer}`` of the models with a diagnosis."""
    return {
        m: pd.read_csv(Path(root) / m / "avss" / "layer_stats.csv", index_col="layer")
        for m in diagnoses(root)
        if (Path(root) / m / "avss" / "layer_stats.csv").is_file()
    }


def sparsity(root: str | Path) -> dict[str, pd.DataFrame]:
    """``{model: diagnosis/sparsity.csv}``: near-zero counts per mode, block and threshold with
    their exact Poisson intervals (``count_low``, ``count_high``)."""
    return {
        p.name: pd.read_csv(p / "diagnosis" / "sparsity.csv")
        for p in _model_dirs(root, "diagnosis/sparsity.csv")
    }


# ------------------------------------------------------------------- scale-aware variants


def scale_score_rows(root: str | Path, fraction: float = 0.25) -> pd.DataFrame:
    """:func:`avsslib.beyond.scale_scores` with a bar ``label``: the score, prefixed by the
    model when several models have a ``scale_scores`` study."""
    table = beyond.scale_scores(root, fraction)
    several = table["model"].nunique() > 1
    return table.assign(
        label=[
            f"{m}: {s}" if several else s
            for m, s in zip(table["model"], table["score"], strict=True)
        ]
    )


def scale_score_sentences(root: str | Path, fraction: float = 0.25) -> str:
    """Per model: SciQ retention of AVSS, the references and random layers at ``fraction``, the
    best scale-aware variant with its interval, and whether that interval reaches the better
    reference (:func:`avsslib.beyond.best_repair`)."""
    table = beyond.scale_scores(root, fraction)
    best = beyond.best_repair(root, SIZE_TASK, fraction)
    best = best.set_index("model") if len(best) else best
    paragraphs = []
    for model, g in table[table["task"] == SIZE_TASK].groupby("model", sort=True):
        g = g.set_index("score")
        device = _record(Path(root) / str(model) / "scale_scores").get("device", "not recorded")

        def kept(score: str, g: pd.DataFrame = g) -> str:
            if score not in g.index:
                return "not evaluated"
            r = g.loc[score]
            return fmt_ci(r["retention"], r["ci_low"], r["ci_high"])

        text = (
            f"**{R.model_name(str(model))}** (n = {fmt_int(g['n'].max())} SciQ questions, "
            f"device {device}): at {fmt_pct(fraction)} pruned, AVSS keeps {kept('avss')} of "
            f"SciQ accuracy, block influence {kept('block_influence')}, angular distance "
            f"{kept('angular')}, random blocks {kept('random')}."
        )
        if model in best.index:
            b = best.loc[model]
            text += (
                f" The best scale-aware variant is `{b['score']}` with "
                f"{fmt_ci(b['retention'], b['ci_low'], b['ci_high'])}: its interval "
                f"{'reaches' if b['reaches'] else 'stays below'} the better of block influence "
                f"and angular distance ({R.SCORE_NAMES[b['reference']]}, "
                f"{fmt_pct(b['reference_retention'])})."
            )
        paragraphs.append(text)
    return "\n\n".join(paragraphs) or (
        "No study of the scale-aware scores yet: run `avss study --scores ... --out "
        "results/<model>/scale_scores` (see the run records)."
    )


def agreement_sentences(root: str | Path, fraction: float = 0.25) -> str:
    """Per model: the Spearman rank agreement over all blocks of the best scale-aware variant
    with block influence and with angular distance (``scale_scores/agreement.csv``)."""
    lines = [
        f"* **{R.model_name(r.model)}**: Spearman rank agreement of `{r.score}` with block "
        f"influence {fmt_num(r.spearman_block_influence, 2)}, angular distance "
        f"{fmt_num(r.spearman_angular, 2)}."
        for r in beyond.best_repair(root, SIZE_TASK, fraction).itertuples()
    ]
    return "\n".join(lines) or "No agreement table of the scale-aware scores yet."


# ------------------------------------------------------------------------------- healing


def healing_rows(root: str | Path) -> pd.DataFrame:
    """:func:`avsslib.beyond.healing` in long form for bars: one row per model, selection, task
    and ``when`` (before, after healing) with ``retention``, ``ci_low``, ``ci_high`` and a bar
    ``label`` (the selection and when, prefixed by the model when there are several)."""
    heal = beyond.healing(root)
    if heal.empty:
        return heal
    several = heal["model"].nunique() > 1
    heal = heal.assign(_row=range(len(heal)))
    parts = [
        heal.assign(
            when=when,
            _when=i,
            retention=heal[f"retention_{when}"],
            ci_low=heal[f"ci_low_{when}"],
            ci_high=heal[f"ci_high_{when}"],
            label=(heal["model"] + ": " if several else "") + heal["config"] + f" ({when})",
        )
        for i, when in enumerate(("before", "after"))
    ]
    # a selection's two bars next to each other
    out = pd.concat(parts, ignore_index=True).sort_values(["_row", "_when"], kind="stable")
    return out.drop(columns=["_row", "_when"]).reset_index(drop=True)


def healing_sentences(root: str | Path) -> str:
    """Per model: the healing budget (``healing/record.json``), then one bullet per selection
    and task: retention before and after healing and the share of the loss recovered, each with
    its 95% interval."""
    heal = beyond.healing(root)
    if heal.empty:
        return (
            "No healing run yet: `avss heal --study results/<model>/avss "
            "--out results/<model>/healing`."
        )
    out = []
    for model, g in heal.groupby("model", sort=True):
        rec = _record(Path(root) / str(model) / "healing")
        budget = rec.get("config", {}).get("heal", {})
        text = rec.get("metrics", {}).get("text", {})
        out.append(
            f"**{R.model_name(str(model))}**: {fmt_int(budget.get('steps'))} steps of "
            f"{fmt_int(budget.get('batch_size'))} x {fmt_int(budget.get('seq_len'))} tokens "
            f"({fmt_int(budget.get('tokens'))} tokens), learning rate {_plain(budget.get('lr'))}"
            f", LoRA rank {fmt_int(budget.get('rank'))}, on {text.get('dataset', 'unrecorded text')}"
            f" {text.get('split', '')}.\n"
        )
        out.extend(
            f"* `{r.config}`, {R.task_name(r.task, r.metric)}: retention "
            f"{fmt_ci(r.retention_before, r.ci_low_before, r.ci_high_before)} before, "
            f"{fmt_ci(r.retention_after, r.ci_low_after, r.ci_high_after)} after; healing "
            f"recovers {fmt_ci(r.recovered, r.recovered_ci_low, r.recovered_ci_high)} of the loss."
            for r in g.itertuples()
        )
        out.append("")
    return "\n".join(out).strip()


# ---------------------------------------------------------------------- retention by size

SIZE_COLUMNS = ["model", "name", "parameters", "task", "score", "kind", "retention", "ci_low"]
SIZE_COLUMNS += ["ci_high", "n", "study"]


def model_label(model: str, record: dict) -> str:
    """A model's name for the page: :data:`avsslib.results.MODEL_NAMES`, else the last part of
    the run record's hub id without ``-Instruct``, else the folder name."""
    if model in R.MODEL_NAMES:
        return R.model_name(model)
    hub = str((record.get("model") or {}).get("hub_id") or "")
    return hub.rsplit("/", 1)[-1].removesuffix("-Instruct") or model


def retention_by_size(
    root: str | Path, task: str = SIZE_TASK, fraction: float = 0.25
) -> pd.DataFrame:
    """``task`` retention (its primary metric) at ``fraction`` of every model with a pruning
    study (``avss/``, read by :func:`avsslib.results.retention`): each of :data:`SIZE_SCORES`
    with the count rule and our (fixed) statistics, ``kind`` ``"baseline"``, and the best
    scale-aware variant of the model's ``scale_scores`` study where there is one, ``kind``
    ``"best repair"`` (:func:`avsslib.beyond.best_repair`). ``parameters`` is the model's count
    in the study's run record (NaN without one); rows are ordered by it. Columns:
    :data:`SIZE_COLUMNS` (``name``: :func:`model_label`; ``study``: the folder read)."""
    ret = R.retention(root, fraction)
    if ret.empty:
        return pd.DataFrame(columns=SIZE_COLUMNS)
    main = ret[
        (ret["task"] == task)
        & (ret["rule"] == "count")
        & (ret["stats"] == "fixed")
        & ret["score"].isin(SIZE_SCORES)
    ].drop_duplicates(["model", "score"])
    main = main.assign(kind="baseline", study="avss")
    repair = beyond.best_repair(root, task, fraction)
    repair = repair[repair["model"].isin(main["model"])] if len(repair) else repair
    if len(repair):
        main = pd.concat([main, repair.assign(kind="best repair", study="scale_scores")])
    records = {m: _record(Path(root) / m / "avss") for m in main["model"].unique()}
    params = {
        m: float((r.get("model") or {}).get("parameters") or math.nan) for m, r in records.items()
    }
    out = main.assign(
        name=main["model"].map(lambda m: model_label(m, records[m])),
        parameters=main["model"].map(params),
        order=main["score"].map(lambda s: SIZE_SCORES.index(s) if s in SIZE_SCORES else 99),
    )
    out = out.sort_values(["parameters", "model", "order"], na_position="last")
    return out[SIZE_COLUMNS].reset_index(drop=True)


def size_table(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`retention_by_size` one row per model: its parameter count, the number of
    questions, each score's retention with its 95% interval, and the best scale-aware repair
    (the score and its retention, from its own study, with its number of questions)."""
    rows = []
    for _, g in frame.groupby("model", sort=False):
        base = g[g["kind"] == "baseline"].set_index("score")
        repair = g[g["kind"] == "best repair"]
        row = {
            "model": g["name"].iloc[0],
            "parameters": fmt_params(g["parameters"].iloc[0]),
            "n": fmt_int(base["n"].max()) if len(base) else fmt_int(None),
        }
        for s in SIZE_SCORES:
            r = base.loc[s] if s in base.index else None
            row[R.SCORE_NAMES.get(s, s)] = (
                fmt_ci(r["retention"], r["ci_low"], r["ci_high"])
                if r is not None
                else fmt_int(None)
            )
        r = repair.iloc[0] if len(repair) else None
        row["best scale-aware repair"] = (
            f"{r['score']}: {fmt_ci(r['retention'], r['ci_low'], r['ci_high'])} "
            f"(n = {fmt_int(r['n'])})"
            if r is not None
            else fmt_int(None)
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _per_model(frame: pd.DataFrame, *, score: bool = False) -> str:
    """``"27% [22, 32] (SmolLM2-135M) and 19% [14, 24] (Qwen2.5-Coder-1.5B)"``; ``score=True``
    names each row's score too (``"(SmolLM2-135M, angular distance)"``)."""
    return words(
        f"{fmt_ci(r.retention, r.ci_low, r.ci_high)} ({r.name}"
        + (f", {R.SCORE_NAMES.get(r.score, r.score)})" if score else ")")
        for r in frame.itertuples()
    )


def _avss_below_random(base: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """AVSS's rows of :func:`retention_by_size` (baseline rows) joined with random layers' of the
    same model (``*_random`` columns), and on how many models AVSS's 95% interval lies wholly
    below that of random layers."""
    avss, rand = base[base["score"] == "avss"], base[base["score"] == "random"]
    both = avss.merge(rand, on="model", suffixes=("", "_random"))
    return both, int((both["ci_high"] < both["ci_low_random"]).sum())


def size_sentence(frame: pd.DataFrame, task: str = SIZE_TASK, fraction: float = 0.25) -> str:
    """What :func:`retention_by_size` shows, in one sentence: AVSS, random layers and the better
    reference score per model, from the smallest to the largest, on how many models AVSS's
    interval lies wholly below that of random layers, and the best repair where there is one."""
    if frame.empty:
        return "No pruning study yet: run `avss study --out results/<model>/avss`."
    base = frame[frame["kind"] == "baseline"]
    avss, rand = base[base["score"] == "avss"], base[base["score"] == "random"]
    refs = base[base["score"].isin(beyond.REFERENCE_SCORES)]
    refs = refs.loc[refs.groupby("model", sort=False)["retention"].idxmax()] if len(refs) else refs
    both, below = _avss_below_random(base)
    sizes = frame.drop_duplicates("model")
    known = sizes["parameters"].dropna()
    span = (
        f"{plural(len(sizes), 'model')} of {fmt_params(known.min())} to "
        f"{fmt_params(known.max())} parameters"
        if len(known) > 1
        else plural(len(sizes), "model")
    )
    text = (
        f"At {fmt_pct(fraction)} pruned, on {span}, AVSS keeps {_per_model(avss)} of "
        f"{R.task_name(task, R.PRIMARY.get(task))}, random layers {_per_model(rand)} and the "
        f"better of block influence and angular distance {_per_model(refs, score=True)}; the 95% interval of AVSS "
        f"lies wholly below that of random layers on {below} of {plural(len(both), 'model')}"
    )
    repair = frame[frame["kind"] == "best repair"]
    if len(repair):
        text += ", and the best scale-aware repair keeps " + words(
            f"{fmt_ci(r.retention, r.ci_low, r.ci_high)} ({r.name}, `{r.score}`)"
            for r in repair.itertuples()
        )
    unplaced = sizes[sizes["parameters"].isna()]
    if len(unplaced):
        text += f" ({words(unplaced['name'])}: no parameter count in the run record)"
    return text + "."


def in_short(root: str | Path, fraction: float = 0.25, task: str = SIZE_TASK) -> str:
    """The chapter's answer in three sentences, for its first screen: the range of AVSS's
    retention over the models with a pruning study (and on how many its 95% interval lies
    wholly below random layers'), the best scale-aware repair against the better of block
    influence and angular distance, and AVSS's retention before and after LoRA healing."""
    size = retention_by_size(root, fraction=fraction)
    base = size[size["kind"] == "baseline"] if len(size) else size
    if base.empty:
        return "No pruning study under results/ yet: run `avss study --out results/<model>/avss`."
    avss = base[base["score"] == "avss"]
    _, below = _avss_below_random(base)
    metric = R.task_name(task, R.PRIMARY.get(task))
    text = (
        f"In short: on {plural(len(avss), 'model')} with a pruning study, AVSS keeps "
        f"{fmt_pct(avss['retention'].min())} to {fmt_pct(avss['retention'].max())} of {metric} "
        f"at {fmt_pct(fraction)} pruned, and its 95% interval lies wholly below that of random "
        f"layers on {below} of them."
    )
    repair = beyond.best_repair(root, task=task, fraction=fraction)
    if len(repair):
        text += " The same statistics computed on each block's update instead of the residual "
        text += (
            "stream repair it: "
            + words(
                f"`{r.score}` keeps {fmt_pct(r.retention)} on {R.model_name(r.model)} (the better of "
                f"block influence and angular distance {fmt_pct(r.reference_retention)})"
                for r in repair.itertuples()
            )
            + "."
        )
    heal = beyond.healing(root)
    if len(heal):
        heal = heal[(heal["config"] == "avss-count") & (heal["task"] == task)]
        text += (
            " After LoRA healing, AVSS-pruned models keep "
            + words(
                f"{fmt_pct(r.retention_after)} (before healing {fmt_pct(r.retention_before)}) on "
                f"{R.model_name(r.model)}"
                for r in heal.itertuples()
            )
            + "."
        )
    return text
