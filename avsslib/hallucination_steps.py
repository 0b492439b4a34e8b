"""The steps of a hallucination run (:func:`avsslib.hallucination.run_hallucination`), each on
one dataset or on the results of all: labelling (resumable), statistics and prone layers per
family, the controls when asked (probe, k-fold; :mod:`avsslib.hallucination_controls`), the
heatmaps and the summary files.

Files written into the run's folder (the layout is described in :mod:`avsslib.hallucination`):
``labels/<dataset>.jsonl`` and its ``.key.json``, ``profiles/<dataset>_<family>.csv``, the
figures, ``label_summary.csv`` / ``.json``, ``splits.json``, ``prone_layers.json`` and
``probe_layers.json`` (the probe features and tables: :mod:`avsslib.hallucination_controls`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avsslib.hallucination_controls import fold_prone, probe_dataset, prone_table, run_stats
from avsslib.options import named_values

if TYPE_CHECKING:
    from avsslib.hallucination import HallucinationConfig

__all__ = [
    "LABEL_SETTINGS",
    "Findings",
    "dataset_step",
    "label_answers",
    "prone_heatmaps",
    "run_table",
    "write_summary_files",
]


@dataclass
class Findings:
    """What a hallucination run has found so far, filled dataset by dataset: label summaries,
    calibration/evaluation splits, prone layers per family, skipped datasets, profiles, sparsity
    notes, probes, per-fold prone layers, the folds' ids and the timings of every step."""

    summaries: dict[str, Any] = field(default_factory=dict)
    split_record: dict[str, Any] = field(default_factory=dict)
    prone: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    profiles: dict[tuple[str, str], Any] = field(default_factory=dict)
    sparsity: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, Any] = field(default_factory=dict)
    fold_prone: dict[str, Any] = field(default_factory=dict)
    fold_parts: dict[str, list[list[str]]] = field(default_factory=dict)
    timings: dict[str, dict[str, float]] = field(
        default_factory=lambda: {"label_s": {}, "stats_s": {}}
    )


def _sparsity_note(table: Any, eps: float) -> dict[str, Any]:
    """How much of a profile's sparsity is real: total near-zero counts of both sets and the
    layers clamped for having none; ``degenerate`` when either set has no
    near-zero element in at least half of the layers."""
    from avsslib.scores import SPARSITY_CLAMP

    clamped_h = [int(i) for i in table.index[table["s_h"] < SPARSITY_CLAMP]]
    clamped_t = [int(i) for i in table.index[table["s_t"] < SPARSITY_CLAMP]]
    n = len(table)
    return {
        "eps": eps,
        "n_layers": n,
        "clamped_h": clamped_h,
        "clamped_t": clamped_t,
        "near_zero_h": float(table["near_zero_h"].sum()),
        "near_zero_t": float(table["near_zero_t"].sum()),
        "degenerate": max(len(clamped_h), len(clamped_t)) >= n / 2,
    }


#: the fields of the configuration passed on to :func:`avsslib.labels.label_dataset` under their
#: own names; with the model, the split and the chat template, they are the key of the labels
LABEL_SETTINGS = ("n", "seed", "template", "max_new_tokens", "question_guard", "batch_size")


def label_answers(
    model: Any,
    tokenizer: Any,
    cfg: HallucinationConfig,
    dataset: str,
    split: str,
    model_sha256: str | None,
    progress: bool,
) -> list[Any]:
    """The labelled answers of ``dataset``: copied from ``cfg.labels_from``, read back from
    ``labels/<dataset>.jsonl`` when its key file says the same model, sample and settings made
    them, else generated (:func:`avsslib.labels.label_dataset`); written with their key file."""
    from avsslib.fs import holds_key, write_json_atomic
    from avsslib.labels import label_dataset, read_labels, write_labels

    chat: Any = {"auto": "auto", "on": True, "off": False}[cfg.chat_template]
    label_file = Path(cfg.out) / "labels" / f"{dataset}.jsonl"
    settings = named_values(cfg, *LABEL_SETTINGS)
    label_key = {
        "model_sha256": model_sha256,
        "split": split,
        "chat_template": cfg.chat_template,
        **settings,
    }
    key_file = label_file.with_suffix(".key.json")
    if cfg.labels_from is not None:
        labelled = read_labels(Path(cfg.labels_from) / "labels" / f"{dataset}.jsonl")
    elif label_file.exists() and holds_key(key_file, label_key):
        labelled = read_labels(label_file)  # resumed: same model, sample and settings
    else:
        labelled = label_dataset(
            model, tokenizer, dataset, split, **settings, chat_template=chat, progress=progress
        )
    key_file.unlink(missing_ok=True)  # labels and key are never out of step
    write_labels(label_file, labelled)
    if cfg.labels_from is None:  # copied labels are not this run's answers
        write_json_atomic(key_file, label_key)
    return labelled


