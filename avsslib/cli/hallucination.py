"""``avss hallucination``: label the model's answers, then find hallucination-prone layers.

``avss hallucination --model smollm2-135m --datasets nq_open,triviaqa --n 40 --out DIR``
labels ``--n`` answers per dataset (:mod:`avsslib.labels`), splits each dataset's questions
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

import argparse
import time
from pathlib import Path
from typing import Any

from avsslib.cli.common import (
    add_model_options,
    check_numbers,
    command_line,
    load_cli_model,
    parse_list,
    resolve_device,
)
from avsslib.errors import ConfigError

HELP = "label answers as hallucinated/truthful and find hallucination-prone layers (HSAV/HSS/EAVSS)"
LOCK_OUT = True    # the dispatcher holds the lock of --out while run() writes there

_DATASETS = "nq_open,triviaqa,sciq,truthfulqa,wikiqa"


def _same_key(path: Path, key: dict[str, Any]) -> bool:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")) == key
    except (OSError, ValueError):
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avsslib.labels import DEFAULT_TEMPLATE

    add_model_options(parser)
    parser.add_argument("--datasets", default=_DATASETS,
                        help=f"comma-separated datasets (default {_DATASETS})")
    parser.add_argument("--n", type=int, default=40,
                        help="questions per dataset, seeded sample (default 40)")
    parser.add_argument("--family", default="P,C",
                        help="score families, comma-separated: P, C (default P,C)")
    parser.add_argument("--prone-by", choices=("default", "eavss"), default="default",
                        help="rank prone layers by the family's default (P: delta, C: eavss) or "
                             "by EAVSS alone (the literal option)")
    parser.add_argument("--positions", choices=("answer", "all"), default="answer",
                        help="tokens counted in the statistics (default answer)")
    parser.add_argument("--k", type=int, default=None,
                        help="number of prone layers (default ceil(0.25 * layers))")
    parser.add_argument("--calib-fraction", type=float, default=0.5,
                        help="share of each dataset's questions in the calibration part "
                             "(default 0.5; the rest is the evaluation part)")
    parser.add_argument("--min-per-class", type=int, default=2,
                        help="fewest hallucinated and truthful calibration answers needed to "
                             "score a dataset (default 2)")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE,
                        help="prompt template with {question} (default: avsslib.labels.DEFAULT_TEMPLATE)")
    parser.add_argument("--chat-template", choices=("auto", "on", "off"), default="auto",
                        help="wrap the prompt in the tokenizer's chat template (auto: when it "
                             "has one)")
    parser.add_argument("--question-guard", action="store_true",
                        help="NQ/TriviaQA/SciQ: an alias the question contains counts only as an "
                             "exact answer (avsslib.labels)")
    parser.add_argument("--max-new-tokens", type=int, default=32,
                        help="answer length limit in tokens (default 32)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--eps", type=float, default=1e-5,
                        help="near-zero threshold of the sparsity (default 1e-5)")
    parser.add_argument("--labels-from", type=Path, default=None,
                        help="reuse DIR/labels/<dataset>.jsonl instead of generating answers")
    parser.add_argument("--probe", action="store_true",
                        help="store each answer's mean activation per layer and fit one linear "
                             "probe per layer (probe_layers.json; avsslib.probe)")
    parser.add_argument("--folds", type=int, default=None,
                        help="also choose layers per fold from the answers outside it (k-fold "
                             "protocol of avss mitigate --folds; avsslib.folds)")
    parser.add_argument("--fold-seed", type=int, default=0,
                        help="seed of the fold split (default 0; as avss mitigate --fold-seed)")


def _check_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from avsslib.eavss import FAMILIES
    from avsslib.labels import RULES

    datasets = parse_list(args.datasets, "--datasets")
    families = [f.upper() for f in parse_list(args.family, "--family")]
    unknown = [d for d in datasets if d not in RULES]
    if not datasets or unknown:
        raise ConfigError(f"--datasets {args.datasets!r}: choose among {sorted(RULES)}.")
    if not families or any(f not in FAMILIES for f in families):
        raise ConfigError(f"--family {args.family!r}: choose among {FAMILIES}.")
    if not 0.0 < args.calib_fraction <= 1.0:
        raise ConfigError(f"--calib-fraction {args.calib_fraction}: must lie in (0, 1].")
    if args.min_per_class < 1:
        raise ConfigError(f"--min-per-class {args.min_per_class}: must be >= 1.")
    if args.folds is not None and args.folds < 2:
        raise ConfigError(f"--folds {args.folds}: the k-fold protocol needs at least 2 folds.")
    return datasets, families


def _sparsity_note(table: Any, eps: float) -> dict[str, Any]:
    """How much of a profile's sparsity is real: total near-zero counts of both sets and the
    layers clamped for having none; ``degenerate`` when either set has no
    near-zero element in at least half of the layers."""
    from avsslib.scores import SPARSITY_CLAMP

    clamped_h = [int(i) for i in table.index[table["s_h"] < SPARSITY_CLAMP]]
    clamped_t = [int(i) for i in table.index[table["s_t"] < SPARSITY_CLAMP]]
    n = len(table)
    return {"eps": eps, "n_layers": n, "clamped_h": clamped_h, "clamped_t": clamped_t,
            "near_zero_h": float(table["near_zero_h"].sum()),
            "near_zero_t": float(table["near_zero_t"].sum()),
            "degenerate": max(len(clamped_h), len(clamped_t)) >= n / 2}


def run(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt
    import pandas as pd

    from avsslib import plots
    from avsslib.data import data_file_hashes, get_spec
    from avsslib.eavss import hallucination_stats, profiles_matrix, prone_sweep
    from avsslib.labels import label_dataset, label_summary, read_labels, split_ids, write_labels
    from avsslib.report import RunRecord, save_record, write_csv_atomic, write_json_atomic

    check_numbers(args)
    datasets, families = _check_args(args)
    chat: Any = {"auto": "auto", "on": True, "off": False}[args.chat_template]
    out: Path = args.out
    device = resolve_device(args.device)
    model, tokenizer, load_s = load_cli_model(args, device, causal_for="hallucination")
    splits = {d: get_spec(d).split_name(None) for d in datasets}
    hashes = {k: v for d in datasets for k, v in data_file_hashes(d, splits[d]).items()}
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")
              and k not in ("command", "debug")}
    config.update(out=str(out), device=device, datasets=datasets, family=families, splits=splits,
                  labels_from=str(args.labels_from) if args.labels_from else None)
    record = RunRecord.start(command_line("hallucination", args), config, args.seed, model=model,
                             data_files=hashes)
    progress = not args.quiet
    fractions = (args.calib_fraction, 1.0 - args.calib_fraction)
    summaries, split_record, prone, skipped, profiles, sparsity = {}, {}, {}, {}, {}, {}
    probes: dict[str, Any] = {}
    fold_prone: dict[str, Any] = {}
    fold_parts: dict[str, list[list[str]]] = {}
    if args.folds is not None:
        from avsslib.data import load_dataset
        from avsslib.folds import fold_ids

        for dataset in datasets:
            every = load_dataset(dataset, splits[dataset], answerable_only=dataset == "wikiqa")
            fold_parts[dataset] = fold_ids([r.id for r in every], args.folds, args.fold_seed)
    timings: dict[str, dict[str, float]] = {"label_s": {}, "stats_s": {}}
    for dataset in datasets:
        t0 = time.perf_counter()
        label_file = out / "labels" / f"{dataset}.jsonl"
        label_key = {"model_sha256": record.model.get("state_sha256"), "split": splits[dataset],
                     "n": args.n, "seed": args.seed, "template": args.template,
                     "max_new_tokens": args.max_new_tokens, "chat_template": args.chat_template,
                     "question_guard": args.question_guard, "batch_size": args.batch_size}
        key_file = label_file.with_suffix(".key.json")
        if args.labels_from is not None:
            labelled = read_labels(args.labels_from / "labels" / f"{dataset}.jsonl")
        elif label_file.exists() and key_file.exists() and _same_key(key_file, label_key):
            labelled = read_labels(label_file)          # resumed: same model, sample and settings
        else:
            labelled = label_dataset(model, tokenizer, dataset, splits[dataset], n=args.n,
                                     seed=args.seed, template=args.template,
                                     max_new_tokens=args.max_new_tokens,
                                     batch_size=args.batch_size, chat_template=chat,
                                     question_guard=args.question_guard, progress=progress)
        key_file.unlink(missing_ok=True)      # labels and key are never out of step
        write_labels(label_file, labelled)
        if args.labels_from is None:          # copied labels are not this run's answers
            write_json_atomic(key_file, label_key)
        timings["label_s"][dataset] = time.perf_counter() - t0
        calib_ids, eval_ids = split_ids([e.id for e in labelled], fractions, args.seed,
                                        stratify=[e.label for e in labelled])
        split_record[dataset] = {"split": splits[dataset], "calibration": calib_ids,
                                 "evaluation": eval_ids}
        chosen = set(calib_ids)
        calib = [e for e in labelled if e.id in chosen]
        t0 = time.perf_counter()
        hs = hallucination_stats(model, tokenizer, calib, positions=args.positions,
                                 batch_size=args.batch_size, eps=args.eps, progress=progress)
        timings["stats_s"][dataset] = time.perf_counter() - t0
        summaries[dataset] = {**label_summary(labelled, seed=args.seed),
                              "calib_hallucinated": hs.n_hallucinated,
                              "calib_truthful": hs.n_truthful,
                              "calib_skipped_empty": hs.n_skipped_empty}
        if min(hs.n_hallucinated, hs.n_truthful) < args.min_per_class:
            skipped[dataset] = (f"{hs.n_hallucinated} hallucinated and {hs.n_truthful} truthful "
                                f"calibration answers; --min-per-class is {args.min_per_class}")
            print(f"{dataset}: skipped, {skipped[dataset]}")
            continue
        if args.probe:
            t0 = time.perf_counter()
            probes[dataset] = _probe_dataset(model, tokenizer, labelled, out, dataset, record,
                                             args, fold_parts.get(dataset), progress)
            timings.setdefault("probe_s", {})[dataset] = time.perf_counter() - t0
        if args.folds is not None:
            t0 = time.perf_counter()
            fold_prone[dataset] = _fold_prone(model, tokenizer, labelled, fold_parts[dataset],
                                              families, args, progress)
            timings.setdefault("folds_s", {})[dataset] = time.perf_counter() - t0
        prone[dataset] = {}
        for family in families:
            by = "eavss" if args.prone_by == "eavss" else None
            table = hs.scores(family, k=args.k, by=by)
            profiles[(dataset, family)] = table
            write_csv_atomic(out / "profiles" / f"{dataset}_{family}.csv", table.reset_index())
            prone[dataset][family] = {"by": table.attrs["by"], "k": table.attrs["k"],
                                      "layers": [int(i) for i in table.index[table["prone"]]],
                                      "sweep": prone_sweep(table, by=table.attrs["by"])}
            if dataset not in sparsity:
                sparsity[dataset] = _sparsity_note(table, args.eps)
            plots.use_style()
            fig = plots.eavss_layer_profile(table, title=f"{dataset}, family {family}")
            plots.save(fig, out / "figures" / f"profile_{dataset}_{family}.png")
            plt.close(fig)

    for family in families:
        tables = {d: t for (d, f), t in profiles.items() if f == family}
        if tables:
            by = next(iter(tables.values())).attrs["by"]
            fig = plots.prone_heatmap(profiles_matrix(tables, by),
                                      prone={d: prone[d][family]["layers"] for d in tables},
                                      title=f"family {family}: {by} per layer")
            plots.save(fig, out / "figures" / f"prone_heatmap_{family}.png")
            plt.close(fig)

    summary_df = pd.DataFrame([{"dataset": d, **s} for d, s in summaries.items()])
    write_csv_atomic(out / "label_summary.csv", summary_df)
    write_json_atomic(out / "label_summary.json", summaries)
    write_json_atomic(out / "splits.json", {"seed": args.seed, "fractions": list(fractions),
                                            "stratified_by": "label", "datasets": split_record})
    folds_entry = None if args.folds is None else {
        "folds": args.folds, "seed": args.fold_seed, "prone": fold_prone,
        "fold_ids": {d: fold_parts[d] for d in fold_prone}}
    write_json_atomic(out / "prone_layers.json", {"positions": args.positions, "eps": args.eps,
                                                  "prone": prone, "skipped": skipped,
                                                  "sparsity": sparsity, "folds": folds_entry})
    if args.probe:
        from avsslib.probe import PROBE_C

        write_json_atomic(out / "probe_layers.json", {
            "feature": "mean block output over the answer tokens (float16)", "c": PROBE_C,
            "cv_folds": 2, "rank_by": "accuracy",
            "folds": None if args.folds is None else {"folds": args.folds, "seed": args.fold_seed},
            "probe": probes})
    table_rows = [{"task": d, "metric": "hallucination_rate", "value": s["hallucination_rate"],
                   "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n": s["n"]}
                  for d, s in summaries.items()]
    for d, entry in probes.items():
        best = int(entry["ranking"][0])
        table_rows.append({"task": d, "metric": f"probe_accuracy_layer{best}",
                           "value": entry["accuracy"][best], "ci_low": entry["ci_low"][best],
                           "ci_high": entry["ci_high"][best], "n": entry["n"]})
    record.finish({"table": table_rows, "labels": summaries, "prone": prone, "skipped": skipped,
                   "sparsity": sparsity,
                   "probe": {d: {k: v for k, v in e.items() if k != "folds"} for d, e in probes.items()},
                   "fold_prone": fold_prone}, load_model_s=load_s, **timings)
    save_record(record, out / "record.json")
    print(summary_df.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    for dataset, fams in prone.items():
        for family, entry in fams.items():
            print(f"{dataset:>12} {family} (by {entry['by']}, k={entry['k']}): {entry['layers']}")
    for dataset, note in sparsity.items():
        if note["degenerate"]:
            print(f"{dataset}: warning: no near-zero element at eps={args.eps:g} in "
                  f"{len(note['clamped_h'])} (hallucinated) / {len(note['clamped_t'])} (truthful) "
                  f"of {note['n_layers']} layers; HSS and EAVSS there reflect the 1e-12 clamp. "
                  "Use a larger --eps, --positions all or a larger --n.")
    for dataset, entry in probes.items():
        top = entry["ranking"][:5]
        print(f"{dataset:>12} probe (2-fold CV accuracy, majority {entry['majority_rate']:.3f}): "
              + ", ".join(f"layer {i} {entry['accuracy'][i]:.3f} [{entry['ci_low'][i]:.3f}, "
                          f"{entry['ci_high'][i]:.3f}]" for i in top))
    for dataset, fams in fold_prone.items():
        for family, entries in fams.items():
            print(f"{dataset:>12} {family} per fold: {[e['layers'] for e in entries]}")
    print(f"wrote {out}/labels, profiles, figures, label_summary.csv, splits.json, "
          "prone_layers.json, record.json" + (", features, probe, probe_layers.json"
                                               if args.probe else ""))
    return 0


def _features(model: Any, tokenizer: Any, labelled: list[Any], out: Path, dataset: str,
              record: Any, args: argparse.Namespace, progress: bool) -> tuple[list[str], Any, list[str]]:
    """The answers' probe features, from ``features/<dataset>.safetensors`` when it holds the
    same answers of the same model, else computed and written there."""
    from avsslib.errors import DataError
    from avsslib.probe import answer_features, read_features, write_features

    path = out / "features" / f"{dataset}.safetensors"
    want = [e.id for e in labelled if e.answer_ids]
    labels = {e.id: e.label for e in labelled}
    answers = {e.id: list(e.answer_ids) for e in labelled}
    key = {"model_sha256": record.model.get("state_sha256"),
           "answers_sha256": _sha([(i, answers[i]) for i in want])}
    if path.exists():
        try:
            ids, feats, _, meta = read_features(path)
            if ids == want and {k: meta.get(k) for k in key} == key:
                return ids, feats, [labels[i] for i in ids]
        except DataError:
            pass
    ids, feats = answer_features(model, tokenizer, labelled, batch_size=args.batch_size,
                                 progress=progress)
    write_features(path, ids, feats, [labels[i] for i in ids], {**key, "dataset": dataset})
    return ids, feats, [labels[i] for i in ids]


def _sha(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def _probe_entry(table: Any) -> dict[str, Any]:
    return {"accuracy": table["accuracy"].tolist(), "ci_low": table["ci_low"].tolist(),
            "ci_high": table["ci_high"].tolist(),
            "balanced_accuracy": table["balanced_accuracy"].tolist(),
            "ranking": [int(i) for i in table.sort_values("rank").index],
            "n": int(table["n"].iloc[0]), "n_hallucinated": int(table["n_hallucinated"].iloc[0]),
            "majority_rate": float(table["majority_rate"].iloc[0])}


def _probe_dataset(model: Any, tokenizer: Any, labelled: list[Any], out: Path, dataset: str,
                   record: Any, args: argparse.Namespace, parts: list[list[str]] | None,
                   progress: bool) -> dict[str, Any]:
    """Probe accuracies of one dataset over all its answers (``probe/<dataset>.csv``) and, with
    folds, over the answers outside each fold."""
    import numpy as np

    from avsslib.probe import probe_layers
    from avsslib.report import write_csv_atomic

    ids, feats, labels = _features(model, tokenizer, labelled, out, dataset, record, args, progress)
    table = probe_layers(feats, labels, ids, seed=args.seed, progress=progress)
    write_csv_atomic(out / "probe" / f"{dataset}.csv", table.reset_index())
    entry = _probe_entry(table)
    if parts is not None:
        entry["folds"] = []
        for k, part in enumerate(parts):
            inside = set(part)
            rows = np.array([i not in inside for i in ids])
            sub = probe_layers(feats[rows], [lab for lab, r in zip(labels, rows, strict=True) if r],
                               [i for i, r in zip(ids, rows, strict=True) if r], seed=args.seed,
                               progress=progress)
            write_csv_atomic(out / "probe" / f"{dataset}_fold{k}.csv", sub.reset_index())
            entry["folds"].append({"fold": k, **_probe_entry(sub)})
    return entry


def _fold_prone(model: Any, tokenizer: Any, labelled: list[Any], parts: list[list[str]],
                families: list[str], args: argparse.Namespace, progress: bool
                ) -> dict[str, list[dict[str, Any]]]:
    """Per family, per fold: the prone layers from every labelled answer outside the fold."""
    from avsslib.eavss import hallucination_stats

    out: dict[str, list[dict[str, Any]]] = {f: [] for f in families}
    for k, part in enumerate(parts):
        inside = set(part)
        rest = [e for e in labelled if e.id not in inside]
        hs = hallucination_stats(model, tokenizer, rest, positions=args.positions,
                                 batch_size=args.batch_size, eps=args.eps, progress=progress)
        if min(hs.n_hallucinated, hs.n_truthful) < args.min_per_class:
            raise ConfigError(f"fold {k}: {hs.n_hallucinated} hallucinated and {hs.n_truthful} "
                              "truthful answers outside it; label more questions (--n).")
        for family in families:
            by = "eavss" if args.prone_by == "eavss" else None
            table = hs.scores(family, k=args.k, by=by)
            out[family].append({"fold": k, "by": table.attrs["by"], "k": table.attrs["k"],
                                "layers": [int(i) for i in table.index[table["prone"]]],
                                "n_hallucinated": hs.n_hallucinated, "n_truthful": hs.n_truthful})
    return out
