"""The hallucination pipeline: label the model's answers, then find hallucination-prone layers.

``run_hallucination(HallucinationConfig(model="smollm2-135m", datasets=("nq_open", "triviaqa"),
n=40, out=DIR))`` (the command ``avss hallucination``, whose options are the fields of
:class:`HallucinationConfig`) labels ``--n`` answers per dataset (:mod:`avsslib.labels`), splits each dataset's questions
into disjoint calibration and evaluation parts (``--calib-fraction``, stratified by label),
measures HSAV/HSS on the calibration part (:mod:`avsslib.eavss`) and writes into ``--out``:

* ``labels/<dataset>.jsonl``: one labelled answer per line (prompt, answer, label, rule,
  evidence);
* ``splits.json``: the calibration and evaluation ids of every dataset;
* ``label_summary.csv`` / ``.json``: counts and the hallucination rate with a 95% bootstrap CI,
  and how many hallucinated / truthful answers the statistics used;
* ``profiles/<dataset>_<family>.csv``: per-layer V/S of both sets, HSAV, HSS, EAVSS, AVSS_T,
  delta, prone rank and flag;
* ``prone_layers.json``: the prone layers per dataset and family (``prone[dataset][family]``:
  ``--k`` and the sweep ``{1, 2, 4, ceil(M/4)}``), the datasets skipped for too few answers of
  one class, and per dataset how real the sparsities are (``sparsity``: near-zero counts and
  the layers clamped for having none; at ``eps = 1e-5`` on answer tokens of a small model most
  layers have none, and EAVSS then ranks clamp artefacts);
* ``figures/profile_<dataset>_<family>.png`` and ``figures/prone_heatmap_<family>.png``;
* ``record.json`` and ``record.md``: the run record and its result card.

``--labels-from DIR`` reuses ``DIR/labels/<dataset>.jsonl`` instead of generating answers.

``--probe`` adds the probe control (:mod:`avsslib.probe`): every answer's mean answer-token
activation per layer (float16, ``features/<dataset>.safetensors``, not committed; reused when
the model and answers are the same), one logistic-regression probe per layer with 2-fold
cross-validated accuracy over all labelled answers (``probe/<dataset>.csv``) and
``probe_layers.json`` (``probe[dataset]``: accuracy per layer, its 95% interval, the ranking).

``--folds K`` (the k-fold protocol of :mod:`avsslib.folds`; ``--fold-seed`` as in ``avss
mitigate``): the questions of each dataset split are cut into ``K`` folds, and for each fold
``k`` the prone layers (``prone_layers.json`` ``folds.prone[dataset][family][k]``) and, with
``--probe``, the probes (``probe_layers.json`` ``probe[dataset].folds[k]``) are computed from
the labelled answers *outside* fold ``k`` only, so that a mitigation run evaluated on fold ``k``
never chose its layers with its own questions. Label every question (``--n`` = the split's
size) for the full protocol.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from avsslib.errors import ConfigError
from avsslib.models import ModelOptions, default_device, load_seeded
from avsslib.protocol import ANSWER_PROMPT

Family = Literal["P", "C"]

DATASETS: tuple[str, ...] = ("nq_open", "triviaqa", "sciq", "truthfulqa", "wikiqa")
"""The hallucination datasets, and the default of :attr:`HallucinationConfig.datasets`."""


@dataclass
class HallucinationConfig(ModelOptions):
    """Everything that shapes a hallucination run; the fields are the options of ``avss
    hallucination`` (same names, same defaults), and every one of them enters the run record.

    ``command`` is the command line recorded for the run (``None``: built from the fields)."""

    datasets: tuple[str, ...] = DATASETS
    n: int = 40
    family: tuple[str, ...] = ("P", "C")
    prone_by: Literal["default", "eavss"] = "default"
    positions: Literal["answer", "all"] = "answer"
    k: int | None = None
    calib_fraction: float = 0.5
    min_per_class: int = 2
    template: str = ANSWER_PROMPT
    chat_template: Literal["auto", "on", "off"] = "auto"
    question_guard: bool = False
    max_new_tokens: int = 32
    batch_size: int = 8
    eps: float = 1e-5
    labels_from: Path | None = None
    probe: bool = False
    folds: int | None = None
    fold_seed: int = 0
    command: str | None = field(default=None, compare=False)

    def validate(self) -> tuple[list[str], list[str]]:
        """``ConfigError`` naming the option for an impossible value; returns the datasets and
        the (upper-case) families."""
        from avsslib.eavss import FAMILIES
        from avsslib.labels import RULES

        datasets = list(self.datasets)
        families = [f.upper() for f in self.family]
        unknown = [d for d in datasets if d not in RULES]
        if not datasets or unknown:
            raise ConfigError(
                f"--datasets {','.join(self.datasets)!r}: choose among {sorted(RULES)}."
            )
        if not families or any(f not in FAMILIES for f in families):
            raise ConfigError(f"--family {','.join(self.family)!r}: choose among {FAMILIES}.")
        if not 0.0 < self.calib_fraction <= 1.0:
            raise ConfigError(f"--calib-fraction {self.calib_fraction}: must lie in (0, 1].")
        if self.min_per_class < 1:
            raise ConfigError(f"--min-per-class {self.min_per_class}: must be >= 1.")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"--folds {self.folds}: the k-fold protocol needs at least 2 folds.")
        for name in ("n", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {getattr(self, name)}: must be a positive integer."
                )
        if not self.eps > 0:
            raise ConfigError(
                f"--eps {self.eps}: the near-zero threshold must be a positive number, e.g. 1e-5."
            )
        if self.prone_by not in ("default", "eavss"):
            raise ConfigError(f"--prone-by {self.prone_by!r}: choose default or eavss.")
        if self.positions not in ("answer", "all"):
            raise ConfigError(f"--positions {self.positions!r}: choose answer or all.")
        if self.chat_template not in ("auto", "on", "off"):
            raise ConfigError(f"--chat-template {self.chat_template!r}: choose auto, on or off.")
        return datasets, families

    def describe(self) -> str:
        """An ``avss hallucination`` command line with these settings, every option explicit in the
        order the command records it (for the run record; :func:`avsslib.options.command_line`)."""
        from avsslib.options import command_line

        return command_line("hallucination", self)


@dataclass
class HallucinationResult:
    """What :func:`run_hallucination` found (everything is also in the files under ``out``).

    ``summary``: one row per dataset (counts, hallucination rate and interval); ``prone``:
    ``{dataset: {family: {"by", "k", "layers", "sweep"}}}``; ``skipped``: ``{dataset: why}``;
    ``sparsity``: per dataset, how real its sparsities are; ``probes`` and ``fold_prone``:
    with ``probe`` / ``folds``; ``record``: the run record written to ``record.json``."""

    out: Path
    summary: Any
    prone: dict[str, Any]
    skipped: dict[str, str]
    sparsity: dict[str, Any]
    probes: dict[str, Any]
    fold_prone: dict[str, Any]
    record: Any


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
    label_key = {
        "model_sha256": model_sha256,
        "split": split,
        "n": cfg.n,
        "seed": cfg.seed,
        "template": cfg.template,
        "max_new_tokens": cfg.max_new_tokens,
        "chat_template": cfg.chat_template,
        "question_guard": cfg.question_guard,
        "batch_size": cfg.batch_size,
    }
    key_file = label_file.with_suffix(".key.json")
    if cfg.labels_from is not None:
        labelled = read_labels(Path(cfg.labels_from) / "labels" / f"{dataset}.jsonl")
    elif label_file.exists() and holds_key(key_file, label_key):
        labelled = read_labels(label_file)  # resumed: same model, sample and settings
    else:
        labelled = label_dataset(
            model,
            tokenizer,
            dataset,
            split,
            n=cfg.n,
            seed=cfg.seed,
            template=cfg.template,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            chat_template=chat,
            question_guard=cfg.question_guard,
            progress=progress,
        )
    key_file.unlink(missing_ok=True)  # labels and key are never out of step
    write_labels(label_file, labelled)
    if cfg.labels_from is None:  # copied labels are not this run's answers
        write_json_atomic(key_file, label_key)
    return labelled


def run_hallucination(
    config: HallucinationConfig, *, model: Any = None, tokenizer: Any = None, load_s: float = 0.0
) -> HallucinationResult:
    """Label answers, measure HSAV/HSS and find the prone layers of every dataset of ``config``,
    writing the files of the module docstring into ``config.out``; returns what it found.

    ``model``/``tokenizer``: an already loaded model (else ``config.model`` is loaded, seeded by
    ``config.seed``). The calibration part of each dataset is a seeded, label-stratified share
    (``calib_fraction``) of its labelled answers; a dataset with fewer than ``min_per_class``
    answers of either class there is skipped (``result.skipped``). Steps, each its own helper
    below: labelling (resumed from ``labels/`` when the key file matches), statistics and
    prone layers per family, probes and folds when asked, figures, then the summary files and
    the run record. The loop over datasets stays in one function because every step of a
    dataset feeds the record of the whole run."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from avsslib import plots
    from avsslib.data import data_file_hashes, get_spec
    from avsslib.eavss import hallucination_stats, profiles_matrix, prone_sweep
    from avsslib.fs import write_csv_atomic, write_json_atomic
    from avsslib.labels import label_summary, split_ids
    from avsslib.report import RunRecord, save_record

    cfg = config
    datasets, families = cfg.validate()
    out = Path(cfg.out)
    device = default_device(cfg.device)
    if model is None or tokenizer is None:
        model, tokenizer, load_s = load_seeded(
            cfg.model,
            dtype=cfg.dtype,
            device=device,
            seed=cfg.seed,
            trust_remote_code=cfg.trust_remote_code,
            causal_for="avss hallucination",
        )
    splits = {d: get_spec(d).split_name(None) for d in datasets}
    hashes = {k: v for d in datasets for k, v in data_file_hashes(d, splits[d]).items()}
    config_dict = {
        f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "command"
    }
    config_dict.update(
        out=str(out),
        device=device,
        datasets=datasets,
        family=families,
        splits=splits,
        labels_from=str(cfg.labels_from) if cfg.labels_from else None,
    )
    record = RunRecord.start(
        cfg.command or cfg.describe(), config_dict, cfg.seed, model=model, data_files=hashes
    )
    progress = not cfg.quiet
    fractions = (cfg.calib_fraction, 1.0 - cfg.calib_fraction)
    summaries: dict[str, Any] = {}
    split_record: dict[str, Any] = {}
    prone: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    profiles: dict[tuple[str, str], Any] = {}
    sparsity: dict[str, Any] = {}
    probes: dict[str, Any] = {}
    fold_prone: dict[str, Any] = {}
    fold_parts: dict[str, list[list[str]]] = {}
    if cfg.folds is not None:
        from avsslib.data import load_dataset
        from avsslib.folds import fold_ids

        for dataset in datasets:
            every = load_dataset(dataset, splits[dataset], answerable_only=dataset == "wikiqa")
            fold_parts[dataset] = fold_ids([r.id for r in every], cfg.folds, cfg.fold_seed)
    timings: dict[str, dict[str, float]] = {"label_s": {}, "stats_s": {}}
    for dataset in datasets:
        t0 = time.perf_counter()
        labelled = label_answers(
            model,
            tokenizer,
            cfg,
            dataset,
            splits[dataset],
            record.model.get("state_sha256"),
            progress,
        )
        timings["label_s"][dataset] = time.perf_counter() - t0
        calib_ids, eval_ids = split_ids(
            [e.id for e in labelled], fractions, cfg.seed, stratify=[e.label for e in labelled]
        )
        split_record[dataset] = {
            "split": splits[dataset],
            "calibration": calib_ids,
            "evaluation": eval_ids,
        }
        chosen = set(calib_ids)
        calib = [e for e in labelled if e.id in chosen]
        t0 = time.perf_counter()
        hs = hallucination_stats(
            model,
            tokenizer,
            calib,
            positions=cfg.positions,
            batch_size=cfg.batch_size,
            eps=cfg.eps,
            progress=progress,
        )
        timings["stats_s"][dataset] = time.perf_counter() - t0
        summaries[dataset] = {
            **label_summary(labelled, seed=cfg.seed),
            "calib_hallucinated": hs.n_hallucinated,
            "calib_truthful": hs.n_truthful,
            "calib_skipped_empty": hs.n_skipped_empty,
        }
        if min(hs.n_hallucinated, hs.n_truthful) < cfg.min_per_class:
            skipped[dataset] = (
                f"{hs.n_hallucinated} hallucinated and {hs.n_truthful} truthful "
                f"calibration answers; --min-per-class is {cfg.min_per_class}"
            )
            continue
        if cfg.probe:
            t0 = time.perf_counter()
            probes[dataset] = _probe_dataset(
                model,
                tokenizer,
                labelled,
                out,
                dataset,
                record,
                cfg,
                fold_parts.get(dataset),
                progress,
            )
            timings.setdefault("probe_s", {})[dataset] = time.perf_counter() - t0
        if cfg.folds is not None:
            t0 = time.perf_counter()
            fold_prone[dataset] = _fold_prone(
                model, tokenizer, labelled, fold_parts[dataset], families, cfg, progress
            )
            timings.setdefault("folds_s", {})[dataset] = time.perf_counter() - t0
        prone[dataset] = {}
        for family in families:
            by = "eavss" if cfg.prone_by == "eavss" else None
            table = hs.scores(cast(Family, family), k=cfg.k, by=by)
            profiles[(dataset, family)] = table
            write_csv_atomic(out / "profiles" / f"{dataset}_{family}.csv", table.reset_index())
            prone[dataset][family] = {
                "by": table.attrs["by"],
                "k": table.attrs["k"],
                "layers": [int(i) for i in table.index[table["prone"]]],
                "sweep": prone_sweep(table, by=table.attrs["by"]),
            }
            if dataset not in sparsity:
                sparsity[dataset] = _sparsity_note(table, cfg.eps)
            plots.use_style()
            fig = plots.eavss_layer_profile(table, title=f"{dataset}, family {family}")
            plots.save(fig, out / "figures" / f"profile_{dataset}_{family}.png")
            plt.close(fig)

    for family in families:
        tables = {d: t for (d, f), t in profiles.items() if f == family}
        if tables:
            by = next(iter(tables.values())).attrs["by"]
            fig = plots.prone_heatmap(
                profiles_matrix(tables, by),
                prone={d: prone[d][family]["layers"] for d in tables},
                title=f"family {family}: {by} per layer",
            )
            plots.save(fig, out / "figures" / f"prone_heatmap_{family}.png")
            plt.close(fig)

    summary_df = pd.DataFrame([{"dataset": d, **s} for d, s in summaries.items()])
    write_csv_atomic(out / "label_summary.csv", summary_df)
    write_json_atomic(out / "label_summary.json", summaries)
    write_json_atomic(
        out / "splits.json",
        {
            "seed": cfg.seed,
            "fractions": list(fractions),
            "stratified_by": "label",
            "datasets": split_record,
        },
    )
    folds_entry = (
        None
        if cfg.folds is None
        else {
            "folds": cfg.folds,
            "seed": cfg.fold_seed,
            "prone": fold_prone,
            "fold_ids": {d: fold_parts[d] for d in fold_prone},
        }
    )
    write_json_atomic(
        out / "prone_layers.json",
        {
            "positions": cfg.positions,
            "eps": cfg.eps,
            "prone": prone,
            "skipped": skipped,
            "sparsity": sparsity,
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
                "probe": probes,
            },
        )
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
    record.finish(
        {
            "table": table_rows,
            "labels": summaries,
            "prone": prone,
            "skipped": skipped,
            "sparsity": sparsity,
            "probe": {d: {k: v for k, v in e.items() if k != "folds"} for d, e in probes.items()},
            "fold_prone": fold_prone,
        },
        load_model_s=load_s,
        **timings,
    )
    save_record(record, out / "record.json")
    return HallucinationResult(
        out=out,
        summary=summary_df,
        prone=prone,
        skipped=skipped,
        sparsity=sparsity,
        probes=probes,
        fold_prone=fold_prone,
        record=record,
    )


