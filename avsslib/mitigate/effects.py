"""Side effects and changes of a mitigation run: KL to the base model, the paired change of
every metric, and a quick TruthfulQA check."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from avsslib.bootstrap import percentile_interval
from avsslib.data import TruthfulQAExample
from avsslib.errors import ConfigError
from avsslib.eval_results import paired_metrics, statistic
from avsslib.mitigate.data import prompt

# ---------------------------------------------------------------- side effects and changes


@dataclass
class KLDivergence:
    """Mean token KL(base || tuned) in nats. ``per_text``: shape (n, 2) = (KL summed over the
    text's positions, positions), for a ratio-of-sums bootstrap; ``value`` = column sums'
    ratio. ``protocol`` says how it was measured."""

    value: float
    per_text: np.ndarray
    protocol: dict[str, Any] = field(default_factory=dict)


@torch.inference_mode()
def kl_to_base(
    base_model: torch.nn.Module,
    tuned_model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 4,
) -> KLDivergence:
    """Mean over token positions of ``KL(p_base || p_tuned)`` of the next-token distributions
    on ``texts`` (each cut to ``max_length`` tokens; every real position counts, so a text of
    L tokens gives L positions). Log-probabilities in float32; sums in float64."""
    if not texts:
        raise ConfigError("kl_to_base: no texts given.")
    base_model.eval()
    tuned_model.eval()
    per = np.zeros((len(texts), 2))
    for start in tqdm(
        range(0, len(texts), batch_size),
        desc="KL to base",
        unit="batch",
        leave=False,
        disable=len(texts) <= 4 * batch_size,
    ):
        enc = tokenizer(
            list(texts[start : start + batch_size]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        )
        out = []
        for m in (base_model, tuned_model):
            dev = next(m.parameters()).device
            out.append(
                torch.log_softmax(
                    m(
                        input_ids=enc["input_ids"].to(dev),
                        attention_mask=enc["attention_mask"].to(dev),
                    ).logits.float(),
                    dim=-1,
                ).cpu()
            )
        kl = (out[0].exp() * (out[0] - out[1])).sum(-1).double() * enc["attention_mask"]
        per[start : start + len(kl), 0] = kl.sum(1).numpy()
        per[start : start + len(kl), 1] = enc["attention_mask"].sum(1).numpy()
    value = float(per[:, 0].sum() / per[:, 1].sum())
    return KLDivergence(
        value,
        per,
        {
            "direction": "KL(base || tuned)",
            "unit": "nats per token",
            "texts": len(texts),
            "max_length": max_length,
            "positions": int(per[:, 1].sum()),
        },
    )


def paired_change(
    before: Any, after: Any, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> pd.DataFrame:
    """Absolute and relative change of every metric from ``before`` to ``after``
    (:class:`avsslib.evaluate.EvalResult` s on the same examples).

    ``delta_abs = after - before`` and ``delta_rel = (after - before) / before``, each with a
    paired percentile bootstrap interval (one set of example indices per resample, applied to
    both runs). ``delta_rel`` is ``inf``/``nan`` for a zero baseline; intervals follow the NaN
    policy of :mod:`avsslib.bootstrap`: NaN when any resample is 0/0 (small samples of a
    rarely-correct metric, e.g. MC1 on 20 questions: read the absolute change then), order
    statistics when some are ``inf``. Columns: task, metric, before, after, delta_abs,
    abs_ci_low, abs_ci_high, delta_rel, rel_ci_low, rel_ci_high, n, higher_is_better.
    """
    rows = []
    for name, b in before.tasks.items():
        if name not in after.tasks:
            continue
        a = after.tasks[name]
        if sorted(b.ids) != sorted(a.ids):
            raise ConfigError(
                f"task {name}: before and after scored different examples; evaluate "
                "both with the same n and seed."
            )
        for metric, mb, _, x, y, pairs in paired_metrics(
            b, a, n_boot=n_boot, seed=seed, alpha=alpha
        ):
            stat = statistic(mb.kind)
            x0, y0 = np.float64(stat(x)), np.float64(stat(y))
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = (pairs[:, 1] - pairs[:, 0]) / pairs[:, 0]
                delta_rel = (y0 - x0) / x0
            rows.append(
                dict(
                    task=name,
                    metric=metric,
                    before=float(x0),
                    after=float(y0),
                    delta_abs=float(y0 - x0),
                    **dict(
                        zip(
                            ("abs_ci_low", "abs_ci_high"),
                            percentile_interval(pairs[:, 1] - pairs[:, 0], alpha),
                            strict=True,
                        )
                    ),
                    delta_rel=float(delta_rel),
                    **dict(
                        zip(
                            ("rel_ci_low", "rel_ci_high"),
                            percentile_interval(rel, alpha),
                            strict=True,
                        )
                    ),
                    n=len(b.ids),
                    higher_is_better=mb.higher_is_better,
                )
            )
    return pd.DataFrame(
        rows,
        columns=[
            "task",
            "metric",
            "before",
            "after",
            "delta_abs",
            "abs_ci_low",
            "abs_ci_high",
            "delta_rel",
            "rel_ci_low",
            "rel_ci_high",
            "n",
            "higher_is_better",
        ],
    )


def truthfulqa_quick_eval(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[TruthfulQAExample],
    *,
    max_new_tokens: int = 32,
    task: str = "truthfulqa",
) -> Any:
    """A light held-out evaluation of TruthfulQA questions, for runs sized for a CPU (the
    book's chapter 06); returns an :class:`avsslib.evaluate.EvalResult` with one task.

    Per question: ``truthful`` (the greedy answer, :func:`avsslib.labels.generate_answers`,
    labelled by the TruthfulQA rule), ``mc1`` (the correct MC1 choice has the highest
    log-probability after :func:`prompt`, no few-shot preamble) and ``margin`` (that
    log-probability minus the best wrong choice's, nats). The harness tasks ``truthfulqa_mc1`` /
    ``truthfulqa_mc2`` remain the reference protocol (6-shot preamble, as ``avss mitigate``
    evaluates); this one costs one generation and one scoring pass per question.
    """
    from avsslib.evaluate import EvalResult, MetricScores, TaskResult
    from avsslib.labels import (
        DEFAULT_TEMPLATE,
        continuation_logprobs,
        generate_answers,
        label_truthfulqa,
    )

    if not records:
        raise ConfigError("truthfulqa_quick_eval: no questions to evaluate.")
    few = [r.id for r in records if len(r.mc1_choices) < 2 or list(r.mc1_labels).count(1) != 1]
    if few:
        raise ConfigError(
            f"truthfulqa_quick_eval: questions {few[:5]} need at least two MC1 "
            "choices with exactly one correct."
        )
    t0 = time.perf_counter()
    answers = generate_answers(
        model, tokenizer, records, max_new_tokens=max_new_tokens, progress=False
    )
    truthful = [
        label_truthfulqa(a.answer, r.correct_answers, r.incorrect_answers)[0] == "truthful"
        for a, r in zip(answers, records, strict=True)
    ]
    margins = []
    for r in records:
        ids = [tokenizer(" " + o, add_special_tokens=False)["input_ids"] for o in r.mc1_choices]
        logp = np.asarray(
            continuation_logprobs(model, tokenizer, tokenizer(prompt(r.question))["input_ids"], ids)
        )
        true = list(r.mc1_labels).index(1)
        margins.append(float(logp[true] - np.delete(logp, true).max()))
    scores = {
        "truthful": np.array(truthful, float),
        "mc1": (np.array(margins) > 0).astype(float),
        "margin": np.array(margins),
    }
    metrics = {k: MetricScores(float(v.mean()), "mean", True, v) for k, v in scores.items()}
    protocol = {
        "generation": {
            "template": DEFAULT_TEMPLATE,
            "chat_template": "auto",
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
        },
        "scoring_prompt": prompt("{question}"),
        "scoring": "log-probability of each "
        "MC1 choice after the scoring prompt (tokenizer's BOS, no chat template)",
        "metrics": "truthful (labelling rule), mc1 (no preamble), margin (nats)",
    }
    return EvalResult(
        {
            task: TaskResult(
                task, tuple(r.id for r in records), metrics, protocol, time.perf_counter() - t0
            )
        }
    )


__all__ = [
    "KLDivergence",
    "kl_to_base",
    "paired_change",
    "truthfulqa_quick_eval",
]
