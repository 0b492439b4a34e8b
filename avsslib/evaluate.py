"""Evaluation: lm-evaluation-harness tasks on our records, windowed perplexity, retention.

Harness tasks (``sst2``, ``sciq_mc``, ``triviaqa_em``, ``nq_open_em``, ``truthfulqa_mc1``,
``truthfulqa_mc2``, ``wikiqa``, ``wikitext2_word_ppl``) run through ``lm_eval.simple_evaluate``
on the in-memory model, by default through our backend
(:class:`avsslib.eval_backend.CachedLM`, an ``HFLM`` subclass that encodes shared contexts
once and reuses their KV cache; same numbers within float32 rounding), with
``backend="harness"`` through the harness's own ``HFLM(pretrained=model, tokenizer=tokenizer)``. Their documents are
our records (:mod:`avsslib.data`, subsampled with ``n``/``seed``), written as JSONL into a
temporary folder; a generated task YAML includes the template in ``avsslib/tasks/<task>.yaml``
and points ``dataset_path: json`` at those files, and a ``TaskManager(include_path=...)``
registers it. Nothing is downloaded (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` are set while
evaluating). The harness's per-document template compilation and its environment header are
left out while evaluating (:func:`avsslib.harness_plumbing.lean_harness`).

``wikitext2_ppl`` is our own token-level perplexity (:func:`perplexity`, in
:mod:`avsslib.perplexity`), protocol-explicit.

Every task returns its metric values as the harness aggregates them **and** one score per
example (from the logged samples; :mod:`avsslib.eval_results`), so :func:`bootstrap_ci` gives
confidence intervals and :func:`retention` (:mod:`avsslib.retention`) a paired bootstrap
between an original and a pruned model. Those names are re-exported here, so
``from avsslib.evaluate import ...`` keeps working for all of them. The task files are
written into a temporary folder that is removed after the run; nothing else is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from avsslib.bootstrap import bootstrap_ci
from avsslib.errors import ConfigError
from avsslib.eval_results import EvalResult, Kind, MetricScores, TaskResult, statistic
from avsslib.harness_plumbing import lean_harness
from avsslib.perplexity import Perplexity, perplexity, prefix_token_id
from avsslib.retention import retention

TASK_DIR = Path(__file__).resolve().parent / "tasks"
"""The task templates (harness-style YAML) and their ``utils.py``."""

FEWSHOT_POOL = 256
"""Training examples (sampled with the run's seed) from which few-shot examples are drawn."""

BACKENDS = ("avsslib", "harness")
"""Model backends of :func:`evaluate`: ours (:class:`avsslib.eval_backend.CachedLM`, the
default) and the harness's ``HFLM`` (for comparison)."""


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's documents come from and who runs it.

    ``dataset``/``split``: arguments of :func:`avsslib.data.load_dataset`. ``fewshot``: the
    ``(dataset, split)`` of the few-shot pool, ``None`` when the task has none (then only
    ``num_fewshot=0`` is possible). ``runner``: ``"harness"`` (a YAML in ``avsslib/tasks``) or
    ``"perplexity"`` (:func:`perplexity`).
    """

    dataset: str
    split: str
    runner: Literal["harness", "perplexity"] = "harness"
    fewshot: tuple[str, str] | None = None
    answerable_only: bool = False


TASKS: dict[str, TaskSpec] = {
    "wikitext2_ppl": TaskSpec("wikitext2", "test", runner="perplexity"),
    "wikitext2_word_ppl": TaskSpec("wikitext2", "test"),
    "sst2": TaskSpec("sst2", "validation", fewshot=("sst2", "train")),
    "sciq_mc": TaskSpec("sciq_mc", "test"),
    "triviaqa_em": TaskSpec("triviaqa", "subset1000"),
    "nq_open_em": TaskSpec("nq_open", "validation"),
    "truthfulqa_mc1": TaskSpec("truthfulqa", "validation"),
    "truthfulqa_mc2": TaskSpec("truthfulqa", "validation"),
    "wikiqa": TaskSpec("wikiqa", "test", answerable_only=True),
}
"""Our task names. ``n`` counts questions, except: ``wikitext2_word_ppl`` articles (sampled),
``wikitext2_ppl`` windows (the first ``n`` of the test string)."""

# Metrics aggregated as a ratio of sums: per-example values are (nll_nats, count) pairs.
_RATIO_KINDS: dict[str, Kind] = {
    "word_perplexity": "perplexity",
    "byte_perplexity": "perplexity",
    "bits_per_byte": "bits_per_byte",
    "token_perplexity": "perplexity",
}


# ---------------------------------------------------------------- harness plumbing


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` (environment and the already-imported
    ``datasets`` config) for the duration, then restore them."""
    import datasets.config as dc

    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in keys}
    saved_cfg = {k: getattr(dc, k) for k in keys if hasattr(dc, k)}
    os.environ.update({k: "1" for k in keys})
    for k in saved_cfg:
        setattr(dc, k, True)
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for k, v in saved_cfg.items():
            setattr(dc, k, v)


