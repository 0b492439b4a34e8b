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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from avsslib.arch import blocks
from avsslib.bootstrap import (
    check_bootstrap,
    paired_replicates,
    percentile_interval,
    resample_indices,
)
from avsslib.data import MCExample, QAExample, TruthfulQAExample, WikiQAQuestion
from avsslib.errors import ConfigError, ModelError
from avsslib.fs import atomic_path, write_json_atomic
from avsslib.protocol import ANSWER_PROMPT
from avsslib.protocol import MODES as PROTOCOL_MODES
from avsslib.report import model_fingerprint, state_sha256

PROMPT = ANSWER_PROMPT
"""The prompt of every triple (:data:`avsslib.protocol.ANSWER_PROMPT`); the anchor is this text
alone."""

DEFAULT_MAX_NEGATIVES = 4
"""Negatives kept per question (K)."""

MODES = PROTOCOL_MODES
"""Ablation modes of :func:`ablation_layers` (:data:`avsslib.protocol.MODES`)."""

CHECKPOINT = "checkpoint.pt"
TRAINED_LAYERS = "trained_layers.safetensors"
TRAINED_META = "trained_layers.json"


# ---------------------------------------------------------------- triples


def prompt(question: str) -> str:
    """The prompt for ``question`` (:data:`PROMPT`, question stripped)."""
    return PROMPT.format(question=question.strip())


@dataclass(frozen=True)
class Triple:
    """One question's contrastive example.

    ``positive`` is the gold answer and ``negatives`` the wrong answers (answer texts only); the
    model sees ``anchor`` (the prompt), ``positive_text`` and ``negative_texts`` (prompt, one
    space, answer). ``source`` is the dataset name, with ``+model`` when some negatives are
    the model's own hallucinated answers. ``id`` is the record's id.
    """

    question: str
    positive: str
    negatives: tuple[str, ...]
    source: str
    id: str = ""

    @property
    def anchor(self) -> str:
        return prompt(self.question)

    @property
    def positive_text(self) -> str:
        return f"{self.anchor} {self.positive}"

    @property
    def negative_texts(self) -> tuple[str, ...]:
        return tuple(f"{self.anchor} {n}" for n in self.negatives)


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


def _answers(dataset_name: str, ex: Any) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """(gold answer or None, every correct answer, dataset negatives) of one record."""
    if isinstance(ex, MCExample):
        return ex.answer, (ex.answer,), tuple(c for i, c in enumerate(ex.choices) if i != ex.label)
    if isinstance(ex, TruthfulQAExample):
        return ex.best_answer, (ex.best_answer, *ex.correct_answers), ex.incorrect_answers
    if isinstance(ex, WikiQAQuestion):
        good = tuple(s for s, y in zip(ex.sentences, ex.labels, strict=True) if y == 1)
        bad = tuple(s for s, y in zip(ex.sentences, ex.labels, strict=True) if y == 0)
        return (good[0] if good else None), good, bad
    if isinstance(ex, QAExample):
        return ex.answers[0], ex.answers, ()
    raise ConfigError(
        f"dataset {dataset_name!r}: cannot build triples from {type(ex).__name__} records; use "
        "sciq_mc, truthfulqa, wikiqa, nq_open, triviaqa or sciq."
    )


def has_answer(dataset_name: str, ex: Any) -> bool:
    """Whether a record has a correct answer to train on (WikiQA questions without a label-1
    sentence have none; every record of the other datasets has one)."""
    gold = _answers(dataset_name, ex)[0]
    return bool(gold and gold.strip())


def build_triples(
    dataset_name: str,
    examples: Iterable[Any],
    *,
    own_negatives: Iterable[tuple[str, str]] | None = None,
    max_negatives: int = DEFAULT_MAX_NEGATIVES,
    dataset_negatives: bool = True,
) -> list[Triple]:
    """Triples from dataset records (types of :mod:`avsslib.data`).

    Positive: ``MCExample`` (``sciq_mc``) the correct choice; ``TruthfulQAExample`` the best
    answer; ``WikiQAQuestion`` its first label-1 sentence (questions without one are skipped);
    ``QAExample`` (NQ, TriviaQA, SciQ open) its first answer.
    Negatives, at most ``max_negatives`` in this order: the model's own hallucinated answers
    (``own_negatives``: ``(question, answer)`` pairs, matched to records by question text, case
    and spaces ignored), then, with ``dataset_negatives``, the dataset's (SciQ distractors,
    TruthfulQA incorrect answers, WikiQA label-0 sentences; ``QAExample`` has none). A negative
    equal to any correct answer (case, spaces and a final period ignored) or to an earlier
    negative is dropped. Triples may have no negatives (in-batch negatives still apply).
    """
    if isinstance(max_negatives, bool) or not isinstance(max_negatives, int) or max_negatives < 0:
        raise ConfigError(f"max_negatives = {max_negatives!r}: must be an integer >= 0.")
    own: dict[str, list[str]] = {}
    for question, answer in own_negatives or ():
        own.setdefault(_norm(question), []).append(answer)
    triples = []
    for ex in examples:
        gold, correct, negs = _answers(dataset_name, ex)
        if gold is None or not gold.strip():
            continue
        mine = own.get(_norm(ex.question), [])
        blocked = {_norm(c) for c in correct}
        kept: list[str] = []
        from_model = False
        for k, candidate in enumerate([*mine, *(negs if dataset_negatives else ())]):
            key = _norm(candidate)
            if len(kept) == max_negatives or not key or key in blocked:
                continue
            blocked.add(key)
            kept.append(candidate.strip())
            from_model |= k < len(mine)
        source = f"{dataset_name}+model" if from_model else dataset_name
        triples.append(Triple(ex.question.strip(), gold.strip(), tuple(kept), source, ex.id))
    return triples


