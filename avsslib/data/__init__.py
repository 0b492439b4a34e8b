"""Datasets as small typed records, from a local data folder or the Hugging Face hub.

>>> from avsslib.data import load_dataset
>>> qs = load_dataset("nq_open", n=100, seed=0)  # doctest: +SKIP
>>> qs[0].question, qs[0].answers  # doctest: +SKIP

``qs`` holds 100 NQ-open questions drawn with seed 0, in file order.

The registry :data:`DATASETS` lists each dataset's splits, files, expected counts, hub id and
licence (``avss data`` prints it; :mod:`avsslib.data.specs`). Records are defined in :mod:`avsslib.data.records`, the
parsers in :mod:`avsslib.data.loaders`.
"""

from avsslib.data.records import (
    MCExample,
    QAExample,
    Record,
    SentimentExample,
    TextDocument,
    TruthfulQAExample,
    WikiQAQuestion,
)
from avsslib.data.registry import (
    DataSource,
    calibration_texts,
    data_file_hashes,
    load_dataset,
    resolve_source,
    subsample,
)
from avsslib.data.specs import DATASETS, DatasetSpec, SplitSpec, get_spec

__all__ = [
    "DATASETS",
    "DataSource",
    "DatasetSpec",
    "MCExample",
    "QAExample",
    "Record",
    "SentimentExample",
    "SplitSpec",
    "TextDocument",
    "TruthfulQAExample",
    "WikiQAQuestion",
    "calibration_texts",
    "data_file_hashes",
    "get_spec",
    "load_dataset",
    "resolve_source",
    "subsample",
]
