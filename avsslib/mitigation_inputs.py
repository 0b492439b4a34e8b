"""The inputs of a mitigation run (:func:`avsslib.mitigation.run_mitigation`) that need no
model: the layers to train from a file (``--layers-from``), the model's own wrong answers
(``--own-negatives``), and the evaluation and training questions with their contrastive
triples. Writes no files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avsslib.errors import ConfigError
from avsslib.options import named_values

if TYPE_CHECKING:
    from avsslib.mitigation import MitigationConfig

__all__ = ["DEFAULT_EVAL_TASKS", "layers_from_file", "read_own_negatives", "training_questions"]

DEFAULT_EVAL_TASKS: dict[str, tuple[str, ...]] = {
    "truthfulqa": ("truthfulqa_mc1", "truthfulqa_mc2"),
    "sciq_mc": ("sciq_mc",),
    "wikiqa": ("wikiqa",),
    "nq_open": ("nq_open_em",),
    "triviaqa": ("triviaqa_em",),
}
"""The evaluation tasks of each training dataset (``eval_tasks`` left empty)."""


def layers_from_file(
    path: Path, dataset: str, family: str | None = None, fold: int | None = None
) -> tuple[list[int] | None, list[float] | None, str | None]:
    """(layers, per-layer scores, score kind) from a JSON list, an object with
    ``prone_layers``/``layers``, the ``prone_layers.json`` of ``avss hallucination``
    (``prone[dataset][family]["layers"]``; with ``fold``, ``folds.prone[dataset][family][fold]``),
    its ``probe_layers.json`` (probe accuracies, kind ``probe``; with ``fold``, the fold's) or a
    layer_stats.csv (AVSS scores, kind ``avss``)."""
    if not path.is_file():
        raise ConfigError(f"--layers-from {path}: no such file.")
    if path.suffix == ".csv":
        from avsslib.study import read_layer_table

        table = read_layer_table(path)
        if "avss" not in table:
            raise ConfigError(f"--layers-from {path}: the table has no 'avss' column.")
        return None, table.sort_index()["avss"].tolist(), "avss"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise ConfigError(f"--layers-from {path}: not readable JSON ({exc}).") from exc
    if isinstance(obj, dict) and isinstance(obj.get("probe"), dict):
        return None, _probe_accuracies(path, obj["probe"], dataset, fold), "probe"
    if isinstance(obj, dict) and isinstance(obj.get("prone"), dict):
        obj = _prone_entry(path, obj, dataset, family, fold)
    if isinstance(obj, dict):
        key = next((k for k in ("prone_layers", "layers") if k in obj), None)
        if key is None:
            raise ConfigError(
                f"--layers-from {path}: the object has no 'prone_layers' or 'layers' key."
            )
        obj = obj[key]
    if not isinstance(obj, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in obj
    ):
        raise ConfigError(f"--layers-from {path}: expected a list of layer indices (integers).")
    return obj, None, None


def _probe_accuracies(
    path: Path, probe: dict[str, Any], dataset: str, fold: int | None
) -> list[float]:
    """The per-layer probe accuracies of ``dataset`` in the ``probe`` object of a
    ``probe_layers.json`` (with ``fold``, that fold's)."""
    entry = probe.get(dataset)
    if not isinstance(entry, dict):
        raise ConfigError(
            f"--layers-from {path}: no probe for dataset {dataset!r} (it has "
            f"{', '.join(probe) or 'none'})."
        )
    if fold is not None:
        folds = entry.get("folds") or []
        if fold >= len(folds):
            raise ConfigError(
                f"--layers-from {path}: no probe of fold {fold} for {dataset!r} "
                f"({len(folds)} folds); run `avss hallucination --probe --folds`."
            )
        entry = folds[fold]
    return [float(x) for x in entry["accuracy"]]


def _prone_entry(
    path: Path, obj: dict[str, Any], dataset: str, family: str | None, fold: int | None
) -> Any:
    """The entry of ``dataset`` and ``family`` (the only one when ``None``) in the ``prone``
    object of a ``prone_layers.json`` (with ``fold``, that fold's, from ``folds.prone``)."""
    source = obj["prone"]
    if fold is not None:
        source = (obj.get("folds") or {}).get("prone")
        if not isinstance(source, dict):
            raise ConfigError(
                f"--layers-from {path}: no per-fold prone layers; run `avss "
                "hallucination --folds` or drop --fold."
            )
    per_family = source.get(dataset)
    if not isinstance(per_family, dict) or not per_family:
        raise ConfigError(
            f"--layers-from {path}: no prone layers for dataset {dataset!r} "
            f"(it has {', '.join(source) or 'none'})."
        )
    if family is None and len(per_family) > 1:
        raise ConfigError(
            f"--layers-from {path}: pick a family with --prone-family ({', '.join(per_family)})."
        )
    entry = per_family.get(family) if family is not None else next(iter(per_family.values()))
    if entry is None:
        raise ConfigError(
            f"--layers-from {path}: no family {family!r} for {dataset!r} ({', '.join(per_family)})."
        )
    if fold is not None:
        if fold >= len(entry):
            raise ConfigError(f"--layers-from {path}: no fold {fold} ({len(entry)} folds).")
        entry = entry[fold]
    return entry


def read_own_negatives(path: Path | None) -> list[tuple[str, str]] | None:
    """The ``(question, answer)`` pairs of an ``--own-negatives`` JSON file (a list of
    ``[question, answer]`` pairs or of objects with those keys); ``None`` without a file."""
    if path is None:
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise ConfigError(f"--own-negatives {path}: not readable JSON ({exc}).") from exc
    out = []
    for i, row in enumerate(rows if isinstance(rows, list) else [rows]):
        pair = (
            (row.get("question"), row.get("answer"))
            if isinstance(row, dict)
            else tuple(row)
            if isinstance(row, list)
            else (None, None)
        )
        if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise ConfigError(
                f"--own-negatives {path}: entry {i} is not a [question, answer] pair "
                "of strings nor an object with 'question' and 'answer'."
            )
        out.append((pair[0], pair[1]))
    return out


def training_questions(cfg_run: MitigationConfig) -> tuple[list[str], str, set[str], list[Any]]:
    """``(tasks, split, eval_ids, triples)``: the evaluation tasks, the training split, the
    held-out evaluation question ids (a seeded sample, or one fold of every question) and the
    contrastive triples built from the other questions of the split; nothing loads a model.
    ``ConfigError`` says what to change when no question is left to train on."""
    from avsslib.data import get_spec
    from avsslib.evaluate import TASKS
    from avsslib.folds import check_fold, mitigation_questions
    from avsslib.mitigate import build_triples

    tasks = list(cfg_run.eval_tasks or DEFAULT_EVAL_TASKS.get(cfg_run.dataset, ()))
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise ConfigError(
            f"--eval-tasks: unknown or missing task(s) {unknown}; known: {', '.join(TASKS)}."
        )
    if cfg_run.n_eval < 1 or (cfg_run.n_train is not None and cfg_run.n_train < 1):
        raise ConfigError("--n-eval and --n-train must be positive.")
    split = get_spec(cfg_run.dataset).split_name(cfg_run.split)
    check_fold(cfg_run.folds, cfg_run.fold)
    # evaluation questions first (a sample, or one fold of every question), training questions
    # from the rest (before the model loads)
    sampling = ("n_eval", "eval_seed", "n_train", "seed", "folds", "fold", "fold_seed")
    eval_ids, every, records = mitigation_questions(
        cfg_run.dataset, split, tasks, **named_values(cfg_run, *sampling)
    )
    rest = [r for r in every if r.id not in eval_ids]
    if not records:
        data_spec = get_spec(cfg_run.dataset)
        eval_splits = {
            data_spec.split_name(TASKS[t].split)
            for t in tasks
            if TASKS[t].dataset == cfg_run.dataset
        }
        other = [s for s in data_spec.splits if s != split and s not in eval_splits]
        hint = " or ".join(
            ([f"train on another split (--split {other[0]})"] if other else [])
            + (["lower --n-eval"] if len(rest) < len(every) else [])
        )
        raise ConfigError(
            f"no training examples in {cfg_run.dataset}:{split}: of its {len(every)} records, "
            f"{len(every) - len(rest)} are held out for evaluation (--n-eval {cfg_run.n_eval}) and none "
            f"of the other {len(rest)} has a correct answer to train on"
            + (f"; {hint}." if hint else ".")
        )
    triples = build_triples(
        cfg_run.dataset,
        records,
        own_negatives=read_own_negatives(cfg_run.own_negatives),
        max_negatives=cfg_run.max_negatives,
        dataset_negatives=not cfg_run.no_dataset_negatives,
    )
    return tasks, split, eval_ids, triples
