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
evaluating).

``wikitext2_ppl`` is our own token-level perplexity (:func:`perplexity`), protocol-explicit.

Every task returns its metric values as the harness aggregates them **and** one score per
example (from the logged samples), so :func:`bootstrap_ci` gives confidence intervals and
:func:`retention` a paired bootstrap between an original and a pruned model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from avsslib.bootstrap import (
    bootstrap_ci,
    check_bootstrap,
    paired_replicates,
    percentile_interval,
    resample_indices,
)
from avsslib.errors import ConfigError

TASK_DIR = Path(__file__).resolve().parent / "tasks"
"""The task templates (harness-style YAML) and their ``utils.py``."""

FEWSHOT_POOL = 256
"""Training examples (sampled with the run's seed) from which few-shot examples are drawn."""

BACKENDS = ("avsslib", "harness")
"""Model backends of :func:`evaluate`: ours (:class:`avsslib.eval_backend.CachedLM`, the
default) and the harness's ``HFLM`` (for comparison)."""

Kind = Literal["mean", "perplexity", "bits_per_byte"]


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


# ---------------------------------------------------------------- statistics


def statistic(kind: Kind) -> Callable[[np.ndarray], float]:
    """The aggregate of per-example values of one kind.

    * ``"mean"``: values shape (n,), the mean.
    * ``"perplexity"``: values shape (n, 2) = (NLL in nats, count of tokens/words/bytes),
      ``exp(sum NLL / sum count)`` (the harness's ``weighted_perplexity``).
    * ``"bits_per_byte"``: shape (n, 2), ``sum NLL / sum bytes / ln 2``.
    """
    if kind == "mean":
        return lambda v: float(np.mean(v))
    if kind == "perplexity":
        return lambda v: float(np.exp(v[:, 0].sum() / v[:, 1].sum()))
    if kind == "bits_per_byte":
        return lambda v: float(v[:, 0].sum() / v[:, 1].sum() / math.log(2))
    raise ConfigError(
        f"unknown metric kind {kind!r}; expected 'mean', 'perplexity' or 'bits_per_byte'."
    )


# ---------------------------------------------------------------- results