def write_summary_files(
    out: Path, cfg: HallucinationConfig, fractions: tuple[float, float], found: Findings
) -> Any:
    """Write ``label_summary.csv`` / ``.json``, ``splits.json``, ``prone_layers.json`` and (with
    ``cfg.probe``) ``probe_layers.json``; returns the label summary as a data frame."""
    import pandas as pd

    from avsslib.fs import write_csv_atomic, write_json_atomic

    summaries, prone, fold_prone = found.summaries, found.prone, found.fold_prone
    summary_df = pd.DataFrame([{"dataset": d, **s} for d, s in summaries.items()])
    write_csv_atomic(out / "label_summary.csv", summary_df)
    write_json_atomic(out / "label_summary.json", summaries)
    write_json_atomic(
        out / "splits.json",
        {
            "seed": cfg.seed,
            "fractions": list(fractions),
            "stratified_by": "label",
            "datasets": found.split_record,
        },
    )
    folds_entry = (
        None
        if cfg.folds is None
        else {
            "folds": cfg.folds,
            "seed": cfg.fold_seed,
            "prone": fold_prone,
            "fold_ids": {d: found.fold_parts[d] for d in fold_prone},
        }
    )
    write_json_atomic(
        out / "prone_layers.json",
        {
            "positions": cfg.positions,
            "eps": cfg.eps,
            "prone": prone,
            "skipped": found.skipped,
            "sparsity": found.sparsity,
            "folds": folds_entry,
        },
    )
    if cfg.probe:
        from avsslib.probe import PROBE_C

        write_json_atomic(
            out / "probe_layers.json",
            {
                "feature": "mean block output over the answer tokens (float16)",
                "c": PROBE_C,
                "cv_folds": 2,
                "rank_by": "accuracy",
                "folds": None if cfg.folds is None else {"folds": cfg.folds, "seed": cfg.fold_seed},
                "probe": found.probes,
            },
        )
    return summary_df


def run_table(found: Findings) -> list[dict[str, Any]]:
    """The run record's table: the hallucination rate of every dataset, then the accuracy of
    the best probe layer of every probed dataset."""
    summaries, probes = found.summaries, found.probes
    table_rows = [
        {
            "task": d,
            "metric": "hallucination_rate",
            "value": s["hallucination_rate"],
            "ci_low": s["ci_low"],
            "ci_high": s["ci_high"],
            "n": s["n"],
        }
        for d, s in summaries.items()
    ]
    for d, entry in probes.items():
        best = int(entry["ranking"][0])
        table_rows.append(
            {
                "task": d,
                "metric": f"probe_accuracy_layer{best}",
                "value": entry["accuracy"][best],
                "ci_low": entry["ci_low"][best],
                "ci_high": entry["ci_high"][best],
                "n": entry["n"],
            }
        )
    return table_rows


