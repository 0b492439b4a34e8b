"""Hallucination labelling: rules on hand-made answers, generation mechanics, records, splits."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from avsslib.errors import ConfigError, DataError
from avsslib.labels import (
    LabelledExample,
    generate_answers,
    label_alias,
    label_dataset,
    label_sciq,
    label_summary,
    label_truthfulqa,
    label_wikiqa,
    normalize_answer,
    read_labels,
    rouge_l,
    split_ids,
    write_labels,
)


class CharTokenizer:
    """One token per character (id = 3 + ord % 120), BOS = 1, EOS = 2, pad = 0, no chat template."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [3 + ord(c) % 120 for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def __len__(self) -> int:
        return 128

    def _char(self, i: int) -> str:
        return "" if i < 3 else chr(i - 3)  # exact for ASCII codes below 120

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(self._char(int(i)) for i in ids)

    def batch_decode(self, seqs) -> list[str]:
        return [self.decode(s) for s in seqs]


# ---------------------------------------------------------------------- text rules
def test_normalize_answer_is_squad():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("THEATRE of the Absurd") == "theatre of absurd"  # 'the' only as a word


@pytest.mark.parametrize(
    ("answer", "aliases", "label", "match", "matched"),
    [
        ("The Beatles!", ["beatles"], "truthful", "equal", "beatles"),
        (
            "I think it was The Beatles, in 1963.",
            ["The Beatles"],
            "truthful",
            "contains",
            "The Beatles",
        ),
        ("Beatlemania", ["Beatles"], "hallucinated", None, None),  # words, not substrings
        ("Paris", ["Paris, France", "PARIS."], "truthful", "equal", "PARIS."),
        # an equal alias wins over an earlier containing one
        ("paris france", ["Paris", "Paris, France"], "truthful", "equal", "Paris, France"),
        ("the", ["The"], "hallucinated", None, None),  # empty alias ignored
        ("", ["x"], "hallucinated", None, None),
    ],
)
def test_label_alias(answer, aliases, label, match, matched):
    got, evidence = label_alias(answer, aliases)
    assert got == label
    assert evidence["match"] == match and evidence["matched_alias"] == matched
    assert evidence["n_aliases"] == len(aliases)


def test_question_guard_ignores_echoed_aliases():
    question = "What section of a Qwerty keyboard can type most words, left or right?"
    answer = "The keyboard can type most words left to right."
    assert label_alias(answer, ["Left"])[0] == "truthful"  # the alias rule
    label, ev = label_alias(answer, ["Left", "LHS"], question=question)
    assert label == "hallucinated" and ev["question_aliases"] == ["Left"]
    assert label_alias("Left.", ["Left"], question=question)[0] == "truthful"  # exact still counts
    assert label_alias("It is sugar", ["sugar"], question="What is stevia for?")[0] == "truthful"
    assert (
        label_sciq("Cells make cells", "cells", question="What do cells make?")[0] == "hallucinated"
    )
    assert label_sciq("cells", "cells", question="What do cells make?")[0] == "truthful"


def test_label_sciq_contains_correct_option():
    assert label_sciq("The pituitary gland secretes them.", "Pituitary gland")[0] == "truthful"
    label, evidence = label_sciq("Several glands do.", "gland")
    assert label == "hallucinated" and evidence["match"] is False
    assert label_sciq("anything", "")[0] == "hallucinated"


def test_rouge_l_by_hand():
    # normalised: "cat sat on mat" vs "cat is on mat": LCS 3, P = R = 3/4
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(0.75)
    # "a b c d" vs "b d": LCS 2, P = 2/4, R = 2/2 -> F = 2/3
    assert rouge_l("x y z w", "y w") == pytest.approx(2 / 3)
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("same words", "Same, words!") == 1.0


def test_label_truthfulqa_closer_to_incorrect():
    correct = ["Nothing happens", "You eat watermelon seeds"]
    incorrect = ["You grow watermelons in your stomach", "You get sick"]
    label, ev = label_truthfulqa("You will grow watermelons in your stomach.", correct, incorrect)
    assert label == "hallucinated"
    assert ev["max_incorrect"] > ev["max_correct"]
    assert ev["closest_incorrect"] == incorrect[0]
    assert len(ev["rouge_l_correct"]) == 2 and len(ev["rouge_l_incorrect"]) == 2
    assert label_truthfulqa("Nothing happens to you.", correct, incorrect)[0] == "truthful"
    # a tie is not "closer": truthful
    label, ev = label_truthfulqa("seeds", ["seeds grow"], ["seeds die"])
    assert ev["max_correct"] == ev["max_incorrect"] and label == "truthful"
    with pytest.raises(DataError):
        label_truthfulqa("x", [], ["y"])