def _write_docs(path: Path, records: Sequence[Any]) -> str:
    """Write records as JSONL (one ``dataclasses.asdict`` per line); returns the file's sha256."""
    text = "".join(
        json.dumps(dataclasses.asdict(r), ensure_ascii=False, sort_keys=True) + "\n"
        for r in records
    )
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def materialise_task(
    name: str,
    folder: Path,
    *,
    n: int | None = None,
    seed: int = 0,
    num_fewshot: int | None = None,
    ids: Collection[str] | None = None,
) -> dict[str, Any]:
    """Write the documents of harness task ``name`` and its task YAML into ``folder``.

    ``folder/<name>.test.jsonl`` holds the sampled records (``load_dataset(..., n=n,
    seed=seed)``), ``folder/<name>.train.jsonl`` the few-shot pool if the task has one, and
    ``folder/<name>.yaml`` includes ``avsslib/tasks/<name>.yaml`` with ``dataset_kwargs``
    pointing at them (and ``num_fewshot`` when given). ``TaskManager(include_path=folder)``
    then knows the task. ``ids`` (instead of ``n``): exactly the records with these ids, in
    file order (ids of other datasets are ignored; none of this task's is a ``ConfigError``).
    Returns the data part of the task's protocol.
    """
    from avsslib.data import load_dataset

    spec = TASKS[name]
    folder.mkdir(parents=True, exist_ok=True)
    if ids is not None:
        if n is not None:
            raise ConfigError(f"task {name}: pass n or ids, not both.")
        wanted = set(ids)
        records = [
            r
            for r in load_dataset(spec.dataset, spec.split, answerable_only=spec.answerable_only)
            if r.id in wanted
        ]
        if not records:
            raise ConfigError(
                f"task {name}: none of the {len(wanted)} given ids is a question of "
                f"{spec.dataset}:{spec.split}."
            )
    else:
        records = load_dataset(
            spec.dataset, spec.split, n=n, seed=seed, answerable_only=spec.answerable_only
        )
    files = {"test": folder / f"{name}.test.jsonl"}
    protocol: dict[str, Any] = {
        "dataset": spec.dataset,
        "split": spec.split,
        "n_requested": n,
        "seed": seed,
        **({"ids_given": len(records)} if ids is not None else {}),
        "records": len(records),
        "docs_sha256": _write_docs(files["test"], records),
        "answerable_only": spec.answerable_only,
        "fewshot_pool": None,
    }
    if spec.fewshot is not None:
        pool = load_dataset(spec.fewshot[0], spec.fewshot[1], n=FEWSHOT_POOL, seed=seed)
        files["train"] = folder / f"{name}.train.jsonl"
        protocol["fewshot_pool"] = {
            "dataset": spec.fewshot[0],
            "split": spec.fewshot[1],
            "n": len(pool),
            "seed": seed,
            "docs_sha256": _write_docs(files["train"], pool),
        }
    config: dict[str, Any] = {
        "include": str(TASK_DIR / f"{name}.yaml"),
        "task": name,
        "dataset_kwargs": {
            "data_files": {k: str(v) for k, v in files.items()},
            "cache_dir": str(folder / "hf_datasets_cache"),
        },
    }
    if num_fewshot is not None:
        config["num_fewshot"] = num_fewshot
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return protocol


def _per_example(samples: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, Kind]:
    kind = _RATIO_KINDS.get(metric, "mean")
    if kind == "mean":
        return np.array([float(s[metric]) for s in samples]), kind
    # harness ratio metrics log (loglikelihood, count): store (NLL, count)
    return np.array([(-float(s[metric][0]), float(s[metric][1])) for s in samples]), kind


