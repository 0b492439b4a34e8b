"""Answers of a model to the questions of a dataset, labelled by :mod:`avsslib.label_rules`.

Answers are generated greedily from the answer prompt (:data:`DEFAULT_TEMPLATE`, which is
:data:`avsslib.protocol.ANSWER_PROMPT`), batched with left padding, at most ``max_new_tokens``
new tokens, cut at the first newline or end-of-sequence token. WikiQA generates nothing: every
candidate sentence is scored by its mean per-token log-probability given the prompt
(:func:`continuation_logprobs`).

Instruct models answer the raw template badly (SmolLM2-135M-Instruct often stops at once with
an end-of-turn token), so ``chat_template="auto"`` (default) sends the filled template as the
user message of the tokenizer's chat template when it has one. The rendered prompt is kept in
every record, with the answer's token ids, so that teacher-forced statistics
(:mod:`avsslib.eavss`) see exactly the tokens the model produced. Writes no files (the records
are written by :func:`avsslib.label_records.write_labels`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from avsslib.arch import eval_mode
from avsslib.errors import ConfigError
from avsslib.label_records import LabelledExample
from avsslib.label_rules import label_answer, label_wikiqa, rule_name
from avsslib.protocol import ANSWER_PROMPT

__all__ = [
    "DEFAULT_TEMPLATE",
    "ChatTemplate",
    "Generation",
    "Scorer",
    "continuation_logprobs",
    "encode_prompt",
    "generate_answers",
    "label_dataset",
    "render_prompt",
]

DEFAULT_TEMPLATE = ANSWER_PROMPT
"""The answer prompt (:data:`avsslib.protocol.ANSWER_PROMPT`); ``{question}`` is replaced by the
question text."""

ChatTemplate = bool | Literal["auto"]


def _use_chat(tokenizer: Any, chat_template: ChatTemplate) -> bool:
    if chat_template == "auto":
        return getattr(tokenizer, "chat_template", None) is not None
    if not isinstance(chat_template, bool):
        raise ConfigError(f"chat_template={chat_template!r}: use True, False or 'auto'.")
    if chat_template and getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("chat_template=True but the tokenizer has no chat template; use False.")
    return chat_template


def render_prompt(
    tokenizer: Any, question: str, template: str = DEFAULT_TEMPLATE, chat: bool = False
) -> str:
    """The prompt text: ``template`` with ``{question}`` filled; with ``chat``, that text as the
    single user message of the tokenizer's chat template, with the generation prompt."""
    if "{question}" not in template:
        raise ConfigError(f"template {template!r} has no '{{question}}' placeholder.")
    text = template.replace("{question}", question.strip())
    if not chat:
        return text
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def encode_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """Token ids of a rendered prompt: the tokenizer's special tokens (BOS) are added to raw
    prompts only (a chat-rendered prompt already holds its own)."""
    return list(tokenizer(prompt, add_special_tokens=not chat)["input_ids"])


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError(
            "the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token."
        )
    return int(pad)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _stop_ids(tokenizer: Any, model: torch.nn.Module) -> set[int]:
    """End-of-sequence ids of the tokenizer and of the model's generation config."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, list | tuple) else {eos}
    return {int(i) for i in ids if i is not None}


def _newline_mask(tokenizer: Any, device: torch.device) -> torch.Tensor:
    """Bool tensor over the vocabulary: True for tokens whose text contains a newline."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor(["\n" in t for t in texts], dtype=torch.bool, device=device)