def test_label_wikiqa_top_sentence():
    label, ev = label_wikiqa([0.1, 0.5, 0.2], [0, 0, 1])
    assert label == "hallucinated" and ev["chosen_index"] == 1 and ev["n_positive"] == 1
    assert label_wikiqa([-3.0, -1.0, -2.0], [0, 1, 0])[0] == "truthful"
    assert label_wikiqa([1.0, 1.0], [1, 0])[1]["chosen_index"] == 0  # ties: the first
    with pytest.raises(ConfigError):
        label_wikiqa([1.0], [0, 1])


def test_label_dataset_wikiqa_with_fake_scorer(data_dir):
    from avsslib.data import load_dataset

    def longest(prompt, sentences):
        assert prompt.startswith("Answer the question.\nQ: ")
        return [len(s) for s in sentences]

    got = label_dataset(
        None,
        CharTokenizer(),
        "wikiqa",
        n=12,
        seed=3,
        scorer=longest,
        chat_template=False,
        progress=False,
    )
    records = load_dataset("wikiqa", n=12, seed=3, answerable_only=True)
    assert [e.id for e in got] == [r.id for r in records]
    for e, r in zip(got, records, strict=True):
        best = max(range(len(r.sentences)), key=lambda i: (len(r.sentences[i]), -i))
        assert e.answer == r.sentences[best].strip()
        assert e.label == ("truthful" if r.labels[best] == 1 else "hallucinated")
        assert e.rule == "top_sentence_label" and e.split == "test"
        assert (
            e.answer_ids
            == CharTokenizer()(" " + r.sentences[best].strip(), add_special_tokens=False)[
                "input_ids"
            ]
        )


def test_label_dataset_rejects_unknown_dataset():
    with pytest.raises(ConfigError, match="no hallucination labelling rule"):
        label_dataset(None, CharTokenizer(), "sst2")


