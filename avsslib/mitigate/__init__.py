"""Contrastive mitigation on hallucination-prone layers (EAVSS; our reading, see the book's methods appendix).

The pipeline, top to bottom:

1. :func:`build_triples` turns dataset records into :class:`Triple` s (question, gold answer,
   wrong answers) and :func:`encode_triples` tokenizes them into :class:`EncodedTriple` s
   (prompt ids + answer ids, kept apart so the answer tokens are known exactly).
2. :func:`train` fine-tunes only the chosen blocks (all their parameters, or LoRA adapters on
   their linear projections) with ``L = L_LM + lambda * L_CL``: token cross-entropy on the gold
   answer given the prompt, plus InfoNCE (:func:`info_nce`, or :func:`supcon`) between
   per-layer representations ``z_l = normalize(g_l(hbar_l))``. Embeddings, every other block,
   the final norm and the LM head stay frozen (bit-identical, tested). Training is seeded,
   deterministic on CPU, checkpointed atomically and resumable to the same final weights.
3. :func:`save_trained_layers` / :func:`load_trained_layers` store and re-apply only what
   changed (the trained blocks' tensors, or the LoRA adapters) on a freshly loaded base model.
4. Side effects: :func:`kl_to_base` (token KL(base || tuned) on held-out text) and perplexity
   (:func:`avsslib.evaluate.perplexity`); :func:`paired_change` gives the absolute and
   relative change of every metric with paired bootstrap intervals over questions.

Representations. For a sequence that is ``prompt + answer``, ``hbar_l`` is the mean of block
``l``'s output over the answer tokens; the anchor (the prompt alone) uses the output at the
last prompt token. Because the models are causal and batches are right-padded, the anchor's
hidden state equals the positive sequence's hidden state at that position, so one forward pass
over ``[positives; negatives]`` gives anchors, positives, negatives and the LM loss at once.

Ablations (:func:`ablation_layers`), all with the same data and step budget: ``eavss`` (the
prone layers), ``random`` (k seeded random layers), ``avss`` (the k lowest-AVSS layers) and
``full`` (plain fine-tuning of every parameter with ``L_LM`` only) and ``probe`` (the k layers
whose linear probe best separates hallucinated from truthful answers, :mod:`avsslib.probe`).

The package, one module per concern: :mod:`~avsslib.mitigate.data` (triples, encoding,
batches, ablation layers), :mod:`~avsslib.mitigate.losses`, :mod:`~avsslib.mitigate.train`
(configuration, loop, checkpoints), :mod:`~avsslib.mitigate.store` (trained layers on disk) and
:mod:`~avsslib.mitigate.effects` (KL, paired change). Every public name is importable from
``avsslib.mitigate`` itself.
"""

from __future__ import annotations

from avsslib.mitigate.data import (
    DEFAULT_MAX_NEGATIVES,
    MODES,
    PROMPT,
    Batch,
    EncodedTriple,
    Triple,
    ablation_layers,
    build_triples,
    collate,
    encode_triples,
    has_answer,
    prompt,
)
from avsslib.mitigate.effects import (
    KLDivergence,
    kl_to_base,
    paired_change,
    truthfulqa_quick_eval,
)
from avsslib.mitigate.losses import (
    ProjectionHead,
    capture_blocks,
    info_nce,
    masked_mean,
    supcon,
)
from avsslib.mitigate.store import (
    CHECKPOINT,
    TRAINED_LAYERS,
    TRAINED_META,
    load_trained_layers,
    lora_targets,
    save_trained_layers,
)
from avsslib.mitigate.train import (
    TrainConfig,
    TrainResult,
    train,
)

__all__ = [
    "CHECKPOINT",
    "DEFAULT_MAX_NEGATIVES",
    "MODES",
    "PROMPT",
    "TRAINED_LAYERS",
    "TRAINED_META",
    "Batch",
    "EncodedTriple",
    "KLDivergence",
    "ProjectionHead",
    "TrainConfig",
    "TrainResult",
    "Triple",
    "ablation_layers",
    "build_triples",
    "capture_blocks",
    "collate",
    "encode_triples",
    "has_answer",
    "info_nce",
    "kl_to_base",
    "load_trained_layers",
    "lora_targets",
    "masked_mean",
    "paired_change",
    "prompt",
    "save_trained_layers",
    "supcon",
    "train",
    "truthfulqa_quick_eval",
]