def _features(
    model: Any,
    tokenizer: Any,
    labelled: list[Any],
    out: Path,
    dataset: str,
    record: Any,
    cfg: HallucinationConfig,
    progress: bool,
) -> tuple[list[str], Any, list[str]]:
    """The answers' probe features, from ``features/<dataset>.safetensors`` when it holds the
    same answers of the same model, else computed and written there."""
    from avsslib.errors import DataError
    from avsslib.probe import answer_features, read_features, write_features

    path = out / "features" / f"{dataset}.safetensors"
    want = [e.id for e in labelled if e.answer_ids]
    labels = {e.id: e.label for e in labelled}
    answers = {e.id: list(e.answer_ids) for e in labelled}
    key = {
        "model_sha256": record.model.get("state_sha256"),
        "answers_sha256": _sha([(i, answers[i]) for i in want]),
    }
    if path.exists():
        try:
            ids, feats, _, meta = read_features(path)
            if ids == want and {k: meta.get(k) for k in key} == key:
                return ids, feats, [labels[i] for i in ids]
        except DataError:
            pass
    ids, feats = answer_features(
        model, tokenizer, labelled, batch_size=cfg.batch_size, progress=progress
    )
    write_features(path, ids, feats, [labels[i] for i in ids], {**key, "dataset": dataset})
    return ids, feats, [labels[i] for i in ids]