def dataset_step(
    found: Findings,
    model: Any,
    tokenizer: Any,
    cfg: HallucinationConfig,
    dataset: str,
    split: str,
    record: Any,
    families: list[str],
    out: Path,
) -> None:
    """Everything a run does with one dataset, into ``found``: label its answers, split them
    into calibration and evaluation parts, measure HSAV/HSS on the calibration part, then
    (unless the dataset has too few answers of a class) the probes and fold prone layers when
    asked and the prone layers, profile and figure of every family."""
    from avsslib.labels import label_summary, split_ids

    progress = not cfg.quiet
    fractions = (cfg.calib_fraction, 1.0 - cfg.calib_fraction)
    t0 = time.perf_counter()
    labelled = label_answers(
        model, tokenizer, cfg, dataset, split, record.model.get("state_sha256"), progress
    )
    found.timings["label_s"][dataset] = time.perf_counter() - t0
    calib_ids, eval_ids = split_ids(
        [e.id for e in labelled], fractions, cfg.seed, stratify=[e.label for e in labelled]
    )
    found.split_record[dataset] = {
        "split": split,
        "calibration": calib_ids,
        "evaluation": eval_ids,
    }
    chosen = set(calib_ids)
    calib = [e for e in labelled if e.id in chosen]
    t0 = time.perf_counter()
    hs = run_stats(model, tokenizer, calib, cfg, progress)
    found.timings["stats_s"][dataset] = time.perf_counter() - t0
    found.summaries[dataset] = {
        **label_summary(labelled, seed=cfg.seed),
        "calib_hallucinated": hs.n_hallucinated,
        "calib_truthful": hs.n_truthful,
        "calib_skipped_empty": hs.n_skipped_empty,
    }
    if min(hs.n_hallucinated, hs.n_truthful) < cfg.min_per_class:
        found.skipped[dataset] = (
            f"{hs.n_hallucinated} hallucinated and {hs.n_truthful} truthful "
            f"calibration answers; --min-per-class is {cfg.min_per_class}"
        )
        return
    if cfg.probe:
        t0 = time.perf_counter()
        found.probes[dataset] = probe_dataset(
            model,
            tokenizer,
            labelled,
            out,
            dataset,
            record,
            cfg,
            found.fold_parts.get(dataset),
            progress,
        )
        found.timings.setdefault("probe_s", {})[dataset] = time.perf_counter() - t0
    if cfg.folds is not None:
        t0 = time.perf_counter()
        found.fold_prone[dataset] = fold_prone(
            model, tokenizer, labelled, found.fold_parts[dataset], families, cfg, progress
        )
        found.timings.setdefault("folds_s", {})[dataset] = time.perf_counter() - t0
    found.prone[dataset] = {}
    for family in families:
        _prone_family(found, hs, cfg, dataset, family, out)


def _prone_family(
    found: Findings, hs: Any, cfg: HallucinationConfig, dataset: str, family: str, out: Path
) -> None:
    """The prone layers of one dataset and family from its statistics ``hs``: the profile
    (``profiles/<dataset>_<family>.csv``), the layers and their sweep, the sparsity note (once
    per dataset) and the profile figure."""
    import matplotlib.pyplot as plt

    from avsslib import plots
    from avsslib.eavss import prone_sweep
    from avsslib.fs import write_csv_atomic

    table = prone_table(hs, family, cfg)
    found.profiles[(dataset, family)] = table
    write_csv_atomic(out / "profiles" / f"{dataset}_{family}.csv", table.reset_index())
    found.prone[dataset][family] = {
        "by": table.attrs["by"],
        "k": table.attrs["k"],
        "layers": [int(i) for i in table.index[table["prone"]]],
        "sweep": prone_sweep(table, by=table.attrs["by"]),
    }
    if dataset not in found.sparsity:
        found.sparsity[dataset] = _sparsity_note(table, cfg.eps)
    plots.use_style()
    fig = plots.eavss_layer_profile(table, title=f"{dataset}, family {family}")
    plots.save(fig, out / "figures" / f"profile_{dataset}_{family}.png")
    plt.close(fig)


def prone_heatmaps(found: Findings, families: list[str], out: Path) -> None:
    """One heatmap per family over the datasets that were not skipped
    (``figures/prone_heatmap_<family>.png``)."""
    import matplotlib.pyplot as plt

    from avsslib import plots
    from avsslib.eavss import profiles_matrix

    for family in families:
        tables = {d: t for (d, f), t in found.profiles.items() if f == family}
        if tables:
            by = next(iter(tables.values())).attrs["by"]
            fig = plots.prone_heatmap(
                profiles_matrix(tables, by),
                prone={d: found.prone[d][family]["layers"] for d in tables},
                title=f"family {family}: {by} per layer",
            )
            plots.save(fig, out / "figures" / f"prone_heatmap_{family}.png")
            plt.close(fig)
