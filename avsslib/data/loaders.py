"""Per-dataset parsers: local files (layout of ``shared/data``) and Hugging Face hub rows,
both mapped into the same records.

Local parsers take the split's file paths (in the order the registry lists them) and the split
name. Hub mappers take plain row dicts as ``datasets`` yields them, so they can be tested on
hand-made rows; where a hub row is malformed they raise the same :class:`DataError`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from avsslib.data import _io
from avsslib.data.records import (
    MCExample,
    QAExample,
    SentimentExample,
    TextDocument,
    TruthfulQAExample,
    WikiQAQuestion,
)
from avsslib.errors import DataError

Row = Mapping[str, Any]


def _hub_rows(rows: Iterable[Row], source: str) -> list[tuple[str, Mapping[str, Any]]]:
    return [
        (f"{source}, row {i}", _io.obj(row, f"{source}, row {i}", "a row dict"))
        for i, row in enumerate(rows)
    ]


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


# ---------------------------------------------------------------- NQ-open

_NQ_LINE = "an object with 'question' (string) and 'answer' (non-empty list of strings)"


def _nq(record: Row, where: str, id_: str) -> QAExample:
    return QAExample(id_, _io.text(record, "question", where), _io.texts(record, "answer", where))


def nq_open_local(paths: Sequence[Path], split: str) -> list[QAExample]:
    """NQ-open JSONL: one ``{"question", "answer": [...]}`` per line."""
    return [
        _nq(_io.obj(o, where, _NQ_LINE), where, f"nq_open/{split}/{i}")
        for i, (where, o) in enumerate(_io.iter_jsonl(paths[0], _NQ_LINE))
    ]


def nq_open_from_hub(rows: Iterable[Row], split: str) -> list[QAExample]:
    """``google-research-datasets/nq_open`` rows: ``{"question": str, "answer": [str, ...]}``."""
    return [
        _nq(r, w, f"nq_open/{split}/{i}") for i, (w, r) in enumerate(_hub_rows(rows, "nq_open"))
    ]


# ---------------------------------------------------------------- TriviaQA

_TQA_LINE = "an object with 'question_id', 'question' and 'answer' {'value', 'aliases'}"
_PERSONA_ITEM = "objects with 'qid', 'question', 'gold_answer' and 'aliases' (list of strings)"


def _triviaqa(record: Row, where: str) -> QAExample:
    value = _io.text(record, "answer.value", where)
    aliases = _io.texts(record, "answer.aliases", where, nonempty=False)
    return QAExample(
        _io.text(record, "question_id", where),
        _io.text(record, "question", where),
        _unique((value, *aliases)),
    )


def triviaqa_local(paths: Sequence[Path], split: str) -> list[QAExample]:
    """TriviaQA: the 1,000-question JSONL (HF answer dict) or the 150-question persona JSON list.

    Answers are the canonical ``value`` (``gold_answer``) first, then the aliases, duplicates dropped.
    """
    path = paths[0]
    if path.suffix == ".jsonl":
        return [_triviaqa(_io.obj(o, w, _TQA_LINE), w) for w, o in _io.iter_jsonl(path, _TQA_LINE)]
    out = []
    for where, item in _io.read_json_list(path, _PERSONA_ITEM):
        record = _io.obj(item, where, _PERSONA_ITEM)
        gold = _io.text(record, "gold_answer", where)
        aliases = _io.texts(record, "aliases", where, nonempty=False)
        out.append(
            QAExample(
                _io.text(record, "qid", where),
                _io.text(record, "question", where),
                _unique((gold, *aliases)),
            )
        )
    return out


def triviaqa_from_hub(rows: Iterable[Row], split: str) -> list[QAExample]:
    """``mandarjoshi/trivia_qa`` (``rc.nocontext``) rows: ``question_id``, ``question``,
    ``answer{value, aliases, ...}``; other columns are ignored."""
    return [_triviaqa(r, w) for w, r in _hub_rows(rows, "trivia_qa")]


# ---------------------------------------------------------------- SciQ

SCIQ_TRAIN_LINES = 11_679  # sciq_train.jsonl: lines 1-11,679 train, 11,680-12,679 validation
SCIQ_VALIDATION_LINES = 1_000
_SCIQ_LINE = "an object with 'question' (string) and 'answer' (string)"
_MC_ITEM = "objects with 'instruction' (the 4-option template) and 'answer' ('answer1'..'answer4')"
_MC_TEMPLATE = re.compile(
    r"Please choose the correct answer to the question: (?P<q>.+?)\n\n"
    r"Answer1: (?P<a1>[^\n]*)\nAnswer2: (?P<a2>[^\n]*)\nAnswer3: (?P<a3>[^\n]*)\nAnswer4: (?P<a4>[^\n]*)"
    r"\n\nAnswer format: answer1/answer2/answer3/answer4",
    re.DOTALL,
)
_MC_ANSWER = re.compile(r"answer([1-4])")


def _sciq_questions(path: Path, split: str) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs of one SciQ split from the ``{question, answer}`` JSONL files."""
    pairs = []
    for where, o in _io.iter_jsonl(path, _SCIQ_LINE):
        record = _io.obj(o, where, _SCIQ_LINE)
        pairs.append((_io.text(record, "question", where), _io.text(record, "answer", where)))
    if split == "test":
        return pairs
    total = SCIQ_TRAIN_LINES + SCIQ_VALIDATION_LINES
    if len(pairs) != total:
        raise DataError(
            f"{path}: has {len(pairs)} records; expected {total} (train lines 1-{SCIQ_TRAIN_LINES}, "
            f"validation lines {SCIQ_TRAIN_LINES + 1}-{total}), so the splits cannot be separated."
        )
    return pairs[:SCIQ_TRAIN_LINES] if split == "train" else pairs[SCIQ_TRAIN_LINES:]


