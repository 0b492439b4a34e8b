"""avsslib.healing: packed healing text, LoRA healing on a tiny Llama, the recovered share."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from avsslib.errors import ConfigError
from avsslib.evaluate import EvalResult, MetricScores, TaskResult
from avsslib.healing import HealConfig, heal, healing_batches, recovered_share


class _Tok:
    """Bytes mod 120 + 3 as token ids; eos 2."""

    eos_token_id = 2

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[b % 120 + 3 for b in t.encode()] for t in texts]}


def test_healing_batches_pack_the_validation_text(data_dir):
    cfg = HealConfig(steps=3, batch_size=2, seq_len=16, seed=1)
    batches, text = healing_batches(_Tok(), cfg)
    assert len(batches) == 3 and all(b.shape == (2, 16) for b in batches)
    assert text["dataset"] == "wikitext2" and text["split"] == "validation"
    assert text["chunks"] * 16 <= text["tokens_available"] < (text["chunks"] + 1) * 16
    assert "wikitext2/wiki.valid.tokens" in text["data_files"]
    again, _ = healing_batches(_Tok(), cfg)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other, _ = healing_batches(_Tok(), HealConfig(steps=3, batch_size=2, seq_len=16, seed=2))
    assert not all(torch.equal(a, b) for a, b in zip(batches, other, strict=True))


def test_heal_lowers_the_loss_and_changes_only_block_linears(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    fixed = torch.randint(3, 128, (4, 24), generator=g)
    cfg = HealConfig(steps=25, batch_size=4, seq_len=24, lr=5e-3, rank=4, alpha=8, warmup=0)
    healed, result = heal(
        model, None, cfg, batches=[fixed] * 25, text={"dataset": "fixed"}, progress=False
    )
    assert len(result.losses) == 25 and result.losses[-1] < result.losses[0] - 0.1
    assert result.trainable_parameters > 0
    assert not any("lora" in name for name in healed.state_dict())  # adapters merged
    after = healed.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".layers." in k and k.endswith("proj.weight") for k in changed)
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


def test_heal_config_is_checked():
    with pytest.raises(ConfigError, match="steps"):
        HealConfig(steps=0).validate()
    with pytest.raises(ConfigError, match="lr"):
        HealConfig(lr=-1.0).validate()
    assert HealConfig(steps=10, batch_size=2, seq_len=8).tokens == 160


def _result(acc: list[float], nll: list[float]) -> EvalResult:
    ids = tuple(str(i) for i in range(len(acc)))
    per_ppl = np.array([[x, 1.0] for x in nll])
    return EvalResult(
        {
            "qa": TaskResult(
                "qa",
                ids,
                {
                    "acc": MetricScores(
                        float(np.mean(acc)), "mean", True, np.asarray(acc, dtype=float)
                    )
                },
                {},
                0.0,
            ),
            "ppl": TaskResult(
                "ppl",
                ids,
                {
                    "token_perplexity": MetricScores(
                        float(np.exp(np.mean(nll))), "perplexity", False, per_ppl
                    )
                },
                {},
                0.0,
            ),
        }
    )


def test_recovered_share_hand_computed():
    original = _result([1, 1, 1, 1], [1.0, 1.0, 1.0, 1.0])
    before = _result([1, 0, 0, 0], [2.0, 2.0, 2.0, 2.0])
    after = _result([1, 1, 0, 0], [1.5, 1.5, 1.5, 1.5])
    share = recovered_share(original, before, after, n_boot=200).set_index("task")
    # accuracy: retention 0.25 -> 0.5: (0.5 - 0.25) / (1 - 0.25) = 1/3
    assert share.loc["qa", "retention_before"] == pytest.approx(0.25)
    assert share.loc["qa", "recovered"] == pytest.approx(1 / 3)
    # perplexity e^1 -> e^2 -> e^1.5: retention e^-1 -> e^-0.5
    rb, ra = np.exp(-1.0), np.exp(-0.5)
    assert share.loc["ppl", "recovered"] == pytest.approx((ra - rb) / (1 - rb))
    # identical per-example values: the perplexity interval is a single point
    assert share.loc["ppl", "ci_low"] == pytest.approx(share.loc["ppl", "ci_high"])
    assert share.loc["qa", "ci_low"] <= 1 / 3 <= share.loc["qa", "ci_high"]
    with pytest.raises(ConfigError, match="different examples"):
        recovered_share(original, before, _result([1, 1], [1.0, 1.0]))