@dataclass(frozen=True)
class EncodedTriple:
    """Token ids of one triple: ``prompt`` (with the tokenizer's special tokens), and the
    ``positive`` and ``negatives`` answers (a leading space, no special tokens), each to be
    appended to the prompt."""

    prompt: tuple[int, ...]
    positive: tuple[int, ...]
    negatives: tuple[tuple[int, ...], ...] = ()


def encode_triples(triples: Sequence[Triple], tokenizer: Any, *, max_answer_tokens: int = 64
                   ) -> list[EncodedTriple]:
    """Tokenize triples; answers are cut to ``max_answer_tokens`` tokens (long WikiQA
    sentences). Prompt and answer are tokenized apart, so the answer tokens are exact."""
    if max_answer_tokens < 1:
        raise ConfigError(f"max_answer_tokens = {max_answer_tokens}: must be >= 1.")

    def answer(text: str) -> tuple[int, ...]:
        return tuple(tokenizer(" " + text, add_special_tokens=False)["input_ids"][:max_answer_tokens])

    return [
        EncodedTriple(tuple(tokenizer(t.anchor)["input_ids"]), answer(t.positive),
                      tuple(answer(n) for n in t.negatives))
        for t in triples
    ]


@dataclass
class Batch:
    """A padded micro-batch of B questions: rows ``0..B-1`` are the positives (prompt + gold
    answer), then every question's negatives.

    ``input_ids``/``attention_mask``: (N, T), right-padded. ``answer_mask``: (N, T) bool, True
    on answer tokens. ``anchor_index``: (B,) position of the last prompt token of each
    positive row. ``negative_rows``: (B, K) row of each negative (0 where missing);
    ``negative_mask``: (B, K) bool, True where the negative exists.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    anchor_index: torch.Tensor
    negative_rows: torch.Tensor
    negative_mask: torch.Tensor

    @property
    def size(self) -> int:
        return len(self.anchor_index)


def collate(items: Sequence[EncodedTriple], pad_id: int, *, negatives: bool = True) -> Batch:
    """Pad ``items`` into one :class:`Batch` (``negatives=False``: positives only)."""
    rows = [(it.prompt, it.positive) for it in items]
    k = max((len(it.negatives) for it in items), default=0) if negatives else 0
    neg_rows = torch.zeros(len(items), k, dtype=torch.long)
    neg_mask = torch.zeros(len(items), k, dtype=torch.bool)
    if negatives:
        for i, it in enumerate(items):
            for j, ans in enumerate(it.negatives):
                neg_rows[i, j], neg_mask[i, j] = len(rows), True
                rows.append((it.prompt, ans))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros(len(rows), width, dtype=torch.long)
    answer = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, (p, a) in enumerate(rows):
        ids[r, : len(p) + len(a)] = torch.tensor(p + a)
        attn[r, : len(p) + len(a)] = 1
        answer[r, len(p): len(p) + len(a)] = True
    anchor = torch.tensor([len(it.prompt) - 1 for it in items])
    return Batch(ids, attn, answer, anchor, neg_rows, neg_mask)


# ---------------------------------------------------------------- layer choice for ablations


def ablation_layers(
    mode: str,
    n_layers: int,
    *,
    layers: Sequence[int] | None = None,
    k: int | None = None,
    scores: Sequence[float] | None = None,
    seed: int = 0,
) -> list[int]:
    """The blocks that train in each ablation mode, sorted.

    * ``eavss``: ``layers`` (the prone layers), as given.
    * ``random``: ``k`` layers (default ``len(layers)``) drawn without replacement by
      ``numpy.random.default_rng(seed)``.
    * ``avss``: the ``k`` layers with the lowest ``scores`` (plain AVSS, ties by index), or
      ``layers`` as given when no scores are passed.
    * ``probe``: the ``k`` layers with the highest ``scores`` (probe accuracies, ties to the
      lower index), or ``layers`` as given when no scores are passed.
    * ``full``: every layer (and :class:`TrainConfig` ``full_model=True`` trains all parameters).
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}.")
    if mode == "full":
        return list(range(n_layers))
    if mode == "avss" and scores is not None:
        if len(scores) != n_layers:
            raise ConfigError(f"{len(scores)} AVSS scores for a model with {n_layers} layers.")
        count = k if k is not None else (len(layers) if layers else None)
        if count is None:
            raise ConfigError("mode 'avss' with scores needs k (or layers, whose count is used).")
        return _check_layers(np.argsort(np.asarray(scores), kind="stable")[:count].tolist(), n_layers)
    if mode == "probe" and scores is not None:
        if len(scores) != n_layers:
            raise ConfigError(f"{len(scores)} probe scores for a model with {n_layers} layers.")
        count = k if k is not None else (len(layers) if layers else None)
        if count is None or not 1 <= count <= n_layers:
            raise ConfigError(f"mode 'probe' with scores needs k in 1..{n_layers} (or layers, whose "
                              "count is used).")
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        return _check_layers(order[:count].tolist(), n_layers)
    if mode == "random":
        count = k if k is not None else len(layers or ())
        if not 1 <= count <= n_layers:
            raise ConfigError(f"mode 'random': k = {count} must lie in 1..{n_layers}; pass k or layers.")
        return sorted(np.random.default_rng(seed).choice(n_layers, size=count, replace=False).tolist())
    if not layers:
        raise ConfigError(f"mode {mode!r} needs the layer indices (e.g. the prone layers).")
    return _check_layers(layers, n_layers)