class _StopAtNewline:
    """A ``StoppingCriteria``: a row is done once it has produced a newline token."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        last = input_ids[:, -1]
        inside = last < self.mask.numel()
        return inside & self.mask[last.clamp(max=self.mask.numel() - 1)]


def _cut_answer(
    tokens: Sequence[int], stops: set[int], newline: torch.Tensor
) -> tuple[list[int], bool]:
    """The generated ``tokens`` before the first end-of-sequence or newline token, and whether
    there was none (generation stopped at ``max_new_tokens``)."""
    answer_ids: list[int] = []
    for tok in tokens:
        if tok in stops or (tok < newline.numel() and bool(newline[tok])):
            return answer_ids, False
        answer_ids.append(tok)
    return answer_ids, True


@dataclasses.dataclass(frozen=True)
class Generation:
    """One generated answer: ``prompt`` (rendered), ``answer`` (text up to the first newline or
    end of sequence, stripped), ``answer_ids`` (its token ids), ``truncated`` (stopped by
    ``max_new_tokens``), ``chat_template`` (the prompt went through the chat template)."""

    prompt: str
    answer: str
    answer_ids: tuple[int, ...]
    truncated: bool
    chat_template: bool


def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Any],
    *,
    template: str = DEFAULT_TEMPLATE,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    chat_template: ChatTemplate = "auto",
    progress: bool = True,
) -> list[Generation]:
    """Greedy answers to ``examples`` (records with a ``question`` attribute, or strings).

    Prompts are sorted by length and left-padded into batches of ``batch_size`` (results come
    back in the order of ``examples``); generation stops per row at the first token containing
    a newline or an end-of-sequence token, and after ``max_new_tokens``. The answer is the
    generated tokens before that token. The model runs in eval mode, without gradients.
    """
    from tqdm.auto import tqdm
    from transformers import StoppingCriteriaList

    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(
            f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be >= 1."
        )
    chat = _use_chat(tokenizer, chat_template)
    questions = [e if isinstance(e, str) else e.question for e in examples]
    prompts = [render_prompt(tokenizer, q, template, chat) for q in questions]
    encoded = [encode_prompt(tokenizer, p, chat) for p in prompts]
    device, pad = _device(model), _pad_id(tokenizer)
    stops = _stop_ids(tokenizer, model)
    newline = _newline_mask(tokenizer, device)
    criteria = StoppingCriteriaList([_StopAtNewline(newline)])
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[Generation | None] = [None] * len(encoded)
    with eval_mode(model):
        for start in tqdm(
            range(0, len(order), batch_size), desc="generate answers", disable=not progress
        ):
            rows = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]) :] = 1
            with torch.no_grad():
                generated = (
                    cast(Any, model)
                    .generate(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        do_sample=False,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=pad,
                        stopping_criteria=criteria,
                    )[:, width:]
                    .cpu()
                    .tolist()
                )
            for r, i in enumerate(rows):
                answer_ids, truncated = _cut_answer(generated[r], stops, newline)
                text = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
                out[i] = Generation(prompts[i], text, tuple(answer_ids), truncated, chat)
    return out  # type: ignore[return-value]


def continuation_logprobs(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    continuations: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """Mean per-token log-probability (nats) of each continuation given the prompt.

    ``prompt_ids``: the prompt's ids; ``continuations``: ids of each candidate (non-empty).
    Each ``prompt + continuation`` runs right-padded with its attention mask; returns float64,
    shape ``(len(continuations),)``."""
    if any(len(c) == 0 for c in continuations):
        raise ConfigError("continuation_logprobs: a continuation has no token.")
    device, pad = _device(model), _pad_id(tokenizer)
    p = list(prompt_ids)
    out = np.empty(len(continuations))
    with eval_mode(model):
        for start in range(0, len(continuations), batch_size):
            conts = continuations[start : start + batch_size]
            seqs = [p + list(c) for c in conts]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for r, c in enumerate(conts):
                pos = torch.arange(len(p) - 1, len(p) + len(c) - 1)
                out[start + r] = logp[r, pos, torch.tensor(list(c))].mean().item()
    return out


# ---------------------------------------------------------------------- datasets
Scorer = Callable[[str, Sequence[str]], Sequence[float]]


def _wikiqa_continuation(sentence: str, chat: bool) -> str:
    return sentence.strip() if chat else " " + sentence.strip()


def label_dataset(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: str,
    split: str | None = None,
    n: int | None = None,
    seed: int = 0,
    *,
    template: str = DEFAULT_TEMPLATE,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    chat_template: ChatTemplate = "auto",
    data_dir: str | Path | None = None,
    scorer: Scorer | None = None,
    question_guard: bool = False,
    progress: bool = True,
) -> list[LabelledExample]:
    """Load ``n`` records of ``dataset`` (seeded, :func:`avsslib.data.load_dataset`), get the
    model's answers and label them by the dataset's rule
    (:data:`avsslib.label_rules.RULES`, :func:`avsslib.label_rules.label_answer`).

    ``scorer(prompt, candidates) -> scores`` replaces the WikiQA candidate scoring (default:
    :func:`continuation_logprobs`, mean log-probability per token); the other datasets generate
    with :func:`generate_answers`. WikiQA questions without a correct sentence are dropped
    before sampling. ``question_guard`` turns on the question guard of
    :func:`avsslib.label_rules.label_alias` and :func:`avsslib.label_rules.label_sciq` (off by
    default: the plain containment rule; the rule name gets the suffix ``+question_guard``). Returns one :class:`LabelledExample` per record, in the records'
    order.
    """
    from avsslib.data import get_spec, load_dataset

    rule = rule_name(dataset, question_guard)  # refuses a dataset without a rule
    split_name = get_spec(dataset).split_name(split)
    records = load_dataset(
        dataset, split_name, n=n, seed=seed, data_dir=data_dir, answerable_only=dataset == "wikiqa"
    )
    common = {"dataset": dataset, "split": split_name, "rule": rule, "template": template}
    if dataset == "wikiqa":
        return _label_wikiqa_records(
            model, tokenizer, records, common, chat_template, batch_size, scorer, progress
        )
    gens = generate_answers(
        model,
        tokenizer,
        records,
        template=template,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        chat_template=chat_template,
        progress=progress,
    )
    out = []
    for rec, gen in zip(records, gens, strict=True):
        label, evidence = label_answer(dataset, gen.answer, rec, question_guard=question_guard)
        evidence["truncated"] = gen.truncated
        out.append(
            LabelledExample(
                id=rec.id,
                question=rec.question,
                prompt=gen.prompt,
                answer=gen.answer,
                answer_ids=list(gen.answer_ids),
                label=label,
                evidence=evidence,
                chat_template=gen.chat_template,
                **common,
            )
        )
    return out


def _label_wikiqa_records(
    model, tokenizer, records, common, chat_template, batch_size, scorer, progress
) -> list[LabelledExample]:
    from tqdm.auto import tqdm

    chat = _use_chat(tokenizer, chat_template)
    out = []
    for rec in tqdm(records, desc="score WikiQA sentences", disable=not progress):
        prompt = render_prompt(tokenizer, rec.question, common["template"], chat)
        conts = [_wikiqa_continuation(s, chat) for s in rec.sentences]
        cont_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]
        if scorer is None:
            scores = continuation_logprobs(
                model,
                tokenizer,
                encode_prompt(tokenizer, prompt, chat),
                cont_ids,
                batch_size=batch_size,
            )
        else:
            scores = scorer(prompt, list(rec.sentences))
        label, evidence = label_wikiqa(list(scores), rec.labels)
        chosen = evidence["chosen_index"]
        out.append(
            LabelledExample(
                id=rec.id,
                question=rec.question,
                prompt=prompt,
                answer=rec.sentences[chosen].strip(),
                answer_ids=cont_ids[chosen],
                label=label,
                evidence=evidence,
                chat_template=chat,
                **common,
            )
        )
    return out
