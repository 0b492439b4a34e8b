"""Shared fixtures. Tiers: unit tests (synthetic tensors, tiny random models) run everywhere;
tests marked ``slow`` load the embedded model or run notebooks; ``book`` builds the book."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline data directory (AVSS_DATA_DIR, else ../shared/data)."""
    value = os.environ.get("AVSS_DATA_DIR") or str(SHARED_DATA)
    path = Path(value)
    if not (path / "MANIFEST.json").exists():
        pytest.skip(f"offline data not found at {path}; set AVSS_DATA_DIR")
    os.environ["AVSS_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama():
    """A 4-layer randomly initialised Llama (hidden 32), built from a config: no download."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (model, tokenizer), fp32 on CPU, loaded once per session."""
    from avsslib.models import load_model

    return load_model("smollm2-135m")


def byte_tokenizer():
    """A byte-level tokenizer (259 ids: ``<pad>``, ``<s>``, ``</s>`` and the 256 bytes): any text
    encodes, nothing is downloaded. Returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


@pytest.fixture(scope="session")
def byte_tokenizer_factory():
    """:func:`byte_tokenizer` as a fixture (a new tokenizer per call)."""
    return byte_tokenizer
