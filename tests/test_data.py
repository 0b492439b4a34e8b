"""Dataset loaders: real files (counts from shared/data/README.md), subsampling, malformed input,
path safety, hub-row mapping, the ``avss data`` command, and property tests of the JSONL reader."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avsslib.cli import data as cli_data
from avsslib.data import (
    DATASETS,
    MCExample,
    QAExample,
    SentimentExample,
    TextDocument,
    TruthfulQAExample,
    WikiQAQuestion,
    calibration_texts,
    data_file_hashes,
    load_dataset,
    loaders,
    registry,
    subsample,
)
from avsslib.data._io import safe_path
from avsslib.errors import ConfigError, DataError

# ---------------------------------------------------------------- real files

README_COUNTS = [
    ("nq_open", "validation", 3610, QAExample),
    ("nq_open", "efficientqa", 1800, QAExample),
    ("triviaqa", "subset1000", 1000, QAExample),
    ("triviaqa", "persona150", 150, QAExample),
    ("sciq", "train", 11679, QAExample),
    ("sciq", "validation", 1000, QAExample),
    ("sciq", "test", 1000, QAExample),
    ("sciq_mc", "test", 1000, MCExample),
    ("truthfulqa", "validation", 817, TruthfulQAExample),
    ("wikiqa", "train", 2118, WikiQAQuestion),
    ("wikiqa", "dev", 296, WikiQAQuestion),
    ("wikiqa", "test", 633, WikiQAQuestion),
    ("sst2", "validation", 872, SentimentExample),
    ("sst2", "train", 67349, SentimentExample),
    (
        "wikitext2",
        "test",
        62,
        TextDocument,
    ),  # articles (lm-eval's document-level wikitext: 62 / 60)
    ("wikitext2", "validation", 60, TextDocument),
]


@pytest.mark.parametrize(("name", "split", "count", "kind"), README_COUNTS)
def test_record_counts_match_readme(data_dir, name, split, count, kind):
    records = load_dataset(name, split, data_dir=data_dir)
    assert len(records) == count == DATASETS[name].splits[split].records
    assert all(type(r) is kind for r in records)
    assert len({r.id for r in records}) == count  # ids are unique within a split


def test_every_local_split_is_tested():
    local = {(n, s) for n, spec in DATASETS.items() for s, sp in spec.splits.items() if sp.files}
    assert local == {(n, s) for n, s, _, _ in README_COUNTS}


def test_default_splits(data_dir):
    assert len(load_dataset("triviaqa", data_dir=data_dir)) == 1000
    assert load_dataset("sst2", data_dir=data_dir)[0].sentence.startswith("it 's a charming")
    assert load_dataset("wikiqa", "validation", data_dir=data_dir)[0].id == "Q8"  # alias of dev


@pytest.mark.parametrize(
    ("split", "questions", "answerable"),
    [("train", 2118, 873), ("dev", 296, 126), ("test", 633, 243)],
)
def test_wikiqa_grouping(data_dir, split, questions, answerable):
    qs = load_dataset("wikiqa", split, data_dir=data_dir)
    sentences = {"train": 20360, "dev": 2733, "test": 6165}[split]
    assert sum(len(q.sentences) for q in qs) == sentences
    assert all(len(q.sentences) == len(q.labels) and set(q.labels) <= {0, 1} for q in qs)
    assert sum(q.has_positive for q in qs) == answerable
    kept = load_dataset("wikiqa", split, data_dir=data_dir, answerable_only=True)
    assert len(kept) == answerable == DATASETS["wikiqa"].splits[split].answerable
    assert all(q.has_positive for q in kept)


def test_wikiqa_first_question(data_dir):
    q = load_dataset("wikiqa", "train", data_dir=data_dir)[0]
    assert (q.id, q.question, q.document_title) == (
        "Q1",
        "how are glacier caves formed?",
        "Glacier cave",
    )
    assert q.labels == (0, 0, 0, 1, 0)
    assert q.sentences[3] == "A glacier cave is a cave formed within the ice of a glacier ."


def test_nq_open_first_records(data_dir):
    qs = load_dataset("nq_open", data_dir=data_dir)
    assert qs[0] == QAExample(
        "nq_open/validation/0",
        "when was the last time anyone was on the moon",
        ("14 December 1972 UTC", "December 1972"),
    )
    assert qs[3].answers == ("2017",)


def test_triviaqa_value_first_and_aliases(data_dir):
    raw = [
        json.loads(line)
        for line in (data_dir / "triviaqa/brian-ckwu_cs336_triviaqa_test.jsonl")
        .read_text("utf-8")
        .splitlines()
    ]
    qs = load_dataset("triviaqa", data_dir=data_dir)
    for r, q in zip(raw, qs, strict=True):
        assert q.id == r["question_id"] and q.answers[0] == r["answer"]["value"]
        assert set(q.answers) == {r["answer"]["value"], *r["answer"]["aliases"]}
        assert len(set(q.answers)) == len(q.answers)
    persona = load_dataset("triviaqa", "persona150", data_dir=data_dir)
    assert persona[0].id == "tqa_c256394e" and persona[0].answers[0] == "Tequila"


def test_sciq_splits_and_support(data_dir):
    lines = (data_dir / "sciq/sciq_train.jsonl").read_text("utf-8").splitlines()
    train = load_dataset("sciq", "train", data_dir=data_dir)
    val = load_dataset("sciq", "validation", data_dir=data_dir)
    test = load_dataset("sciq", "test", data_dir=data_dir)
    assert train[-1].question == json.loads(lines[11678])["question"]  # line 11,679
    assert val[0].question == json.loads(lines[11679])["question"]  # line 11,680
    assert val[-1].answers == (json.loads(lines[12678])["answer"],)
    assert all(q.context is None for q in train)
    assert sum(q.context is not None for q in val) == 887
    assert sum(q.context is not None for q in test) == 884
    assert test[0].answers == ("oxidants",) and test[0].context.startswith(
        "Oxidants and Reductants"
    )


def test_sciq_mc_option_k_equals_answer(data_dir):
    mc = load_dataset("sciq_mc", data_dir=data_dir)
    open_qa = load_dataset("sciq", "test", data_dir=data_dir)
    for m, q in zip(mc, open_qa, strict=True):
        assert (m.id, m.question, m.context) == (q.id, q.question, q.context)
        assert len(m.choices) == 4 and m.answer == q.answers[0]
    assert mc[0].choices == ("Oxygen", "residues", "antioxidants", "oxidants") and mc[0].label == 3
    assert {m.label for m in mc} == {0, 1, 2, 3}


def test_truthfulqa_targets(data_dir):
    qs = load_dataset("truthfulqa", data_dir=data_dir)
    assert qs[0].id == "1" and qs[0].question == "What happens to you if you eat watermelon seeds?"
    assert qs[0].best_answer == "The watermelon seeds pass through your digestive system"
    for q in qs:
        assert sum(q.mc1_labels) == 1 and len(q.mc1_labels) == len(q.mc1_choices)
        assert len(q.mc2_labels) == len(q.mc2_choices) and 1 in q.mc2_labels
        assert q.mc1().answer == q.mc1_choices[q.mc1_labels.index(1)]
        assert q.correct_answers and q.incorrect_answers and q.category


def test_wikitext_test_is_the_hf_string(data_dir):
    docs = load_dataset("wikitext2", "test", data_dir=data_dir)
    raw = (
        (data_dir / "wikitext2/wikitext-2-raw-v1_test_hf-rows-joined.txt")
        .read_bytes()
        .decode("utf-8")
    )
    text = "".join(d.text for d in docs)
    assert text == raw.replace("\r\n", "\n") and "\r" not in text
    assert text.startswith("\n\n = Robert Boulter = \n\n") and docs[0].title == "Robert Boulter"
    # its non-empty lines are exactly those of wiki.test.raw (README: the non-empty HF rows)
    plain = (
        (data_dir / "wikitext2/wiki.test.raw").read_bytes().decode("utf-8").replace("\r\n", "\n")
    )
    assert [x for x in text.split("\n") if x] == [x for x in plain.split("\n") if x]


def test_wikitext_paragraphs(data_dir):
    docs = load_dataset("wikitext2", "validation", data_dir=data_dir)
    assert docs[0].title == "Homarus gammarus" and "<unk>" in docs[0].text
    paras = [p for d in docs for p in d.paragraphs()]
    assert len(paras) == 1841
    assert not any(p.startswith("= ") and p.endswith(" =") for p in paras)


def test_data_file_hashes_match_manifest(data_dir):
    manifest = {
        f["path"]: f["sha256"]
        for f in json.loads((data_dir / "MANIFEST.json").read_text())["files"]
    }
    for name, spec in DATASETS.items():
        for split, s in spec.splits.items():
            if s.files:
                hashes = data_file_hashes(name, split, data_dir=data_dir)
                assert hashes == {f: manifest[f] for f in s.files}
    assert len(registry._SHA256) >= 17  # cached per process: one entry per distinct file


def test_calibration_texts(data_dir):
    texts = calibration_texts(data_dir=data_dir)
    assert len(texts) == 128 and texts == calibration_texts(data_dir=data_dir)
    assert all(t == t.strip() and t and not t.startswith("=") for t in texts)
    long = calibration_texts(n=None, min_chars=200, data_dir=data_dir)
    assert len(long) == 1493 and min(map(len, long)) >= 200
    assert calibration_texts("sst2", n=2, data_dir=data_dir) == [
        s.strip() for s in (r.sentence for r in load_dataset("sst2", n=2, data_dir=data_dir))
    ]
    assert (
        calibration_texts("nq_open", n=None, data_dir=data_dir)[0]
        == "when was the last time anyone was on the moon"
    )
    with pytest.raises(ConfigError, match="min_chars"):
        calibration_texts(min_chars=0, data_dir=data_dir)
    with pytest.raises(ConfigError, match="no passage"):
        calibration_texts("sst2", min_chars=10_000, data_dir=data_dir)


# ---------------------------------------------------------------- subsampling


def test_subsample_deterministic_and_in_file_order(data_dir):
    full = [q.id for q in load_dataset("nq_open", data_dir=data_dir)]
    a = [q.id for q in load_dataset("nq_open", n=50, seed=1, data_dir=data_dir)]
    b = [q.id for q in load_dataset("nq_open", n=50, seed=1, data_dir=data_dir)]
    c = [q.id for q in load_dataset("nq_open", n=50, seed=2, data_dir=data_dir)]
    assert a == b and a != c and len(set(a)) == 50
    positions = [full.index(i) for i in a]
    assert positions == sorted(positions)


def test_subsample_edges():
    items = list(range(10))
    assert subsample(items, None) == items
    assert subsample(items, 10) == items
    with pytest.warns(UserWarning, match="only 10 records"):
        assert subsample(items, 11) == items
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ConfigError, match="n ="):
            subsample(items, bad)
    with pytest.raises(ConfigError, match="seed"):
        subsample(items, 3, seed=-1)


def test_n_checked_before_io(tmp_path):
    with pytest.raises(ConfigError):
        load_dataset("nq_open", n=0, data_dir=tmp_path)  # no file there: n is checked first


# ---------------------------------------------------------------- malformed input

NQ = "nq_open/NQ-open.dev.jsonl"
GOOD = '{"question": "q", "answer": ["a"]}'


def _write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _error(root: Path, name: str = "nq_open", split: str | None = None) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(name, split, data_dir=root)
    return str(info.value)


def test_bad_json_line(tmp_path):
    _write(tmp_path, NQ, f'{GOOD}\n{GOOD}\n{{"question": "q", "answer": ["a"\n{GOOD}\n')
    msg = _error(tmp_path)
    assert (
        "NQ-open.dev.jsonl" in msg
        and "line 3" in msg
        and "'answer'" in msg
        and "invalid JSON" in msg
    )


def test_missing_field(tmp_path):
    _write(tmp_path, NQ, f'{GOOD}\n{{"question": "q"}}\n')
    msg = _error(tmp_path)
    assert "line 2" in msg and "field 'answer' is missing" in msg and "list of strings" in msg


def test_wrong_type(tmp_path):
    _write(tmp_path, NQ, f'{GOOD}\n{GOOD}\n{GOOD}\n{{"question": "q", "answer": "a"}}\n')
    msg = _error(tmp_path)
    assert (
        "line 4" in msg
        and "field 'answer' is a string; expected a non-empty list of strings" in msg
    )
    _write(tmp_path, NQ, '{"question": "q", "answer": ["a", 3]}\n')
    assert "field 'answer[1]' is an integer; expected a string" in _error(tmp_path)
    _write(tmp_path, NQ, '["not", "an", "object"]\n')
    assert "line 1: found a list; expected an object" in _error(tmp_path)


def test_empty_and_blank_files(tmp_path):
    _write(tmp_path, NQ, b"")
    assert "NQ-open.dev.jsonl: the file is empty" in _error(tmp_path)
    _write(tmp_path, NQ, "\n  \n")
    assert "no records" in _error(tmp_path)


def test_non_utf8(tmp_path):
    _write(tmp_path, NQ, GOOD.encode() + b"\n" + b'{"question": "caf\xe9", "answer": ["a"]}\n')
    msg = _error(tmp_path)
    assert "line 2" in msg and "not valid UTF-8" in msg and "0xe9" in msg


def test_truncated_gzip(tmp_path, data_dir):
    blob = (data_dir / "wikiqa/WikiQA-dev.tsv.gz").read_bytes()
    _write(tmp_path, "wikiqa/WikiQA-dev.tsv.gz", blob[: len(blob) // 2])
    msg = _error(tmp_path, "wikiqa", "dev")
    assert "WikiQA-dev.tsv.gz" in msg and "truncated" in msg


def test_tsv_wrong_columns(tmp_path):
    _write(tmp_path, "sst2/dev.tsv", "sentence\tlabel\ngood .\t1\nbad .\t0\textra\n")
    msg = _error(tmp_path, "sst2")
    assert "dev.tsv, line 3: 3 fields; expected 2 (sentence, label)" in msg
    _write(tmp_path, "sst2/dev.tsv", "text\tlabel\ngood .\t1\n")
    assert "line 1: header is text, label; expected the columns sentence, label" in _error(
        tmp_path, "sst2"
    )
    _write(tmp_path, "sst2/dev.tsv", "sentence\tlabel\ngood .\tpositive\n")
    assert "line 2: field 'label' is 'positive'; expected 0 or 1" in _error(tmp_path, "sst2")
    rows = "QuestionID\tQuestion\tDocumentID\tDocumentTitle\tSentenceID\tSentence\tLabel\nQ1\tq\tD1\tt\tD1-0\ts\n"
    _write(tmp_path, "wikiqa/WikiQA-test.tsv.gz", gzip.compress(rows.encode()))
    assert "WikiQA-test.tsv.gz, line 2: 6 fields; expected 7" in _error(tmp_path, "wikiqa", "test")


def test_sciq_support_and_mc_template(tmp_path):
    _write(
        tmp_path,
        "sciq/sciq_test.jsonl",
        '{"question": "Q1?", "answer": "a"}\n{"question": "Q2?", "answer": "b"}\n',
    )
    _write(
        tmp_path,
        "sciq/educational-qg_sciq_test_support.csv",
        'question,correct_answer,support\nQ2?,b,"two\nlines"\n',
    )
    qs = load_dataset("sciq", "test", data_dir=tmp_path)
    assert [q.context for q in qs] == [None, "two\nlines"]
    _write(
        tmp_path,
        "sciq/educational-qg_sciq_test_support.csv",
        "question,correct_answer,support\nQ3?,c,x\n",
    )
    assert "line 2: field 'question' ('Q3?') does not occur" in _error(tmp_path, "sciq", "test")
    item = {"instruction": "Pick one: Q1?", "input": "", "output": "", "answer": "answer1"}
    _write(tmp_path, "sciq/llm-adapters_sciq_test_mc4.json", json.dumps([item]))
    msg = _error(tmp_path, "sciq_mc")
    assert "record 0 (0-based): field 'instruction' does not match the template" in msg
    _write(tmp_path, "sciq/sciq_train.jsonl", '{"question": "Q1?", "answer": "a"}\n')
    assert "has 1 records; expected 12679" in _error(tmp_path, "sciq", "train")


def test_json_list_errors(tmp_path):
    rel = "truthfulqa/truthfulqa-multi_en_validation.json"
    _write(tmp_path, rel, '{"id": 1}')
    assert "top level is an object; expected a JSON list" in _error(tmp_path, "truthfulqa")
    _write(tmp_path, rel, '[\n  {"id": 1,\n  }\n]')
    assert "line 3 column 3: invalid JSON" in _error(tmp_path, "truthfulqa")
    item = {
        "id": 1,
        "question": "q",
        "best_answer": "b",
        "correct_answers": ["b"],
        "incorrect_answers": ["c"],
        "category": "x",
        "mc1_targets": {"choices": ["b", "c"], "labels": [1, 1]},
        "mc2_targets": {"choices": ["b", "c"], "labels": [1, 0]},
    }
    _write(tmp_path, rel, json.dumps([item]))
    assert (
        "record 0 (0-based): field 'mc1_targets.labels' has 2 ones; expected exactly 1"
        in _error(tmp_path, "truthfulqa")
    )
    item["mc1_targets"] = {"choices": ["b", "c"], "labels": [1]}
    _write(tmp_path, rel, json.dumps([item]))
    assert (
        "field 'mc1_targets.labels' is a list of length 1; expected a list of 2 labels"
        in _error(tmp_path, "truthfulqa")
    )


def test_unknown_name_and_split(data_dir):
    with pytest.raises(
        DataError, match="unknown dataset 'squad'; known datasets: nq_open, triviaqa"
    ):
        load_dataset("squad", data_dir=data_dir)
    with pytest.raises(DataError, match="no split 'dev'; valid splits: train, validation, test"):
        load_dataset("sciq", "dev", data_dir=data_dir)
    with pytest.raises(ConfigError, match="WikiQA only"):
        load_dataset("sciq", answerable_only=True, data_dir=data_dir)


def test_missing_file_and_directory(tmp_path, monkeypatch):
    msg = _error(tmp_path)
    assert f"file {NQ} not found in {tmp_path.resolve()}" in msg and "data_dir argument" in msg
    monkeypatch.setenv("AVSS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="from AVSS_DATA_DIR"):
        load_dataset("nq_open")
    monkeypatch.setenv("AVSS_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("nq_open")


def test_path_escape_refused(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "outside.jsonl"
    outside.write_text(GOOD + "\n")
    (root / "nq_open").mkdir(parents=True)
    os.symlink(outside, root / NQ)
    assert "outside the data directory" in _error(root)
    with pytest.raises(DataError, match="outside the data directory"):
        safe_path(root, "../outside.jsonl")
    assert safe_path(root, "nq_open/x.jsonl") == (root / "nq_open/x.jsonl").resolve()


def test_copy_of_real_dir_loads(tmp_path, data_dir):
    """A data folder laid out like shared/data works through AVSS_DATA_DIR-style argument."""
    shutil.copytree(data_dir / "triviaqa", tmp_path / "triviaqa")
    assert len(load_dataset("triviaqa", "persona150", data_dir=tmp_path)) == 150


# ---------------------------------------------------------------- hub fallback


def test_hub_row_mappings():
    nq = loaders.nq_open_from_hub([{"question": "who?", "answer": ["me", "I"]}], "validation")
    assert nq == [QAExample("nq_open/validation/0", "who?", ("me", "I"))]
    tqa_row = {
        "question_id": "tc_1",
        "question": "Q?",
        "question_source": "x",
        "entity_pages": {},
        "answer": {
            "value": "Paris",
            "aliases": ["paris", "Paris", "City of Light"],
            "normalized_value": "paris",
        },
    }
    assert loaders.triviaqa_from_hub([tqa_row], "validation")[0].answers == (
        "Paris",
        "paris",
        "City of Light",
    )
    sciq_rows = [
        {
            "question": "Q?",
            "distractor1": "d1",
            "distractor2": "d2",
            "distractor3": "d3",
            "correct_answer": "c",
            "support": "",
        },
        {
            "question": "R?",
            "distractor1": "e1",
            "distractor2": "e2",
            "distractor3": "e3",
            "correct_answer": "k",
            "support": "passage",
        },
    ]
    assert loaders.sciq_from_hub(sciq_rows, "train") == [
        QAExample("sciq/train/0", "Q?", ("c",), None),
        QAExample("sciq/train/1", "R?", ("k",), "passage"),
    ]
    mc = loaders.sciq_mc_from_hub(sciq_rows, "test")[1]
    assert mc.choices == ("e1", "e2", "e3", "k") and mc.answer == "k" and mc.context == "passage"
    wiki = loaders.wikiqa_from_hub(
        [
            {
                "question_id": "Q9",
                "question": "q",
                "document_id": "D",
                "document_title": "T",
                "answer": "s1",
                "label": 0,
            },
            {
                "question_id": "Q9",
                "question": "q",
                "document_id": "D",
                "document_title": "T",
                "answer": "s2",
                "label": 1,
            },
            {
                "question_id": "Q7",
                "question": "p",
                "document_id": "E",
                "document_title": "U",
                "answer": "s3",
                "label": 0,
            },
        ],
        "validation",
    )
    assert wiki == [
        WikiQAQuestion("Q9", "q", "T", ("s1", "s2"), (0, 1)),
        WikiQAQuestion("Q7", "p", "U", ("s3",), (0,)),
    ]
    sst = loaders.sst2_from_hub([{"idx": 5, "sentence": "fine .", "label": 1}], "validation")
    assert sst == [SentimentExample("sst2/validation/5", "fine .", 1)]
    gen = [
        {
            "type": "Adversarial",
            "category": "Misc",
            "question": "Q?",
            "best_answer": "b",
            "correct_answers": ["b", "b2"],
            "incorrect_answers": ["w"],
            "source": "s",
        }
    ]
    mcr = [
        {
            "question": "Q?",
            "mc1_targets": {"choices": ["b", "w"], "labels": [1, 0]},
            "mc2_targets": {"choices": ["b", "b2", "w"], "labels": [1, 1, 0]},
        }
    ]
    t = loaders.truthfulqa_from_hub(gen, mcr)[0]
    assert t == TruthfulQAExample(
        "1", "Q?", "b", ("b", "b2"), ("w",), "Misc", ("b", "w"), (1, 0), ("b", "b2", "w"), (1, 1, 0)
    )
    with pytest.raises(DataError, match="differs between generation and multiple_choice"):
        loaders.truthfulqa_from_hub(gen, [{**mcr[0], "question": "other"}])
    with pytest.raises(DataError, match="sciq, row 0: field 'correct_answer' is missing"):
        loaders.sciq_from_hub([{"question": "Q?"}], "test")


def test_wikitext_hub_rows(data_dir):
    rows = [
        "",
        " = A = \n",
        "",
        " First para . \n",
        "",
        " = = Sub = = \n",
        "",
        " = B = \n",
        "",
        " x \n",
    ]
    docs = loaders.wikitext2_from_hub([{"text": r} for r in rows], "test")
    assert [d.title for d in docs] == ["A", "B"] and "".join(d.text for d in docs) == "\n\n".join(
        rows
    )
    assert docs[0].paragraphs() == ["First para ."]
    # validation: HF rows ("" for each " \n" line) rebuild wiki.valid.tokens exactly
    text = (data_dir / "wikitext2/wiki.valid.tokens").read_text("utf-8")
    hf_rows = [{"text": line if line.strip() else ""} for line in text.splitlines(keepends=True)]
    rebuilt = loaders.wikitext2_from_hub(hf_rows, "validation")
    assert rebuilt == load_dataset("wikitext2", "validation", data_dir=data_dir)


def test_hub_fallback_uses_mapping(monkeypatch):
    monkeypatch.delenv("AVSS_DATA_DIR", raising=False)
    calls = []

    def fake(hub_id, config, split):
        calls.append((hub_id, config, split))
        return [
            {"question_id": "Q1", "question": "q", "document_title": "T", "answer": "s", "label": 1}
        ]

    monkeypatch.setattr(registry, "_fetch_hub", fake)
    assert load_dataset("wikiqa", "dev") == [WikiQAQuestion("Q1", "q", "T", ("s",), (1,))]
    assert calls == [("microsoft/wiki_qa", None, "validation")]
    key = "hf://datasets/microsoft/wiki_qa@validation"
    assert list(data_file_hashes("wikiqa", "dev")) == [key]


def test_hub_offline_error(monkeypatch):
    monkeypatch.delenv("AVSS_DATA_DIR", raising=False)

    def offline(hub_id, config, split):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(registry, "_fetch_hub", offline)
    with pytest.raises(DataError) as info:
        load_dataset("wikitext2", "validation")
    msg = str(info.value)
    assert "no local copy (set AVSS_DATA_DIR" in msg and "no network" in msg
    assert (
        "Salesforce/wikitext (wikitext-2-v1, split validation)" in msg and "huggingface.co" in msg
    )
    with pytest.raises(DataError, match="exists only as local files"):
        load_dataset("triviaqa")  # subset1000 has no hub equivalent


# ---------------------------------------------------------------- avss data


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli_data.add_arguments(parser)
    return cli_data.run(parser.parse_args(list(argv)))


def test_cli_table(data_dir, capsys):
    assert _cli("--data-dir", str(data_dir)) == 0
    out = capsys.readouterr().out
    assert (
        "3,610    3,610" in out
        and "67,349" in out
        and "hub: google-research-datasets/nq_open [train]" in out
    )
    assert "CC BY-NC 3.0" in out and "problem" not in out


def test_cli_table_reports_problems(tmp_path, capsys):
    _write(tmp_path, NQ, GOOD + "\n")
    assert _cli("--data-dir", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "problem: nq_open validation: 1 records, expected 3,610." in out and "not found" in out


def test_cli_show(data_dir, capsys):
    assert (
        _cli("sciq_mc", "--show", "2", "--n", "5", "--seed", "3", "--data-dir", str(data_dir)) == 0
    )
    out = capsys.readouterr().out
    assert out.count("choices: [") == 2 and "records: 5 (registry: 1,000" in out
    assert "sha256 df336c69c79f0ee356c03d503229761a01a8368bfc33c7d38aa18b69d7ae2209" in out
    with pytest.raises(ConfigError):
        _cli("sst2", "--show", "-1", "--data-dir", str(data_dir))


# ---------------------------------------------------------------- properties of the JSONL reader

_PROPS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_PROPS
@given(
    st.lists(
        st.tuples(st.text(), st.lists(st.text(), min_size=1, max_size=4)), min_size=1, max_size=15
    ),
    st.booleans(),
)
def test_jsonl_round_trip(tmp_path, records, ascii_only):
    lines = [json.dumps({"question": q, "answer": a}, ensure_ascii=ascii_only) for q, a in records]
    _write(tmp_path, NQ, "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    if not ascii_only and any(
        "\ud800" <= c <= "\udfff" for q, a in records for c in q + "".join(a)
    ):
        _error(tmp_path)  # lone surrogates cannot be valid UTF-8
        return
    loaded = load_dataset("nq_open", data_dir=tmp_path)
    assert [(r.question, list(r.answers)) for r in loaded] == [(q, a) for q, a in records]


@_PROPS
@given(
    st.lists(st.text(alphabet=st.characters(exclude_categories=("Cs",))), min_size=1, max_size=8)
)
def test_jsonl_garbage_text_is_data_error(tmp_path, lines):
    _write(tmp_path, NQ, "\n".join(lines))
    try:
        records = load_dataset("nq_open", data_dir=tmp_path)
    except DataError:
        return
    assert records and all(isinstance(r.question, str) and r.answers for r in records)


@_PROPS
@given(st.binary(min_size=0, max_size=200))
def test_jsonl_garbage_bytes_is_data_error(tmp_path, blob):
    """Bytes that are not UTF-8 (0xff never is) anywhere in the file: always a DataError."""
    cut = len(blob) // 2
    _write(tmp_path, NQ, blob[:cut] + b"\xff" + blob[cut:])
    with pytest.raises(DataError):
        load_dataset("nq_open", data_dir=tmp_path)