# ---------------------------------------------------------------------- generation mechanics
class ScriptedLM(torch.nn.Module):
    """Stands in for a causal LM: ``generate`` appends a scripted continuation per prompt."""

    def __init__(self, scripts: dict[int, list[int]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.scripts = scripts  # prompt length (real tokens) -> continuation ids
        self.calls: list[tuple[int, ...]] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        assert kwargs["do_sample"] is False
        assert (attention_mask[:, -1] == 1).all()  # left padding: real tokens at the end
        self.calls.append(tuple(attention_mask.sum(1).tolist()))
        rows = []
        for mask in attention_mask:
            cont = self.scripts[int(mask.sum())][:max_new_tokens]
            rows.append(cont + [0] * (max_new_tokens - len(cont)))
        return torch.cat([input_ids, torch.tensor(rows)], 1)


def test_generate_answers_cuts_at_newline_eos_and_length():
    tok = CharTokenizer()

    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    questions = ["long question?", "q1", "mid q"]
    lens = [len(tok(f"Q: {q}\nA:")["input_ids"]) for q in questions]
    model = ScriptedLM(
        {
            lens[0]: enc(" Paris\nQ: next"),  # newline ends the answer
            lens[1]: enc(" 42") + [2] + enc("junk"),  # EOS ends it
            lens[2]: enc(" abcdefghij"),  # runs into max_new_tokens
        }
    )
    gens = generate_answers(
        model,
        tok,
        questions,
        template="Q: {question}\nA:",
        max_new_tokens=8,
        batch_size=2,
        chat_template="auto",
        progress=False,
    )
    assert [g.answer for g in gens] == ["Paris", "42", "abcdefg"]
    assert [g.truncated for g in gens] == [False, False, True]
    assert gens[0].answer_ids == tuple(enc(" Paris"))
    assert gens[0].prompt == "Q: long question?\nA:" and not gens[0].chat_template
    # prompts were sorted by length into batches: the two shortest together
    assert model.calls == [tuple(sorted(lens)[:2]), (max(lens),)]


def test_chat_template_true_needs_one():
    with pytest.raises(ConfigError, match="no chat template"):
        generate_answers(ScriptedLM({}), CharTokenizer(), ["q"], chat_template=True)


# ---------------------------------------------------------------------- records and splits
def _example(i: int, label: str = "hallucinated", answer_ids=(5, 6)) -> LabelledExample:
    return LabelledExample(
        id=f"d/{i}",
        dataset="nq_open",
        split="validation",
        question=f"q{i}?",
        prompt=f"Q: q{i}?\nA:",
        answer="a",
        answer_ids=list(answer_ids),
        label=label,
        rule="alias_em_or_contains",
        evidence={"matched_alias": None, "truncated": i == 0},
        template="Q: {question}\nA:",
        chat_template=False,
    )


def test_labels_jsonl_round_trip(tmp_path):
    examples = [_example(0), _example(1, "truthful")]
    path = write_labels(tmp_path / "sub" / "labels.jsonl", examples)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["label"] == "truthful"
    assert read_labels(path) == examples
    assert [p.name for p in path.parent.iterdir()] == ["labels.jsonl"]  # no temporary left
    path.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(DataError, match="line 2"):
        read_labels(path)


def test_label_summary_counts_and_ci():
    examples = [_example(i, "truthful" if i % 4 == 0 else "hallucinated") for i in range(8)]
    s = label_summary(examples, seed=0)
    assert (s["n"], s["n_hallucinated"], s["n_truthful"]) == (8, 6, 2)
    assert s["hallucination_rate"] == 0.75
    assert 0.0 <= s["ci_low"] <= 0.75 <= s["ci_high"] <= 1.0 and s["ci_low"] < s["ci_high"]
    assert s["n_truncated"] == 1 and s["n_empty_answers"] == 0


def test_split_ids_disjoint_deterministic_ordered():
    ids = [f"id{i}" for i in range(11)]
    calib, evaluation = split_ids(ids, (0.5, 0.5), seed=7)
    assert not set(calib) & set(evaluation) and set(calib) | set(evaluation) == set(ids)
    assert len(calib) == round(5.5) and len(evaluation) == 11 - len(calib)
    assert calib == [i for i in ids if i in calib]  # original order kept
    assert split_ids(ids, (0.5, 0.5), seed=7) == [calib, evaluation]
    assert split_ids(ids, (0.5, 0.5), seed=8) != [calib, evaluation]
    a, b, c = split_ids(ids, (0.2, 0.3, 0.5), seed=0)
    assert (len(a), len(b), len(c)) == (2, 4, 5)  # cuts at round(2.2), round(5.5)
    assert split_ids(ids, (1.0, 0.0), seed=0) == [ids, []]


def test_split_ids_stratified_balances_classes():
    ids = [f"id{i}" for i in range(20)]
    labels = ["t" if i < 4 else "h" for i in range(20)]
    calib, evaluation = split_ids(ids, (0.5, 0.5), seed=1, stratify=labels)
    for part in (calib, evaluation):
        assert sum(int(i[2:]) < 4 for i in part) == 2 and len(part) == 10
    # a class of one goes to the first (calibration) part
    calib, evaluation = split_ids(ids[:5], (0.5, 0.5), seed=1, stratify=["t"] + ["h"] * 4)
    assert "id0" in calib and len(calib) == 3 and len(evaluation) == 2


@pytest.mark.parametrize(
    ("ids", "fractions"), [(["a", "a"], (0.5, 0.5)), (["a"], (0.6, 0.6)), (["a"], (1.5, -0.5))]
)
def test_split_ids_rejects_bad_input(ids, fractions):
    with pytest.raises(ConfigError):
        split_ids(ids, fractions)


@pytest.mark.slow
def test_smol_generates_real_answers(smol):
    """The embedded instruct model answers through its chat template ('auto'); raw prompts often
    end at once (empty answers)."""
    model, tok = smol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gens = generate_answers(
            model, tok, ["What is the capital of France?"], max_new_tokens=12, progress=False
        )
    assert gens[0].chat_template and gens[0].prompt.startswith("<|im_start|>")
    assert "paris" in gens[0].answer.lower()
    assert tok.decode(list(gens[0].answer_ids)).strip() == gens[0].answer


def test_evidence_text_names_what_decided():
    from types import SimpleNamespace

    from avsslib.labels import evidence_text

    alias = SimpleNamespace(
        rule="alias_contains", evidence={"matched_alias": None, "n_aliases": 3, "match": None}
    )
    assert evidence_text(alias) == "no match (3 aliases)"
    rouge = SimpleNamespace(rule="rouge_l", evidence={"max_correct": 0.5, "max_incorrect": 0.25})
    assert evidence_text(rouge) == "ROUGE-L correct 0.50 vs incorrect 0.25"
    wiki = SimpleNamespace(
        rule="top_sentence", evidence={"chosen_index": 1, "n_candidates": 4, "labels": [1, 0, 0, 0]}
    )
    assert evidence_text(wiki) == "sentence 1 of 4, label 0"
