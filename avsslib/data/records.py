"""Small typed records, one per kind of dataset. Frozen, hashable, built only by the loaders.

Ids are the dataset's own where it has them (TriviaQA ``question_id``, WikiQA ``QuestionID``,
TruthfulQA ``id``); otherwise ``"<family>/<split>/<index>"`` with the 0-based position in the
split, so SciQ open and SciQ multiple-choice test items share ids (``"sciq/test/17"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^\s*=(?: =)* .*? =(?: =)*\s*$")


@dataclass(frozen=True, slots=True)
class QAExample:
    """A short-answer question (NQ-open, TriviaQA, SciQ open).

    ``answers`` holds every acceptable answer; the canonical one comes first (TriviaQA ``value``,
    SciQ ``correct_answer``). ``context`` is a supporting passage where the dataset has one
    (SciQ ``support``), else ``None``.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    context: str | None = None


@dataclass(frozen=True, slots=True)
class MCExample:
    """A multiple-choice question with exactly one correct option: ``choices[label]``."""

    id: str
    question: str
    choices: tuple[str, ...]
    label: int
    context: str | None = None

    @property
    def answer(self) -> str:
        """The correct option's text."""
        return self.choices[self.label]


@dataclass(frozen=True, slots=True)
class TruthfulQAExample:
    """One TruthfulQA question with its generation references and MC1/MC2 targets.

    ``mc1_labels`` has exactly one 1 (the single true option); ``mc2_labels`` marks every true
    option with 1. Labels are aligned with their ``*_choices``.
    """

    id: str
    question: str
    best_answer: str
    correct_answers: tuple[str, ...]
    incorrect_answers: tuple[str, ...]
    category: str
    mc1_choices: tuple[str, ...]
    mc1_labels: tuple[int, ...]
    mc2_choices: tuple[str, ...]
    mc2_labels: tuple[int, ...]

    def mc1(self) -> MCExample:
        """The MC1 task as an :class:`MCExample` (label = position of the single true option)."""
        return MCExample(self.id, self.question, self.mc1_choices, self.mc1_labels.index(1))


@dataclass(frozen=True, slots=True)
class WikiQAQuestion:
    """A WikiQA question with its candidate sentences (file order) and their 0/1 labels."""

    id: str
    question: str
    document_title: str
    sentences: tuple[str, ...]
    labels: tuple[int, ...]

    @property
    def has_positive(self) -> bool:
        """True when at least one candidate sentence answers the question (label 1)."""
        return 1 in self.labels


@dataclass(frozen=True, slots=True)
class SentimentExample:
    """An SST-2 sentence (lower-cased, tokenized as in GLUE) and its label: 0 negative, 1 positive."""

    id: str
    sentence: str
    label: int


@dataclass(frozen=True, slots=True)
class TextDocument:
    """One WikiText article: ``text`` runs from its `` = Title = `` line to the next article.

    Concatenating the ``text`` of all documents of a split, in order, gives back the whole split
    exactly (for ``test``: the usual Hugging Face perplexity string ``"\\n\\n".join(rows)``).
    """

    id: str
    title: str
    text: str

    def paragraphs(self) -> list[str]:
        """Non-empty, non-heading lines, stripped: the article's body paragraphs."""
        return [
            line.strip()
            for line in self.text.split("\n")
            if line.strip() and not _HEADING.match(line)
        ]


Record = (
    QAExample | MCExample | TruthfulQAExample | WikiQAQuestion | SentimentExample | TextDocument
)
