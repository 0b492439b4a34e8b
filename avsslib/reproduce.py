"""The paper-scale pipeline of one model, resumable: AVSS study, hallucination-prone layers,
contrastive mitigation with its ablations over seeds, and the summary tables the book reads.

Every stage is one ``avss`` command (the same code a user runs by hand) writing into
``results/<model>/``::

    avss/                              avss study (scores, selections, evaluation, retention)
    eavss/                             avss hallucination (labels, HSAV/HSS/EAVSS, prone layers)
    mitigation/<dataset>/<mode>-seed<k>/   avss mitigate (one run per dataset, mode and seed)
    mitigation/summary.csv             one row per dataset, mode, seed, task and metric
    mitigation/summary_modes.csv       the same averaged over seeds (mean, sd, min, max)
    probe/                             avss hallucination --probe on eavss/'s labels (mode probe)
    eavss-<K>fold/                     avss hallucination --folds K --probe on every question
    mitigation-<K>fold/<dataset>/<mode>-seed<s>-fold<k>/   the k-fold protocol (--folds K)
    mitigation-<K>fold/<dataset>/pooled_scores.csv, modes_vs_random.csv   its pooled comparison
    reproduce.json                     what ran, what was skipped, wall times, the device

With ``folds`` (``avss reproduce --folds 2``) the mitigation stage runs the k-fold protocol of
:mod:`avsslib.folds` instead: every question of the evaluation task is evaluated once, by runs
trained on the other folds with layers chosen from the answers outside the evaluated fold.

A stage whose finished marker exists (``record.json``; ``metrics.json`` for mitigation runs) is
skipped, so an interrupted run continues where it stopped (the study also resumes inside
itself, and a mitigation run with a checkpoint continues from it). Stages run in an order that
gives whole comparisons early: all modes of seed 0, then seed 1, ...

Scales (:data:`SCALES`): ``ci`` is a smoke run of minutes on a CPU; ``book`` the sizes of the
committed CPU runs; ``full`` the GPU sizes (evaluation sets capped at ``n_eval`` examples).
"""

from __future__ import annotations

import gc
import json
import math
import platform
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from avsslib.errors import ConfigError
from avsslib.protocol import MODES

#: hallucination dataset (prone layers) of each mitigation dataset
PRONE_SOURCE = {
    "truthfulqa": "truthfulqa",
    "sciq_mc": "sciq",
    "nq_open": "nq_open",
    "triviaqa": "triviaqa",
    "wikiqa": "wikiqa",
}

#: relative changes of metrics whose base value is below this are not compared with the paper's
#: 12% (1 -> 3 correct answers of 300 is +200%); the book shows their absolute changes only
RELATIVE_BASE_FLOOR = 0.05

#: training split of a mitigation dataset where its default split cannot supply one: WikiQA's
#: test split has 243 answerable questions, all held out when ``n_eval`` >= 243. The model's own
#: hallucinated answers (labelled on the default split) do not apply to it.
TRAIN_SPLIT = {"wikiqa": "train"}

#: mitigation datasets the k-fold protocol supports: training, labelling and evaluation share
#: one split and its question ids (WikiQA trains on another split; SciQ-MC is labelled as SciQ)
FOLD_DATASETS = ("truthfulqa", "nq_open", "triviaqa")


@dataclass(frozen=True)
class Scale:
    """Sizes of one reproduction scale (see the module docstring)."""

    study: tuple[str, ...]  # extra ``avss study`` arguments
    hallucination_n: int
    hallucination_datasets: tuple[str, ...]
    mitigation_datasets: tuple[str, ...]
    modes: tuple[str, ...] = MODES
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 400
    n_eval: int = 200
    kl_texts: int = 32
    ppl_windows: int = 8
    family: str = "P"
    batch_size: int = 8
    keep_weights: bool = True  # False: delete trained weights once evaluated
    folds: int | None = None  # k-fold protocol (avsslib.folds) instead
    fold_seed: int = 0
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)