def _sciq_support(path: Path, questions: Sequence[str]) -> list[str | None]:
    """Support passages aligned with ``questions``: the CSV holds the rows that have one, in split
    order, so it is matched as an ordered subsequence by question text."""
    support: list[str | None] = [None] * len(questions)
    j = 0
    for where, row in _io.read_table(
        path, ("question", "correct_answer", "support"), delimiter=","
    ):
        while j < len(questions) and questions[j] != row["question"]:
            j += 1
        if j == len(questions):
            raise DataError(
                f"{where}: field 'question' ({row['question'][:60]!r}) does not occur in the split "
                "after the previous matched row; expected the CSV rows to be a subsequence of the split."
            )
        support[j] = row["support"] or None
        j += 1
    return support


def sciq_local(paths: Sequence[Path], split: str) -> list[QAExample]:
    """SciQ open QA: ``answers = (correct_answer,)``, ``context`` = support passage when the split
    has a support CSV (test, validation) and the question has one."""
    pairs = _sciq_questions(paths[0], split)
    support = (
        _sciq_support(paths[1], [q for q, _ in pairs]) if len(paths) > 1 else [None] * len(pairs)
    )
    return [
        QAExample(f"sciq/{split}/{i}", q, (a,), s)
        for i, ((q, a), s) in enumerate(zip(pairs, support, strict=True))
    ]


def sciq_mc_local(paths: Sequence[Path], split: str) -> list[MCExample]:
    """SciQ 4-option multiple choice parsed from the LLM-Adapters instruction template
    (correct answer + the 3 original distractors, in that file's shuffled order)."""
    items = []
    for where, item in _io.read_json_list(paths[0], _MC_ITEM):
        record = _io.obj(item, where, _MC_ITEM)
        m = _MC_TEMPLATE.fullmatch(_io.text(record, "instruction", where))
        if m is None:
            raise DataError(
                f"{where}: field 'instruction' does not match the template 'Please choose the correct "
                "answer to the question: Q\\n\\nAnswer1: ..\\nAnswer2: ..\\nAnswer3: ..\\nAnswer4: ..\\n\\n"
                "Answer format: answer1/answer2/answer3/answer4'."
            )
        k = _MC_ANSWER.fullmatch(_io.text(record, "answer", where))
        if k is None:
            raise DataError(
                f"{where}: field 'answer' is {record['answer']!r}; expected 'answer1'..'answer4'."
            )
        items.append((m["q"], (m["a1"], m["a2"], m["a3"], m["a4"]), int(k[1]) - 1))
    support = (
        _sciq_support(paths[1], [q for q, _, _ in items]) if len(paths) > 1 else [None] * len(items)
    )
    return [
        MCExample(f"sciq/{split}/{i}", q, c, label, s)
        for i, ((q, c, label), s) in enumerate(zip(items, support, strict=True))
    ]


def _sciq_hub(rows: Iterable[Row]) -> list[tuple[str, Mapping[str, Any], str | None]]:
    out = []
    for where, r in _hub_rows(rows, "sciq"):
        support = _io.text(r, "support", where) if r.get("support") is not None else ""
        out.append((where, r, support if support.strip() else None))
    return out


