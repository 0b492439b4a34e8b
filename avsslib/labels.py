"""Hallucination labels: the model's own answers, labelled by one rule per dataset.

The public face of three modules; ``from avsslib.labels import X`` works for every name below.

* :mod:`avsslib.label_rules`: the rules themselves, pure functions of the text (SQuAD
  normalisation, whole-word containment, ROUGE-L, the rule of each dataset, the question guard);
* :mod:`avsslib.label_generation`: the model's answers (greedy generation from the answer
  prompt :data:`avsslib.protocol.ANSWER_PROMPT`, WikiQA sentence scoring) and
  :func:`label_dataset`, which loads a dataset, answers and labels it;
* :mod:`avsslib.label_records`: :class:`LabelledExample`, the JSON-lines file of labelled
  answers (:func:`write_labels`, atomic; the only file written), :func:`split_ids` and
  :func:`label_summary`.
"""

from __future__ import annotations

from avsslib.label_generation import (
    DEFAULT_TEMPLATE,
    ChatTemplate,
    Generation,
    Scorer,
    continuation_logprobs,
    encode_prompt,
    generate_answers,
    label_dataset,
    render_prompt,
)
from avsslib.label_records import (
    LabelledExample,
    label_summary,
    read_labels,
    split_ids,
    write_labels,
)
from avsslib.label_rules import (
    LABELS,
    RULES,
    Label,
    evidence_text,
    label_alias,
    label_answer,
    label_sciq,
    label_truthfulqa,
    label_wikiqa,
    normalize_answer,
    rouge_l,
)

__all__ = [
    "evidence_text",
    "DEFAULT_TEMPLATE",
    "LABELS",
    "RULES",
    "ChatTemplate",
    "Generation",
    "Label",
    "LabelledExample",
    "Scorer",
    "continuation_logprobs",
    "encode_prompt",
    "generate_answers",
    "label_alias",
    "label_answer",
    "label_dataset",
    "label_sciq",
    "label_summary",
    "label_truthfulqa",
    "label_wikiqa",
    "normalize_answer",
    "read_labels",
    "render_prompt",
    "rouge_l",
    "split_ids",
    "write_labels",
]
