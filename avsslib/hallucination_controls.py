"""The two controls of a hallucination run beside the prone layers: the linear probe of every
layer (:mod:`avsslib.probe`) over a dataset's labelled answers, and the k-fold protocol
(:mod:`avsslib.folds`), prone layers and probes from the answers outside each fold.

Files written into the run's folder: ``features/<dataset>.safetensors`` (the answers' probe
features, reused when the same model gave the same answers) and ``probe/<dataset>.csv`` (with
folds also ``probe/<dataset>_fold<k>.csv``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from avsslib.errors import ConfigError

if TYPE_CHECKING:
    from avsslib.hallucination import HallucinationConfig

Family = Literal["P", "C"]

__all__ = ["Family", "fold_parts", "fold_prone", "probe_dataset", "prone_table", "run_stats"]


def run_stats(
    model: Any, tokenizer: Any, answers: list[Any], cfg: HallucinationConfig, progress: bool
) -> Any:
    """HSAV/HSS of labelled ``answers`` (:func:`avsslib.eavss.hallucination_stats`) with the
    run's positions, batch size and near-zero threshold."""
    from avsslib.eavss import hallucination_stats

    return hallucination_stats(
        model,
        tokenizer,
        answers,
        positions=cfg.positions,
        batch_size=cfg.batch_size,
        eps=cfg.eps,
        progress=progress,
    )


def prone_table(hs: Any, family: str, cfg: HallucinationConfig) -> Any:
    """The layer table of ``family`` from statistics ``hs``, its prone layers ranked as the run
    asks (``--prone-by``, ``--k``)."""
    by = "eavss" if cfg.prone_by == "eavss" else None
    return hs.scores(cast(Family, family), k=cfg.k, by=by)


def _features(
    path: Path,
    labelled: list[Any],
    model_sha256: str | None,
    compute: Callable[[], tuple[list[str], Any]],
) -> tuple[list[str], Any, list[str]]:
    """The answers' probe features, ids and labels: read from ``path`` when it holds the same
    answers of the same model (``model_sha256``), else ``compute()`` and written there (with
    the two hashes and the dataset, the file's stem, as metadata)."""
    from avsslib.errors import DataError
    from avsslib.probe import read_features, write_features

    want = [e.id for e in labelled if e.answer_ids]
    labels = {e.id: e.label for e in labelled}
    answers = {e.id: list(e.answer_ids) for e in labelled}
    key = {
        "model_sha256": model_sha256,
        "answers_sha256": _sha([(i, answers[i]) for i in want]),
    }
    if path.exists():
        try:
            ids, feats, _, meta = read_features(path)
            if ids == want and {k: meta.get(k) for k in key} == key:
                return ids, feats, [labels[i] for i in ids]
        except DataError:
            pass
    ids, feats = compute()
    write_features(path, ids, feats, [labels[i] for i in ids], {**key, "dataset": path.stem})
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


def probe_dataset(
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
    from avsslib.probe import answer_features, probe_layers

    ids, feats, labels = _features(
        out / "features" / f"{dataset}.safetensors",
        labelled,
        record.model.get("state_sha256"),
        lambda: answer_features(
            model, tokenizer, labelled, batch_size=cfg.batch_size, progress=progress
        ),
    )
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


def fold_prone(
    model: Any,
    tokenizer: Any,
    labelled: list[Any],
    parts: list[list[str]],
    families: list[str],
    cfg: HallucinationConfig,
    progress: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Per family, per fold: the prone layers from every labelled answer outside the fold."""
    out: dict[str, list[dict[str, Any]]] = {f: [] for f in families}
    for k, part in enumerate(parts):
        inside = set(part)
        rest = [e for e in labelled if e.id not in inside]
        hs = run_stats(model, tokenizer, rest, cfg, progress)
        if min(hs.n_hallucinated, hs.n_truthful) < cfg.min_per_class:
            raise ConfigError(
                f"fold {k}: {hs.n_hallucinated} hallucinated and {hs.n_truthful} "
                "truthful answers outside it; label more questions (--n)."
            )
        for family in families:
            table = prone_table(hs, family, cfg)
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


def fold_parts(
    datasets: list[str], splits: dict[str, str], folds: int, seed: int
) -> dict[str, list[list[str]]]:
    """Per dataset, the ids of every question of its split cut into ``folds`` folds
    (:func:`avsslib.folds.fold_ids`, seeded by ``seed``)."""
    from avsslib.data import load_dataset
    from avsslib.folds import fold_ids

    parts: dict[str, list[list[str]]] = {}
    for dataset in datasets:
        every = load_dataset(dataset, splits[dataset], answerable_only=dataset == "wikiqa")
        parts[dataset] = fold_ids([r.id for r in every], folds, seed)
    return parts
