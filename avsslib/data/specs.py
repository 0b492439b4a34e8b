"""The dataset table: one ``DatasetSpec`` per dataset (description, record type, licence, hub
id, splits with their local files and expected record counts, the local and hub parsers).

:data:`DATASETS` is what ``avss data`` prints and what :mod:`avsslib.data.registry` loads
from; :func:`get_spec` looks a name up. Reads and writes no file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avsslib.data import loaders, records
from avsslib.errors import DataError

__all__ = ["DATASETS", "DatasetSpec", "Fetch", "SplitSpec", "get_spec"]

Fetch = Callable[[str | None, str], list[Mapping[str, Any]]]
"""``fetch(config, hub_split)`` -> the hub rows of one config and split, as dicts."""


@dataclass(frozen=True)
class SplitSpec:
    """One split: its local files (relative to the data dir; empty = hub only), the expected
    record count, and where it lives on the hub (``hub_split=None`` = local only)."""

    files: tuple[str, ...]
    records: int
    hub_split: str | None
    hub_config: str | None = None
    note: str = ""
    answerable: int | None = None  # WikiQA: questions with at least one label-1 sentence


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: description, record type, licence, splits, and its local and hub parsers."""

    name: str
    description: str
    record_type: type
    licence: str
    hub_id: str
    hub_config: str | None
    default_split: str
    splits: Mapping[str, SplitSpec]
    local: Callable[[Sequence[Path], str], list[Any]]
    hub: Callable[[Fetch, str | None, str, str], list[Any]]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def split_name(self, split: str | None) -> str:
        """The canonical split name (``None`` = default; aliases such as ``validation`` -> ``dev``)."""
        if split is None:
            return self.default_split
        split = self.aliases.get(split, split)
        if split not in self.splits:
            valid = ", ".join(self.splits)
            raise DataError(f"dataset {self.name!r} has no split {split!r}; valid splits: {valid}.")
        return split


def _rows(
    mapper: Callable[[Any, str], list[Any]],
) -> Callable[[Fetch, str | None, str, str], list[Any]]:
    def load(fetch: Fetch, config: str | None, hub_split: str, split: str) -> list[Any]:
        return mapper(fetch(config, hub_split), split)

    return load


def _truthfulqa_hub(fetch: Fetch, config: str | None, hub_split: str, split: str) -> list[Any]:
    return loaders.truthfulqa_from_hub(
        fetch("generation", hub_split), fetch("multiple_choice", hub_split)
    )