SCALES: dict[str, Scale] = {
    "ci": Scale(
        study=("--quick", "--scores", "avss,block_influence,random", "--sweep-fractions", "0.25"),
        hallucination_n=16,
        hallucination_datasets=("truthfulqa", "sciq"),
        mitigation_datasets=("truthfulqa",),
        modes=("eavss", "random"),
        seeds=(0,),
        n_train=8,
        n_eval=12,
        kl_texts=2,
        ppl_windows=1,
        extra={"mitigate": ("--max-negatives", "2", "--grad-accum", "1")},
    ),
    "book": Scale(
        study=("--n-eval", "100", "--sweep-fractions", "0.1,0.25,0.5"),
        hallucination_n=100,
        hallucination_datasets=("nq_open", "triviaqa", "sciq", "truthfulqa", "wikiqa"),
        mitigation_datasets=("truthfulqa",),
        n_train=200,
        n_eval=100,
        kl_texts=16,
        ppl_windows=4,
    ),
    "full": Scale(
        study=("--n-eval", "500"),
        hallucination_n=400,
        hallucination_datasets=("nq_open", "triviaqa", "sciq", "truthfulqa", "wikiqa"),
        mitigation_datasets=("truthfulqa", "sciq_mc"),
        n_train=400,
        n_eval=300,
        batch_size=32,
    ),
}


def model_slug(model: str) -> str:
    """The results directory name of a model (zoo name, or the last part of a path / hub id)."""
    return Path(str(model).rstrip("/")).name.replace(" ", "_") or "model"


STUDY_SEED = 42
"""The seed of the pruning-study stage (random layers, harness sampling): the committed studies
ran with it."""

STAGE_SETTINGS = "reproduce_stage.json"
"""Written beside a finished stage's marker: the ``avss`` arguments it ran with."""


@dataclass
class Stage:
    name: str
    argv: list[str]
    done: Path  # exists once the stage finished

    @property
    def settings(self) -> list[str]:
        """The arguments that define the result: all but ``--resume`` and ``--device`` (how
        and where it runs; the run record keeps the device)."""
        out, skip = [], False
        for a in self.argv:
            if skip:
                skip = False
            elif a == "--device":
                skip = True
            elif a != "--resume":
                out.append(a)
        return out

    def is_done(self) -> bool:
        """Finished, with the same settings; a finished stage run with other settings is an
        error (its results would be mixed with this run's), not something to skip silently."""
        if not self.done.exists():
            return False
        path = self.done.parent / STAGE_SETTINGS
        try:
            before = json.loads(path.read_text(encoding="utf-8"))["argv"]
        except (OSError, KeyError, ValueError):
            return True  # finished before settings were recorded
        if before != self.settings:
            changed = [f"{k} {b} -> {c}" for k, b, c in _pairs(before, self.settings) if b != c]
            raise ConfigError(
                f"stage {self.name!r} already finished in {self.done.parent} with other settings "
                f"(differing: {', '.join(changed) or 'argument order'}). Use another --results "
                f"directory, or delete {self.done.parent} to redo it with the new settings."
            )
        return True

    def mark_done(self) -> None:
        from avsslib.fs import write_json_atomic

        write_json_atomic(
            self.done.parent / STAGE_SETTINGS, {"stage": self.name, "argv": self.settings}
        )


def _pairs(a: list[str], b: list[str]) -> list[tuple[str, str | None, str | None]]:
    """(option, value in a, value in b) for every ``--option [value]`` of either list (the
    value ``None`` for a flag, ``"absent"`` for an option the list lacks)."""

    def values(argv: list[str]) -> dict[str, str | None]:
        return {
            x: (argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None)
            for i, x in enumerate(argv)
            if x.startswith("--")
        }

    va, vb = values(a), values(b)
    return [(k, va.get(k, "absent"), vb.get(k, "absent")) for k in sorted(set(va) | set(vb))]


