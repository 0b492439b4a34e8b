"""Linear probes per layer: which layers' activations separate hallucinated from truthful answers.

A control for EAVSS's layer choice, in the spirit of inference-time intervention (ITI), which
picks layers by how well a linear probe reads truthfulness from them. For every labelled
answer (:mod:`avsslib.labels`) the feature of layer ``l`` is the mean of block ``l``'s output
over the answer tokens, teacher-forced on ``prompt + the model's own answer`` exactly as
:func:`avsslib.eavss.hallucination_stats` counts them (:func:`answer_features`, stored in
float16: ``(n_answers, n_layers, hidden)``). An answer with no token is left out.

The probe of one layer is L2-regularised logistic regression on the standardised features
(mean and standard deviation of the training part), fitted by L-BFGS in float64
(:func:`fit_logistic`; the objective of scikit-learn's ``LogisticRegression(C=c)``:
``C * sum_i logloss_i + ||w||^2 / 2``, bias not penalised; a test holds it to scikit-learn).
We fit it ourselves with torch so that the GPU machines, which carry no scikit-learn, run it.

:func:`probe_layers` scores every layer by ``folds``-fold cross-validation (default 2):
the answers are split into stratified folds (:func:`avsslib.labels.split_ids` over the answer
ids, stratified by label), each fold is predicted by the probe fitted on the others, and the
pooled out-of-fold predictions give the accuracy with its 95% Wilson score interval, the
balanced accuracy (mean of the two per-class recalls) and the majority-class rate (what a
constant guess scores). :func:`probe_selected_layers` takes the top ``k`` layers by accuracy
(ties to the lower layer), the budget of EAVSS's prone layers and of the random control.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from avsslib.errors import ConfigError, DataError
from avsslib.labels import LabelledExample, split_ids

__all__ = [
    "PROBE_C",
    "answer_features",
    "fit_logistic",
    "predict_logistic",
    "probe_layers",
    "probe_selected_layers",
    "read_features",
    "wilson_interval",
    "write_features",
]

PROBE_C = 1.0
"""Inverse L2 strength of the probes (scikit-learn's ``C``) on standardised features."""

RANK_BY = ("accuracy", "balanced_accuracy")


# ---------------------------------------------------------------------- features
@torch.inference_mode()
def answer_features(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[LabelledExample],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[list[str], np.ndarray]:
    """Mean answer-token output of every block for each example with a non-empty answer.

    Returns ``(ids, features)``: the ids of the examples kept (in the order given) and a float16
    array of shape ``(len(ids), n_layers, hidden)``. The means are taken in float32 over the
    answer positions of :func:`avsslib.eavss.teacher_forcing_batches` (right-padded, run
    without an attention mask, exact for a causal decoder)."""
    from tqdm.auto import tqdm

    from avsslib.arch import blocks, eval_mode
    from avsslib.eavss import teacher_forcing_batches

    kept = [e for e in examples if e.answer_ids]
    if len(kept) < len(examples):
        warnings.warn(
            f"{len(examples) - len(kept)} of {len(examples)} examples have an empty "
            "answer and no feature; they are left out of the probes.",
            RuntimeWarning,
            stacklevel=2,
        )
    mods = blocks(model)
    hidden = int(cast(Any, model).config.hidden_size)
    out = np.zeros((len(kept), len(mods), hidden), dtype=np.float16)
    order = sorted(range(len(kept)), key=lambda i: len(kept[i].prompt) + len(kept[i].answer_ids))
    store: dict[int, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(
            lambda _m, _a, output, layer=layer: store.__setitem__(
                layer, output[0] if isinstance(output, tuple) else output
            )
        )
        for layer, m in enumerate(mods)
    ]
    device = next(model.parameters()).device
    try:
        with eval_mode(model):
            for start in tqdm(
                range(0, len(order), batch_size), desc="answer features", disable=not progress
            ):
                rows = order[start : start + batch_size]
                (batch,) = teacher_forcing_batches(
                    tokenizer, [kept[i] for i in rows], positions="answer", batch_size=len(rows)
                )
                store.clear()
                model(input_ids=batch["input_ids"].to(device), use_cache=False)
                mask = batch["attention_mask"].to(device=device, dtype=torch.float32).unsqueeze(-1)
                count = mask.sum(1)  # (B, 1)
                for layer in range(len(mods)):
                    mean = (store[layer].float() * mask).sum(1) / count  # (B, D)
                    out[rows, layer] = mean.cpu().numpy().astype(np.float16)
    finally:
        for h in handles:
            h.remove()
    if not np.isfinite(out).all():
        warnings.warn(
            "some answer features overflow float16 (|value| > 65504); those entries are "
            "inf and the probes standardise them away poorly.",
            RuntimeWarning,
            stacklevel=2,
        )
    return [e.id for e in kept], out


def write_features(
    path: str | Path,
    ids: Sequence[str],
    features: np.ndarray,
    labels: Sequence[str],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write features ``(n, n_layers, hidden)`` with their ids and labels as safetensors
    (ids, labels and ``meta`` as JSON in the file's metadata), atomically. Returns the path."""
    from safetensors.numpy import save_file

    from avsslib.fs import atomic_path

    path = Path(path)
    if len(ids) != len(features) or len(labels) != len(features):
        raise ConfigError(
            f"{len(features)} feature rows for {len(ids)} ids and {len(labels)} labels."
        )
    with atomic_path(path) as tmp:
        save_file(
            {"features": np.ascontiguousarray(features)},
            tmp,
            metadata={
                "format": "avsslib.probe/1",
                "ids": json.dumps(list(ids)),
                "labels": json.dumps(list(labels)),
                "meta": json.dumps(meta or {}),
            },
        )
    return path


def read_features(path: str | Path) -> tuple[list[str], np.ndarray, list[str], dict[str, Any]]:
    """``(ids, features, labels, meta)`` of a file written by :func:`write_features`."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            features = fh.get_tensor("features")
    except Exception as exc:  # noqa: BLE001 - unreadable or foreign file: one message
        raise DataError(
            f"cannot read probe features {path} ({type(exc).__name__}: {exc}); "
            "rerun `avss hallucination --probe` to write them."
        ) from None
    if meta.get("format") != "avsslib.probe/1":
        raise DataError(f"{path} is not a probe feature file (format {meta.get('format')!r}).")
    return (
        json.loads(meta["ids"]),
        features,
        json.loads(meta["labels"]),
        json.loads(meta.get("meta", "{}")),
    )


# ---------------------------------------------------------------------- logistic regression
def fit_logistic(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    c: float = PROBE_C,
    max_iter: int = 500,
    tol: float = 1e-10,
) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression: minimise ``c * sum_i logloss(y_i, x_i w + b) +
    ||w||^2 / 2`` (scikit-learn's ``LogisticRegression(C=c)``), by L-BFGS in float64.

    ``x``: ``(n, d)``; ``y``: ``(n,)`` in {0, 1}. Returns ``(w (d,), b)``. The objective is
    divided by ``c * n`` (same minimiser) so that the gradient tolerance does not scale with n."""
    if not c > 0:
        raise ConfigError(f"c = {c}: the inverse regularisation strength must be > 0.")
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64))
    if xt.ndim != 2 or yt.shape != (xt.shape[0],):
        raise ConfigError(
            f"x must be (n, d) and y (n,), got {tuple(xt.shape)} and {tuple(yt.shape)}."
        )
    if not ((yt == 0) | (yt == 1)).all() or yt.min() == yt.max():
        raise ConfigError("y must hold both classes, as 0 and 1.")
    n, d = xt.shape
    w = torch.zeros(d + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = xt @ w[:d] + w[d]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="mean") + (
            w[:d] @ w[:d]
        ) / (2 * c * n)
        loss.backward()
        return loss

    opt.step(closure)
    coef = w.detach().numpy()
    return coef[:d].copy(), float(coef[d])


def predict_logistic(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """Probability of class 1 for each row of ``x`` ``(n, d)``: ``sigmoid(x w + b)``."""
    z = np.asarray(x, dtype=np.float64) @ w + b
    return 1.0 / (1.0 + np.exp(-z))


def wilson_interval(successes: int, n: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); NaN for ``n = 0``."""
    from statistics import NormalDist

    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = train.astype(np.float64)
    mean, sd = x.mean(0), x.std(0)
    sd[~(sd > 0)] = 1.0  # constant (or non-finite) units: centred only
    return (x - mean) / sd, (test.astype(np.float64) - mean) / sd


# ---------------------------------------------------------------------- per-layer probes
def probe_layers(
    features: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    ids: Sequence[str],
    *,
    folds: int = 2,
    seed: int = 0,
    c: float = PROBE_C,
    progress: bool = True,
) -> pd.DataFrame:
    """Cross-validated accuracy of one linear probe per layer.

    ``features``: ``(n, n_layers, hidden)``; ``labels``: ``"hallucinated"`` / ``"truthful"``
    (or booleans, True = hallucinated), one per row; ``ids``: unique row ids, which seed the
    stratified ``folds``-fold split (:func:`avsslib.labels.split_ids` with equal fractions).

    Returns a frame indexed by ``layer`` with ``accuracy``, ``ci_low``, ``ci_high`` (95%
    Wilson), ``balanced_accuracy``, ``n``, ``n_hallucinated``, ``majority_rate`` and ``rank``
    (0 = best accuracy, ties to the lower layer). ``frame.attrs``: folds, seed, c and the fold
    ids (``fold_ids``). Each class needs at least ``folds`` members."""
    from tqdm.auto import tqdm

    x = np.asarray(features)
    if x.ndim != 3:
        raise ConfigError(f"features must be (n, n_layers, hidden), got shape {x.shape}.")
    y = np.array([lab == "hallucinated" if isinstance(lab, str) else bool(lab) for lab in labels])
    if len(y) != len(x) or len(ids) != len(x):
        raise ConfigError(f"{len(x)} feature rows, {len(y)} labels and {len(ids)} ids.")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds = {folds!r}: cross-validation needs an integer >= 2.")
    n_h = int(y.sum())
    if min(n_h, len(y) - n_h) < folds:
        raise ConfigError(
            f"{n_h} hallucinated and {len(y) - n_h} truthful answers: a {folds}-fold "
            f"probe needs at least {folds} of each; label more answers (--n)."
        )
    parts = split_ids(list(ids), [1.0 / folds] * folds, seed, stratify=y.tolist())
    where = {i: k for k, i in enumerate(ids)}
    fold_rows = [np.array([where[i] for i in part], dtype=int) for part in parts]
    n_layers = x.shape[1]
    pred = np.zeros((n_layers, len(y)), dtype=bool)
    for layer in tqdm(range(n_layers), desc="probes", disable=not progress):
        for test in fold_rows:
            train = np.setdiff1d(np.arange(len(y)), test)
            xtr, xte = _standardise(x[train, layer], x[test, layer])
            w, b = fit_logistic(xtr, y[train].astype(float), c=c)
            pred[layer, test] = predict_logistic(xte, w, b) > 0.5
    correct = pred == y[None, :]
    rows = []
    for layer in range(n_layers):
        k = int(correct[layer].sum())
        low, high = wilson_interval(k, len(y))
        recall_h = correct[layer, y].mean()
        recall_t = correct[layer, ~y].mean()
        rows.append(
            {
                "layer": layer,
                "accuracy": k / len(y),
                "ci_low": low,
                "ci_high": high,
                "balanced_accuracy": (recall_h + recall_t) / 2,
                "n": len(y),
                "n_hallucinated": n_h,
                "majority_rate": max(n_h, len(y) - n_h) / len(y),
            }
        )
    frame = pd.DataFrame(rows).set_index("layer")
    rank = np.empty(n_layers, dtype=int)
    rank[np.argsort(-frame["accuracy"].to_numpy(), kind="stable")] = np.arange(n_layers)
    frame["rank"] = rank
    frame.attrs.update(folds=folds, seed=seed, c=c, fold_ids=parts)
    return frame


def probe_selected_layers(
    scores: pd.DataFrame | Sequence[float], k: int, *, by: str = "accuracy"
) -> list[int]:
    """The ``k`` layers with the highest probe score, ascending (ties to the lower layer).

    ``scores``: a :func:`probe_layers` frame (ranked by its column ``by``) or one score per
    layer."""
    if isinstance(scores, pd.DataFrame):
        if by not in RANK_BY or by not in scores:
            raise ConfigError(f"by={by!r}: rank probe layers by one of {RANK_BY}.")
        values = scores.sort_index()[by].to_numpy(dtype=np.float64)
    else:
        values = np.asarray(scores, dtype=np.float64)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= len(values):
        raise ConfigError(
            f"k={k!r} must be an integer between 1 and the number of layers ({len(values)})."
        )
    if not np.isfinite(values).all():
        raise ConfigError("probe scores must be finite for every layer.")
    return sorted(int(i) for i in np.argsort(-values, kind="stable")[:k])
