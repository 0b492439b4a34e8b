"""Per-layer linear probes (avsslib.probe): the logistic fit against scikit-learn, the Wilson
interval, cross-validation on a synthetic case whose informative layer is known, selection."""

from __future__ import annotations

import numpy as np
import pytest

from avsslib.errors import ConfigError
from avsslib.probe import (
    fit_logistic,
    predict_logistic,
    probe_layers,
    probe_selected_layers,
    read_features,
    wilson_interval,
    write_features,
)


def _synthetic(n: int = 80, layers: int = 4, d: int = 12, informative: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2).astype(bool)  # balanced, shuffled
    x = rng.normal(size=(n, layers, d))
    direction = rng.normal(size=d)
    x[:, informative] += (
        2.0 * np.where(y, 1.0, -1.0)[:, None] * direction / np.linalg.norm(direction)
    )
    labels = ["hallucinated" if v else "truthful" for v in y]
    return x.astype(np.float16), labels, [f"q{i}" for i in range(n)]


def test_fit_logistic_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    y = (x @ rng.normal(size=5) + 0.5 * rng.normal(size=60) > 0).astype(float)
    for c in (0.1, 1.0):
        w, b = fit_logistic(x, y, c=c)
        ref = sklearn.LogisticRegression(C=c, tol=1e-12, max_iter=10000).fit(x, y)
        np.testing.assert_allclose(w, ref.coef_[0], atol=1e-5)
        assert b == pytest.approx(ref.intercept_[0], abs=1e-5)
        np.testing.assert_allclose(predict_logistic(x, w, b), ref.predict_proba(x)[:, 1], atol=1e-6)


def test_fit_logistic_refuses_one_class():
    with pytest.raises(ConfigError, match="both classes"):
        fit_logistic(np.zeros((4, 2)), np.ones(4))


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=5e-4)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-12)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_probe_finds_the_informative_layer():
    x, labels, ids = _synthetic()
    table = probe_layers(x, labels, ids, folds=2, seed=0, progress=False)
    assert table.loc[2, "rank"] == 0
    assert table.loc[2, "accuracy"] > 0.9
    assert table.drop(index=2)["accuracy"].max() < 0.75  # noise layers near chance
    assert (table["ci_low"] <= table["accuracy"]).all() and (
        table["accuracy"] <= table["ci_high"]
    ).all()
    assert table.loc[2, "ci_low"] > 0.8
    # the folds partition the answers and are stratified
    folds = table.attrs["fold_ids"]
    assert sorted(i for f in folds for i in f) == sorted(ids)
    assert not set(folds[0]) & set(folds[1])
    assert probe_selected_layers(table, 1) == [2]
    # same arguments, same numbers
    again = probe_layers(x, labels, ids, folds=2, seed=0, progress=False)
    np.testing.assert_array_equal(again["accuracy"], table["accuracy"])


def test_probe_layers_needs_both_classes():
    x, labels, ids = _synthetic(n=10)
    with pytest.raises(ConfigError, match="at least 2 of each"):
        probe_layers(x, ["truthful"] * 9 + ["hallucinated"], ids, progress=False)


def test_probe_selected_layers_ties_and_checks():
    assert probe_selected_layers([0.5, 0.7, 0.7, 0.6], 2) == [1, 2]
    assert probe_selected_layers([0.5, 0.7, 0.7, 0.6], 1) == [1]  # tie: the lower layer
    with pytest.raises(ConfigError):
        probe_selected_layers([0.5, 0.7], 3)


def test_features_round_trip(tmp_path):
    x, labels, ids = _synthetic(n=6)
    path = write_features(tmp_path / "f.safetensors", ids, x, labels, {"model": "m"})
    ids2, x2, labels2, meta = read_features(path)
    assert ids2 == ids and labels2 == labels and meta == {"model": "m"}
    np.testing.assert_array_equal(x2, x)


def test_answer_features_equal_each_answer_alone(tiny_llama):
    """Batched, right-padded features equal the mean block output over the answer tokens of
    each example run alone (hidden_states[l + 1] is block l's output); empty answers dropped."""
    import torch

    from avsslib.probe import answer_features
    from tests.test_eavss import CharTokenizer, _examples

    tok, examples = CharTokenizer(), _examples()
    with pytest.warns(RuntimeWarning, match="empty answer"):
        ids, feats = answer_features(tiny_llama, tok, examples, batch_size=3, progress=False)
    kept = [e for e in examples if e.answer_ids]
    assert ids == [e.id for e in kept] and feats.shape == (4, 4, 32) and feats.dtype == np.float16
    for row, e in enumerate(kept):
        prompt = tok(e.prompt)["input_ids"]
        x = torch.tensor([prompt + e.answer_ids])
        with torch.no_grad():
            hidden = tiny_llama(input_ids=x, output_hidden_states=True).hidden_states
        for layer in range(4):
            want = hidden[layer + 1][0, len(prompt) :].float().mean(0).numpy()
            if layer == 3:  # the last entry of hidden_states is after the final norm
                continue
            np.testing.assert_allclose(
                feats[row, layer].astype(np.float32), want, rtol=2e-3, atol=2e-3
            )