def _prone_layers(eavss_dir: Path, dataset: str, family: str, n_layers: int | None) -> list[int]:
    path = eavss_dir / "prone_layers.json"
    try:
        prone = json.loads(path.read_text(encoding="utf-8"))["prone"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path}: no prone layers to train ({exc}); run the hallucination stage first."
        ) from exc
    source = PRONE_SOURCE.get(dataset, dataset)
    entry = prone.get(source, {}).get(family)
    if not entry:
        raise ConfigError(
            f"{path}: no prone layers for dataset {source!r} family {family!r} "
            f"(it has {sorted(prone)}): too few truthful or hallucinated answers? "
            "Raise the hallucination n or drop this mitigation dataset."
        )
    return [int(x) for x in entry["layers"]]


def _own_negatives(eavss_dir: Path, dataset: str, out: Path) -> Path | None:
    """The model's own hallucinated answers of ``dataset`` as ``[[question, answer], ...]``."""
    from avsslib.labels import read_labels

    path = eavss_dir / "labels" / f"{PRONE_SOURCE.get(dataset, dataset)}.jsonl"
    if not path.exists():
        return None
    if out.exists():  # written once per dataset: finished runs refer to it
        return out
    pairs = [[e.question, e.answer] for e in read_labels(path) if e.label == "hallucinated"]
    if not pairs:
        return None
    from avsslib.fs import write_json_atomic

    write_json_atomic(out, pairs)
    return out


def plan(model: str, results: Path, scale: Scale, *, device: str | None, dtype: str) -> list[Stage]:
    """The study and hallucination stages (the mitigation stages depend on their output and are
    planned by :func:`mitigation_stages` once they exist)."""
    root = results / model_slug(model)
    common = ["--model", str(model), "--dtype", dtype] + (["--device", device] if device else [])
    study = Stage(
        "study",
        [
            "study",
            *common,
            "--out",
            str(root / "avss"),
            "--quiet",
            "--batch-size",
            str(scale.batch_size),
            "--seed",
            str(STUDY_SEED),
            *scale.study,
        ],
        root / "avss" / "record.json",
    )
    hall = Stage(
        "hallucination",
        [
            "hallucination",
            *common,
            "--out",
            str(root / "eavss"),
            "--quiet",
            "--datasets",
            ",".join(scale.hallucination_datasets),
            "--n",
            str(scale.hallucination_n),
            "--batch-size",
            str(scale.batch_size),
            *scale.extra.get("hallucination", ()),
        ],
        root / "eavss" / "record.json",
    )
    stages = [study, hall]
    if "probe" in scale.modes and scale.folds is None:
        stages.append(
            Stage(
                "hallucination probe",
                [
                    "hallucination",
                    *common,
                    "--out",
                    str(root / "probe"),
                    "--quiet",
                    "--datasets",
                    ",".join(scale.hallucination_datasets),
                    "--n",
                    str(scale.hallucination_n),
                    "--batch-size",
                    str(scale.batch_size),
                    "--labels-from",
                    str(root / "eavss"),
                    "--probe",
                    *scale.extra.get("hallucination", ()),
                ],
                root / "probe" / "record.json",
            )
        )
    if scale.folds is not None:
        sources = _fold_sources(scale)
        n_all = max(len(_all_ids(d)) for d in sources)
        folder = root / f"eavss-{scale.folds}fold"
        stages.append(
            Stage(
                "hallucination folds",
                [
                    "hallucination",
                    *common,
                    "--out",
                    str(folder),
                    "--quiet",
                    "--datasets",
                    ",".join(sources),
                    "--n",
                    str(n_all),
                    "--batch-size",
                    str(scale.batch_size),
                    "--folds",
                    str(scale.folds),
                    "--fold-seed",
                    str(scale.fold_seed),
                    *(["--probe"] if "probe" in scale.modes else []),
                    *scale.extra.get("hallucination", ()),
                ],
                folder / "record.json",
            )
        )
    return stages