def _check_layers(layers: Iterable[int], n_layers: int) -> list[int]:
    out = sorted(int(x) for x in layers)
    if not out or len(set(out)) != len(out) or out[0] < 0 or out[-1] >= n_layers:
        raise ConfigError(f"layers {out}: need distinct indices in 0..{n_layers - 1}.")
    return out


# ---------------------------------------------------------------- losses


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_mask: torch.Tensor | None = None,
    *,
    tau: float = 0.07,
    in_batch: bool = False,
) -> torch.Tensor:
    """InfoNCE, mean over the batch: ``-log e^{s(a,p)} / (e^{s(a,p)} + sum_k e^{s(a,n_k)})``.

    ``anchor``, ``positive``: (B, D); ``negatives``: (B, K, D) with ``negative_mask`` (B, K)
    True where a negative exists (default all). Vectors are L2-normalised here, so
    ``s(u, v) = <u/|u|, v/|v|> / tau`` (cosine over temperature). ``in_batch=True`` adds the
    positives of the other questions as negatives. Returns a scalar.
    """
    a, p, n = (F.normalize(x.float(), dim=-1) for x in (anchor, positive, negatives))
    pos = (a * p).sum(-1, keepdim=True) / tau
    neg = torch.einsum("bd,bkd->bk", a, n) / tau
    if negative_mask is not None:
        neg = neg.masked_fill(~negative_mask, -math.inf)
    parts = [pos, neg]
    if in_batch and len(a) > 1:
        eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
        parts.append((a @ p.T / tau).masked_fill(eye, -math.inf))
    return -torch.log_softmax(torch.cat(parts, dim=1), dim=1)[:, 0].mean()


