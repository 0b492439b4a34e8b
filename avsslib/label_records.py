"""Labelled answers on disk, and the deterministic splits and summaries built on them.

Each labelled answer is a :class:`LabelledExample` (id, dataset, prompt, answer, label, rule and
the evidence: matched alias, ROUGE-L scores, chosen sentence, ...), written as JSON lines by
:func:`write_labels` (atomically, through :mod:`avsslib.fs`; the only file this module writes).
:func:`split_ids` splits ids into disjoint calibration and evaluation parts, deterministically;
:func:`label_summary` counts labels with a bootstrap interval. No model, no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avsslib.errors import ConfigError, DataError
from avsslib.label_rules import LABELS, Label

__all__ = ["LabelledExample", "label_summary", "read_labels", "split_ids", "write_labels"]


@dataclasses.dataclass
class LabelledExample:
    """One labelled model answer.

    ``prompt``: the text the model was given (the filled template, rendered through the chat
    template when ``chat_template``); :func:`encode_prompt` turns it back into the same ids.
    ``answer``: the answer text (stripped); ``answer_ids``: its token ids as the model produced
    them (WikiQA: the chosen sentence's continuation ids), which teacher forcing appends to the
    prompt ids. ``label``: ``"hallucinated"`` or ``"truthful"``; ``rule``: the rule's name
    (``RULES``); ``evidence``: what the rule looked at.
    """

    id: str
    dataset: str
    split: str
    question: str
    prompt: str
    answer: str
    answer_ids: list[int]
    label: Label
    rule: str
    evidence: dict[str, Any]
    template: str
    chat_template: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelledExample:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data)
        if missing:
            raise DataError(f"labelled example lacks the fields {sorted(missing)}.")
        if data["label"] not in LABELS:
            raise DataError(
                f"labelled example {data['id']!r}: label {data['label']!r} is not one of {LABELS}."
            )
        return cls(**{k: data[k] for k in names})


def write_labels(path: str | Path, examples: Iterable[LabelledExample]) -> Path:
    """Write one JSON object per line (``LabelledExample.to_dict``), atomically (temporary file,
    then rename). Returns the path."""
    from avsslib.fs import to_jsonable, write_text_atomic

    lines = [
        json.dumps(to_jsonable(e.to_dict()), ensure_ascii=False, sort_keys=True) for e in examples
    ]
    return write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_labels(path: str | Path) -> list[LabelledExample]:
    """Read a file written by :func:`write_labels`; ``DataError`` names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read labels {path}: {exc}.") from exc
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(LabelledExample.from_dict(json.loads(line)))
        except (json.JSONDecodeError, DataError, TypeError) as exc:
            raise DataError(
                f"{path}, line {i}: not a labelled example ({exc}); rewrite the file "
                "with avsslib.labels.write_labels."
            ) from exc
    return out


def split_ids(
    ids: Sequence[str],
    fractions: Sequence[float] = (0.5, 0.5),
    seed: int = 0,
    *,
    stratify: Sequence[Any] | None = None,
) -> list[list[str]]:
    """Split ``ids`` into disjoint parts of the given ``fractions`` (summing to 1), e.g.
    calibration and evaluation.

    A permutation by ``numpy.random.default_rng(seed)`` is cut at ``n * cumsum(fractions)``
    rounded half up (an odd count gives its middle item to the earlier part); each part keeps
    the order of ``ids``. With ``stratify`` (one key per id, e.g. the labels), every stratum is
    split that way separately, so each part gets its share of each class (a class with a single
    member goes to the first part, e.g. calibration).
    Same arguments, same parts. Raises ``ConfigError`` for duplicate ids, negative fractions or
    fractions that do not sum to 1."""
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise ConfigError("split_ids: the ids are not unique; split by question id.")
    fr = np.asarray(fractions, dtype=np.float64)
    if (
        fr.ndim != 1
        or fr.size < 1
        or (fr < 0).any()
        or not math.isclose(fr.sum(), 1.0, abs_tol=1e-9)
    ):
        raise ConfigError(f"fractions {list(fractions)} must be non-negative and sum to 1.")
    keys = [None] * len(ids) if stratify is None else list(stratify)
    if len(keys) != len(ids):
        raise ConfigError(f"stratify has {len(keys)} keys for {len(ids)} ids.")
    rng = np.random.default_rng(seed)
    part_of = np.empty(len(ids), dtype=int)
    for key in sorted(set(keys), key=repr):
        members = np.flatnonzero([k == key for k in keys])
        perm = members[rng.permutation(len(members))]
        cuts = np.floor(np.cumsum(fr) * len(members) + 0.5).astype(int)  # round half up
        cuts[-1] = len(members)
        for j, chunk in enumerate(np.split(perm, cuts[:-1])):
            part_of[chunk] = j
    return [[ids[i] for i in range(len(ids)) if part_of[i] == j] for j in range(fr.size)]


def label_summary(
    examples: Sequence[LabelledExample], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Counts and the hallucination rate with a 95% percentile bootstrap interval over examples.

    Keys: ``n``, ``n_hallucinated``, ``n_truthful``, ``hallucination_rate``, ``ci_low``,
    ``ci_high``, ``n_empty_answers``, ``n_truncated``."""
    from avsslib.evaluate import bootstrap_ci

    flags = np.array([e.label == "hallucinated" for e in examples], dtype=np.float64)
    n = len(flags)
    low, high = bootstrap_ci(flags, n_boot=n_boot, seed=seed) if n else (math.nan, math.nan)
    return {
        "n": n,
        "n_hallucinated": int(flags.sum()),
        "n_truthful": int(n - flags.sum()),
        "hallucination_rate": float(flags.mean()) if n else math.nan,
        "ci_low": low,
        "ci_high": high,
        "n_empty_answers": sum(1 for e in examples if not e.answer_ids),
        "n_truncated": sum(1 for e in examples if e.evidence.get("truncated")),
    }