def _fold_sources(scale: Scale) -> list[str]:
    bad = [d for d in scale.mitigation_datasets if d not in FOLD_DATASETS]
    if bad:
        raise ConfigError(
            f"the k-fold protocol supports the mitigation datasets "
            f"{', '.join(FOLD_DATASETS)}, not {', '.join(bad)}; narrow "
            "--mitigation-datasets."
        )
    return sorted({PRONE_SOURCE[d] for d in scale.mitigation_datasets})


def _all_ids(dataset: str) -> list[str]:
    from avsslib.data import get_spec, load_dataset

    return [r.id for r in load_dataset(dataset, get_spec(dataset).split_name(None))]


def _layer_args(
    mode: str, k: int, eavss: list[str], probe_layers: Path, avss_stats: Path
) -> list[str]:
    """The layer options of one ``avss mitigate`` run of ``mode``: ``eavss`` the options naming
    the prone layers; ``random``, ``avss`` and ``probe`` train ``k`` layers (as many as are
    prone), the last two ranked by ``avss_stats`` / ``probe_layers``; ``full`` trains them all."""
    if mode == "eavss":
        return [*eavss, "--full-params"]
    if mode == "random":
        return ["--k", str(k), "--full-params"]
    if mode in ("avss", "probe"):
        ranked = avss_stats if mode == "avss" else probe_layers
        return ["--layers-from", str(ranked), "--k", str(k), "--full-params"]
    return []


def mitigation_stages(
    model: str, results: Path, scale: Scale, *, device: str | None, dtype: str
) -> list[Stage]:
    root = results / model_slug(model)
    common = ["--model", str(model), "--dtype", dtype] + (["--device", device] if device else [])
    if scale.folds is not None:
        return _fold_stages(root, scale, common)
    stages = []
    for seed in scale.seeds:
        for dataset in scale.mitigation_datasets:
            prone = _prone_layers(root / "eavss", dataset, scale.family, None)
            for mode in scale.modes:
                out = root / "mitigation" / dataset / f"{mode}-seed{seed}"
                argv = [
                    "mitigate",
                    *common,
                    "--dataset",
                    dataset,
                    "--mode",
                    mode,
                    "--seed",
                    str(seed),
                    "--n-train",
                    str(scale.n_train),
                    "--n-eval",
                    str(scale.n_eval),
                    "--eval-batch-size",
                    str(scale.batch_size),
                    "--kl-texts",
                    str(scale.kl_texts),
                    "--ppl-windows",
                    str(scale.ppl_windows),
                    "--out",
                    str(out),
                    *scale.extra.get("mitigate", ()),
                ]
                if dataset in TRAIN_SPLIT:
                    argv += ["--split", TRAIN_SPLIT[dataset]]
                argv += _layer_args(
                    mode,
                    len(prone),
                    ["--layers", ",".join(map(str, prone))],
                    root / "probe" / "probe_layers.json",
                    root / "avss" / "layer_stats.csv",
                )
                # the labels are of the default split: no own answers for another training split
                negatives = (
                    None
                    if dataset in TRAIN_SPLIT
                    else _own_negatives(
                        root / "eavss",
                        dataset,
                        root / "mitigation" / dataset / "own_negatives.json",
                    )
                )
                if negatives is not None:
                    argv += ["--own-negatives", str(negatives)]
                if (out / "checkpoint.pt").exists() or (
                    (out / "trained_layers.json").exists() and not (out / "metrics.json").exists()
                ):
                    argv.append("--resume")
                stages.append(
                    Stage(f"mitigate {dataset} {mode} seed {seed}", argv, out / "metrics.json")
                )
    return stages