def _harness_task(
    lm: Any, name: str, folder: Path, seed: int, chat_template: bool
) -> tuple[tuple[str, ...], dict[str, MetricScores], dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[name],
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        apply_chat_template=chat_template,
    )
    results, cfg = out["results"][name], out["configs"][name]
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    filter_key = samples[0]["filter"]
    metrics: dict[str, MetricScores] = {}
    for entry in cfg["metric_list"]:
        metric = entry["metric"]
        values, kind = _per_example(samples, metric)
        higher = entry.get("higher_is_better", kind == "mean")
        metrics[metric] = MetricScores(
            float(results[f"{metric},{filter_key}"]), kind, bool(higher), values
        )
    protocol = {
        "runner": "lm-evaluation-harness",
        "template": f"avsslib/tasks/{name}.yaml",
        "output_type": cfg["output_type"],
        "num_fewshot": cfg.get("num_fewshot"),
        "doc_to_text": str(cfg.get("doc_to_text")),
        "target_delimiter": cfg.get("target_delimiter"),
        "fewshot_delimiter": cfg.get("fewshot_delimiter"),
        "generation_kwargs": cfg.get("generation_kwargs"),
        "filter": filter_key,
        "chat_template": chat_template,
        "examples": len(samples),
    }
    if cfg["output_type"] == "loglikelihood_rolling":
        protocol["max_length"] = lm.max_length
        protocol["prefix_token"] = lm.tokenizer.convert_ids_to_tokens(lm.prefix_token_id)
    return tuple(s["doc"]["id"] for s in samples), metrics, protocol


def _perplexity_task(
    model: torch.nn.Module, tokenizer: Any, n: int | None, window: int, stride: int, batch_size: int
) -> tuple[tuple[str, ...], dict[str, MetricScores], dict]:
    from avsslib.data import load_dataset

    spec = TASKS["wikitext2_ppl"]
    text = "".join(doc.text for doc in load_dataset(spec.dataset, spec.split))
    max_tokens = None if n is None else window + (n - 1) * stride
    ppl = perplexity(
        model,
        tokenizer,
        text,
        window=window,
        stride=stride,
        max_tokens=max_tokens,
        batch_size=batch_size,
    )
    values = np.stack([ppl.nll, ppl.tokens.astype(np.float64)], axis=1)
    protocol = {
        "runner": "avsslib.evaluate.perplexity",
        "dataset": spec.dataset,
        "split": spec.split,
        "text": "all test articles joined (the HF perplexity string, LF line ends)",
        "n_requested": n,
        **ppl.protocol,
    }
    ids = tuple(f"window/{k}" for k in range(len(values)))
    return ids, {"token_perplexity": MetricScores(ppl.value, "perplexity", False, values)}, protocol


def task_data_files(tasks: Sequence[str]) -> dict[str, str]:
    """``{file: sha256}`` of every data file the tasks read (few-shot pools included), for
    run records (:func:`avsslib.data.data_file_hashes`)."""
    from avsslib.data import data_file_hashes

    out: dict[str, str] = {}
    for name in tasks:
        spec = TASKS[name]
        for dataset, split in [
            (spec.dataset, spec.split),
            *([spec.fewshot] if spec.fewshot else []),
        ]:
            out.update(data_file_hashes(dataset, split))
    return out


def _make_lm(
    backend: str, model: torch.nn.Module, tokenizer: Any, batch_size: int, max_length: int | None
) -> Any:
    """The harness model object of ``backend`` (``"avsslib"``: ``CachedLM``; ``"harness"``: ``HFLM``)."""
    if backend == "harness":
        from lm_eval.models.huggingface import HFLM

        return HFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length
        )
    from avsslib.eval_backend import CachedLM

    return CachedLM(model, tokenizer, batch_size=batch_size, max_length=max_length)


def _backend_protocol(lm: Any, backend: str) -> dict[str, Any]:
    """What a run record says about the model backend that produced a harness task's numbers."""
    out: dict[str, Any] = {"model_backend": backend, "model_backend_class": type(lm).__name__}
    if backend == "avsslib":
        out["cache_reuse"] = lm.reuse_cache
        out["cache_reuse_reason"] = lm.reuse_reason
        out["greedy_decode"] = lm.decode  # how generation steps ran: depends on the device
    return out