def sciq_from_hub(rows: Iterable[Row], split: str) -> list[QAExample]:
    """``allenai/sciq`` rows: ``question``, ``correct_answer``, ``support`` ('' = none), distractors."""
    return [
        QAExample(
            f"sciq/{split}/{i}", _io.text(r, "question", w), (_io.text(r, "correct_answer", w),), s
        )
        for i, (w, r, s) in enumerate(_sciq_hub(rows))
    ]


def sciq_mc_from_hub(rows: Iterable[Row], split: str) -> list[MCExample]:
    """``allenai/sciq`` rows as 4-option MC, lm-evaluation-harness order:
    ``[distractor1, distractor2, distractor3, correct_answer]``, label 3."""
    return [
        MCExample(
            f"sciq/{split}/{i}",
            _io.text(r, "question", w),
            tuple(
                _io.text(r, f, w)
                for f in ("distractor1", "distractor2", "distractor3", "correct_answer")
            ),
            3,
            s,
        )
        for i, (w, r, s) in enumerate(_sciq_hub(rows))
    ]


# ---------------------------------------------------------------- TruthfulQA

_TRUTHFULQA_ITEM = (
    "objects with 'id', 'question', 'best_answer', 'correct_answers', 'incorrect_answers', "
    "'category', 'mc1_targets' and 'mc2_targets' ({choices, labels})"
)