def _fold_stages(root: Path, scale: Scale, common: list[str]) -> list[Stage]:
    """The k-fold protocol's mitigation runs: per seed, dataset, fold and mode one ``avss
    mitigate --folds K --fold k`` run, its layers chosen outside fold ``k``."""
    assert scale.folds is not None
    _fold_sources(scale)
    eavss = root / f"eavss-{scale.folds}fold"
    try:
        folds = json.loads((eavss / "prone_layers.json").read_text(encoding="utf-8"))["folds"][
            "prone"
        ]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{eavss}/prone_layers.json: no per-fold prone layers ({exc}); run the "
            "hallucination stage with --folds first."
        ) from exc
    stages = []
    for seed in scale.seeds:
        for dataset in scale.mitigation_datasets:
            source = PRONE_SOURCE[dataset]
            entries = folds.get(source, {}).get(scale.family)
            if not entries:
                raise ConfigError(
                    f"{eavss}/prone_layers.json: no per-fold prone layers for "
                    f"{source!r} family {scale.family!r}."
                )
            negatives = _own_negatives(
                eavss,
                dataset,
                root / f"mitigation-{scale.folds}fold" / dataset / "own_negatives.json",
            )
            for fold in range(scale.folds):
                k = len(entries[fold]["layers"])
                for mode in scale.modes:
                    out = (
                        root
                        / f"mitigation-{scale.folds}fold"
                        / dataset
                        / f"{mode}-seed{seed}-fold{fold}"
                    )
                    argv = [
                        "mitigate",
                        *common,
                        "--dataset",
                        dataset,
                        "--mode",
                        mode,
                        "--seed",
                        str(seed),
                        "--folds",
                        str(scale.folds),
                        "--fold",
                        str(fold),
                        "--fold-seed",
                        str(scale.fold_seed),
                        "--eval-batch-size",
                        str(scale.batch_size),
                        "--kl-texts",
                        str(scale.kl_texts),
                        "--ppl-windows",
                        str(scale.ppl_windows),
                        "--out",
                        str(out),
                        *scale.extra.get("mitigate", ()),
                    ]
                    argv += _layer_args(
                        mode,
                        k,
                        [
                            "--layers-from",
                            str(eavss / "prone_layers.json"),
                            "--prone-family",
                            scale.family,
                        ],
                        eavss / "probe_layers.json",
                        root / "avss" / "layer_stats.csv",
                    )
                    if negatives is not None:  # matched to training questions only
                        argv += ["--own-negatives", str(negatives)]
                    if (out / "checkpoint.pt").exists() or (
                        (out / "trained_layers.json").exists()
                        and not (out / "metrics.json").exists()
                    ):
                        argv.append("--resume")
                    stages.append(
                        Stage(
                            f"mitigate {dataset} {mode} seed {seed} fold {fold}",
                            argv,
                            out / "metrics.json",
                        )
                    )
    return stages


def summarise_folds(root: Path, folds: int, *, n_boot: int = 2000) -> pd.DataFrame | None:
    """For each dataset of ``mitigation-<folds>fold``: pool the folds of every mode and seed
    whose ``folds`` runs all finished (:func:`avsslib.beyond.fold_runs`), write
    ``pooled_scores.csv`` (mean before/after per mode, seed, task, metric over all questions)
    and ``modes_vs_random.csv`` (:func:`avsslib.folds.compare_modes`); returns the last
    comparison (``None`` when nothing is complete)."""
    from avsslib.beyond import fold_runs
    from avsslib.folds import compare_modes
    from avsslib.fs import write_csv_atomic

    result = None
    for folder in sorted((root / f"mitigation-{folds}fold").glob("*/")):
        pooled = fold_runs(folder, folds)
        if pooled.empty:
            continue
        means = (
            pooled.groupby(["mode", "seed", "task", "metric"])
            .agg(n=("id", "size"), before=("before", "mean"), after=("after", "mean"))
            .reset_index()
        )
        means.insert(0, "dataset", folder.name)
        means.insert(0, "model", root.name)
        write_csv_atomic(folder / "pooled_scores.csv", means)
        if "random" in set(pooled["mode"]):
            result = compare_modes(pooled, n_boot=n_boot)
            result.insert(0, "dataset", folder.name)
            result.insert(0, "model", root.name)
            write_csv_atomic(folder / "modes_vs_random.csv", result)
    return result


