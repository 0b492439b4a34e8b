"""``avss mitigate``: contrastive fine-tuning of the hallucination-prone layers,
evaluated before and after on held-out questions (§9.3).

``avss mitigate --model smollm2-135m --dataset truthfulqa --layers 3,7,11 --mode eavss --lora
--n-train 200 --eval-tasks truthfulqa_mc1,truthfulqa_mc2 --n-eval 200 --out DIR`` samples the
evaluation questions first (``--n-eval``, ``--eval-seed``, exactly as ``avss eval`` does), draws
the training questions from the rest of ``--dataset`` (``--n-train``, ``--seed``), trains
(:func:`avsslib.mitigate.train`) and writes into ``--out``:

* ``trained_layers.safetensors`` and ``trained_layers.json``: what changed
  (:func:`avsslib.mitigate.load_trained_layers` applies it to a fresh base model);
* ``checkpoint.pt`` every ``--checkpoint-every`` steps (``--resume`` continues from it);
* ``data.json``: the training and evaluation question ids (disjoint) and the triples' sources;
* ``before.json``: the base model's evaluation (reused when present for the same base model
  and evaluation sample, e.g. by ``--resume``);
* ``metrics.json``: before and after results (per-example scores), the change table, KL to the
  base model and perplexity (base and tuned), the training history; ``changes.csv``: the change
  table (absolute and relative change with paired bootstrap intervals);
* ``record.json`` and ``record.md``: the run record and its result card.

Modes (same data and step budget): ``eavss`` trains the given (prone) layers; ``random`` k
seeded random layers (k = ``--k`` or the number of ``--layers``); ``avss`` the given layers, or
the ``--k`` lowest-AVSS layers of a ``layer_stats.csv`` passed with ``--layers-from``; ``full``
every parameter with the LM loss only; ``probe`` the given layers, or the ``--k`` layers whose
linear probe is most accurate in a ``probe_layers.json`` (``avss hallucination --probe``).

``--folds K --fold k`` (k-fold protocol, :mod:`avsslib.folds`): evaluate every question of fold
``k`` of the evaluation task (all its questions split into ``K`` folds by ``--fold-seed``) and
train on questions outside it; ``--layers-from`` then reads that fold's layers, chosen from
labelled answers outside the fold. The ``K`` runs together score every question once.
"""

from __future__ import annotations

import argparse
import copy
import json
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

HELP = "contrastive fine-tuning of chosen (prone) layers, evaluated before/after with KL and perplexity"
LOCK_OUT = True    # the dispatcher holds the lock of --out while run() writes there

