"""Training data of the contrastive mitigation: triples (question, gold answer, wrong answers),
their encoding and batches, and the layers each ablation mode trains."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from avsslib.data import MCExample, QAExample, TruthfulQAExample, WikiQAQuestion
from avsslib.errors import ConfigError
from avsslib.protocol import ANSWER_PROMPT
from avsslib.protocol import MODES as PROTOCOL_MODES

PROMPT = ANSWER_PROMPT
"""The prompt of every triple (:data:`avsslib.protocol.ANSWER_PROMPT`); the anchor is this text
alone."""

DEFAULT_MAX_NEGATIVES = 4
"""Negatives kept per question (K)."""

MODES = PROTOCOL_MODES
"""Ablation modes of :func:`ablation_layers` (:data:`avsslib.protocol.MODES`)."""

# ---------------------------------------------------------------- triples


def prompt(question: str) -> str:
    """The prompt for ``question`` (:data:`PROMPT`, question stripped)."""
    return PROMPT.format(question=question.strip())


@dataclass(frozen=True)
class Triple:
    """One question's contrastive example.

    ``positive`` is the gold answer and ``negatives`` the wrong answers (answer texts only); the
    model sees ``anchor`` (the prompt), ``positive_text`` and ``negative_texts`` (prompt, one
    space, answer). ``source`` is the dataset name, with ``+model`` when some negatives are
    the model's own hallucinated answers. ``id`` is the record's id.
    """

    question: str
    positive: str
    negatives: tuple[str, ...]
    source: str
    id: str = ""

    @property
    def anchor(self) -> str:
        return prompt(self.question)

    @property
    def positive_text(self) -> str:
        return f"{self.anchor} {self.positive}"

    @property
    def negative_texts(self) -> tuple[str, ...]:
        return tuple(f"{self.anchor} {n}" for n in self.negatives)


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


def _answers(dataset_name: str, ex: Any) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """(gold answer or None, every correct answer, dataset negatives) of one record."""
    if isinstance(ex, MCExample):
        return ex.answer, (ex.answer,), tuple(c for i, c in enumerate(ex.choices) if i != ex.label)
    if isinstance(ex, TruthfulQAExample):
        return ex.best_answer, (ex.best_answer, *ex.correct_answers), ex.incorrect_answers
    if isinstance(ex, WikiQAQuestion):
        good = tuple(s for s, y in zip(ex.sentences, ex.labels, strict=True) if y == 1)
        bad = tuple(s for s, y in zip(ex.sentences, ex.labels, strict=True) if y == 0)
        return (good[0] if good else None), good, bad
    if isinstance(ex, QAExample):
        return ex.answers[0], ex.answers, ()
    raise ConfigError(
        f"dataset {dataset_name!r}: cannot build triples from {type(ex).__name__} records; use "
        "sciq_mc, truthfulqa, wikiqa, nq_open, triviaqa or sciq."
    )


def has_answer(dataset_name: str, ex: Any) -> bool:
    """Whether a record has a correct answer to train on (WikiQA questions without a label-1
    sentence have none; every record of the other datasets has one)."""
    gold = _answers(dataset_name, ex)[0]
    return bool(gold and gold.strip())


def build_triples(
    dataset_name: str,
    examples: Iterable[Any],
    *,
    own_negatives: Iterable[tuple[str, str]] | None = None,
    max_negatives: int = DEFAULT_MAX_NEGATIVES,
    dataset_negatives: bool = True,
) -> list[Triple]:
    """Triples from dataset records (types of :mod:`avsslib.data`).

    Positive: ``MCExample`` (``sciq_mc``) the correct choice; ``TruthfulQAExample`` the best
    answer; ``WikiQAQuestion`` its first label-1 sentence (questions without one are skipped);
    ``QAExample`` (NQ, TriviaQA, SciQ open) its first answer.
    Negatives, at most ``max_negatives`` in this order: the model's own hallucinated answers
    (``own_negatives``: ``(question, answer)`` pairs, matched to records by question text, case
    and spaces ignored), then, with ``dataset_negatives``, the dataset's (SciQ distractors,
    TruthfulQA incorrect answers, WikiQA label-0 sentences; ``QAExample`` has none). A negative
    equal to any correct answer (case, spaces and a final period ignored) or to an earlier
    negative is dropped. Triples may have no negatives (in-batch negatives still apply).
    """
    if isinstance(max_negatives, bool) or not isinstance(max_negatives, int) or max_negatives < 0:
        raise ConfigError(f"max_negatives = {max_negatives!r}: must be an integer >= 0.")
    own: dict[str, list[str]] = {}
    for question, answer in own_negatives or ():
        own.setdefault(_norm(question), []).append(answer)
    triples = []
    for ex in examples:
        gold, correct, negs = _answers(dataset_name, ex)
        if gold is None or not gold.strip():
            continue
        mine = own.get(_norm(ex.question), [])
        blocked = {_norm(c) for c in correct}
        kept: list[str] = []
        from_model = False
        for k, candidate in enumerate([*mine, *(negs if dataset_negatives else ())]):
            key = _norm(candidate)
            if len(kept) == max_negatives or not key or key in blocked:
                continue
            blocked.add(key)
            kept.append(candidate.strip())
            from_model |= k < len(mine)
        source = f"{dataset_name}+model" if from_model else dataset_name
        triples.append(Triple(ex.question.strip(), gold.strip(), tuple(kept), source, ex.id))
    return triples


@dataclass(frozen=True)
class EncodedTriple:
    """Token ids of one triple: ``prompt`` (with the tokenizer's special tokens), and the
    ``positive`` and ``negatives`` answers (a leading space, no special tokens), each to be
    appended to the prompt."""

    prompt: tuple[int, ...]
    positive: tuple[int, ...]
    negatives: tuple[tuple[int, ...], ...] = ()


def encode_triples(
    triples: Sequence[Triple], tokenizer: Any, *, max_answer_tokens: int = 64
) -> list[EncodedTriple]:
    """Tokenize triples; answers are cut to ``max_answer_tokens`` tokens (long WikiQA
    sentences). Prompt and answer are tokenized apart, so the answer tokens are exact."""
    if max_answer_tokens < 1:
        raise ConfigError(f"max_answer_tokens = {max_answer_tokens}: must be >= 1.")

    def answer(text: str) -> tuple[int, ...]:
        return tuple(
            tokenizer(" " + text, add_special_tokens=False)["input_ids"][:max_answer_tokens]
        )

    return [
        EncodedTriple(
            tuple(tokenizer(t.anchor)["input_ids"]),
            answer(t.positive),
            tuple(answer(n) for n in t.negatives),
        )
        for t in triples
    ]


@dataclass
class Batch:
    """A padded micro-batch of B questions: rows ``0..B-1`` are the positives (prompt + gold
    answer), then every question's negatives.

    ``input_ids``/``attention_mask``: (N, T), right-padded. ``answer_mask``: (N, T) bool, True
    on answer tokens. ``anchor_index``: (B,) position of the last prompt token of each
    positive row. ``negative_rows``: (B, K) row of each negative (0 where missing);
    ``negative_mask``: (B, K) bool, True where the negative exists.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    anchor_index: torch.Tensor
    negative_rows: torch.Tensor
    negative_mask: torch.Tensor

    @property
    def size(self) -> int:
        return len(self.anchor_index)


def collate(items: Sequence[EncodedTriple], pad_id: int, *, negatives: bool = True) -> Batch:
    """Pad ``items`` into one :class:`Batch` (``negatives=False``: positives only)."""
    rows = [(it.prompt, it.positive) for it in items]
    k = max((len(it.negatives) for it in items), default=0) if negatives else 0
    neg_rows = torch.zeros(len(items), k, dtype=torch.long)
    neg_mask = torch.zeros(len(items), k, dtype=torch.bool)
    if negatives:
        for i, it in enumerate(items):
            for j, ans in enumerate(it.negatives):
                neg_rows[i, j], neg_mask[i, j] = len(rows), True
                rows.append((it.prompt, ans))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros(len(rows), width, dtype=torch.long)
    answer = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, (p, a) in enumerate(rows):
        ids[r, : len(p) + len(a)] = torch.tensor(p + a)
        attn[r, : len(p) + len(a)] = 1
        answer[r, len(p) : len(p) + len(a)] = True
    anchor = torch.tensor([len(it.prompt) - 1 for it in items])
    return Batch(ids, attn, answer, anchor, neg_rows, neg_mask)


# ---------------------------------------------------------------- layer choice for ablations


def ablation_layers(
    mode: str,
    n_layers: int,
    *,
    layers: Sequence[int] | None = None,
    k: int | None = None,
    scores: Sequence[float] | None = None,
    seed: int = 0,
) -> list[int]:
    """The blocks that train in each ablation mode, sorted.

    * ``eavss``: ``layers`` (the prone layers), as given.
    * ``random``: ``k`` layers (default ``len(layers)``) drawn without replacement by
      ``numpy.random.default_rng(seed)``.
    * ``avss``: the ``k`` layers with the lowest ``scores`` (plain AVSS, ties by index), or
      ``layers`` as given when no scores are passed.
    * ``probe``: the ``k`` layers with the highest ``scores`` (probe accuracies, ties to the
      lower index), or ``layers`` as given when no scores are passed.
    * ``full``: every layer (and :class:`TrainConfig` ``full_model=True`` trains all parameters).
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}.")
    if mode == "full":
        return list(range(n_layers))
    if mode == "avss" and scores is not None:
        if len(scores) != n_layers:
            raise ConfigError(f"{len(scores)} AVSS scores for a model with {n_layers} layers.")
        count = k if k is not None else (len(layers) if layers else None)
        if count is None:
            raise ConfigError("mode 'avss' with scores needs k (or layers, whose count is used).")
        return _check_layers(
            np.argsort(np.asarray(scores), kind="stable")[:count].tolist(), n_layers
        )
    if mode == "probe" and scores is not None:
        if len(scores) != n_layers:
            raise ConfigError(f"{len(scores)} probe scores for a model with {n_layers} layers.")
        count = k if k is not None else (len(layers) if layers else None)
        if count is None or not 1 <= count <= n_layers:
            raise ConfigError(
                f"mode 'probe' with scores needs k in 1..{n_layers} (or layers, whose "
                "count is used)."
            )
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        return _check_layers(order[:count].tolist(), n_layers)
    if mode == "random":
        count = k if k is not None else len(layers or ())
        if not 1 <= count <= n_layers:
            raise ConfigError(
                f"mode 'random': k = {count} must lie in 1..{n_layers}; pass k or layers."
            )
        return sorted(
            np.random.default_rng(seed).choice(n_layers, size=count, replace=False).tolist()
        )
    if not layers:
        raise ConfigError(f"mode {mode!r} needs the layer indices (e.g. the prone layers).")
    return _check_layers(layers, n_layers)


def _check_layers(layers: Iterable[int], n_layers: int) -> list[int]:
    out = sorted(int(x) for x in layers)
    if not out or len(set(out)) != len(out) or out[0] < 0 or out[-1] >= n_layers:
        raise ConfigError(f"layers {out}: need distinct indices in 0..{n_layers - 1}.")
    return out


__all__ = [
    "Batch",
    "DEFAULT_MAX_NEGATIVES",
    "EncodedTriple",
    "MODES",
    "PROMPT",
    "Triple",
    "ablation_layers",
    "build_triples",
    "collate",
    "encode_triples",
    "has_answer",
    "prompt",
]