def summarise(root: Path) -> pd.DataFrame | None:
    """``mitigation/summary.csv`` (every finished run's change table with dataset, mode and
    seed) and ``summary_modes.csv`` (mean, sd, min and max over seeds); the first frame."""
    from avsslib.fs import write_csv_atomic

    rows = []
    for metrics in sorted((root / "mitigation").glob("*/*-seed*/metrics.json")):
        match = re.fullmatch(r"(.+)-seed(\d+)", metrics.parent.name)
        if match is None:  # e.g. a renamed copy "eavss-seed0-old": not a run of ours
            continue
        mode, seed = match.groups()
        data = json.loads(metrics.read_text(encoding="utf-8"))
        effects = data.get("side_effects", {})
        kl = effects.get("kl_to_base", {}).get("value", math.nan)
        ppl_ratio = effects.get("perplexity", {}).get("ratio_tuned_to_base", math.nan)
        for r in data["change"]:
            rows.append(
                {
                    "model": root.name,
                    "dataset": metrics.parent.parent.name,
                    "mode": mode,
                    "seed": int(seed),
                    **{
                        k: r[k]
                        for k in (
                            "task",
                            "metric",
                            "before",
                            "after",
                            "delta_abs",
                            "delta_rel",
                            "abs_ci_low",
                            "abs_ci_high",
                            "rel_ci_low",
                            "rel_ci_high",
                            "n",
                        )
                    },
                    "kl_to_base": kl,
                    "ppl_ratio": ppl_ratio,
                    "layers": " ".join(map(str, data["training"]["layers"] or [])),
                }
            )
    if not rows:
        return None
    frame = pd.DataFrame(rows).sort_values(["dataset", "task", "metric", "mode", "seed"])
    write_csv_atomic(root / "mitigation" / "summary.csv", frame)
    keys = ["model", "dataset", "task", "metric", "mode"]
    agg = (
        frame.groupby(keys, sort=True)
        .agg(
            seeds=("seed", "nunique"),
            before=("before", "mean"),
            after_mean=("after", "mean"),
            delta_abs_mean=("delta_abs", "mean"),
            delta_abs_sd=("delta_abs", "std"),
            delta_abs_min=("delta_abs", "min"),
            delta_abs_max=("delta_abs", "max"),
            delta_rel_mean=("delta_rel", "mean"),
            kl_to_base_mean=("kl_to_base", "mean"),
            ppl_ratio_mean=("ppl_ratio", "mean"),
        )
        .reset_index()
    )
    write_csv_atomic(root / "mitigation" / "summary_modes.csv", agg)
    return frame


