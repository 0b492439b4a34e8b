"""The stages of the paper-scale pipeline (:mod:`avsslib.reproduce`) and the sizes of each
scale: which ``avss`` run each stage is, as a library configuration (what runs) and as its
command line (what ``reproduce.json`` and ``reproduce_stage.json`` record). Both are built from
one mapping of option values (:func:`stage`), so they cannot drift apart. Writes
``mitigation*/<dataset>/own_negatives.json`` (the model's own hallucinated answers, once per
dataset) while planning the mitigation stages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avsslib.errors import ConfigError
from avsslib.options import option_argv
from avsslib.protocol import MODES

#: hallucination dataset (prone layers) of each mitigation dataset
PRONE_SOURCE = {
    "truthfulqa": "truthfulqa",
    "sciq_mc": "sciq",
    "nq_open": "nq_open",
    "triviaqa": "triviaqa",
    "wikiqa": "wikiqa",
}

#: training split of a mitigation dataset where its default split cannot supply one: WikiQA's
#: test split has 243 answerable questions, all held out when ``n_eval`` >= 243. The model's own
#: hallucinated answers (labelled on the default split) do not apply to it.
TRAIN_SPLIT = {"wikiqa": "train"}

#: mitigation datasets the k-fold protocol supports: training, labelling and evaluation share
#: one split and its question ids (WikiQA trains on another split; SciQ-MC is labelled as SciQ)
FOLD_DATASETS = ("truthfulqa", "nq_open", "triviaqa")


@dataclass(frozen=True)
class Scale:
    """Sizes of one reproduction scale (see :mod:`avsslib.reproduce`). ``study``: options of
    the study beyond the driver's own (:class:`avsslib.study_config.StudyConfig` field ->
    value, e.g. ``{"n_eval": 500}``); ``extra``: the same per command (``"hallucination"``,
    ``"mitigate"``)."""

    study: dict[str, Any]
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
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def study_argv(self) -> list[str]:
        """``study`` as ``avss study`` options (``["--n-eval", "500"]``)."""
        return option_argv(self.study)


SCALES: dict[str, Scale] = {
    "ci": Scale(
        study={
            "quick": True,
            "scores": ("avss", "block_influence", "random"),
            "sweep_fractions": (0.25,),
        },
        hallucination_n=16,
        hallucination_datasets=("truthfulqa", "sciq"),
        mitigation_datasets=("truthfulqa",),
        modes=("eavss", "random"),
        seeds=(0,),
        n_train=8,
        n_eval=12,
        kl_texts=2,
        ppl_windows=1,
        extra={"mitigate": {"max_negatives": 2, "grad_accum": 1}},
    ),
    "book": Scale(
        study={"n_eval": 100, "sweep_fractions": (0.1, 0.25, 0.5)},
        hallucination_n=100,
        hallucination_datasets=("nq_open", "triviaqa", "sciq", "truthfulqa", "wikiqa"),
        mitigation_datasets=("truthfulqa",),
        n_train=200,
        n_eval=100,
        kl_texts=16,
        ppl_windows=4,
    ),
    "full": Scale(
        # 1,000 per task covers each study task's whole evaluation set in the shared/data
        # copies: SciQ 1,000, SST-2 872, TriviaQA 1,000 (a sample of 1,000 when read from the
        # hub) and WikiText-2's test split (about 600 windows of 512 tokens)
        study={"n_eval": 1000},
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
    """One run of the pipeline: its name, the equivalent ``avss`` command line (``argv``,
    recorded), the library configuration that runs it (``config``: a
    :class:`~avsslib.study_config.StudyConfig`, :class:`~avsslib.hallucination.HallucinationConfig`
    or :class:`~avsslib.mitigation.MitigationConfig`) and the file that exists once it finished."""

    name: str
    argv: list[str]
    done: Path  # exists once the stage finished
    config: Any = None

    @property
    def command(self) -> str:
        """The ``avss`` command of the stage (``study``, ``hallucination``, ``mitigate``)."""
        return self.argv[0]

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


def stage(name: str, command: str, options: Mapping[str, Any], done: Path) -> Stage:
    """The stage running ``avss <command>`` with ``options`` (field name -> value, in the order
    of the recorded command line): its argv and its configuration come from the same values."""
    from avsslib.hallucination import HallucinationConfig
    from avsslib.mitigation import MitigationConfig
    from avsslib.study_config import StudyConfig

    kind = {"study": StudyConfig, "hallucination": HallucinationConfig}.get(
        command, MitigationConfig
    )
    return Stage(name, [command, *option_argv(options)], done, kind(**options))


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


def _common(model: str, device: str | None, dtype: str) -> dict[str, Any]:
    return {"model": str(model), "dtype": dtype, "device": device}


def plan(model: str, results: Path, scale: Scale, *, device: str | None, dtype: str) -> list[Stage]:
    """The study and hallucination stages (the mitigation stages depend on their output and are
    planned by :func:`mitigation_stages` once they exist)."""
    root = results / model_slug(model)
    common = _common(model, device, dtype)
    extra = scale.extra.get("hallucination", {})
    study_options = {
        **common,
        "out": root / "avss",
        "quiet": True,
        "batch_size": scale.batch_size,
        "seed": STUDY_SEED,
        **scale.study,
    }
    labelling = {
        "datasets": tuple(scale.hallucination_datasets),
        "n": scale.hallucination_n,
        "batch_size": scale.batch_size,
    }
    stages = [
        stage("study", "study", study_options, root / "avss" / "record.json"),
        stage(
            "hallucination",
            "hallucination",
            {**common, "out": root / "eavss", "quiet": True, **labelling, **extra},
            root / "eavss" / "record.json",
        ),
    ]
    if "probe" in scale.modes and scale.folds is None:
        options = {
            **common,
            "out": root / "probe",
            "quiet": True,
            **labelling,
            "labels_from": root / "eavss",
            "probe": True,
            **extra,
        }
        stages.append(
            stage("hallucination probe", "hallucination", options, root / "probe" / "record.json")
        )
    if scale.folds is not None:
        sources = _fold_sources(scale)
        folder = root / f"eavss-{scale.folds}fold"
        options = {
            **common,
            "out": folder,
            "quiet": True,
            "datasets": tuple(sources),
            "n": max(len(_all_ids(d)) for d in sources),
            "batch_size": scale.batch_size,
            "folds": scale.folds,
            "fold_seed": scale.fold_seed,
            "probe": "probe" in scale.modes,
            **extra,
        }
        stages.append(
            stage("hallucination folds", "hallucination", options, folder / "record.json")
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


def _layer_options(
    mode: str, k: int, eavss: Mapping[str, Any], probe_layers: Path, avss_stats: Path
) -> dict[str, Any]:
    """The layer options of one mitigation run of ``mode``: ``eavss`` the options naming the
    prone layers; ``random``, ``avss`` and ``probe`` train ``k`` layers (as many as are prone),
    the last two ranked by ``avss_stats`` / ``probe_layers``; ``full`` trains them all."""
    if mode == "eavss":
        return {**eavss, "full_params": True}
    if mode == "random":
        return {"k": k, "full_params": True}
    if mode in ("avss", "probe"):
        ranked = avss_stats if mode == "avss" else probe_layers
        return {"layers_from": ranked, "k": k, "full_params": True}
    return {}


def _resume(out: Path) -> dict[str, Any]:
    """``resume`` when a run left a checkpoint, or trained layers without metrics."""
    if (out / "checkpoint.pt").exists() or (
        (out / "trained_layers.json").exists() and not (out / "metrics.json").exists()
    ):
        return {"resume": True}
    return {}


def mitigation_stages(
    model: str, results: Path, scale: Scale, *, device: str | None, dtype: str
) -> list[Stage]:
    """The mitigation runs, seed-major (every mode of seed 0 first): one per seed, dataset and
    mode, trained on the prone layers of the hallucination stage (or the k-fold protocol's)."""
    root = results / model_slug(model)
    common = _common(model, device, dtype)
    if scale.folds is not None:
        return _fold_stages(root, scale, common)
    stages = []
    for seed in scale.seeds:
        for dataset in scale.mitigation_datasets:
            prone = _prone_layers(root / "eavss", dataset, scale.family, None)
            # the labels are of the default split: no own answers for another training split
            negatives = (
                None
                if dataset in TRAIN_SPLIT
                else _own_negatives(
                    root / "eavss", dataset, root / "mitigation" / dataset / "own_negatives.json"
                )
            )
            for mode in scale.modes:
                out = root / "mitigation" / dataset / f"{mode}-seed{seed}"
                options = {
                    **common,
                    "dataset": dataset,
                    "mode": mode,
                    "seed": seed,
                    "n_train": scale.n_train,
                    "n_eval": scale.n_eval,
                    "eval_batch_size": scale.batch_size,
                    "kl_texts": scale.kl_texts,
                    "ppl_windows": scale.ppl_windows,
                    "out": out,
                    **scale.extra.get("mitigate", {}),
                    "split": TRAIN_SPLIT.get(dataset),
                    **_layer_options(
                        mode,
                        len(prone),
                        {"layers": tuple(prone)},
                        root / "probe" / "probe_layers.json",
                        root / "avss" / "layer_stats.csv",
                    ),
                    "own_negatives": negatives,
                    **_resume(out),
                }
                name = f"mitigate {dataset} {mode} seed {seed}"
                stages.append(stage(name, "mitigate", options, out / "metrics.json"))
    return stages


def _fold_stages(root: Path, scale: Scale, common: Mapping[str, Any]) -> list[Stage]:
    """The k-fold protocol's mitigation runs: per seed, dataset, fold and mode one ``avss
    mitigate --folds K --fold k`` run, its layers chosen outside fold ``k``."""
    from avsslib.folds import mitigation_folder

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
            folder = root / mitigation_folder(scale.folds) / dataset
            negatives = _own_negatives(eavss, dataset, folder / "own_negatives.json")
            prone = {"layers_from": eavss / "prone_layers.json", "prone_family": scale.family}
            for fold in range(scale.folds):
                k = len(entries[fold]["layers"])
                for mode in scale.modes:
                    out = folder / f"{mode}-seed{seed}-fold{fold}"
                    options = {
                        **common,
                        "dataset": dataset,
                        "mode": mode,
                        "seed": seed,
                        "folds": scale.folds,
                        "fold": fold,
                        "fold_seed": scale.fold_seed,
                        "eval_batch_size": scale.batch_size,
                        "kl_texts": scale.kl_texts,
                        "ppl_windows": scale.ppl_windows,
                        "out": out,
                        **scale.extra.get("mitigate", {}),
                        **_layer_options(
                            mode,
                            k,
                            prone,
                            eavss / "probe_layers.json",
                            root / "avss" / "layer_stats.csv",
                        ),
                        # matched to training questions only
                        "own_negatives": negatives,
                        **_resume(out),
                    }
                    name = f"mitigate {dataset} {mode} seed {seed} fold {fold}"
                    stages.append(stage(name, "mitigate", options, out / "metrics.json"))
    return stages
