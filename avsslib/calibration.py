"""Calibration batches: the token batches that activation statistics are measured on.

``calibration_batches(tokenizer, texts)`` tokenises texts, truncates each to ``seq_len`` tokens
and pads every batch on the right with the tokenizer's pad token, with an attention mask
(1 = real token, 0 = pad). By default a batch is padded to its longest row; with
``pad_to_max_length=True`` every batch is padded to ``seq_len`` exactly, as the official
scripts do (``padding="max_length"``), which matters in faithful mode where pad
positions are counted.

``calibration_set(tokenizer, name, split, n, ...)`` draws the texts with
:func:`avsslib.data.calibration_texts` and returns the batches together with a description
(dataset, split, sample, tokenisation, data file hashes) for run records.

Batches are plain dicts ``{"input_ids": LongTensor (B, T), "attention_mask": LongTensor (B, T)}``
on the CPU, in the order of ``texts`` (the last batch may be shorter), ready for
``LayerStats.fit`` and ``model(**batch)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from avsslib.errors import ConfigError

__all__ = ["calibration_batches", "calibration_set"]


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise ConfigError(
            "the tokenizer has neither a pad token nor an EOS token to pad with; set "
            "tokenizer.pad_token (load_model does this for you)."
        )
    return int(pad)


def calibration_batches(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    seq_len: int = 128,
    batch_size: int = 8,
    pad_to_max_length: bool = False,
    add_special_tokens: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Tokenise ``texts`` into right-padded batches with attention masks.

    Args:
        tokenizer: a Hugging Face tokenizer (called as ``tokenizer(texts, truncation=True,
            max_length=seq_len, add_special_tokens=...)``); pads with ``pad_token_id``
            (``eos_token_id`` when there is none, as the official causal-LM scripts do).
        texts: the passages, in the order the batches will hold them.
        seq_len: tokens kept per text (longer texts are truncated), ``>= 1``.
        batch_size: rows per batch, ``>= 1``; the last batch holds the remainder.
        pad_to_max_length: pad every batch to ``seq_len`` (the official scripts) instead of to
            its longest row.
        add_special_tokens: let the tokenizer add its special tokens (BOS where it has one).

    Returns: a list of ``ceil(len(texts) / batch_size)`` dicts with ``input_ids`` and
    ``attention_mask``, int64 tensors of shape ``(B, T)``, ``T <= seq_len``
    (``T == seq_len`` with ``pad_to_max_length``). Texts that tokenise to nothing are dropped.

    Raises ``ConfigError`` for ``seq_len < 1``, ``batch_size < 1`` or no usable text.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ConfigError(f"seq_len = {seq_len!r}: must be an integer >= 1 (tokens per text).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size!r}: must be an integer >= 1.")
    if isinstance(texts, str):
        raise ConfigError("texts must be a sequence of strings, not one string.")
    pad = _pad_id(tokenizer)
    encoded = tokenizer(
        list(texts), truncation=True, max_length=seq_len, add_special_tokens=add_special_tokens
    )["input_ids"]
    rows = [list(ids)[:seq_len] for ids in encoded if len(ids) > 0]
    if not rows:
        raise ConfigError(
            f"none of the {len(texts)} calibration texts gave any token; pass non-empty texts."
        )
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = seq_len if pad_to_max_length else max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def calibration_set(
    tokenizer: Any,
    name: str = "wikitext2",
    split: str = "validation",
    n: int | None = 64,
    seq_len: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    *,
    pad_to_max_length: bool = False,
    add_special_tokens: bool = True,
    min_chars: int = 1,
    data_dir: str | Path | None = None,
) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """Calibration batches from a dataset, and their description for run records.

    ``n`` passages of ``name``/``split`` are drawn with ``seed`` by
    :func:`avsslib.data.calibration_texts` (WikiText paragraphs, SST-2 sentences, question
    texts; ``None`` = all), then batched by :func:`calibration_batches`.

    Returns ``(batches, description)``; ``description`` holds ``dataset``, ``split``, ``n``
    (requested), ``n_texts`` (drawn), ``seed``, ``seq_len``, ``batch_size``,
    ``pad_to_max_length``, ``add_special_tokens``, ``min_chars``, ``n_batches``,
    ``n_tokens`` (real tokens), ``n_positions`` (tokens + pads), ``tokenizer`` and
    ``data_files`` (``{file: sha256}``).
    """
    from avsslib.data import calibration_texts, data_file_hashes

    texts = calibration_texts(name, split, n=n, min_chars=min_chars, seed=seed, data_dir=data_dir)
    batches = calibration_batches(
        tokenizer,
        texts,
        seq_len=seq_len,
        batch_size=batch_size,
        pad_to_max_length=pad_to_max_length,
        add_special_tokens=add_special_tokens,
    )
    description = {
        "dataset": name,
        "split": split,
        "n": n,
        "n_texts": len(texts),
        "seed": seed,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "pad_to_max_length": pad_to_max_length,
        "add_special_tokens": add_special_tokens,
        "min_chars": min_chars,
        "n_batches": len(batches),
        "n_tokens": int(sum(int(b["attention_mask"].sum()) for b in batches)),
        "n_positions": int(sum(b["input_ids"].numel() for b in batches)),
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "data_files": data_file_hashes(name, split, data_dir=data_dir),
    }
    return batches, description
