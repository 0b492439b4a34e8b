"""Hallucination labelling rules: pure functions of an answer's text (no model, no torch).

Each answer gets a label, ``"hallucinated"`` or ``"truthful"``, by the rule of its dataset
([PROPOSAL] rules, switchable by dataset; :data:`RULES`):

* ``nq_open``, ``triviaqa`` (``alias_em_or_contains``): truthful when the SQuAD-normalised
  answer equals some normalised alias or contains it as a run of whole words;
* ``sciq`` (``contains_correct_option``): truthful when the normalised answer contains the
  normalised correct option (whole words); the question alone is asked, without the support
  passage;
* ``truthfulqa`` (``rouge_l_closer_to_incorrect``): hallucinated when the answer's ROUGE-L F1
  (on normalised words) to some incorrect reference is strictly larger than to every correct
  one, i.e. ``max_incorrect > max_correct``; ties (including all-zero overlap, e.g. an empty
  answer) are truthful, as TruthfulQA itself counts a non-answer as true;
* ``wikiqa`` (``top_sentence_label``): answer-sentence selection, no generation: the model's
  top candidate by mean per-token log-probability given the prompt is its answer; label 0
  means hallucinated. Questions without a label-1 sentence are dropped.

An optional *question guard* (``question_guard=True``; the rule name gets ``+question_guard``)
tightens the three containment rules: an alias or option that the question itself contains
counts only when the answer equals it. Verbose instruct answers often repeat the question
("The lion king started on broadway in 1929" matches the NQ alias "Broadway"). It is off by
default, to keep the plain containment rule.

"SQuAD normalisation" is the official SQuAD v1.1 ``normalize_answer``: lower case, punctuation
removed (``"Eiffel-Tower"`` -> ``"eiffeltower"``), the articles *a*, *an*, *the* removed,
whitespace collapsed. Containment is tested on words, so ``"beatlemania"`` does not contain
``"beatles"``.

:func:`label_answer` applies the rule of a dataset to one generated answer; the answers
themselves come from :mod:`avsslib.label_generation`. Writes no files.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np

from avsslib.errors import ConfigError, DataError

__all__ = [
    "LABELS",
    "RULES",
    "Label",
    "evidence_text",
    "label_alias",
    "label_answer",
    "label_sciq",
    "label_truthfulqa",
    "label_wikiqa",
    "normalize_answer",
    "rouge_l",
    "rule_name",
]

LABELS: tuple[str, str] = ("hallucinated", "truthful")

RULES: dict[str, str] = {
    "nq_open": "alias_em_or_contains",
    "triviaqa": "alias_em_or_contains",
    "sciq": "contains_correct_option",
    "truthfulqa": "rouge_l_closer_to_incorrect",
    "wikiqa": "top_sentence_label",
}
"""Dataset name (``avsslib.data``) -> labelling rule (module docstring)."""

Label = Literal["hallucinated", "truthful"]


# ---------------------------------------------------------------------- text rules
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The SQuAD v1.1 answer normalisation: lower case, no punctuation, no articles, single
    spaces (``"The  Eiffel-Tower!"`` -> ``"eiffeltower"``)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _contains_words(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    """True when ``needle`` (non-empty) occurs as a contiguous run of whole words of ``haystack``."""
    n = len(needle)
    return n > 0 and any(
        list(haystack[i : i + n]) == list(needle) for i in range(len(haystack) - n + 1)
    )


def _echoes(question: str | None, target_words: Sequence[str]) -> bool:
    """True when a question is given and contains ``target_words`` (normalised, whole words)."""
    return question is not None and _contains_words(
        normalize_answer(question).split(), target_words
    )


def label_alias(
    answer: str, aliases: Iterable[str], *, question: str | None = None
) -> tuple[Label, dict[str, Any]]:
    """NQ-open / TriviaQA rule: truthful when the normalised answer equals some normalised alias
    or contains it (whole words). Aliases that normalise to nothing are ignored.

    ``question`` turns on the *question guard*: an alias that the question itself contains
    (``"Left"`` for "... left or right?") only counts when the answer equals it, since a verbose
    answer that repeats the question would otherwise "contain" it.

    Returns ``(label, evidence)``; evidence: ``normalized_answer``, ``matched_alias`` (the first
    alias that matched, as given, else ``None``), ``match`` (``"equal"``, ``"contains"`` or
    ``None``), ``n_aliases`` and, with the guard, ``question_aliases`` (the aliases it held back
    from containment)."""
    norm = normalize_answer(answer)
    words = norm.split()
    aliases = list(aliases)
    match, matched, echoed = None, None, []
    for alias in aliases:
        alias_norm = normalize_answer(alias)
        if not alias_norm:
            continue
        if alias_norm == norm:
            match, matched = "equal", alias
            break
        if _echoes(question, alias_norm.split()):
            echoed.append(alias)
        elif match is None and _contains_words(words, alias_norm.split()):
            match, matched = "contains", alias
    evidence: dict[str, Any] = {
        "normalized_answer": norm,
        "matched_alias": matched,
        "match": match,
        "n_aliases": len(aliases),
    }
    if question is not None:
        evidence["question_aliases"] = echoed
    return ("truthful" if match else "hallucinated"), evidence


def label_sciq(
    answer: str, correct: str, *, question: str | None = None
) -> tuple[Label, dict[str, Any]]:
    """SciQ free-form rule: truthful when the normalised answer contains the normalised correct
    option (whole words). With ``question`` (the question guard, as in :func:`label_alias`), an
    option the question contains counts only when the answer equals it. Evidence:
    ``normalized_answer``, ``correct_option``, ``match`` and, with the guard, ``echoed``."""
    norm = normalize_answer(answer)
    option = normalize_answer(correct).split()
    echoed = _echoes(question, option)
    match = norm.split() == option if echoed else _contains_words(norm.split(), option)
    match = bool(option) and match
    evidence = {"normalized_answer": norm, "correct_option": correct, "match": match}
    if question is not None:
        evidence["echoed"] = echoed
    return ("truthful" if match else "hallucinated"), evidence


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two word lists (dynamic programme)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) between two texts on SQuAD-normalised words, in [0, 1]:
    ``2 P R / (P + R)`` with ``P = LCS / len(candidate)``, ``R = LCS / len(reference)``; 0 when
    either text has no word."""
    c, r = normalize_answer(candidate).split(), normalize_answer(reference).split()
    lcs = _lcs(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def label_truthfulqa(
    answer: str, correct: Sequence[str], incorrect: Sequence[str]
) -> tuple[Label, dict[str, Any]]:
    """TruthfulQA rule: hallucinated when ``max_i ROUGE-L(answer, incorrect_i)`` is strictly larger
    than ``max_c ROUGE-L(answer, correct_c)``; ties are truthful.

    Evidence: ``rouge_l_correct`` and ``rouge_l_incorrect`` (one F1 per reference, in the
    references' order), ``max_correct``, ``max_incorrect``, ``closest_correct`` and
    ``closest_incorrect`` (the best-matching references)."""
    if not correct or not incorrect:
        raise DataError(
            "TruthfulQA labelling needs at least one correct and one incorrect "
            f"reference, got {len(correct)} and {len(incorrect)}."
        )
    rc = [rouge_l(answer, ref) for ref in correct]
    ri = [rouge_l(answer, ref) for ref in incorrect]
    evidence = {
        "rouge_l_correct": rc,
        "rouge_l_incorrect": ri,
        "max_correct": max(rc),
        "max_incorrect": max(ri),
        "closest_correct": correct[int(np.argmax(rc))],
        "closest_incorrect": incorrect[int(np.argmax(ri))],
    }
    return ("hallucinated" if max(ri) > max(rc) else "truthful"), evidence


def label_wikiqa(scores: Sequence[float], labels: Sequence[int]) -> tuple[Label, dict[str, Any]]:
    """WikiQA rule: the candidate with the highest score (ties: the first) is the model's answer;
    its label 0 means hallucinated. Evidence: ``chosen_index``, ``scores``, ``labels``,
    ``n_candidates``, ``n_positive``."""
    if len(scores) != len(labels) or not len(scores):
        raise ConfigError(
            f"WikiQA labelling needs one score per candidate, got {len(scores)} "
            f"scores for {len(labels)} candidates."
        )
    chosen = int(np.argmax(np.asarray(scores, dtype=np.float64)))
    evidence = {
        "chosen_index": chosen,
        "scores": [float(s) for s in scores],
        "labels": [int(v) for v in labels],
        "n_candidates": len(labels),
        "n_positive": int(sum(int(v) == 1 for v in labels)),
    }
    return ("truthful" if int(labels[chosen]) == 1 else "hallucinated"), evidence


def rule_name(dataset: str, question_guard: bool = False) -> str:
    """The name of ``dataset``'s rule (``RULES``), with ``+question_guard`` when the guard is on
    and the rule is one of the three containment rules."""
    if dataset not in RULES:
        raise ConfigError(
            f"no hallucination labelling rule for {dataset!r}; datasets with a "
            f"rule: {sorted(RULES)}."
        )
    rule = RULES[dataset]
    if question_guard and dataset in ("nq_open", "triviaqa", "sciq"):
        rule += "+question_guard"
    return rule


def label_answer(
    dataset: str, answer: str, record: Any, *, question_guard: bool = False
) -> tuple[Label, dict[str, Any]]:
    """Label a generated ``answer`` to ``record`` (the dataset's typed record) by the rule of
    ``dataset``: :func:`label_truthfulqa`, :func:`label_sciq` or :func:`label_alias` (WikiQA
    selects a sentence instead of generating; :func:`label_wikiqa`). ``question_guard`` passes
    the record's question to the containment rules. Returns ``(label, evidence)``."""
    if dataset == "truthfulqa":
        return label_truthfulqa(answer, record.correct_answers, record.incorrect_answers)
    guard = record.question if question_guard else None
    if dataset == "sciq":
        return label_sciq(answer, record.answers[0], question=guard)
    return label_alias(answer, record.answers, question=guard)


def evidence_text(example: Any) -> str:
    """The part of a labelled answer's ``evidence`` that decided its label, as one short text
    (the matched alias, the correct option found or not, the two ROUGE-L scores, or the chosen
    WikiQA sentence and its label)."""
    ev, rule = example.evidence, example.rule
    if rule.startswith("alias"):
        found = ev["matched_alias"] or f"{ev['n_aliases']} aliases"
        return f"{ev['match'] or 'no match'} ({found})"
    if rule.startswith("contains"):
        return f"correct option {ev['correct_option']!r}: {'found' if ev['match'] else 'absent'}"
    if rule.startswith("rouge"):
        return f"ROUGE-L correct {ev['max_correct']:.2f} vs incorrect {ev['max_incorrect']:.2f}"
    chosen = ev["chosen_index"]
    return f"sentence {chosen} of {ev['n_candidates']}, label {ev['labels'][chosen]}"
