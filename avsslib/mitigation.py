"""The mitigation pipeline: contrastive fine-tuning of the hallucination-prone layers,
evaluated before and after on held-out questions (§9.3).

``run_mitigation(MitigationConfig(out=DIR, dataset="truthfulqa", layers=(3, 7, 11),
mode="eavss", lora=True, n_train=200, n_eval=200))`` (the command ``avss mitigate``, whose
options are the fields of :class:`MitigationConfig`) samples the
evaluation questions first (``n_eval``, ``eval_seed``, exactly as ``avss eval`` does), draws
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

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from avsslib.errors import ConfigError
from avsslib.models import ModelOptions, default_device, load_seeded

DEFAULT_EVAL_TASKS: dict[str, tuple[str, ...]] = {
    "truthfulqa": ("truthfulqa_mc1", "truthfulqa_mc2"),
    "sciq_mc": ("sciq_mc",),
    "wikiqa": ("wikiqa",),
    "nq_open": ("nq_open_em",),
    "triviaqa": ("triviaqa_em",),
}
"""The evaluation tasks of each training dataset (``eval_tasks`` left empty)."""


@dataclass
class MitigationConfig(ModelOptions):
    """Everything that shapes a mitigation run; the fields are the options of ``avss mitigate``
    (same names, same defaults) and all of them enter the run record. ``layers`` and
    ``eval_tasks`` are recorded as the comma-separated lists the command takes.
    ``command`` is the command line recorded for the run (``None``: built from the fields)."""

    dataset: str = "truthfulqa"
    split: str | None = None
    layers: tuple[int, ...] = ()
    layers_from: Path | None = None
    prone_family: str | None = None
    k: int | None = None
    mode: str = "eavss"
    lora: bool = False
    full_params: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    epochs: int = 1
    lr: float | None = None
    lam: float = 0.5
    tau: float = 0.07
    loss: Literal["infonce", "supcon"] = "infonce"
    no_in_batch: bool = False
    projection: bool = False
    batch_size: int = 4
    grad_accum: int = 4
    max_negatives: int = 4
    own_negatives: Path | None = None
    no_dataset_negatives: bool = False
    bf16: bool = False
    n_train: int | None = None
    eval_tasks: tuple[str, ...] = ()
    n_eval: int = 100
    eval_seed: int = 0
    folds: int | None = None
    fold: int | None = None
    fold_seed: int = 0
    eval_batch_size: int = 8
    kl_texts: int = 32
    ppl_windows: int = 8
    n_boot: int = 1000
    checkpoint_every: int = 50
    resume: bool = False
    command: str | None = field(default=None, compare=False)

    def validate(self) -> None:
        """``ConfigError`` naming the option for an impossible value (the training settings
        are checked again by :meth:`avsslib.mitigate.TrainConfig.validate`)."""
        from avsslib.protocol import MODES

        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r}: choose among {', '.join(MODES)}.")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("--batch-size and --eval-batch-size must be positive integers.")
        if not 0 <= self.seed < 2**32 or not 0 <= self.eval_seed < 2**32:
            raise ConfigError("--seed and --eval-seed must be integers from 0 to 2**32 - 1.")
        if self.kl_texts < 0 or self.ppl_windows < 0 or self.n_boot < 1:
            raise ConfigError("--kl-texts and --ppl-windows must be >= 0 and --n-boot >= 1.")

    def record_config(self) -> dict[str, Any]:
        """The configuration as the run record stores it (paths as text, lists comma-joined)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "command":
                continue
            if isinstance(value, tuple):
                value = ",".join(map(str, value)) or None
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    def describe(self) -> str:
        """An ``avss mitigate`` command line with these settings, every option explicit in the
        order the command records it (for the run record; :func:`avsslib.options.command_line`)."""
        from avsslib.options import command_line

        return command_line("mitigate", self)