def _check_arguments(
    tasks: Sequence[str], n: int | None, num_fewshot: int | None, backend: str
) -> None:
    """Refuse, before any work, what :func:`evaluate` cannot run (a ``ConfigError`` that says
    what to pass instead)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(
            f"unknown task(s) {unknown or '(none given)'}; known tasks: {', '.join(TASKS)}."
        )
    if num_fewshot is not None:
        if num_fewshot < 0:
            raise ConfigError(
                f"num_fewshot = {num_fewshot}: must be >= 0 (or None for task defaults)."
            )
        no_pool = [t for t in tasks if num_fewshot > 0 and TASKS[t].fewshot is None]
        if no_pool:
            with_pool = [t for t, s in TASKS.items() if s.fewshot is not None]
            raise ConfigError(
                f"num_fewshot = {num_fewshot} but {', '.join(no_pool)} ha(s) no few-shot pool (only "
                f"{', '.join(with_pool)} do); run those tasks with num_fewshot=None or 0."
            )
    if n is not None and n <= 0:
        raise ConfigError(
            f"n = {n}: the number of examples per task must be positive (or None for all)."
        )
    if backend not in BACKENDS:
        raise ConfigError(
            f"backend = {backend!r}: expected one of {', '.join(map(repr, BACKENDS))} "
            "('avsslib' is ours and the default, 'harness' the harness's HFLM)."
        )


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    max_length: int | None = 2048,
    ppl_window: int = 512,
    ppl_stride: int = 512,
    chat_template: bool = False,
    backend: str = "avsslib",
    ids: Collection[str] | None = None,
) -> EvalResult:
    """Evaluate an in-memory causal LM on our tasks (names in :data:`TASKS`).

    Args:
        model, tokenizer: e.g. from :func:`avsslib.models.load_model`; pruned or edited models
            are evaluated as they are (no copy, no reload).
        tasks: task names, run in this order.
        n: examples per task (questions; articles for ``wikitext2_word_ppl``; windows for
            ``wikitext2_ppl``), sampled with ``seed`` by :func:`avsslib.data.load_dataset`;
            ``None`` = all.
        seed: data sample, few-shot pool and harness seeds (Python, NumPy, torch, few-shot).
        batch_size: harness batch size; also windows per forward pass for ``wikitext2_ppl``.
        num_fewshot: ``None`` = each task's default (``sst2``: 4, the others 0); an integer
            sets it for every task, and a value > 0 needs a task with a few-shot pool.
        max_length: the harness's context length (``HFLM(max_length=...)``; ``None`` = the
            model's own, e.g. 8192 for SmolLM2), which is also the window of
            ``wikitext2_word_ppl``'s rolling log-likelihood. The default, 2048 (the harness's
            fallback), bounds memory: the harness holds ``batch_size x max_length x vocab``
            float32 log-probabilities at once.
        ppl_window, ppl_stride: the protocol of ``wikitext2_ppl`` (see :func:`perplexity`).
        chat_template: wrap harness prompts in the tokenizer's chat template (the harness's
            ``apply_chat_template``; few-shot examples as turns). Off by default, as in the
            harness; instruction-tuned models often answer only inside their template (the
            embedded SmolLM2-Instruct ends most plain TriviaQA answers at once).
        backend: the harness model backend: ``"avsslib"`` (default; :class:`avsslib.eval_backend.
            CachedLM`, shared contexts encoded once, same numbers as the harness's within
            rounding) or ``"harness"`` (the harness's own ``HFLM``, for comparison). Each
            harness task's protocol records it (``model_backend``).
        ids: instead of ``n``: evaluate exactly these questions of each harness task (e.g. one
            fold of :mod:`avsslib.folds`); ids of other datasets are ignored.

    Returns an :class:`EvalResult`: per task, the metrics, one score per example and the
    protocol (data, sample, prompt, few-shot, decoding, versions of what produced the numbers).
    """
    _check_arguments(tasks, n, num_fewshot, backend)
    import lm_eval

    results: dict[str, TaskResult] = {}
    with _offline(), lean_harness(), tempfile.TemporaryDirectory(prefix="avss-eval-") as tmp:
        lm = None
        wanted_ids = ids  # `ids` is reused below for each task's example ids
        for name in tqdm(tasks, desc="tasks", unit="task"):
            t0 = time.perf_counter()
            if TASKS[name].runner == "perplexity":
                ids, metrics, protocol = _perplexity_task(
                    model, tokenizer, n, ppl_window, ppl_stride, batch_size
                )
            else:
                if lm is None:
                    lm = _make_lm(backend, model, tokenizer, batch_size, max_length)
                folder = Path(tmp) / name
                data_protocol = materialise_task(
                    name, folder, n=n, seed=seed, num_fewshot=num_fewshot, ids=wanted_ids
                )
                ids, metrics, protocol = _harness_task(lm, name, folder, seed, chat_template)
                protocol = {
                    **data_protocol,
                    **protocol,
                    "batch_size": batch_size,
                    "lm_eval": lm_eval.__version__,
                    **_backend_protocol(lm, backend),
                }
            results[name] = TaskResult(name, ids, metrics, protocol, time.perf_counter() - t0)
    return EvalResult(results)


__all__ = [
    "BACKENDS",
    "FEWSHOT_POOL",
    "TASKS",
    "EvalResult",
    "MetricScores",
    "Perplexity",
    "TaskResult",
    "TaskSpec",
    "bootstrap_ci",
    "evaluate",
    "materialise_task",
    "perplexity",
    "prefix_token_id",
    "retention",
    "statistic",
    "task_data_files",
]
