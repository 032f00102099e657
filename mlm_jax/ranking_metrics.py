"""Held-out metrics of fine-tuned models: ranking (MRR, NDCG, recall) and classification.

Ranking ties are broken pessimistically (a relevant candidate ranks after an irrelevant
one with the same score), so a model that scores everything alike gets no credit for
the order the candidates happen to be listed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rank_relevance(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Relevance flags (0/1) of the candidates sorted by descending score."""
    order = np.lexsort((np.asarray(relevant, np.int32), -np.asarray(scores, np.float64)))
    return np.asarray(relevant, np.int32)[order]


def query_metrics(scores: np.ndarray, relevant: np.ndarray, cutoff: int = 10) -> dict[str, float]:
    """MRR@cutoff, NDCG@cutoff, Recall@1 and Recall@cutoff of one query (binary relevance)."""
    ranked = rank_relevance(scores, relevant)
    total = int(ranked.sum())
    if total == 0:
        raise ValueError("a query without relevant candidates has no ranking metrics")
    hits = np.flatnonzero(ranked[:cutoff])
    discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))
    ideal = discounts[: min(total, cutoff)].sum()
    return {
        f"mrr@{cutoff}": 1.0 / (hits[0] + 1) if hits.size else 0.0,
        f"ndcg@{cutoff}": float(discounts[hits].sum() / ideal),
        "recall@1": float(ranked[:1].sum() / total),
        f"recall@{cutoff}": float(ranked[:cutoff].sum() / total),
    }


def mean_ranking_metrics(
    scores: Sequence[np.ndarray], relevant: Sequence[np.ndarray], cutoff: int = 10
) -> dict[str, float]:
    """:func:`query_metrics` averaged over queries."""
    per_query = [query_metrics(s, r, cutoff) for s, r in zip(scores, relevant, strict=True)]
    return {name: float(np.mean([m[name] for m in per_query])) for name in per_query[0]}


def classification_metrics(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes that occur in the labels or the predictions."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    f1s = []
    for cls in np.union1d(predicted, labels):
        true_positive = np.sum((predicted == cls) & (labels == cls))
        denominator = np.sum(predicted == cls) + np.sum(labels == cls)
        f1s.append(2.0 * true_positive / denominator)
    return {"accuracy": float(np.mean(predicted == labels)), "macro_f1": float(np.mean(f1s))}