@dataclass
class MitigationResult:
    """What :func:`run_mitigation` produced (everything is also in the files under ``out``):
    the trained ``layers``, the evaluations ``before`` and ``after``
    (:class:`avsslib.evaluate.EvalResult`), the ``change`` table, the ``side_effects`` (KL to
    the base model, perplexity), the ``training`` summary, the number of training questions
    and the run ``record``."""

    out: Path
    layers: list[int]
    before: Any
    after: Any
    change: Any
    side_effects: dict[str, Any]
    training: dict[str, Any]
    n_questions: int
    record: Any


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
        entry = obj["probe"].get(dataset)
        if not isinstance(entry, dict):
            raise ConfigError(
                f"--layers-from {path}: no probe for dataset {dataset!r} (it has "
                f"{', '.join(obj['probe']) or 'none'})."
            )
        if fold is not None:
            folds = entry.get("folds") or []
            if fold >= len(folds):
                raise ConfigError(
                    f"--layers-from {path}: no probe of fold {fold} for {dataset!r} "
                    f"({len(folds)} folds); run `avss hallucination --probe --folds`."
                )
            entry = folds[fold]
        return None, [float(x) for x in entry["accuracy"]], "probe"
    if isinstance(obj, dict) and isinstance(obj.get("prone"), dict):
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
                f"--layers-from {path}: pick a family with --prone-family "
                f"({', '.join(per_family)})."
            )
        entry = per_family.get(family) if family is not None else next(iter(per_family.values()))
        if entry is None:
            raise ConfigError(
                f"--layers-from {path}: no family {family!r} for {dataset!r} "
                f"({', '.join(per_family)})."
            )
        if fold is not None:
            if fold >= len(entry):
                raise ConfigError(f"--layers-from {path}: no fold {fold} ({len(entry)} folds).")
            entry = entry[fold]
        obj = entry
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


def read_own_negatives(path: Path | None) -> list[tuple[str, str]] | None:
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


