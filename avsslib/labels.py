"""Hallucination labels: the model's own answers, labelled by one rule per dataset.

Answers are generated greedily from a fixed prompt (default ``"Answer the question.\\nQ:
{question}\\nA:"``), batched with left padding, at most ``max_new_tokens`` new tokens, cut at the
first newline or end-of-sequence token. Then each answer gets a label, ``"hallucinated"`` or
``"truthful"``, by the rule of its dataset ([PROPOSAL] rules, switchable by dataset):

* ``nq_open``, ``triviaqa`` (``alias_em_or_contains``): truthful when the SQuAD-normalised
  answer equals some normalised alias or contains it as a run of whole words;
* ``sciq`` (``contains_correct_option``): truthful when the normalised answer contains the
  normalised correct option (whole words); the question alone is asked, without the support
  passage;
* ``truthfulqa`` (``rouge_l_closer_to_incorrect``): hallucinated when the answer's ROUGE-L F1
  (on normalised words) to some incorrect reference is strictly larger than to every correct
  one, i.e. ``max_incorrect > max_correct``; ties (including all-zero overlap, e.g. an empty
  answer) are truthful, as TruthfulQA itself counts a non-answer as true;
* ``wikiqa`` (``top_sentence_label``): answer-sentence selection, no generation: the model's
  top candidate by mean per-token log-probability given the prompt is its answer; label 0
  means hallucinated. Questions without a label-1 sentence are dropped.

An optional *question guard* (``question_guard=True``; the rule name gets ``+question_guard``)
tightens the three containment rules: an alias or option that the question itself contains
counts only when the answer equals it. Verbose instruct answers often repeat the question
("The lion king started on broadway in 1929" matches the NQ alias "Broadway"). It is off by
default, to keep the plain containment rule.

"SQuAD normalisation" is the official SQuAD v1.1 ``normalize_answer``: lower case, punctuation
removed (``"Eiffel-Tower"`` -> ``"eiffeltower"``), the articles *a*, *an*, *the* removed,
whitespace collapsed. Containment is tested on words, so ``"beatlemania"`` does not contain
``"beatles"``.

Instruct models answer the raw template badly (SmolLM2-135M-Instruct often stops at once with
an end-of-turn token), so ``chat_template="auto"`` (default) sends the filled template as the
user message of the tokenizer's chat template when it has one. The rendered prompt is kept in
every record, with the answer's token ids, so that teacher-forced statistics
(:mod:`avsslib.eavss`) see exactly the tokens the model produced.

Each labelled answer is a :class:`LabelledExample` (id, dataset, prompt, answer, label, rule and
the evidence: matched alias, ROUGE-L scores, chosen sentence, ...), written as JSON lines by
:func:`write_labels` (atomically). :func:`split_ids` splits ids into disjoint calibration and
evaluation parts, deterministically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from avsslib.errors import ConfigError, DataError
from avsslib.protocol import ANSWER_PROMPT

__all__ = [
    "evidence_text",
    "DEFAULT_TEMPLATE",
    "LABELS",
    "RULES",
    "Generation",
    "LabelledExample",
    "continuation_logprobs",
    "encode_prompt",
    "generate_answers",
    "label_alias",
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

DEFAULT_TEMPLATE = ANSWER_PROMPT
"""The answer prompt (:data:`avsslib.protocol.ANSWER_PROMPT`); ``{question}`` is replaced by the
question text."""

LABELS: tuple[str, str] = ("hallucinated", "truthful")

RULES: dict[str, str] = {
    "nq_open": "alias_em_or_contains",
    "triviaqa": "alias_em_or_contains",
    "sciq": "contains_correct_option",
    "truthfulqa": "rouge_l_closer_to_incorrect",
    "wikiqa": "top_sentence_label",
}
"""Dataset name (``avsslib.data``) -> labelling rule (module docstring)."""

Label = Literal["hallucinated", "truthful"]
ChatTemplate = bool | Literal["auto"]


# ---------------------------------------------------------------------- text rules
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The SQuAD v1.1 answer normalisation: lower case, no punctuation, no articles, single
    spaces (``"The  Eiffel-Tower!"`` -> ``"eiffeltower"``)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _contains_words(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    """True when ``needle`` (non-empty) occurs as a contiguous run of whole words of ``haystack``."""
    n = len(needle)
    return n > 0 and any(
        list(haystack[i : i + n]) == list(needle) for i in range(len(haystack) - n + 1)
    )


def _echoes(question: str | None, target_words: Sequence[str]) -> bool:
    """True when a question is given and contains ``target_words`` (normalised, whole words)."""
    return question is not None and _contains_words(
        normalize_answer(question).split(), target_words
    )


def label_alias(
    answer: str, aliases: Iterable[str], *, question: str | None = None
) -> tuple[Label, dict[str, Any]]:
    """NQ-open / TriviaQA rule: truthful when the normalised answer equals some normalised alias
    or contains it (whole words). Aliases that normalise to nothing are ignored.

    ``question`` turns on the *question guard*: an alias that the question itself contains
    (``"Left"`` for "... left or right?") only counts when the answer equals it, since a verbose
    answer that repeats the question would otherwise "contain" it.

    Returns ``(label, evidence)``; evidence: ``normalized_answer``, ``matched_alias`` (the first
    alias that matched, as given, else ``None``), ``match`` (``"equal"``, ``"contains"`` or
    ``None``), ``n_aliases`` and, with the guard, ``question_aliases`` (the aliases it held back
    from containment)."""
    norm = normalize_answer(answer)
    words = norm.split()
    aliases = list(aliases)
    match, matched, echoed = None, None, []
    for alias in aliases:
        alias_norm = normalize_answer(alias)
        if not alias_norm:
            continue
        if alias_norm == norm:
            match, matched = "equal", alias
            break
        if _echoes(question, alias_norm.split()):
            echoed.append(alias)
        elif match is None and _contains_words(words, alias_norm.split()):
            match, matched = "contains", alias
    evidence: dict[str, Any] = {
        "normalized_answer": norm,
        "matched_alias": matched,
        "match": match,
        "n_aliases": len(aliases),
    }
    if question is not None:
        evidence["question_aliases"] = echoed
    return ("truthful" if match else "hallucinated"), evidence


def label_sciq(
    answer: str, correct: str, *, question: str | None = None
) -> tuple[Label, dict[str, Any]]:
    """SciQ free-form rule: truthful when the normalised answer contains the normalised correct
    option (whole words). With ``question`` (the question guard, as in :func:`label_alias`), an
    option the question contains counts only when the answer equals it. Evidence:
    ``normalized_answer``, ``correct_option``, ``match`` and, with the guard, ``echoed``."""
    norm = normalize_answer(answer)
    option = normalize_answer(correct).split()
    echoed = _echoes(question, option)
    match = norm.split() == option if echoed else _contains_words(norm.split(), option)
    match = bool(option) and match
    evidence = {"normalized_answer": norm, "correct_option": correct, "match": match}
    if question is not None:
        evidence["echoed"] = echoed
    return ("truthful" if match else "hallucinated"), evidence


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two word lists (dynamic programme)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) between two texts on SQuAD-normalised words, in [0, 1]:
    ``2 P R / (P + R)`` with ``P = LCS / len(candidate)``, ``R = LCS / len(reference)``; 0 when
    either text has no word."""
    c, r = normalize_answer(candidate).split(), normalize_answer(reference).split()
    lcs = _lcs(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def label_truthfulqa(
    answer: str, correct: Sequence[str], incorrect: Sequence[str]
) -> tuple[Label, dict[str, Any]]:
    """TruthfulQA rule: hallucinated when ``max_i ROUGE-L(answer, incorrect_i)`` is strictly larger
    than ``max_c ROUGE-L(answer, correct_c)``; ties are truthful.

    Evidence: ``rouge_l_correct`` and ``rouge_l_incorrect`` (one F1 per reference, in the
    references' order), ``max_correct``, ``max_incorrect``, ``closest_correct`` and
    ``closest_incorrect`` (the best-matching references)."""
    if not correct or not incorrect:
        raise DataError(
            "TruthfulQA labelling needs at least one correct and one incorrect "
            f"reference, got {len(correct)} and {len(incorrect)}."
        )
    rc = [rouge_l(answer, ref) for ref in correct]
    ri = [rouge_l(answer, ref) for ref in incorrect]
    evidence = {
        "rouge_l_correct": rc,
        "rouge_l_incorrect": ri,
        "max_correct": max(rc),
        "max_incorrect": max(ri),
        "closest_correct": correct[int(np.argmax(rc))],
        "closest_incorrect": incorrect[int(np.argmax(ri))],
    }
    return ("hallucinated" if max(ri) > max(rc) else "truthful"), evidence


def label_wikiqa(scores: Sequence[float], labels: Sequence[int]) -> tuple[Label, dict[str, Any]]:
    """WikiQA rule: the candidate with the highest score (ties: the first) is the model's answer;
    its label 0 means hallucinated. Evidence: ``chosen_index``, ``scores``, ``labels``,
    ``n_candidates``, ``n_positive``."""
    if len(scores) != len(labels) or not len(scores):
        raise ConfigError(
            f"WikiQA labelling needs one score per candidate, got {len(scores)} "
            f"scores for {len(labels)} candidates."
        )
    chosen = int(np.argmax(np.asarray(scores, dtype=np.float64)))
    evidence = {
        "chosen_index": chosen,
        "scores": [float(s) for s in scores],
        "labels": [int(v) for v in labels],
        "n_candidates": len(labels),
        "n_positive": int(sum(int(v) == 1 for v in labels)),
    }
    return ("truthful" if int(labels[chosen]) == 1 else "hallucinated"), evidence


# ---------------------------------------------------------------------- records
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


# ---------------------------------------------------------------------- prompts
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
    was_training = model.training
    model.eval()
    try:
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
                answer_ids, truncated = [], True
                for tok in generated[r]:
                    if tok in stops or (tok < newline.numel() and bool(newline[tok])):
                        truncated = False
                        break
                    answer_ids.append(tok)
                text = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
                out[i] = Generation(prompts[i], text, tuple(answer_ids), truncated, chat)
    finally:
        model.train(was_training)
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
    was_training = model.training
    model.eval()
    try:
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
    finally:
        model.train(was_training)
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
    model's answers and label them by the dataset's rule (``RULES``).

    ``scorer(prompt, candidates) -> scores`` replaces the WikiQA candidate scoring (default:
    :func:`continuation_logprobs`, mean log-probability per token); the other datasets generate
    with :func:`generate_answers`. WikiQA questions without a correct sentence are dropped
    before sampling. ``question_guard`` turns on the question guard of :func:`label_alias` and
    :func:`label_sciq` (off by default: the plain containment rule; the rule name gets the suffix
    ``+question_guard``). Returns one :class:`LabelledExample` per record, in the records'
    order.
    """
    from avsslib.data import get_spec, load_dataset

    if dataset not in RULES:
        raise ConfigError(
            f"no hallucination labelling rule for {dataset!r}; datasets with a "
            f"rule: {sorted(RULES)}."
        )
    split_name = get_spec(dataset).split_name(split)
    records = load_dataset(
        dataset, split_name, n=n, seed=seed, data_dir=data_dir, answerable_only=dataset == "wikiqa"
    )
    rule = RULES[dataset]
    if question_guard and dataset in ("nq_open", "triviaqa", "sciq"):
        rule += "+question_guard"
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
        if dataset == "truthfulqa":
            label, evidence = label_truthfulqa(
                gen.answer, rec.correct_answers, rec.incorrect_answers
            )
        else:
            guard = rec.question if question_guard else None
            if dataset == "sciq":
                label, evidence = label_sciq(gen.answer, rec.answers[0], question=guard)
            else:
                label, evidence = label_alias(gen.answer, rec.answers, question=guard)
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


# ---------------------------------------------------------------------- splits and summaries
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


def evidence_text(example: Any) -> str:
    """The part of a labelled answer's ``evidence`` that decided its label, as one short text
    (the matched alias, the correct option found or not, the two ROUGE-L scores, or the chosen
    WikiQA sentence and its label)."""
    ev, rule = example.evidence, example.rule
    if rule.startswith("alias"):
        found = ev["matched_alias"] or f"{ev['n_aliases']} aliases"
        return f"{ev['match'] or 'no match'} ({found})"
    if rule.startswith("contains"):
        return f"correct option {ev['correct_option']!r}: {'found' if ev['match'] else 'absent'}"
    if rule.startswith("rouge"):
        return f"ROUGE-L correct {ev['max_correct']:.2f} vs incorrect {ev['max_incorrect']:.2f}"
    chosen = ev["chosen_index"]
    return f"sentence {chosen} of {ev['n_candidates']}, label {ev['labels'][chosen]}"
