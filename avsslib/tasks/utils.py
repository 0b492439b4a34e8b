"""Functions the task YAMLs in this folder name with ``!function utils.<name>``.

lm-evaluation-harness imports this file by path (next to the YAML), so it holds pure functions
of one harness document (a JSON object written by ``avsslib.evaluate``) and its results.
"""

from __future__ import annotations

import datasets
import numpy as np
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results as _wikitext_results
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer


def truthfulqa_mc2_process_results(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """MC2 as in ``lm_eval/tasks/truthfulqa/utils.py``: probability mass on the true answers.

    ``results`` holds one ``(loglikelihood, is_greedy)`` per choice of ``doc["mc2_choices"]``;
    the probabilities are renormalised over the choices and summed where ``mc2_labels`` is 1.
    """
    ll = np.array([r[0] for r in results], dtype=np.float64)
    probs = np.exp(ll - ll.max())  # the shift cancels in the normalisation
    probs /= probs.sum()
    labels = np.asarray(doc["mc2_labels"])
    return {"acc": float(probs[labels == 1].sum())}


def ranking_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy, average precision and reciprocal rank of one ranked candidate list.

    ``scores``: shape (n_candidates,), higher ranks first (ties keep file order).
    ``labels``: shape (n_candidates,), 1 for a correct candidate, 0 otherwise; at least one 1.
    Returns ``{"acc", "map", "mrr"}`` for this question (``map`` is its average precision;
    averaging over questions gives MAP and MRR).
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranked = np.asarray(labels)[order] == 1
    hits = np.flatnonzero(ranked)  # 0-based ranks of the correct candidates
    if hits.size == 0:
        raise ValueError("ranking_metrics needs at least one candidate with label 1")
    precision_at_hits = np.arange(1, hits.size + 1) / (hits + 1)
    return {
        "acc": float(ranked[0]),
        "map": float(precision_at_hits.mean()),
        "mrr": float(1.0 / (hits[0] + 1)),
    }


def wikiqa_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Keep the questions that have at least one correct sentence (the usual WikiQA protocol)."""
    return dataset.filter(lambda doc: 1 in doc["labels"])


def wikiqa_process_results(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """Rank ``doc["sentences"]`` by log-likelihood (acc, map, mrr) and by log-likelihood per
    character (acc_norm, map_norm, mrr_norm; the harness's ``acc_norm`` normalisation)."""
    ll = np.array([r[0] for r in results], dtype=np.float64)
    chars = np.array([len(s) for s in doc["sentences"]], dtype=np.float64)
    labels = np.asarray(doc["labels"])
    raw = ranking_metrics(ll, labels)
    norm = ranking_metrics(ll / chars, labels)
    return raw | {f"{k}_norm": v for k, v in norm.items()}


def wikitext_doc_to_target(doc: dict) -> str:
    """The harness's WikiText detokenizer applied to ``doc["text"]``."""
    return wikitext_detokenizer({"page": doc["text"]})


def wikitext_process_results(doc: dict, results: list[float]) -> dict:
    """The harness's WikiText counts: ``(loglikelihood, words)`` and ``(loglikelihood, bytes)``
    of the original (not detokenized) text, aggregated as weighted perplexities."""
    return _wikitext_results({"page": doc["text"]}, results)
