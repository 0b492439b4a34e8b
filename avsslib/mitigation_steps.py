"""The steps of a mitigation run (:func:`avsslib.mitigation.run_mitigation`) around training:
refusing an earlier run's folder, choosing the layers, the training configuration, the
evaluation before and after, the side effects (KL to the base model, perplexity) and what the
record and ``metrics.json`` say about training.

Writes ``data.json`` into the run's folder (:func:`write_data_file`); the other files of the run
are written by :func:`avsslib.mitigation.run_mitigation`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avsslib.errors import ConfigError
from avsslib.mitigation_inputs import layers_from_file
from avsslib.options import named_values

if TYPE_CHECKING:
    from avsslib.mitigation import MitigationConfig

__all__ = [
    "before_key",
    "card_rows",
    "choose_layers",
    "evaluator",
    "measure_side_effects",
    "refuse_earlier_run",
    "train_config",
    "training_summary",
    "write_data_file",
]


def card_rows(change: Any, before: Any, after: Any, n_boot: int) -> list[dict[str, Any]]:
    """The result card's table: every metric before and after, then its absolute and relative
    change with their paired bootstrap intervals."""
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


def refuse_earlier_run(out: Path, resume: bool) -> None:
    """``ConfigError`` when ``out`` holds a finished or an interrupted run and ``resume`` is off."""
    from avsslib.mitigate import CHECKPOINT, TRAINED_META

    if (out / TRAINED_META).exists() and not resume:
        raise ConfigError(
            f"--out {out} already holds a finished run; pass --resume to re-evaluate "
            "it or choose another directory."
        )
    if (out / CHECKPOINT).exists() and not resume:
        raise ConfigError(
            f"--out {out} holds {CHECKPOINT} of an interrupted run; pass --resume to "
            f"continue it, or choose another directory (or delete {CHECKPOINT} to "
            "start over)."
        )


def choose_layers(cfg_run: MitigationConfig, n_layers: int) -> list[int]:
    """The layers the run trains (:func:`avsslib.mitigate.ablation_layers` of the mode), from
    ``--layers`` or the layers or scores of ``--layers-from``."""
    from avsslib.mitigate import ablation_layers

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
    return ablation_layers(
        cfg_run.mode, n_layers, layers=given, k=cfg_run.k, scores=scores, seed=cfg_run.seed
    )


def train_config(cfg_run: MitigationConfig, layers: list[int]) -> Any:
    """The :class:`avsslib.mitigate.TrainConfig` of the run's options and layers."""
    from avsslib.mitigate import TrainConfig

    derived: dict[str, Any] = {
        "layers": tuple(layers),
        "full_model": cfg_run.mode == "full",
        "in_batch_negatives": not cfg_run.no_in_batch,
    }
    # every other training setting the run shares with TrainConfig by name
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in derived]
    shared = named_values(cfg_run, *(name for name in names if hasattr(cfg_run, name)))
    return TrainConfig(**shared, **derived)


def write_data_file(
    out: Path, cfg_run: MitigationConfig, split: str, triples: list[Any], eval_ids: set[str]
) -> None:
    """``data.json``: the training and evaluation question ids and the triples' sources."""
    from avsslib.fs import write_json_atomic

    train_ids = [t.id for t in triples]
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


def before_key(model_sha256: Any, cfg_run: MitigationConfig, tasks: list[str]) -> dict[str, Any]:
    """What ``before.json`` must have been made with to be reused: the base model, the tasks
    and the evaluation sample (or fold)."""
    key = {
        "model_sha256": model_sha256,
        "tasks": tasks,
        "n_eval": cfg_run.n_eval,
        "eval_seed": cfg_run.eval_seed,
        "batch_size": cfg_run.eval_batch_size,
    }
    if cfg_run.folds is not None:  # the n_eval sample does not apply; the fold does
        key.update(n_eval=None, folds=[cfg_run.folds, cfg_run.fold, cfg_run.fold_seed])
    return key


def training_summary(result: Any, layers: list[int]) -> dict[str, Any]:
    """What ``metrics.json`` and the record say about training (steps, resume, loss history,
    the trained layers and parameters)."""
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
    return training


def evaluator(
    cfg_run: MitigationConfig, tokenizer: Any, tasks: list[str], eval_ids: set[str]
) -> Callable[[Any], Any]:
    """``run_eval(model) -> EvalResult``: the run's evaluation of a model (before and after
    training) on exactly the fold's questions, or on the ``n_eval`` sample."""
    from avsslib.evaluate import evaluate

    def run_eval(m: Any) -> Any:
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

    return run_eval