def _device_name(device: str | None) -> str:
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return str(device)  # the stage itself will say that CUDA is missing
        return torch.cuda.get_device_name(torch.device(device or "cuda").index or 0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def reproduce(
    model: str,
    results: Path,
    scale: str | Scale = "full",
    *,
    device: str | None = None,
    dtype: str = "float32",
    stages: tuple[str, ...] = ("study", "hallucination", "mitigation"),
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the pipeline of ``model`` into ``results/<model>``; returns the log."""
    from avsslib.cli import main as avss
    from avsslib.fs import write_json_atomic

    if isinstance(scale, str):
        if scale not in SCALES:
            raise ConfigError(f"scale {scale!r}: choose among {', '.join(SCALES)}.")
        name, scale = scale, SCALES[scale]
    else:
        name = "custom"
    if overrides:
        scale = replace(scale, **overrides)
    unknown = [s for s in stages if s not in ("study", "hallucination", "mitigation")]
    if unknown:
        raise ConfigError(f"stages {unknown}: choose among study, hallucination, mitigation.")
    root = results / model_slug(model)
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "reproduce.json"
    meta = {"model": str(model), "scale": name, "device": _device_name(device), "dtype": dtype}

    def note(stage: str, entry: dict[str, Any], *, keep: bool = False) -> None:
        """Merge one stage's entry into reproduce.json under a (waiting) lock: several processes
        may share it (e.g. the study and the mitigation of one model run side by side)."""
        from avsslib.fs import file_lock

        with file_lock(root / ".reproduce.lock"):
            _note(stage, entry, keep)

    def _note(stage: str, entry: dict[str, Any], keep: bool) -> None:
        current = json.loads(log_path.read_text(encoding="utf-8")) if log_path.exists() else {}
        if current.get("model", str(model)) != str(model):
            raise ConfigError(
                f"{root} holds the results of {current['model']!r}, not of "
                f"{str(model)!r} (both map to the folder {root.name!r}); choose "
                "another --results directory."
            )
        for key, value in meta.items():  # the first run's values stay; each stage has its own
            current.setdefault(key, value)
        current["devices"] = sorted({*current.get("devices", [current["device"]]), meta["device"]})
        stages_log = current.setdefault("stages", {})
        if keep and stage in stages_log:
            return
        ran_here = {} if keep else {"device": meta["device"], "scale": name}
        stages_log[stage] = {**stages_log.get(stage, {}), **entry, **ran_here}
        write_json_atomic(log_path, current)
        log["stages"][stage] = stages_log[stage]

    log: dict[str, Any] = {**meta, "stages": {}}

    def run(stage: Stage, i: int, n: int) -> None:
        if stage.is_done():
            note(stage.name, {"status": "done"}, keep=True)
            if progress:
                print(f"[{i}/{n}] {stage.name}: already done", flush=True)
            return
        if stage.argv[0] == "mitigate":
            _share_baseline(stage.done.parent)
        if progress:
            print(f"[{i}/{n}] {stage.name}: avss {' '.join(stage.argv)}", flush=True)
        t0 = time.perf_counter()
        code = 1
        try:
            code = avss(stage.argv)
        finally:
            wall = time.perf_counter() - t0
            note(
                stage.name,
                {
                    "status": "done" if code == 0 else f"failed ({code})",
                    "wall_s": round(wall, 1),
                    "argv": stage.argv,
                },
            )
            _free_memory()
        if code == 130:
            raise KeyboardInterrupt
        if code == 0:
            stage.mark_done()
        if code != 0:
            raise ConfigError(
                f"stage {stage.name!r} failed with exit status {code}; its output "
                f"is above. Rerun the same command to resume after fixing it."
            )
        if not scale.keep_weights and stage.argv[0] == "mitigate":
            out = stage.done.parent  # metrics.json written: the weights are not needed
            for name in ("trained_layers.safetensors", "checkpoint.pt"):
                (out / name).unlink(missing_ok=True)
            note(stage.name, {"weights": "deleted (--drop-weights)"})
        if progress:
            print(f"[{i}/{n}] {stage.name}: done in {wall:.0f} s", flush=True)

    first = [
        s
        for s in plan(model, results, scale, device=device, dtype=dtype)
        if s.name.split()[0] in stages
    ]
    for i, stage in enumerate(first, 1):
        run(stage, i, len(first))
    if "mitigation" in stages:
        later = mitigation_stages(model, results, scale, device=device, dtype=dtype)
        for i, stage in enumerate(later, 1):
            run(stage, i, len(later))
            if scale.folds is None:
                summarise(root)
            else:
                summarise_folds(root, scale.folds)
    if scale.folds is None:
        summarise(root)
    else:
        summarise_folds(root, scale.folds)
    return log


def _share_baseline(out: Path) -> None:
    """Give a mitigation run the base model's evaluation of a sibling run (same dataset), so it
    is computed once per dataset, not once per mode and seed. ``avss mitigate`` reuses it only
    when its key (model hash, tasks, n, evaluation seed, batch size) matches, else recomputes."""
    from avsslib.fs import write_bytes_atomic

    if (out / "before.json").exists():
        return
    for sibling in sorted(out.parent.glob("*-seed*/before.json")):
        write_bytes_atomic(out / "before.json", sibling.read_bytes())
        return


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
