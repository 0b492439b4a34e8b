"""Names every stage of the pipeline shares, defined once: the answer prompt and the
mitigation modes. Nothing here imports torch, so readers of committed results can use it.

* :data:`ANSWER_PROMPT` is the prompt the model answers in :mod:`avsslib.label_generation`
  (the default generation template) and the anchor text of every contrastive triple in
  :mod:`avsslib.mitigate` (``avsslib.labels.DEFAULT_TEMPLATE`` and ``avsslib.mitigate.PROMPT``
  are this string, not copies of it).
* :func:`sweep_config` names the pruning study's fraction-sweep configurations and
  :func:`config_kind` / :func:`is_sweep` read the kind back (``original``, ``sweep`` or
  ``main``): the one place that knows how a configuration name encodes its kind.
* :data:`MODES` are the mitigation ablations of :func:`avsslib.mitigate.ablation_layers`, in the
  order every table and figure uses; ``avss mitigate --mode``, ``avss reproduce --modes`` and
  :mod:`avsslib.results` read them from here.
"""

from __future__ import annotations

from typing import Any, Literal

ANSWER_PROMPT = "Answer the question.\nQ: {question}\nA:"
"""The answer prompt; ``{question}`` is replaced by the (stripped) question text."""

MODES: tuple[str, ...] = ("eavss", "probe", "random", "avss", "full")
"""Mitigation modes: the prone layers (EAVSS), the layers a linear probe separates best, as many
random layers, as many lowest-AVSS layers, and full fine-tuning with the LM loss only."""

SWEEP_PREFIX = "sweep-"
"""Names of the fraction-sweep configurations of the pruning study start with this."""

ConfigKind = Literal["original", "sweep", "main"]


def sweep_config(score: str, fraction: float) -> str:
    """The name of the sweep configuration of ``score`` at ``fraction`` (``sweep-avss-0.25``)."""
    return f"{SWEEP_PREFIX}{score}-{fraction:g}"


def config_kind(name: str) -> ConfigKind:
    """``original`` (the unpruned model), ``sweep`` (a fraction-sweep configuration) or
    ``main`` (a selection rule at the study's fraction) for a configuration name."""
    if name == "original":
        return "original"
    return "sweep" if name.startswith(SWEEP_PREFIX) else "main"


def is_sweep(names: Any) -> Any:
    """:func:`config_kind` ``== "sweep"`` for one name, or element-wise for a pandas Series of
    names (a boolean mask)."""
    if isinstance(names, str):
        return config_kind(names) == "sweep"
    return names.map(lambda n: config_kind(str(n)) == "sweep").astype(bool)


__all__ = [
    "ANSWER_PROMPT",
    "MODES",
    "SWEEP_PREFIX",
    "ConfigKind",
    "config_kind",
    "is_sweep",
    "sweep_config",
]