# fmt: off
_SCIQ_LICENCE = "CC BY-NC 3.0 (non-commercial)"
_SCIQ_TEST_SUPPORT = "sciq/educational-qg_sciq_test_support.csv"
_SPECS = (
    DatasetSpec(
        name="nq_open",
        description="NQ-open: open-domain questions with a list of acceptable answers",
        record_type=records.QAExample,
        licence="CC BY-SA 3.0",
        hub_id="google-research-datasets/nq_open",
        hub_config=None,
        default_split="validation",
        splits={
            "validation": SplitSpec(("nq_open/NQ-open.dev.jsonl",), 3610, "validation"),
            "efficientqa": SplitSpec(
                ("nq_open/NQ-open.efficientqa.dev.1.1.jsonl",), 1800, None,
                note="EfficientQA dev v1.1",
            ),
            "train": SplitSpec((), 87925, "train", note="hub only"),
        },
        local=loaders.nq_open_local,
        hub=_rows(loaders.nq_open_from_hub),
    ),
    DatasetSpec(
        name="triviaqa",
        description="TriviaQA questions with answer aliases (local files are subsets, not splits)",
        record_type=records.QAExample,
        licence="Apache-2.0 (official repo; HF card: unknown)",
        hub_id="mandarjoshi/trivia_qa",
        hub_config="rc.nocontext",
        default_split="subset1000",
        splits={
            "subset1000": SplitSpec(
                ("triviaqa/brian-ckwu_cs336_triviaqa_test.jsonl",), 1000, None,
                note="selection unknown; report as 'TriviaQA subset (n = 1,000)'",
            ),
            "persona150": SplitSpec(
                ("triviaqa/persona-hallucination-study_triviaqa.json",), 150, None,
                note="150-question subset, 17 of them also in subset1000",
            ),
            "validation": SplitSpec((), 17944, "validation", note="hub only"),
        },
        local=loaders.triviaqa_local,
        hub=_rows(loaders.triviaqa_from_hub),
    ),
    DatasetSpec(
        name="sciq",
        description="SciQ science questions, open answer; context = support passage if any",
        record_type=records.QAExample,
        licence=_SCIQ_LICENCE,
        hub_id="allenai/sciq",
        hub_config=None,
        default_split="test",
        splits={
            "train": SplitSpec(
                ("sciq/sciq_train.jsonl",), 11679, "train",
                note="lines 1-11,679 of sciq_train.jsonl; no support passages",
            ),
            "validation": SplitSpec(
                ("sciq/sciq_train.jsonl", "sciq/educational-qg_sciq_validation_support.csv"),
                1000, "validation",
                note="lines 11,680-12,679 of sciq_train.jsonl; 887 with support",
            ),
            "test": SplitSpec(
                ("sciq/sciq_test.jsonl", _SCIQ_TEST_SUPPORT), 1000, "test",
                note="884 with support",
            ),
        },
        local=loaders.sciq_local,
        hub=_rows(loaders.sciq_from_hub),
    ),
    DatasetSpec(
        name="sciq_mc",
        description="SciQ as 4-option multiple choice (correct answer + 3 original distractors)",
        record_type=records.MCExample,
        licence=_SCIQ_LICENCE,
        hub_id="allenai/sciq",
        hub_config=None,
        default_split="test",
        splits={
            "test": SplitSpec(
                ("sciq/llm-adapters_sciq_test_mc4.json", _SCIQ_TEST_SUPPORT), 1000, "test",
                note="ids and order aligned with sciq test",
            ),
        },
        local=loaders.sciq_mc_local,
        hub=_rows(loaders.sciq_mc_from_hub),
    ),
    DatasetSpec(
        name="truthfulqa",
        description="TruthfulQA: generation references and MC1/MC2 targets per question",
        record_type=records.TruthfulQAExample,
        licence="Apache-2.0",
        hub_id="truthfulqa/truthful_qa",
        hub_config=None,  # two configs, generation + multiple_choice, joined row by row
        default_split="validation",
        splits={
            "validation": SplitSpec(
                ("truthfulqa/truthfulqa-multi_en_validation.json",), 817, "validation"
            ),
        },
        local=loaders.truthfulqa_local,
        hub=_truthfulqa_hub,
    ),
    DatasetSpec(
        name="wikiqa",
        description="WikiQA answer-sentence selection, one record per question",
        record_type=records.WikiQAQuestion,
        licence="Microsoft Research Data License (non-commercial)",
        hub_id="microsoft/wiki_qa",
        hub_config=None,
        default_split="test",
        splits={
            "train": SplitSpec(
                ("wikiqa/WikiQA-train.tsv.gz",), 2118, "train",
                answerable=873, note="20,360 candidate sentences",
            ),
            "dev": SplitSpec(
                ("wikiqa/WikiQA-dev.tsv.gz",), 296, "validation",
                answerable=126, note="2,733 candidate sentences",
            ),
            "test": SplitSpec(
                ("wikiqa/WikiQA-test.tsv.gz",), 633, "test",
                answerable=243, note="6,165 candidate sentences",
            ),
        },
        local=loaders.wikiqa_local,
        hub=_rows(loaders.wikiqa_from_hub),
        aliases={"validation": "dev"},
    ),
    DatasetSpec(
        name="wikitext2",
        description="WikiText-2 articles (perplexity: raw test; calibration: tokenized validation)",
        record_type=records.TextDocument,
        licence="CC BY-SA 3.0 and GFDL",
        hub_id="Salesforce/wikitext",
        hub_config="wikitext-2-raw-v1",
        default_split="test",
        splits={
            "test": SplitSpec(
                ("wikitext2/wikitext-2-raw-v1_test_hf-rows-joined.txt",), 62, "test",
                note="raw, CRLF -> LF; the articles join to the HF perplexity string",
            ),
            "validation": SplitSpec(
                ("wikitext2/wiki.valid.tokens",), 60, "validation", "wikitext-2-v1",
                note="tokenized v1, contains <unk>",
            ),
        },
        local=loaders.wikitext2_local,
        hub=_rows(loaders.wikitext2_from_hub),
    ),
    DatasetSpec(
        name="sst2",
        description="GLUE SST-2 sentences with binary sentiment labels",
        record_type=records.SentimentExample,
        licence="none stated (SST / GLUE)",
        hub_id="stanfordnlp/sst2",
        hub_config=None,
        default_split="validation",
        splits={
            "validation": SplitSpec(("sst2/dev.tsv",), 872, "validation", note="GLUE dev"),
            "train": SplitSpec(("sst2/train.tsv",), 67349, "train"),
        },
        local=loaders.sst2_local,
        hub=_rows(loaders.sst2_from_hub),
        aliases={"dev": "validation"},
    ),
)
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
"""The registry: dataset name -> :class:`DatasetSpec` (``avss data`` prints it)."""
# fmt: on


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; an unknown name lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}."
        ) from None
