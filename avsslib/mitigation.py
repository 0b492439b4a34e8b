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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from avsslib.errors import ConfigError
from avsslib.mitigate.data import DEFAULT_MAX_NEGATIVES
from avsslib.mitigate.train import TrainConfig
from avsslib.mitigation_inputs import (
    DEFAULT_EVAL_TASKS,
    layers_from_file,
    read_own_negatives,
    training_questions,
)
from avsslib.mitigation_steps import (
    before_key,
    card_rows,
    choose_layers,
    evaluator,
    measure_side_effects,
    refuse_earlier_run,
    train_config,
    training_summary,
    write_data_file,
)
from avsslib.models import ModelOptions, default_device


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
    # the training settings default to TrainConfig's (one place for each default)
    lora: bool = TrainConfig.lora
    full_params: bool = TrainConfig.full_model
    lora_r: int = TrainConfig.lora_r
    lora_alpha: int = TrainConfig.lora_alpha
    epochs: int = TrainConfig.epochs
    lr: float | None = TrainConfig.lr
    lam: float = TrainConfig.lam
    tau: float = TrainConfig.tau
    loss: Literal["infonce", "supcon"] = TrainConfig.loss
    no_in_batch: bool = not TrainConfig.in_batch_negatives
    projection: bool = TrainConfig.projection
    batch_size: int = TrainConfig.batch_size
    grad_accum: int = TrainConfig.grad_accum
    max_negatives: int = DEFAULT_MAX_NEGATIVES
    own_negatives: Path | None = None
    no_dataset_negatives: bool = False
    bf16: bool = TrainConfig.bf16
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


def run_mitigation(config: MitigationConfig) -> MitigationResult:
    """One mitigation run of ``config``: evaluation questions first, training questions from the
    rest, training (:func:`avsslib.mitigate.train`), evaluation before and after, KL and
    perplexity against the base model; writes the files of the module docstring into
    ``config.out`` (``metrics.json`` last: it marks the run as finished) and returns them.

    It stays longer than most functions because its steps share the model, the run record and
    the timings, in an order the files depend on; each step is one call into
    :mod:`avsslib.mitigation_inputs`, :mod:`avsslib.mitigation_steps`, :mod:`avsslib.mitigate`
    or :mod:`avsslib.evaluate`."""

    from avsslib.arch import blocks
    from avsslib.data import data_file_hashes
    from avsslib.evaluate import EvalResult, task_data_files
    from avsslib.fs import cached, write_csv_atomic, write_json_atomic
    from avsslib.mitigate import encode_triples, paired_change, train
    from avsslib.report import RunRecord, save_record

    cfg_run = config
    cfg_run.validate()
    out = Path(cfg_run.out)
    refuse_earlier_run(out, cfg_run.resume)
    tasks, split, eval_ids, triples = training_questions(cfg_run)

    device = default_device(cfg_run.device)
    model, tokenizer, load_s = cfg_run.load(device, causal_for="avss mitigate")
    n_layers = len(blocks(model))
    layers = choose_layers(cfg_run, n_layers)

    encoded = encode_triples(triples, tokenizer)
    train_ids = [t.id for t in triples]
    assert not set(train_ids) & eval_ids
    cfg = train_config(cfg_run, layers)
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
    write_data_file(out, cfg_run, split, triples, eval_ids)

    run_eval = evaluator(cfg_run, tokenizer, tasks, eval_ids)

    timings: dict[str, float] = {"load_model_s": load_s}
    key = before_key(record.model["state_sha256"], cfg_run, tasks)
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

    training = training_summary(result, layers)
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
            "table": card_rows(change, before, after, cfg_run.n_boot),
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