def supcon(z: torch.Tensor, labels: torch.Tensor, *, tau: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "L_out") over M vectors ``z`` (M, D)
    with class ``labels`` (M,) (here 1 = truthful answer, 0 = hallucinated): each vector pulls
    the others of its class and pushes the rest. Vectors without a same-class partner are
    skipped; 0 when none has one. Returns a scalar."""
    z = F.normalize(z.float(), dim=-1)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logp = torch.log_softmax((z @ z.T / tau).masked_fill(eye, -math.inf), dim=1)
    same = (labels[:, None] == labels[None, :]) & ~eye
    count = same.sum(1)
    ok = count > 0
    if not ok.any():
        return z.sum() * 0.0
    return -(logp.masked_fill(~same, 0.0).sum(1)[ok] / count[ok]).mean()


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (N, T, D) over the positions where ``mask`` (N, T) is True -> (N, D),
    in float32 (zeros for a row without any)."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


@contextlib.contextmanager
def capture_blocks(model: torch.nn.Module, layers: Iterable[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks on ``blocks(model)[l]``: inside the block, ``store[l]`` is block ``l``'s
    output hidden states (N, T, D) of the latest forward pass (first element when a block
    returns a tuple), still attached to the autograd graph."""
    store: dict[int, torch.Tensor] = {}
    mods = blocks(model)
    handles = []
    for layer in layers:
        def hook(_m: torch.nn.Module, _args: Any, output: Any, layer: int = layer) -> None:
            store[layer] = output[0] if isinstance(output, tuple) else output
        handles.append(mods[layer].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


class ProjectionHead(torch.nn.Sequential):
    """The optional ``g_l``: Linear(d, d) - ReLU - Linear(d, out_dim); discarded after training."""

    def __init__(self, d: int, out_dim: int = 256) -> None:
        super().__init__(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, out_dim))


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training run (and must match to resume one).

    ``layers``: the blocks that train (the prone set); ``full_model=True`` instead trains every
    parameter with ``L_LM`` only (the "full" ablation). ``lora``: LoRA (rank ``lora_r``, scale
    ``lora_alpha / lora_r``, no dropout) on every linear projection of those blocks instead of
    their full parameters. ``lr``: ``None`` = 1e-5 full / 1e-4 LoRA. AdamW with
    ``weight_decay`` on matrices (not on norms and biases), ``warmup_ratio`` of the optimizer
    steps of linear warm-up, then linear decay to zero; gradients clipped to ``max_grad_norm``.
    ``batch_size`` questions per micro-batch, ``grad_accum`` micro-batches per optimizer step
    (effective batch = their product). Loss ``L_LM + lam * L_CL`` with ``loss`` = ``infonce``
    (temperature ``tau``, plus other questions' positives when ``in_batch_negatives``) or
    ``supcon``; ``projection`` adds the MLP head ``g_l`` (``projection_dim`` outputs).
    ``bf16``: autocast the forward pass to bfloat16. ``checkpoint_every``: optimizer steps
    between checkpoints (0 = none).
    """

    layers: tuple[int, ...] = ()
    full_model: bool = False
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    epochs: int = 1
    batch_size: int = 4
    grad_accum: int = 4
    max_grad_norm: float | None = 1.0
    lam: float = 0.5
    tau: float = 0.07
    loss: Literal["infonce", "supcon"] = "infonce"
    in_batch_negatives: bool = True
    projection: bool = False
    projection_dim: int = 256
    bf16: bool = False
    seed: int = 42
    checkpoint_every: int = 0

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.lora else 1e-5)

    @property
    def contrastive(self) -> bool:
        """Whether ``L_CL`` is on (not for ``full_model``, nor with ``lam == 0``)."""
        return not self.full_model and self.lam > 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layers"] = list(self.layers)
        out["learning_rate"] = self.learning_rate
        return out

    def validate(self, n_layers: int) -> None:
        """Raise ``ConfigError`` naming the first impossible value."""
        checks = [
            (self.epochs >= 1, f"epochs = {self.epochs}: must be >= 1"),
            (self.batch_size >= 1, f"batch_size = {self.batch_size}: must be >= 1"),
            (self.grad_accum >= 1, f"grad_accum = {self.grad_accum}: must be >= 1"),
            (self.learning_rate > 0, f"lr = {self.lr}: must be > 0"),
            (self.tau > 0, f"tau = {self.tau}: must be > 0"),
            (self.lam >= 0, f"lambda = {self.lam}: must be >= 0"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio = {self.warmup_ratio}: must lie in [0, 1)"),
            (self.weight_decay >= 0, f"weight_decay = {self.weight_decay}: must be >= 0"),
            (self.checkpoint_every >= 0, f"checkpoint_every = {self.checkpoint_every}: must be >= 0"),
            (self.loss in ("infonce", "supcon"), f"loss {self.loss!r}: expected 'infonce' or 'supcon'"),
            (self.lora_r >= 1, f"lora_r = {self.lora_r}: must be >= 1"),
            (not (self.full_model and self.lora), "full_model and lora: full fine-tuning trains "
             "every parameter; drop one of them"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + ".")
        if not self.full_model:
            if list(self.layers) != _check_layers(self.layers, n_layers):
                raise ConfigError(f"layers {list(self.layers)}: pass them sorted, e.g. {sorted(self.layers)}.")


@dataclass
class TrainResult:
    """What :func:`train` did.

    ``state``: the trained tensors by parameter name (CPU; block parameters, every parameter
    for ``full_model``, or the LoRA adapters), what :func:`save_trained_layers` writes.
    ``meta``: kind (``blocks``/``full``/``lora``), layers, config, base-model fingerprint, LoRA
    settings. ``history``: one row per optimizer step (step, epoch, loss, lm, cl, lr,
    grad_norm). ``resumed_from``: the checkpoint step this process started at (0 = fresh).
    ``wall_s``/``steps_run``: training time and optimizer steps of this process.
    """

    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    history: list[dict[str, float]]
    resumed_from: int
    steps_run: int
    wall_s: float

    @property
    def s_per_step(self) -> float:
        return self.wall_s / self.steps_run if self.steps_run else math.nan


def lora_targets(model: torch.nn.Module, layers: Iterable[int]) -> list[str]:
    """Full module names of every linear projection (``nn.Linear`` or GPT-2's ``Conv1D``)
    inside the given blocks: attention and MLP projections."""
    from transformers.pytorch_utils import Conv1D

    names = {id(module): name for name, module in model.named_modules()}
    targets = []
    for layer in layers:
        block = blocks(model)[layer]
        targets += [f"{names[id(block)]}.{sub}" for sub, module in block.named_modules()
                    if isinstance(module, torch.nn.Linear | Conv1D)]
    return targets


def _add_lora(model: torch.nn.Module, targets: list[str], r: int, alpha: int) -> torch.nn.Module:
    """Inject LoRA adapters into ``targets`` in place (``peft``); returns the PeftModel wrapper."""
    from peft import LoraConfig, get_peft_model

    if not targets:
        raise ModelError("no linear projection found in the chosen blocks; LoRA needs nn.Linear "
                         "or Conv1D modules there (train the full parameters instead).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                target_modules=targets, bias="none"))


def _schedule(total: int, warmup: int) -> Callable[[int], float]:
    """LR factor of optimizer step s (0-based): (s+1)/warmup during warm-up, then linear decay
    from 1 to 1/(total - warmup) at the last step."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / max(1, total - warmup))
    return factor


def _examples_sha256(examples: Sequence[EncodedTriple]) -> str:
    return hashlib.sha256(repr([dataclasses.astuple(e) for e in examples]).encode()).hexdigest()


def _rng_state() -> dict[str, Any]:
    np_state = cast(tuple[Any, ...], np.random.get_state())
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _micro_batches(n: int, config: TrainConfig) -> list[list[list[int]]]:
    """Per optimizer step (all epochs), its micro-batches of example indices. Epoch ``e``
    shuffles with ``numpy.random.default_rng([seed, e])``; the last step of an epoch may hold
    fewer micro-batches."""
    steps = []
    for epoch in range(config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(n).tolist()
        micro = [order[i: i + config.batch_size] for i in range(0, n, config.batch_size)]
        steps += [micro[i: i + config.grad_accum] for i in range(0, len(micro), config.grad_accum)]
    return steps


def _losses(net: torch.nn.Module, model: torch.nn.Module, heads: torch.nn.ModuleDict | None,
            batch: Batch, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, L_LM, L_CL) of one micro-batch; L_CL is 0 when contrastive learning is off."""
    device = next(model.parameters()).device
    b = batch.size
    layers = config.layers if config.contrastive else ()
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16)
    with capture_blocks(model, layers) as hidden, autocast:
        logits = net(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                     use_cache=False).logits
    target = batch.input_ids[:b, 1:].to(device)
    scored = batch.answer_mask[:b, 1:].to(device)  # position t predicts token t+1
    lm = F.cross_entropy(logits[:b, :-1][scored].float(), target[scored])
    if not layers:
        return lm, lm, torch.zeros((), device=device)
    answer_mask = batch.answer_mask.to(device)
    cl = []
    for layer in layers:
        h = hidden[layer]
        reps = masked_mean(h, answer_mask)  # (N, D)
        anchors = h[torch.arange(b, device=device), batch.anchor_index.to(device)].float()  # (B, D)
        if heads is not None:
            reps, anchors = heads[str(layer)](reps), heads[str(layer)](anchors)
        if config.loss == "supcon":
            labels = (torch.arange(len(reps), device=device) < b).long()
            cl.append(supcon(reps, labels, tau=config.tau))
        else:
            cl.append(info_nce(anchors, reps[:b], reps[batch.negative_rows.to(device)],
                               batch.negative_mask.to(device), tau=config.tau,
                               in_batch=config.in_batch_negatives))
    l_cl = torch.stack(cl).mean()
    return lm + config.lam * l_cl, lm, l_cl


def train(
    model: torch.nn.Module,
    examples: Sequence[EncodedTriple],
    config: TrainConfig,
    *,
    pad_id: int,
    out_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``model`` in place on ``examples`` (see :class:`TrainConfig`).

    Only the chosen blocks (or their LoRA adapters; or, for ``full_model``, everything) get
    gradients: every other parameter is frozen and comes out bit-identical. With LoRA the
    adapters are merged into the base weights at the end, so ``model`` is a plain model again.
    The model is in eval mode and its ``requires_grad`` flags are restored on return.

    ``pad_id``: the padding token id (``tokenizer.pad_token_id``). ``out_dir``: where the
    checkpoint (``checkpoint.pt``: trainable tensors, heads, optimizer, scheduler, RNG states,
    step, history; written atomically every ``config.checkpoint_every`` steps and after the
    last one, when ``checkpoint_every > 0``) and, at the end, the trained layers
    (:func:`save_trained_layers`) go. ``resume=True``
    continues from that checkpoint when it exists (same config, data and base weights, else
    ``ConfigError``) and ends with the same weights as an uninterrupted run. ``callback`` gets
    each step's history row after the step (and its checkpoint). Seeded by ``config.seed``
    (:func:`avsslib.seeding.set_seed`): two runs give the same weights on CPU.
    """
    from avsslib.seeding import set_seed

    n_layers = len(blocks(model))
    config.validate(n_layers)
    if not examples:
        raise ConfigError("no training examples: build triples from a non-empty dataset sample.")
    if resume and out_dir is None:
        raise ConfigError("resume=True needs out_dir, the folder holding checkpoint.pt.")
    out = Path(out_dir) if out_dir is not None else None
    base = model_fingerprint(model)
    data_sha = _examples_sha256(examples)
    set_seed(config.seed)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    layers = list(range(n_layers)) if config.full_model else list(config.layers)

    model.requires_grad_(config.full_model)
    net: torch.nn.Module = model
    targets: list[str] = []
    if config.lora:
        targets = lora_targets(model, layers)
        net = _add_lora(model, targets, config.lora_r, config.lora_alpha)
        model.requires_grad_(False)
        for name, p in model.named_parameters():
            p.requires_grad_(".lora_" in name)
    elif not config.full_model:
        for layer in layers:
            blocks(model)[layer].requires_grad_(True)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    device = next(model.parameters()).device
    heads = None
    if config.projection and config.contrastive:
        d = cast(Any, model).config.hidden_size
        heads = torch.nn.ModuleDict({str(layer): ProjectionHead(d, config.projection_dim)
                                     for layer in config.layers}).to(device)
    head_params = list(heads.parameters()) if heads is not None else []
    params = [p for _, p in trainable] + head_params
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    steps = _micro_batches(len(examples), config)
    warmup = math.ceil(config.warmup_ratio * len(steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(len(steps), warmup))

    config_dict = config.to_dict()
    history: list[dict[str, float]] = []
    start = 0
    ckpt = out / CHECKPOINT if out is not None else None
    if resume and ckpt is not None and ckpt.exists():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
            raise ConfigError(f"{ckpt} cannot be read as a checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); delete it to train from the start, or use "
                              "another out_dir.") from None
        same = {k: v for k, v in state["config"].items() if k != "checkpoint_every"} == \
            {k: v for k, v in config_dict.items() if k != "checkpoint_every"}
        if not same or state["data_sha256"] != data_sha or state["base_sha256"] != base["state_sha256"]:
            raise ConfigError(f"{ckpt} belongs to another run (config, training data or base model "
                              "differ); resume with the same settings or use another out_dir.")
        with torch.no_grad():
            for name, p in trainable:
                p.copy_(state["params"][name])
        if heads is not None:
            heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        history, start = list(state["history"]), int(state["step"])

    def checkpoint(step: int) -> None:
        assert ckpt is not None
        _save_atomic({
            "format": 1, "step": step, "config": config_dict, "data_sha256": data_sha,
            "base_sha256": base["state_sha256"],
            "params": {n: p.detach().clone() for n, p in trainable},
            "heads": heads.state_dict() if heads is not None else {},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": _rng_state(), "history": history,
        }, ckpt)

    model.eval()
    for module in ([model] if config.full_model else [blocks(model)[layer] for layer in layers]):
        module.train()
    if heads is not None:
        heads.train()
    steps_per_epoch = len(steps) // config.epochs
    t0 = time.perf_counter()
    bar = tqdm(total=len(steps), initial=start, desc="train", unit="step", disable=not progress)
    try:
        for step in range(start, len(steps)):
            optimizer.zero_grad(set_to_none=True)
            group = steps[step]
            sums = np.zeros(3)
            for micro in group:
                batch = collate([examples[i] for i in micro], pad_id, negatives=config.contrastive)
                total, lm, cl = _losses(net, model, heads, batch, config)
                (total / len(group)).backward()
                sums += [total.item(), lm.item(), cl.item()]
            norm = (torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm).item()
                    if config.max_grad_norm else math.nan)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            loss, lm_mean, cl_mean = (sums / len(group)).tolist()
            row = {"step": step + 1, "epoch": step // steps_per_epoch, "loss": loss, "lm": lm_mean,
                   "cl": cl_mean, "lr": lr, "grad_norm": norm}
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if ckpt is not None and config.checkpoint_every and (
                    (step + 1) % config.checkpoint_every == 0 or step + 1 == len(steps)):
                checkpoint(step + 1)
            if callback is not None:
                callback(row)
    finally:
        bar.close()
        model.eval()
    wall = time.perf_counter() - t0

    state_out = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in trainable}
    if config.lora:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            cast(Any, net).merge_and_unload()
    for name, p in model.named_parameters():
        p.requires_grad_(flags.get(name, False))
    kind = "full" if config.full_model else ("lora" if config.lora else "blocks")
    meta = {
        "format": 1, "kind": kind, "layers": layers, "config": config_dict, "base_model": base,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "target_modules": targets} if config.lora else None,
        "parameters": sorted(state_out), "steps": len(steps), "data_sha256": data_sha,
    }
    result = TrainResult(state_out, meta, history, start, len(steps) - start, wall)
    if out is not None:
        save_trained_layers(result, out)
    return result


# ---------------------------------------------------------------- saving and loading


def save_trained_layers(result: TrainResult, directory: str | Path) -> Path:
    """Write ``trained_layers.safetensors`` (the trained tensors by parameter name) and
    ``trained_layers.json`` (kind, layers, config, base-model fingerprint, LoRA settings) into
    ``directory``, each atomically. Returns the safetensors path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    path = directory / TRAINED_LAYERS
    with atomic_path(path) as tmp:
        save_file(result.state, tmp, metadata={"format": "avsslib.mitigate/1"})
    write_json_atomic(directory / TRAINED_META, result.meta)
    return path


def load_trained_layers(model: torch.nn.Module, path: str | Path, *, verify_weights: bool = True
                        ) -> dict[str, Any]:
    """Apply trained layers saved by :func:`save_trained_layers` to a freshly loaded base
    ``model``, in place; returns the saved metadata.

    ``path``: the folder or its ``trained_layers.safetensors``. The base model must match the
    recorded one (id, type, layer count, hidden size, and with ``verify_weights`` the SHA-256 of
    its weights; turn that off for the same model in another dtype), else ``ModelError``. LoRA
    adapters are injected, loaded and merged, leaving a plain model.
    """
    from safetensors.torch import load_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    tensors_path, meta_path = folder / TRAINED_LAYERS, folder / TRAINED_META
    if not tensors_path.exists() or not meta_path.exists():
        raise ModelError(f"{folder} lacks {TRAINED_LAYERS} or {TRAINED_META}; pass the out_dir of a "
                         "finished training run.")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    want, have = meta["base_model"], model_fingerprint(model, weights=False)
    for key in ("id", "model_type", "num_layers", "hidden_size"):
        if want.get(key) != have.get(key):
            raise ModelError(f"{meta_path}: trained on a base model with {key} = {want.get(key)!r}, "
                             f"but this model has {have.get(key)!r}; load the same base model.")
    if verify_weights and want["state_sha256"] != state_sha256(model):
        raise ModelError(f"{meta_path}: the base model's weights differ from those it was trained "
                         "on (SHA-256); load a fresh copy of that model, or pass "
                         "verify_weights=False for the same model in another dtype.")
    tensors = load_file(tensors_path)
    net = _add_lora(model, meta["lora"]["target_modules"], meta["lora"]["r"],
                    meta["lora"]["alpha"]) if meta["kind"] == "lora" else model
    named = dict(model.named_parameters())
    for name, value in tensors.items():
        if name not in named or named[name].shape != value.shape:
            raise ModelError(f"{tensors_path}: tensor {name} {tuple(value.shape)} has no match in the "
                             "model; it was saved for another architecture.")
        with torch.no_grad():
            named[name].copy_(value)
    if meta["kind"] == "lora":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            cast(Any, net).merge_and_unload()
    return meta


# ---------------------------------------------------------------- side effects and changes


@dataclass
class KLDivergence:
    """Mean token KL(base || tuned) in nats. ``per_text``: shape (n, 2) = (KL summed over the
    text's positions, positions), for a ratio-of-sums bootstrap; ``value`` = column sums'
    ratio. ``protocol`` says how it was measured."""

    value: float
    per_text: np.ndarray
    protocol: dict[str, Any] = field(default_factory=dict)


@torch.inference_mode()
def kl_to_base(
    base_model: torch.nn.Module,
    tuned_model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 4,
) -> KLDivergence:
    """Mean over token positions of ``KL(p_base || p_tuned)`` of the next-token distributions
    on ``texts`` (each cut to ``max_length`` tokens; every real position counts, so a text of
    L tokens gives L positions). Log-probabilities in float32; sums in float64."""
    if not texts:
        raise ConfigError("kl_to_base: no texts given.")
    base_model.eval()
    tuned_model.eval()
    per = np.zeros((len(texts), 2))
    for start in tqdm(range(0, len(texts), batch_size), desc="KL to base", unit="batch", leave=False,
                      disable=len(texts) <= 4 * batch_size):
        enc = tokenizer(list(texts[start: start + batch_size]), return_tensors="pt", padding=True,
                        truncation=True, max_length=max_length)
        out = []
        for m in (base_model, tuned_model):
            dev = next(m.parameters()).device
            out.append(torch.log_softmax(m(input_ids=enc["input_ids"].to(dev),
                                           attention_mask=enc["attention_mask"].to(dev)).logits.float(),
                                         dim=-1).cpu())
        kl = (out[0].exp() * (out[0] - out[1])).sum(-1).double() * enc["attention_mask"]
        per[start: start + len(kl), 0] = kl.sum(1).numpy()
        per[start: start + len(kl), 1] = enc["attention_mask"].sum(1).numpy()
    value = float(per[:, 0].sum() / per[:, 1].sum())
    return KLDivergence(value, per, {"direction": "KL(base || tuned)", "unit": "nats per token",
                                     "texts": len(texts), "max_length": max_length,
                                     "positions": int(per[:, 1].sum())})


def paired_change(before: Any, after: Any, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
                  ) -> pd.DataFrame:
    """Absolute and relative change of every metric from ``before`` to ``after``
    (:class:`avsslib.evaluate.EvalResult` s on the same examples).

    ``delta_abs = after - before`` and ``delta_rel = (after - before) / before``, each with a
    paired percentile bootstrap interval (one set of example indices per resample, applied to
    both runs). ``delta_rel`` is ``inf``/``nan`` for a zero baseline; intervals follow the NaN
    policy of :mod:`avsslib.bootstrap`: NaN when any resample is 0/0 (small samples of a
    rarely-correct metric, e.g. MC1 on 20 questions: read the absolute change then), order
    statistics when some are ``inf``. Columns: task, metric, before, after, delta_abs,
    abs_ci_low, abs_ci_high, delta_rel, rel_ci_low, rel_ci_high, n, higher_is_better.
    """
    from avsslib.evaluate import statistic

    rows = []
    for name, b in before.tasks.items():
        if name not in after.tasks:
            continue
        a = after.tasks[name]
        if sorted(b.ids) != sorted(a.ids):
            raise ConfigError(f"task {name}: before and after scored different examples; evaluate "
                              "both with the same n and seed.")
        position = {i: k for k, i in enumerate(a.ids)}
        order = np.array([position[i] for i in b.ids])
        check_bootstrap(len(b.ids), n_boot, alpha)
        idx = resample_indices(len(b.ids), n_boot, seed)
        for metric, mb in b.metrics.items():
            if metric not in a.metrics:
                continue
            stat = statistic(mb.kind)
            x, y = mb.per_example, a.metrics[metric].per_example[order]
            x0, y0 = np.float64(stat(x)), np.float64(stat(y))
            pairs = paired_replicates(x, y, stat, idx)
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = (pairs[:, 1] - pairs[:, 0]) / pairs[:, 0]
                delta_rel = (y0 - x0) / x0
            rows.append(dict(task=name, metric=metric, before=float(x0), after=float(y0),
                             delta_abs=float(y0 - x0),
                             **dict(zip(("abs_ci_low", "abs_ci_high"),
                                        percentile_interval(pairs[:, 1] - pairs[:, 0], alpha), strict=True)),
                             delta_rel=float(delta_rel),
                             **dict(zip(("rel_ci_low", "rel_ci_high"), percentile_interval(rel, alpha), strict=True)),
                             n=len(b.ids), higher_is_better=mb.higher_is_better))
    return pd.DataFrame(rows, columns=["task", "metric", "before", "after", "delta_abs", "abs_ci_low",
                                       "abs_ci_high", "delta_rel", "rel_ci_low", "rel_ci_high", "n",
                                       "higher_is_better"])


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


def truthfulqa_quick_eval(model: torch.nn.Module, tokenizer: Any,
                          records: Sequence[TruthfulQAExample], *, max_new_tokens: int = 32,
                          task: str = "truthfulqa") -> Any:
    """A light held-out evaluation of TruthfulQA questions, for runs sized for a CPU (the
    book's chapter 06); returns an :class:`avsslib.evaluate.EvalResult` with one task.

    Per question: ``truthful`` (the greedy answer, :func:`avsslib.labels.generate_answers`,
    labelled by the TruthfulQA rule), ``mc1`` (the correct MC1 choice has the highest
    log-probability after :func:`prompt`, no few-shot preamble) and ``margin`` (that
    log-probability minus the best wrong choice's, nats). The harness tasks ``truthfulqa_mc1`` /
    ``truthfulqa_mc2`` remain the reference protocol (6-shot preamble, as ``avss mitigate``
    evaluates); this one costs one generation and one scoring pass per question.
    """
    from avsslib.evaluate import EvalResult, MetricScores, TaskResult
    from avsslib.labels import (
        DEFAULT_TEMPLATE,
        continuation_logprobs,
        generate_answers,
        label_truthfulqa,
    )

    if not records:
        raise ConfigError("truthfulqa_quick_eval: no questions to evaluate.")
    few = [r.id for r in records if len(r.mc1_choices) < 2 or list(r.mc1_labels).count(1) != 1]
    if few:
        raise ConfigError(f"truthfulqa_quick_eval: questions {few[:5]} need at least two MC1 "
                          "choices with exactly one correct.")
    t0 = time.perf_counter()
    answers = generate_answers(model, tokenizer, records, max_new_tokens=max_new_tokens,
                               progress=False)
    truthful = [label_truthfulqa(a.answer, r.correct_answers, r.incorrect_answers)[0] == "truthful"
                for a, r in zip(answers, records, strict=True)]
    margins = []
    for r in records:
        ids = [tokenizer(" " + o, add_special_tokens=False)["input_ids"] for o in r.mc1_choices]
        logp = np.asarray(continuation_logprobs(model, tokenizer, tokenizer(prompt(r.question))["input_ids"], ids))
        true = list(r.mc1_labels).index(1)
        margins.append(float(logp[true] - np.delete(logp, true).max()))
    scores = {"truthful": np.array(truthful, float), "mc1": (np.array(margins) > 0).astype(float),
              "margin": np.array(margins)}
    metrics = {k: MetricScores(float(v.mean()), "mean", True, v) for k, v in scores.items()}
    protocol = {"generation": {"template": DEFAULT_TEMPLATE, "chat_template": "auto",
                               "max_new_tokens": max_new_tokens, "decoding": "greedy"},
                "scoring_prompt": prompt("{question}"), "scoring": "log-probability of each "
                "MC1 choice after the scoring prompt (tokenizer's BOS, no chat template)",
                "metrics": "truthful (labelling rule), mc1 (no preamble), margin (nats)"}
    return EvalResult({task: TaskResult(task, tuple(r.id for r in records), metrics, protocol,
                                        time.perf_counter() - t0)})
