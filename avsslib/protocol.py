"""Names every stage of the pipeline shares, defined once: the answer prompt and the
mitigation modes. Nothing here imports torch, so readers of committed results can use it.

* :data:`ANSWER_PROMPT` is the prompt the model answers in :mod:`avsslib.labels` (the default
  generation template) and the anchor text of every contrastive triple in
  :mod:`avsslib.mitigate` (``avsslib.labels.DEFAULT_TEMPLATE`` and ``avsslib.mitigate.PROMPT``
  are this string).
* :data:`MODES` are the mitigation ablations of :func:`avsslib.mitigate.ablation_layers`, in the
  order every table and figure uses; ``avss mitigate --mode``, ``avss reproduce --modes`` and
  :mod:`avsslib.results` read them from here.
"""

from __future__ import annotations

ANSWER_PROMPT = "Answer the question.\nQ: {question}\nA:"
"""The answer prompt; ``{question}`` is replaced by the (stripped) question text."""

MODES: tuple[str, ...] = ("eavss", "probe", "random", "avss", "full")
"""Mitigation modes: the prone layers (EAVSS), the layers a linear probe separates best, as many
random layers, as many lowest-AVSS layers, and full fine-tuning with the LM loss only."""

__all__ = ["ANSWER_PROMPT", "MODES"]