DEFAULT_EVAL_TASKS = {
    "truthfulqa": "truthfulqa_mc1,truthfulqa_mc2",
    "sciq_mc": "sciq_mc",
    "wikiqa": "wikiqa",
    "nq_open": "nq_open_em",
    "triviaqa": "triviaqa_em",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avsslib.mitigate import DEFAULT_MAX_NEGATIVES, MODES

    add_model_options(parser)
    parser.add_argument("--dataset", default="truthfulqa",
                        help="training data: truthfulqa, sciq_mc, wikiqa, nq_open, triviaqa, sciq")
    parser.add_argument("--split", help="its split (default: the dataset's default split)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--layers", help="comma-separated layer indices (e.g. the prone layers)")
    source.add_argument("--layers-from", type=Path,
                        help="JSON with the layers (a list, an object with 'prone_layers' or "
                             "'layers', or the prone_layers.json of `avss hallucination`; with "
                             "--fold its fold's layers), the probe_layers.json of `avss "
                             "hallucination --probe` (mode probe: the --k best probes), or a "
                             "layer_stats.csv (mode avss: the --k lowest AVSS)")
    parser.add_argument("--prone-family",
                        help="family in an `avss hallucination` prone_layers.json (if it has several)")
    parser.add_argument("--k", type=int,
                        help="layer count for --mode random, avss from a CSV, probe from a "
                             "probe_layers.json")
    parser.add_argument("--mode", choices=MODES, default="eavss", help="ablation mode (default eavss)")
    params = parser.add_mutually_exclusive_group()
    params.add_argument("--lora", action="store_true", help="LoRA on the layers' projections")
    params.add_argument("--full-params", action="store_true",
                        help="train the layers' full parameters (the default)")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default 32)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (default 1)")
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-5 full, 1e-4 LoRA)")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.5,
                        help="weight of the contrastive loss (default 0.5)")
    parser.add_argument("--tau", type=float, default=0.07, help="temperature (default 0.07)")
    parser.add_argument("--loss", choices=("infonce", "supcon"), default="infonce",
                        help="contrastive loss (default infonce)")
    parser.add_argument("--no-in-batch", action="store_true",
                        help="do not use other questions' positives as negatives")
    parser.add_argument("--projection", action="store_true", help="train through an MLP head g_l")
    parser.add_argument("--batch-size", type=int, default=4, help="questions per micro-batch (default 4)")
    parser.add_argument("--grad-accum", type=int, default=4, help="micro-batches per step (default 4)")
    parser.add_argument("--max-negatives", type=int, default=DEFAULT_MAX_NEGATIVES,
                        help=f"negatives per question (default {DEFAULT_MAX_NEGATIVES})")
    parser.add_argument("--own-negatives", type=Path,
                        help="JSON list of [question, hallucinated answer] pairs (or objects with "
                             "'question' and 'answer') from the model itself")
    parser.add_argument("--no-dataset-negatives", action="store_true",
                        help="use only --own-negatives (and in-batch ones)")
    parser.add_argument("--bf16", action="store_true", help="autocast the forward pass to bfloat16")
    parser.add_argument("--n-train", type=int, help="training questions (default: all not evaluated)")
    parser.add_argument("--eval-tasks", help="comma-separated tasks (default: the dataset's own)")
    parser.add_argument("--n-eval", type=int, default=100,
                        help="evaluation questions (default 100; ignored with --folds)")
    parser.add_argument("--eval-seed", type=int, default=0, help="evaluation sample seed (default 0)")
    parser.add_argument("--folds", type=int,
                        help="k-fold protocol: split every question of the evaluation task into "
                             "this many folds (avsslib.folds); evaluate fold --fold, train on the rest")
    parser.add_argument("--fold", type=int, help="the evaluated fold, 0..folds-1 (with --folds)")
    parser.add_argument("--fold-seed", type=int, default=0,
                        help="seed of the fold split (default 0; the same in avss hallucination --folds)")
    parser.add_argument("--eval-batch-size", type=int, default=8, help="harness batch size (default 8)")
    parser.add_argument("--kl-texts", type=int, default=32,
                        help="WikiText-2 test paragraphs for KL to the base model (0 = skip; default 32)")
    parser.add_argument("--ppl-windows", type=int, default=8,
                        help="512-token WikiText-2 test windows for perplexity (0 = skip; default 8)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="optimizer steps between checkpoints (0 = none; default 50)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")


def _layers_from(path: Path, dataset: str, family: str | None = None, fold: int | None = None
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
        entry = obj["probe"].get(dataset)
        if not isinstance(entry, dict):
            raise ConfigError(f"--layers-from {path}: no probe for dataset {dataset!r} (it has "
                              f"{', '.join(obj['probe']) or 'none'}).")
        if fold is not None:
            folds = entry.get("folds") or []
            if fold >= len(folds):
                raise ConfigError(f"--layers-from {path}: no probe of fold {fold} for {dataset!r} "
                                  f"({len(folds)} folds); run `avss hallucination --probe --folds`.")
            entry = folds[fold]
        return None, [float(x) for x in entry["accuracy"]], "probe"
    if isinstance(obj, dict) and isinstance(obj.get("prone"), dict):
        source = obj["prone"]
        if fold is not None:
            source = (obj.get("folds") or {}).get("prone")
            if not isinstance(source, dict):
                raise ConfigError(f"--layers-from {path}: no per-fold prone layers; run `avss "
                                  "hallucination --folds` or drop --fold.")
        per_family = source.get(dataset)
        if not isinstance(per_family, dict) or not per_family:
            raise ConfigError(f"--layers-from {path}: no prone layers for dataset {dataset!r} "
                              f"(it has {', '.join(source) or 'none'}).")
        if family is None and len(per_family) > 1:
            raise ConfigError(f"--layers-from {path}: pick a family with --prone-family "
                              f"({', '.join(per_family)}).")
        entry = per_family.get(family) if family is not None else next(iter(per_family.values()))
        if entry is None:
            raise ConfigError(f"--layers-from {path}: no family {family!r} for {dataset!r} "
                              f"({', '.join(per_family)}).")
        if fold is not None:
            if fold >= len(entry):
                raise ConfigError(f"--layers-from {path}: no fold {fold} ({len(entry)} folds).")
            entry = entry[fold]
        obj = entry
    if isinstance(obj, dict):
        key = next((k for k in ("prone_layers", "layers") if k in obj), None)
        if key is None:
            raise ConfigError(f"--layers-from {path}: the object has no 'prone_layers' or 'layers' key.")
        obj = obj[key]
    if not isinstance(obj, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in obj):
        raise ConfigError(f"--layers-from {path}: expected a list of layer indices (integers).")
    return obj, None, None


def _own_negatives(path: Path | None) -> list[tuple[str, str]] | None:
    if path is None:
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise ConfigError(f"--own-negatives {path}: not readable JSON ({exc}).") from exc
    out = []
    for i, row in enumerate(rows if isinstance(rows, list) else [rows]):
        pair = (row.get("question"), row.get("answer")) if isinstance(row, dict) else tuple(row) \
            if isinstance(row, list) else (None, None)
        if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise ConfigError(f"--own-negatives {path}: entry {i} is not a [question, answer] pair "
                              "of strings nor an object with 'question' and 'answer'.")
        out.append((pair[0], pair[1]))
    return out


def _card_rows(change: Any, before: Any, after: Any, n_boot: int) -> list[dict[str, Any]]:
    rows = []
    for which, result in (("before", before), ("after", after)):
        for r in result.table(n_boot=n_boot).to_dict("records"):
            rows.append({**r, "metric": f"{r['metric']} {which}"})
    for r in change.to_dict("records"):
        for kind in ("abs", "rel"):
            rows.append(dict(task=r["task"], metric=f"{r['metric']} change {kind}", value=r[f"delta_{kind}"],
                             ci_low=r[f"{kind}_ci_low"], ci_high=r[f"{kind}_ci_high"], n=r["n"]))
    return rows


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from avsslib.data import calibration_texts, data_file_hashes, get_spec, load_dataset
    from avsslib.evaluate import (
        TASKS,
        EvalResult,
        bootstrap_ci,
        evaluate,
        perplexity,
        task_data_files,
    )
    from avsslib.folds import check_fold, mitigation_questions
    from avsslib.mitigate import (
        CHECKPOINT,
        TRAINED_META,
        TrainConfig,
        ablation_layers,
        build_triples,
        encode_triples,
        kl_to_base,
        paired_change,
        train,
    )
    from avsslib.models import blocks
    from avsslib.report import RunRecord, save_record, write_csv_atomic, write_json_atomic

    check_numbers(args)
    out: Path = args.out
    if (out / TRAINED_META).exists() and not args.resume:
        raise ConfigError(f"--out {out} already holds a finished run; pass --resume to re-evaluate "
                          "it or choose another directory.")
    if (out / CHECKPOINT).exists() and not args.resume:
        raise ConfigError(f"--out {out} holds {CHECKPOINT} of an interrupted run; pass --resume to "
                          f"continue it, or choose another directory (or delete {CHECKPOINT} to "
                          "start over).")
    tasks = parse_list(args.eval_tasks or DEFAULT_EVAL_TASKS.get(args.dataset), "--eval-tasks")
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise ConfigError(f"--eval-tasks: unknown or missing task(s) {unknown}; known: {', '.join(TASKS)}.")
    if args.n_eval < 1 or (args.n_train is not None and args.n_train < 1):
        raise ConfigError("--n-eval and --n-train must be positive.")
    split = get_spec(args.dataset).split_name(args.split)
    check_fold(args.folds, args.fold)
    # evaluation questions first (a sample, or one fold of every question), training questions
    # from the rest (before the model loads)
    eval_ids, every, records = mitigation_questions(
        args.dataset, split, tasks, n_eval=args.n_eval, eval_seed=args.eval_seed,
        n_train=args.n_train, seed=args.seed, folds=args.folds, fold=args.fold,
        fold_seed=args.fold_seed)
    rest = [r for r in every if r.id not in eval_ids]
    if not records:
        data_spec = get_spec(args.dataset)
        eval_splits = {data_spec.split_name(TASKS[t].split) for t in tasks
                       if TASKS[t].dataset == args.dataset}
        other = [s for s in data_spec.splits if s != split and s not in eval_splits]
        hint = " or ".join(([f"train on another split (--split {other[0]})"] if other else [])
                           + (["lower --n-eval"] if len(rest) < len(every) else []))
        raise ConfigError(
            f"no training examples in {args.dataset}:{split}: of its {len(every)} records, "
            f"{len(every) - len(rest)} are held out for evaluation (--n-eval {args.n_eval}) and none "
            f"of the other {len(rest)} has a correct answer to train on"
            + (f"; {hint}." if hint else "."))
    triples = build_triples(args.dataset, records, own_negatives=_own_negatives(args.own_negatives),
                            max_negatives=args.max_negatives,
                            dataset_negatives=not args.no_dataset_negatives)

    device = resolve_device(args.device)
    model, tokenizer, load_s = load_cli_model(args, device, causal_for="mitigate")
    n_layers = len(blocks(model))

    given, scores = (parse_list(args.layers, "--layers", int) or None), None
    if args.layers_from is not None:
        given, scores, kind = _layers_from(args.layers_from, args.dataset, args.prone_family,
                                           args.fold)
        if scores is not None and kind != args.mode:
            raise ConfigError(f"--layers-from {args.layers_from} gives {kind.upper()} scores: use it "
                              f"with --mode {kind} and --k.")
    layers = ablation_layers(args.mode, n_layers, layers=given, k=args.k, scores=scores, seed=args.seed)

    encoded = encode_triples(triples, tokenizer)
    train_ids = [t.id for t in triples]
    assert not set(train_ids) & eval_ids
    cfg = TrainConfig(
        layers=tuple(layers), full_model=args.mode == "full", lora=args.lora, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lam=args.lam, tau=args.tau, loss=args.loss,
        in_batch_negatives=not args.no_in_batch, projection=args.projection, bf16=args.bf16,
        seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    cfg.validate(n_layers)

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if not k.startswith("_") and k not in ("command", "debug")}
    config.update(device=device, layers_trained=layers, train=cfg.to_dict(), eval_tasks=tasks)
    data_files = {**data_file_hashes(args.dataset, split), **task_data_files(tasks)}
    record = RunRecord.start(command_line("mitigate", args), config, args.seed, model=model,
                             data_files=data_files)
    write_json_atomic(out / "data.json", {
        "dataset": args.dataset, "split": split, "train_ids": train_ids,
        "eval_ids": sorted(eval_ids), "disjoint": True,
        "folds": None if args.folds is None else {"folds": args.folds, "fold": args.fold,
                                                  "seed": args.fold_seed},
        "train_sources": [t.source for t in triples],
        "negatives_per_question": [len(t.negatives) for t in triples],
    })

    def run_eval(m: torch.nn.Module) -> EvalResult:
        if args.folds is not None:      # exactly the fold's questions
            return evaluate(m, tokenizer, tasks, ids=eval_ids, seed=args.eval_seed,
                            batch_size=args.eval_batch_size)
        return evaluate(m, tokenizer, tasks, n=args.n_eval, seed=args.eval_seed,
                        batch_size=args.eval_batch_size)

    timings: dict[str, float] = {"load_model_s": load_s}
    key = {"model_sha256": record.model["state_sha256"], "tasks": tasks, "n_eval": args.n_eval,
           "eval_seed": args.eval_seed, "batch_size": args.eval_batch_size}
    if args.folds is not None:   # the n_eval sample does not apply; the fold does
        key.update(n_eval=None, folds=[args.folds, args.fold, args.fold_seed])
    before_path = out / "before.json"
    saved = json.loads(before_path.read_text(encoding="utf-8")) if before_path.exists() else None
    t0 = time.perf_counter()
    if saved is not None and saved.get("key") == key:
        before = EvalResult.from_dict(saved["result"])
    else:
        before = run_eval(model)
        write_json_atomic(before_path, {"key": key, "result": before.to_dict()})
    timings["eval_before_s"] = time.perf_counter() - t0

    side_effects = args.kl_texts > 0 or args.ppl_windows > 0
    base = copy.deepcopy(model) if side_effects else None
    t0 = time.perf_counter()
    result = train(model, encoded, cfg, pad_id=tokenizer.pad_token_id, out_dir=out, resume=args.resume)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    after = run_eval(model)
    timings["eval_after_s"] = time.perf_counter() - t0
    change = paired_change(before, after, n_boot=args.n_boot, seed=args.eval_seed)

    effects: dict[str, Any] = {}
    t0 = time.perf_counter()
    if args.kl_texts > 0 and base is not None:
        texts = calibration_texts("wikitext2", "test", n=args.kl_texts, min_chars=100, seed=args.eval_seed)
        kl = kl_to_base(base, model, tokenizer, texts)
        low, high = bootstrap_ci(kl.per_text, lambda v: float(v[:, 0].sum() / v[:, 1].sum()),
                                 n_boot=args.n_boot, seed=args.eval_seed)
        effects["kl_to_base"] = {"value": kl.value, "ci_low": low, "ci_high": high, **kl.protocol}
        data_files.update(data_file_hashes("wikitext2", "test"))
    if args.ppl_windows > 0 and base is not None:
        text = "".join(doc.text for doc in load_dataset("wikitext2", "test"))
        ppl = {}
        for name, m in (("base", base), ("tuned", model)):
            p = perplexity(m, tokenizer, text, max_tokens=512 * args.ppl_windows)
            values = np.stack([p.nll, p.tokens.astype(np.float64)], axis=1)
            low, high = bootstrap_ci(values, lambda v: float(np.exp(v[:, 0].sum() / v[:, 1].sum())),
                                     n_boot=args.n_boot, seed=args.eval_seed)
            ppl[name] = {"value": p.value, "ci_low": low, "ci_high": high}
        effects["perplexity"] = {**ppl, "ratio_tuned_to_base": ppl["tuned"]["value"] / ppl["base"]["value"],
                                 "protocol": p.protocol}
        data_files.update(data_file_hashes("wikitext2", "test"))
    timings["side_effects_s"] = time.perf_counter() - t0
    record.data_files = data_files

    training = {"steps": len(result.history), "resumed_from": result.resumed_from,
                "steps_run": result.steps_run, "s_per_step": result.s_per_step,
                "history": result.history, "layers": layers, "kind": result.meta["kind"],
                "trainable_tensors": len(result.state),
                "trainable_parameters": sum(t.numel() for t in result.state.values())}
    metrics = {"before": before.to_dict(), "after": after.to_dict(), "change": change.to_dict("records"),
               "side_effects": effects, "training": training}
    write_csv_atomic(out / "changes.csv", change)
    record.finish({"table": _card_rows(change, before, after, args.n_boot), "side_effects": effects,
                   "training": {k: v for k, v in training.items() if k != "history"},
                   "loss_first": result.history[0]["loss"], "loss_last": result.history[-1]["loss"]},
                  **timings)
    save_record(record, out / "record.json")
    write_json_atomic(out / "metrics.json", metrics)   # last: it marks the run as finished

    print(f"trained {result.meta['kind']} on layers {layers} ({len(triples)} questions, "
          f"{len(result.history)} steps, {result.s_per_step:.2f} s/step); loss "
          f"{result.history[0]['loss']:.4f} -> {result.history[-1]['loss']:.4f}")
    for r in change.to_dict("records"):
        print(f"{r['task']} {r['metric']}: {r['before']:.4f} -> {r['after']:.4f} "
              f"(abs {r['delta_abs']:+.4f} [{r['abs_ci_low']:+.4f}, {r['abs_ci_high']:+.4f}], "
              f"rel {r['delta_rel']:+.2%})")
    if "kl_to_base" in effects:
        print(f"KL(base || tuned) = {effects['kl_to_base']['value']:.5f} nats/token")
    if "perplexity" in effects:
        print(f"perplexity: base {effects['perplexity']['base']['value']:.3f}, tuned "
              f"{effects['perplexity']['tuned']['value']:.3f}")
    print(f"wrote {out} (trained_layers.*, metrics.json, changes.csv, data.json, record.json, record.md)")
    return 0