def _card_rows(change: Any, before: Any, after: Any, n_boot: int) -> list[dict[str, Any]]:
    rows = []
    for which, result in (("before", before), ("after", after)):
        for r in result.table(n_boot=n_boot).to_dict("records"):
            rows.append({**r, "metric": f"{r['metric']} {which}"})
    for r in change.to_dict("records"):
        for kind in ("abs", "rel"):
            rows.append(
                dict(
                    task=r["task"],
                    metric=f"{r['metric']} change {kind}",
                    value=r[f"delta_{kind}"],
                    ci_low=r[f"{kind}_ci_low"],
                    ci_high=r[f"{kind}_ci_high"],
                    n=r["n"],
                )
            )
    return rows


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
    eval_ids, every, records = mitigation_questions(
        cfg_run.dataset,
        split,
        tasks,
        n_eval=cfg_run.n_eval,
        eval_seed=cfg_run.eval_seed,
        n_train=cfg_run.n_train,
        seed=cfg_run.seed,
        folds=cfg_run.folds,
        fold=cfg_run.fold,
        fold_seed=cfg_run.fold_seed,
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


def measure_side_effects(
    base: Any, model: Any, tokenizer: Any, cfg_run: MitigationConfig, data_files: dict[str, str]
) -> dict[str, Any]:
    """What training did besides its aim: KL(base || tuned) per token on ``kl_texts`` WikiText-2
    test texts and the perplexity of both models on ``ppl_windows`` windows of 512 tokens, each
    with a bootstrap interval (``n_boot`` resamples, ``eval_seed``). Adds the data files read
    to ``data_files``."""
    import numpy as np

    from avsslib.bootstrap import bootstrap_ci
    from avsslib.data import calibration_texts, data_file_hashes, load_dataset
    from avsslib.evaluate import perplexity
    from avsslib.mitigate import kl_to_base

    effects: dict[str, Any] = {}
    if cfg_run.kl_texts > 0:
        texts = calibration_texts(
            "wikitext2", "test", n=cfg_run.kl_texts, min_chars=100, seed=cfg_run.eval_seed
        )
        kl = kl_to_base(base, model, tokenizer, texts)
        low, high = bootstrap_ci(
            kl.per_text,
            lambda v: float(v[:, 0].sum() / v[:, 1].sum()),
            n_boot=cfg_run.n_boot,
            seed=cfg_run.eval_seed,
        )
        effects["kl_to_base"] = {"value": kl.value, "ci_low": low, "ci_high": high, **kl.protocol}
        data_files.update(data_file_hashes("wikitext2", "test"))
    if cfg_run.ppl_windows > 0:
        text = "".join(doc.text for doc in load_dataset("wikitext2", "test"))
        ppl = {}
        for name, m in (("base", base), ("tuned", model)):
            p = perplexity(m, tokenizer, text, max_tokens=512 * cfg_run.ppl_windows)
            values = np.stack([p.nll, p.tokens.astype(np.float64)], axis=1)
            low, high = bootstrap_ci(
                values,
                lambda v: float(np.exp(v[:, 0].sum() / v[:, 1].sum())),
                n_boot=cfg_run.n_boot,
                seed=cfg_run.eval_seed,
            )
            ppl[name] = {"value": p.value, "ci_low": low, "ci_high": high}
        effects["perplexity"] = {
            **ppl,
            "ratio_tuned_to_base": ppl["tuned"]["value"] / ppl["base"]["value"],
            "protocol": p.protocol,
        }
        data_files.update(data_file_hashes("wikitext2", "test"))
    return effects


def run_mitigation(config: MitigationConfig) -> MitigationResult:
    """One mitigation run of ``config``: evaluation questions first, training questions from the
    rest, training (:func:`avsslib.mitigate.train`), evaluation before and after, KL and
    perplexity against the base model; writes the files of the module docstring into
    ``config.out`` (``metrics.json`` last: it marks the run as finished) and returns them.

    The steps share the run record and the timings, so they stay in one function; each is a
    call into :mod:`avsslib.mitigate`, :mod:`avsslib.evaluate` or :mod:`avsslib.folds`."""
    import torch

    from avsslib.arch import blocks
    from avsslib.data import data_file_hashes
    from avsslib.evaluate import (
        EvalResult,
        evaluate,
        task_data_files,
    )
    from avsslib.fs import cached, write_csv_atomic, write_json_atomic
    from avsslib.mitigate import (
        CHECKPOINT,
        TRAINED_META,
        TrainConfig,
        ablation_layers,
        encode_triples,
        paired_change,
        train,
    )
    from avsslib.report import RunRecord, save_record

    cfg_run = config
    cfg_run.validate()
    out = Path(cfg_run.out)
    if (out / TRAINED_META).exists() and not cfg_run.resume:
        raise ConfigError(
            f"--out {out} already holds a finished run; pass --resume to re-evaluate "
            "it or choose another directory."
        )
    if (out / CHECKPOINT).exists() and not cfg_run.resume:
        raise ConfigError(
            f"--out {out} holds {CHECKPOINT} of an interrupted run; pass --resume to "
            f"continue it, or choose another directory (or delete {CHECKPOINT} to "
            "start over)."
        )
    tasks, split, eval_ids, triples = training_questions(cfg_run)

    device = default_device(cfg_run.device)
    model, tokenizer, load_s = load_seeded(
        cfg_run.model,
        dtype=cfg_run.dtype,
        device=device,
        seed=cfg_run.seed,
        trust_remote_code=cfg_run.trust_remote_code,
        causal_for="avss mitigate",
    )
    n_layers = len(blocks(model))

    given, scores = (list(cfg_run.layers) or None) if cfg_run.layers else None, None
    if cfg_run.layers_from is not None:
        given, scores, kind = layers_from_file(
            cfg_run.layers_from, cfg_run.dataset, cfg_run.prone_family, cfg_run.fold
        )
        if scores is not None and kind is not None and kind != cfg_run.mode:
            raise ConfigError(
                f"--layers-from {cfg_run.layers_from} gives {kind.upper()} scores: use it "
                f"with --mode {kind} and --k."
            )
    layers = ablation_layers(
        cfg_run.mode, n_layers, layers=given, k=cfg_run.k, scores=scores, seed=cfg_run.seed
    )

    encoded = encode_triples(triples, tokenizer)
    train_ids = [t.id for t in triples]
    assert not set(train_ids) & eval_ids
    cfg = TrainConfig(
        layers=tuple(layers),
        full_model=cfg_run.mode == "full",
        lora=cfg_run.lora,
        lora_r=cfg_run.lora_r,
        lora_alpha=cfg_run.lora_alpha,
        lr=cfg_run.lr,
        epochs=cfg_run.epochs,
        batch_size=cfg_run.batch_size,
        grad_accum=cfg_run.grad_accum,
        lam=cfg_run.lam,
        tau=cfg_run.tau,
        loss=cfg_run.loss,
        in_batch_negatives=not cfg_run.no_in_batch,
        projection=cfg_run.projection,
        bf16=cfg_run.bf16,
        seed=cfg_run.seed,
        checkpoint_every=cfg_run.checkpoint_every,
    )
    cfg.validate(n_layers)

    config_dict = cfg_run.record_config()
    config_dict.update(device=device, layers_trained=layers, train=cfg.to_dict(), eval_tasks=tasks)
    data_files = {**data_file_hashes(cfg_run.dataset, split), **task_data_files(tasks)}
    record = RunRecord.start(
        cfg_run.command or cfg_run.describe(),
        config_dict,
        cfg_run.seed,
        model=model,
        data_files=data_files,
    )
    write_json_atomic(
        out / "data.json",
        {
            "dataset": cfg_run.dataset,
            "split": split,
            "train_ids": train_ids,
            "eval_ids": sorted(eval_ids),
            "disjoint": True,
            "folds": None
            if cfg_run.folds is None
            else {"folds": cfg_run.folds, "fold": cfg_run.fold, "seed": cfg_run.fold_seed},
            "train_sources": [t.source for t in triples],
            "negatives_per_question": [len(t.negatives) for t in triples],
        },
    )

    def run_eval(m: torch.nn.Module) -> EvalResult:
        if cfg_run.folds is not None:  # exactly the fold's questions
            return evaluate(
                m,
                tokenizer,
                tasks,
                ids=eval_ids,
                seed=cfg_run.eval_seed,
                batch_size=cfg_run.eval_batch_size,
            )
        return evaluate(
            m,
            tokenizer,
            tasks,
            n=cfg_run.n_eval,
            seed=cfg_run.eval_seed,
            batch_size=cfg_run.eval_batch_size,
        )

    timings: dict[str, float] = {"load_model_s": load_s}
    key = {
        "model_sha256": record.model["state_sha256"],
        "tasks": tasks,
        "n_eval": cfg_run.n_eval,
        "eval_seed": cfg_run.eval_seed,
        "batch_size": cfg_run.eval_batch_size,
    }
    if cfg_run.folds is not None:  # the n_eval sample does not apply; the fold does
        key.update(n_eval=None, folds=[cfg_run.folds, cfg_run.fold, cfg_run.fold_seed])
    t0 = time.perf_counter()
    before, _ = cached(
        out / "before.json",
        key,
        lambda: run_eval(model),
        encode=lambda r: r.to_dict(),
        decode=EvalResult.from_dict,
    )
    timings["eval_before_s"] = time.perf_counter() - t0

    side_effects = cfg_run.kl_texts > 0 or cfg_run.ppl_windows > 0
    base = copy.deepcopy(model) if side_effects else None
    t0 = time.perf_counter()
    result = train(
        model, encoded, cfg, pad_id=tokenizer.pad_token_id, out_dir=out, resume=cfg_run.resume
    )
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    after = run_eval(model)
    timings["eval_after_s"] = time.perf_counter() - t0
    change = paired_change(before, after, n_boot=cfg_run.n_boot, seed=cfg_run.eval_seed)

    t0 = time.perf_counter()
    effects: dict[str, Any] = (
        {} if base is None else measure_side_effects(base, model, tokenizer, cfg_run, data_files)
    )
    timings["side_effects_s"] = time.perf_counter() - t0
    record.data_files = data_files

    training = {
        "steps": len(result.history),
        "resumed_from": result.resumed_from,
        "steps_run": result.steps_run,
        "s_per_step": result.s_per_step,
        "history": result.history,
        "layers": layers,
        "kind": result.meta["kind"],
        "trainable_tensors": len(result.state),
        "trainable_parameters": sum(t.numel() for t in result.state.values()),
    }
    metrics = {
        "before": before.to_dict(),
        "after": after.to_dict(),
        "change": change.to_dict("records"),
        "side_effects": effects,
        "training": training,
    }
    write_csv_atomic(out / "changes.csv", change)
    record.finish(
        {
            "table": _card_rows(change, before, after, cfg_run.n_boot),
            "side_effects": effects,
            "training": {k: v for k, v in training.items() if k != "history"},
            "loss_first": result.history[0]["loss"],
            "loss_last": result.history[-1]["loss"],
        },
        **timings,
    )
    save_record(record, out / "record.json")
    write_json_atomic(out / "metrics.json", metrics)  # last: it marks the run as finished

    return MitigationResult(
        out=out,
        layers=list(layers),
        before=before,
        after=after,
        change=change,
        side_effects=effects,
        training=training,
        n_questions=len(triples),
        record=record,
    )


__all__ = [
    "DEFAULT_EVAL_TASKS",
    "MitigationConfig",
    "MitigationResult",
    "layers_from_file",
    "measure_side_effects",
    "training_questions",
    "read_own_negatives",
    "run_mitigation",
]