def _mc_targets(record: Row, name: str, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    choices = _io.texts(record, f"{name}.choices", where)
    return choices, _io.labels(record, f"{name}.labels", where, len(choices))


def _truthfulqa(id_: str, gen: Row, mc: Row, where: str) -> TruthfulQAExample:
    mc1 = _mc_targets(mc, "mc1_targets", where)
    if sum(mc1[1]) != 1:
        raise DataError(
            f"{where}: field 'mc1_targets.labels' has {sum(mc1[1])} ones; expected exactly 1."
        )
    mc2 = _mc_targets(mc, "mc2_targets", where)
    return TruthfulQAExample(
        id_,
        _io.text(gen, "question", where),
        _io.text(gen, "best_answer", where),
        _io.texts(gen, "correct_answers", where),
        _io.texts(gen, "incorrect_answers", where),
        _io.text(gen, "category", where),
        *mc1,
        *mc2,
    )


def truthfulqa_local(paths: Sequence[Path], split: str) -> list[TruthfulQAExample]:
    """The truthfulqa-multi English JSON list: generation references and MC1/MC2 targets together."""
    out = []
    for where, item in _io.read_json_list(paths[0], _TRUTHFULQA_ITEM):
        record = _io.obj(item, where, _TRUTHFULQA_ITEM)
        out.append(_truthfulqa(str(_io.integer(record, "id", where)), record, record, where))
    return out


def truthfulqa_from_hub(
    generation: Iterable[Row], multiple_choice: Iterable[Row]
) -> list[TruthfulQAExample]:
    """``truthfulqa/truthful_qa``: the ``generation`` and ``multiple_choice`` configs, row by row
    (same questions, same order); ids are 1-based positions as in the local file."""
    gen = _hub_rows(generation, "truthful_qa generation")
    mc = _hub_rows(multiple_choice, "truthful_qa multiple_choice")
    if len(gen) != len(mc):
        raise DataError(
            f"truthful_qa: generation has {len(gen)} rows but multiple_choice {len(mc)}; expected equal."
        )
    out = []
    for i, ((where, g), (_, m)) in enumerate(zip(gen, mc, strict=True)):
        if _io.text(m, "question", where) != _io.text(g, "question", where):
            raise DataError(
                f"{where}: field 'question' differs between generation and multiple_choice."
            )
        out.append(_truthfulqa(str(i + 1), g, m, where))
    return out


# ---------------------------------------------------------------- WikiQA

WIKIQA_COLUMNS = (
    "QuestionID",
    "Question",
    "DocumentID",
    "DocumentTitle",
    "SentenceID",
    "Sentence",
    "Label",
)


def _group_wikiqa(
    rows: Iterable[tuple[str, str, str, str, str, str | int]],
) -> list[WikiQAQuestion]:
    """Group ``(where, qid, question, title, sentence, label)`` rows per question, in first-seen order."""
    groups: dict[str, tuple[str, str, list[str], list[int]]] = {}
    for where, qid, question, title, sentence, label in rows:
        if qid not in groups:
            groups[qid] = (question, title, [], [])
        elif groups[qid][0] != question:
            raise DataError(
                f"{where}: field 'Question' differs from the earlier rows of question {qid}."
            )
        groups[qid][2].append(sentence)
        groups[qid][3].append(_io.binary(label, where, "Label"))
    return [
        WikiQAQuestion(qid, q, t, tuple(s), tuple(lab)) for qid, (q, t, s, lab) in groups.items()
    ]


def wikiqa_local(paths: Sequence[Path], split: str) -> list[WikiQAQuestion]:
    """Official WikiQA TSV (gzipped, ``csv.QUOTE_NONE``), one row per candidate sentence."""
    table = _io.read_table(paths[0], WIKIQA_COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE)
    return _group_wikiqa(
        (w, r["QuestionID"], r["Question"], r["DocumentTitle"], r["Sentence"], r["Label"])
        for w, r in table
    )


def wikiqa_from_hub(rows: Iterable[Row], split: str) -> list[WikiQAQuestion]:
    """``microsoft/wiki_qa`` rows: ``question_id``, ``question``, ``document_title``, ``answer``
    (the candidate sentence), ``label``."""
    return _group_wikiqa(
        (
            w,
            _io.text(r, "question_id", w),
            _io.text(r, "question", w),
            _io.text(r, "document_title", w),
            _io.text(r, "answer", w),
            _io.integer(r, "label", w),
        )
        for w, r in _hub_rows(rows, "wiki_qa")
    )


# ---------------------------------------------------------------- WikiText-2

_ARTICLE = re.compile(r"^ = (?!= )[^\n]* = $", re.MULTILINE)


def split_articles(text: str, split: str) -> list[TextDocument]:
    """Cut a WikiText split into articles at each top-level `` = Title = `` line.

    Text before the first title belongs to the first article, so the documents' texts concatenate
    back to ``text`` exactly.
    """
    headings = list(_ARTICLE.finditer(text))
    if not headings:
        raise DataError(
            f"wikitext2 {split}: no ' = Title = ' article heading found; expected WikiText-2 text."
        )
    bounds = [0, *(m.start() for m in headings[1:]), len(text)]
    return [
        TextDocument(
            f"wikitext2/{split}/{i}",
            m.group(0).strip()[2:-2].strip(),
            text[bounds[i] : bounds[i + 1]],
        )
        for i, m in enumerate(headings)
    ]


def wikitext2_local(paths: Sequence[Path], split: str) -> list[TextDocument]:
    """``test``: the raw HF rows-joined file with CRLF turned into LF (the standard HF perplexity
    string). ``validation``: the tokenized v1 ``wiki.valid.tokens`` (contains ``<unk>``)."""
    try:
        return split_articles(_io.read_text(paths[0]).replace("\r\n", "\n"), split)
    except DataError as exc:  # name the file when the message does not already
        if str(paths[0]) in str(exc):
            raise
        raise DataError(f"{paths[0]}: {exc}") from None


def wikitext2_from_hub(rows: Iterable[Row], split: str) -> list[TextDocument]:
    """``Salesforce/wikitext`` rows (``text``; one per line, blank lines as ``""``).

    ``test`` (``wikitext-2-raw-v1``) becomes ``"\\n\\n".join(rows)``, the usual perplexity string.
    ``validation`` (``wikitext-2-v1``, tokenized) is rebuilt as the ``wiki.valid.tokens`` file:
    each blank row back to the original `` \\n`` line.
    """
    lines = [_io.text(r, "text", w) for w, r in _hub_rows(rows, "wikitext")]
    joined = "\n\n".join(lines) if split == "test" else "".join(line or " \n" for line in lines)
    return split_articles(joined, split)


# ---------------------------------------------------------------- SST-2


def sst2_local(paths: Sequence[Path], split: str) -> list[SentimentExample]:
    """GLUE SST-2 TSV with header ``sentence<TAB>label`` (sentences kept byte-exact, trailing space too)."""
    table = _io.read_table(paths[0], ("sentence", "label"), delimiter="\t", quoting=csv.QUOTE_NONE)
    return [
        SentimentExample(f"sst2/{split}/{i}", r["sentence"], _io.binary(r["label"], w, "label"))
        for i, (w, r) in enumerate(table)
    ]


def sst2_from_hub(rows: Iterable[Row], split: str) -> list[SentimentExample]:
    """``stanfordnlp/sst2`` rows: ``idx``, ``sentence``, ``label`` (0/1)."""
    return [
        SentimentExample(
            f"sst2/{split}/{_io.integer(r, 'idx', w)}",
            _io.text(r, "sentence", w),
            _io.binary(_io.integer(r, "label", w), w, "label"),
        )
        for w, r in _hub_rows(rows, "sst2")
    ]