def _sha(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def _probe_entry(table: Any) -> dict[str, Any]:
    return {
        "accuracy": table["accuracy"].tolist(),
        "ci_low": table["ci_low"].tolist(),
        "ci_high": table["ci_high"].tolist(),
        "balanced_accuracy": table["balanced_accuracy"].tolist(),
        "ranking": [int(i) for i in table.sort_values("rank").index],
        "n": int(table["n"].iloc[0]),
        "n_hallucinated": int(table["n_hallucinated"].iloc[0]),
        "majority_rate": float(table["majority_rate"].iloc[0]),
    }


def _probe_dataset(
    model: Any,
    tokenizer: Any,
    labelled: list[Any],
    out: Path,
    dataset: str,
    record: Any,
    cfg: HallucinationConfig,
    parts: list[list[str]] | None,
    progress: bool,
) -> dict[str, Any]:
    """Probe accuracies of one dataset over all its answers (``probe/<dataset>.csv``) and, with
    folds, over the answers outside each fold."""
    import numpy as np

    from avsslib.fs import write_csv_atomic
    from avsslib.probe import probe_layers

    ids, feats, labels = _features(model, tokenizer, labelled, out, dataset, record, cfg, progress)
    table = probe_layers(feats, labels, ids, seed=cfg.seed, progress=progress)
    write_csv_atomic(out / "probe" / f"{dataset}.csv", table.reset_index())
    entry = _probe_entry(table)
    if parts is not None:
        entry["folds"] = []
        for k, part in enumerate(parts):
            inside = set(part)
            rows = np.array([i not in inside for i in ids])
            sub = probe_layers(
                feats[rows],
                [lab for lab, r in zip(labels, rows, strict=True) if r],
                [i for i, r in zip(ids, rows, strict=True) if r],
                seed=cfg.seed,
                progress=progress,
            )
            write_csv_atomic(out / "probe" / f"{dataset}_fold{k}.csv", sub.reset_index())
            entry["folds"].append({"fold": k, **_probe_entry(sub)})
    return entry


def _fold_prone(
    model: Any,
    tokenizer: Any,
    labelled: list[Any],
    parts: list[list[str]],
    families: list[str],
    cfg: HallucinationConfig,
    progress: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Per family, per fold: the prone layers from every labelled answer outside the fold."""
    from avsslib.eavss import hallucination_stats

    out: dict[str, list[dict[str, Any]]] = {f: [] for f in families}
    for k, part in enumerate(parts):
        inside = set(part)
        rest = [e for e in labelled if e.id not in inside]
        hs = hallucination_stats(
            model,
            tokenizer,
            rest,
            positions=cfg.positions,
            batch_size=cfg.batch_size,
            eps=cfg.eps,
            progress=progress,
        )
        if min(hs.n_hallucinated, hs.n_truthful) < cfg.min_per_class:
            raise ConfigError(
                f"fold {k}: {hs.n_hallucinated} hallucinated and {hs.n_truthful} "
                "truthful answers outside it; label more questions (--n)."
            )
        for family in families:
            by = "eavss" if cfg.prone_by == "eavss" else None
            table = hs.scores(cast(Family, family), k=cfg.k, by=by)
            out[family].append(
                {
                    "fold": k,
                    "by": table.attrs["by"],
                    "k": table.attrs["k"],
                    "layers": [int(i) for i in table.index[table["prone"]]],
                    "n_hallucinated": hs.n_hallucinated,
                    "n_truthful": hs.n_truthful,
                }
            )
    return out


__all__ = ["DATASETS", "HallucinationConfig", "HallucinationResult", "run_hallucination"]