@dataclass
class MetricScores:
    """One metric of one task.

    ``value``: the aggregate (as the harness reports it). ``per_example``: shape (n,) for
    ``kind="mean"``, (n, 2) = (NLL nats, count) for the ratio kinds; row i belongs to the
    task's ``ids[i]``. ``statistic(kind)(per_example)`` equals ``value``.
    """

    value: float
    kind: Kind
    higher_is_better: bool
    per_example: np.ndarray

    def ci(self, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
        """Bootstrap interval over examples (:func:`bootstrap_ci`)."""
        return bootstrap_ci(
            self.per_example, statistic(self.kind), n_boot=n_boot, seed=seed, alpha=alpha
        )


@dataclass
class TaskResult:
    """A task's metrics, the ids of its examples (in row order) and its protocol."""

    task: str
    ids: tuple[str, ...]
    metrics: dict[str, MetricScores]
    protocol: dict[str, Any]
    wall_s: float


@dataclass
class EvalResult:
    """Results of :func:`evaluate`, one :class:`TaskResult` per task (in the order asked)."""

    tasks: dict[str, TaskResult]

    def table(self, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
        """One row per task and metric: value, bootstrap CI (``ci_low``, ``ci_high``), ``n``
        examples, ``higher_is_better``."""
        rows = []
        for name, t in self.tasks.items():
            for metric, m in t.metrics.items():
                low, high = m.ci(n_boot=n_boot, seed=seed, alpha=alpha)
                rows.append(
                    dict(
                        task=name,
                        metric=metric,
                        value=m.value,
                        ci_low=low,
                        ci_high=high,
                        n=len(t.ids),
                        higher_is_better=m.higher_is_better,
                    )
                )
        return pd.DataFrame(
            rows, columns=["task", "metric", "value", "ci_low", "ci_high", "n", "higher_is_better"]
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: per task its protocol, ids and metrics with per-example scores; the wall
        times under ``"timing"``."""
        return {
            "tasks": {
                name: {
                    "protocol": t.protocol,
                    "ids": list(t.ids),
                    "metrics": {
                        k: {
                            "value": m.value,
                            "kind": m.kind,
                            "higher_is_better": m.higher_is_better,
                            "per_example": m.per_example.tolist(),
                        }
                        for k, m in t.metrics.items()
                    },
                }
                for name, t in self.tasks.items()
            },
            "timing": {name: t.wall_s for name, t in self.tasks.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_dict` (e.g. read back from a ``metrics.json``)."""
        timing = data.get("timing", {})
        return cls(
            {
                name: TaskResult(
                    task=name,
                    ids=tuple(t["ids"]),
                    metrics={
                        k: MetricScores(
                            float(m["value"]) if m["value"] is not None else math.nan,
                            m["kind"],
                            bool(m["higher_is_better"]),
                            np.asarray(m["per_example"], dtype=np.float64),
                        )
                        for k, m in t["metrics"].items()
                    },
                    protocol=dict(t["protocol"]),
                    wall_s=float(timing.get(name, math.nan)),
                )
                for name, t in data["tasks"].items()
            }
        )


# ---------------------------------------------------------------- retention


def retention(
    original: EvalResult,
    pruned: EvalResult,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Retention per task and metric, with a paired bootstrap interval.

    Retention is ``pruned / original`` for metrics where higher is better and
    ``original / pruned`` where lower is better (perplexity: ``PPL_orig / PPL_pruned``), so 1.0
    means no loss and higher is better. Both runs must have scored the same examples (same
    ``n`` and ``seed``); each bootstrap resample draws one set of example indices and applies it
    to both runs. Tasks present in only one result are skipped.

    A ratio with a zero denominator is ``inf`` (``nan`` for 0/0); intervals follow the NaN
    policy of :mod:`avsslib.bootstrap` (``nan`` when some resample gives 0/0).

    Returns columns task, metric, original, pruned, retention, ci_low, ci_high, n, inverted.
    """
    common = [t for t in original.tasks if t in pruned.tasks]
    if not common:
        raise ConfigError(
            f"no task in common: original has {sorted(original.tasks)}, pruned has {sorted(pruned.tasks)}; "
            "evaluate both models on the same tasks."
        )
    rows = []
    for name in common:
        o, p = original.tasks[name], pruned.tasks[name]
        if set(o.ids) != set(p.ids) or len(o.ids) != len(p.ids):
            raise ConfigError(
                f"task {name}: the two runs scored different examples ({len(o.ids)} vs {len(p.ids)}); "
                "run both with the same n, seed and tokenizer so the bootstrap can pair them."
            )
        position = {i: k for k, i in enumerate(p.ids)}
        order = np.array([position[i] for i in o.ids])
        check_bootstrap(len(o.ids), n_boot, alpha)
        idx = resample_indices(len(o.ids), n_boot, seed)
        for metric, mo in o.metrics.items():
            if metric not in p.metrics:
                continue
            mp = p.metrics[metric]
            stat = statistic(mo.kind)
            a, b = mo.per_example, mp.per_example[order]
            inverted = not mo.higher_is_better

            def ratio(x: float, y: float, inverted: bool = inverted) -> float:
                num, den = (x, y) if inverted else (y, x)
                with np.errstate(divide="ignore", invalid="ignore"):
                    return float(np.float64(num) / np.float64(den))

            pairs = paired_replicates(a, b, stat, idx)
            boot = np.array([ratio(x, y) for x, y in pairs])
            low, high = percentile_interval(boot, alpha)
            rows.append(
                dict(
                    task=name,
                    metric=metric,
                    original=mo.value,
                    pruned=mp.value,
                    retention=ratio(mo.value, mp.value),
                    ci_low=low,
                    ci_high=high,
                    n=len(o.ids),
                    inverted=inverted,
                )
            )
    return pd.DataFrame(
        rows,
        columns=[
            "task",
            "metric",
            "original",
            "pruned",
            "retention",
            "ci_low",
            "ci_high",
            "n",
            "inverted",
        ],
    )


# ---------------------------------------------------------------- perplexity


def prefix_token_id(tokenizer: Any) -> int | None:
    """The token lm-evaluation-harness puts before a text it scores: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


@dataclass
class Perplexity:
    """Token-level perplexity of one text, with its window-by-window NLL.

    ``nll``: shape (n_windows,), summed negative log-likelihood (nats) of the tokens each window
    scores; ``tokens``: shape (n_windows,), how many it scores. ``value = exp(sum nll / sum
    tokens)``. ``protocol`` states how (see :func:`perplexity`).
    """

    value: float
    nll: np.ndarray
    tokens: np.ndarray
    protocol: dict[str, Any]


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    text: str,
    *,
    window: int = 512,
    stride: int = 512,
    max_tokens: int | None = None,
    prefix: bool = True,
    batch_size: int = 8,
) -> Perplexity:
    """Token-level perplexity of ``text`` in sliding windows.

    Protocol: ``text`` is tokenized without special tokens and cut to its first ``max_tokens``
    tokens; with ``prefix=True`` the harness's prefix token (BOS, else EOS) is put once before
    the first token, so every text token is scored. The model reads windows of ``window``
    positions starting every ``stride`` positions (``1 <= stride <= window``), except that the
    last window is moved back to end at the last token (a full window, as the harness does);
    each window scores only the next-token predictions no earlier window made, so every token
    is scored exactly once, with at least ``window - stride`` tokens of context (fewer only in
    the first window). ``stride == window`` gives the rolling windows of lm-evaluation-harness's
    ``loglikelihood_rolling`` with ``max_length = window`` (same scores, tested).
    Log-probabilities are computed in float32 from the model's logits; NLL sums in float64.
    Puts the model in eval mode.

    Returns a :class:`Perplexity` with per-window NLL sums (for bootstrap intervals).
    """
    if window < 2 or not 1 <= stride <= window:
        raise ConfigError(
            f"window = {window}, stride = {stride}: need window >= 2 and 1 <= stride <= window."
        )
    if max_tokens is not None and max_tokens < 2:
        raise ConfigError(f"max_tokens = {max_tokens}: need at least 2 tokens (or None for all).")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    first = prefix_token_id(tokenizer) if prefix else None
    if prefix and first is None:
        raise ConfigError(
            "prefix=True but the tokenizer has neither a BOS nor an EOS token; use prefix=False."
        )
    stream = ([first] if prefix else []) + list(ids)
    if len(stream) < 2:
        raise ConfigError(f"the text has {len(ids)} token(s): nothing to score.")
    x = torch.tensor(stream[:-1])
    y = torch.tensor(stream[1:])
    length = len(x)
    spans = []  # (start, end, first scored position)
    start, done = 0, 0
    while done < length:
        start = min(start, max(0, length - window))  # the last window ends at the last token
        end = min(start + window, length)
        spans.append((start, end, done))
        done, start = end, start + stride
    model.eval()
    device = next(model.parameters()).device
    nll = np.zeros(len(spans))
    tokens = np.zeros(len(spans), dtype=np.int64)

    def width(k: int) -> int:
        return spans[k][1] - spans[k][0]

    batches: list[list[int]] = []  # consecutive windows of equal width
    for k in range(len(spans)):
        if batches and len(batches[-1]) < batch_size and width(batches[-1][0]) == width(k):
            batches[-1].append(k)
        else:
            batches.append([k])
    for batch in tqdm(
        batches, desc="perplexity", unit="batch", leave=False, disable=len(batches) < 4
    ):
        inputs = torch.stack([x[spans[k][0] : spans[k][1]] for k in batch]).to(device)
        logits = model(input_ids=inputs).logits  # (batch, width, vocab)
        for row, k in enumerate(batch):
            s, e, d = spans[k]
            logp = torch.log_softmax(logits[row, d - s :].float(), dim=-1)  # scored positions only
            picked = logp.gather(-1, y[d:e].to(device)[:, None])[:, 0]
            nll[k] = -picked.double().sum().item()
            tokens[k] = e - d
    value = float(np.exp(nll.sum() / tokens.sum()))
    protocol = {
        "unit": "token",
        "window": window,
        "stride": stride,
        "prefix_token": tokenizer.convert_ids_to_tokens(first) if prefix else None,
        "prefix": "once, before the first token"
        if prefix
        else "none (the first token is not scored)",
        "add_special_tokens": False,
        "text_tokens": len(ids),
        "max_tokens": max_tokens,
        "scored_tokens": int(tokens.sum()),
        "windows": len(spans),
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "logprob_dtype": "float32",
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
    }
    return Perplexity(value, nll, tokens, protocol)


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
    return out


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
    import lm_eval

    results: dict[str, TaskResult] = {}
    with _offline(), tempfile.TemporaryDirectory(prefix="avss-eval-") as tmp:
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
