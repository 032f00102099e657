"""Held-out metrics of fine-tuned models: ranking (MRR, NDCG, recall) and classification.

Ties are scored by their expectation under uniformly random tie-breaking: candidates
with equal scores share the ranks they span, so neither the order the candidates are
listed in nor a tie rule favours anyone (BM25 gives many candidates the same score; a
model that scores everything alike gets exactly the random-ranking metrics).

A query none of whose candidates is relevant (first-stage retrieval missed its answer)
scores 0 on every metric, for every ranker: re-ranking cannot recover what the candidate
list lacks, and dropping such queries would flatter everyone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _tie_groups(scores: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sizes, relevant_counts)`` of the groups of equal scores, best group first."""
    _, group, sizes = np.unique(-np.asarray(scores, np.float64), return_inverse=True,
                                return_counts=True)  # fmt: skip
    counts = np.bincount(group, weights=np.asarray(relevant, np.float64), minlength=len(sizes))
    return sizes, counts.astype(np.int64)


def _expected_reciprocal_rank(sizes, counts, cutoff: int) -> float:
    """E[1 / rank of the first relevant candidate] (0 beyond ``cutoff``), ties random."""
    group = int(np.flatnonzero(counts)[0])
    first, size, hits = int(sizes[:group].sum()), int(sizes[group]), int(counts[group])
    # P(the group's first relevant candidate sits at offset j) = C(size-j-1, hits-1) / C(size, hits)
    return sum(
        math.comb(size - j - 1, hits - 1) / math.comb(size, hits) / (first + j + 1)
        for j in range(size - hits + 1)
        if first + j < cutoff
    )


def query_metrics(scores: np.ndarray, relevant: np.ndarray, cutoff: int = 10) -> dict[str, float]:
    """MRR@cutoff, NDCG@cutoff, Recall@1 and Recall@cutoff of one query (binary relevance).

    Each is its expectation over the orders of tied candidates (random tie-breaking); all
    are 0 when no candidate is relevant.
    """
    total = float(np.sum(relevant))
    if total == 0:
        return dict.fromkeys((f"mrr@{cutoff}", f"ndcg@{cutoff}", "recall@1", f"recall@{cutoff}"),
                             0.0)  # fmt: skip
    sizes, counts = _tie_groups(scores, relevant)
    gains = np.repeat(counts / sizes, sizes)  # expected relevance at each rank, best first
    discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))
    top = gains[:cutoff]
    ideal = discounts[: min(int(total), cutoff)].sum()
    return {
        f"mrr@{cutoff}": float(_expected_reciprocal_rank(sizes, counts, cutoff)),
        f"ndcg@{cutoff}": float(np.dot(discounts[: len(top)], top) / ideal),
        "recall@1": float(gains[0] / total),
        f"recall@{cutoff}": float(top.sum() / total),
    }


def per_query_metrics(
    scores: Sequence[np.ndarray], relevant: Sequence[np.ndarray], cutoff: int = 10
) -> dict[str, np.ndarray]:
    """:func:`query_metrics` of every query: one array per metric, in query order."""
    per_query = [query_metrics(s, r, cutoff) for s, r in zip(scores, relevant, strict=True)]
    return {name: np.asarray([m[name] for m in per_query]) for name in per_query[0]}


def mean_ranking_metrics(
    scores: Sequence[np.ndarray], relevant: Sequence[np.ndarray], cutoff: int = 10
) -> dict[str, float]:
    """:func:`query_metrics` averaged over queries."""
    return {k: float(v.mean()) for k, v in per_query_metrics(scores, relevant, cutoff).items()}


def paired_difference(
    ours: np.ndarray, theirs: np.ndarray, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean difference, low, high)``: ``ours - theirs`` over the same queries, with the
    95% interval of a paired bootstrap (queries drawn with replacement, both rankers' values
    of a query kept together).

    Two rankers on one set of a few hundred queries differ by less than the spread of
    either's mean; pairing takes out what the queries share (an easy query is easy for
    both), so the interval says whether a gap of a few thousandths is more than noise.
    """
    difference = np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(difference), size=(resamples, len(difference)))
    means = difference[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(difference.mean()), float(low), float(high)


def classification_metrics(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes that occur in the labels or the predictions."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    f1s = []
    for cls in np.union1d(predicted, labels):
        true_positive = np.sum((predicted == cls) & (labels == cls))
        denominator = np.sum(predicted == cls) + np.sum(labels == cls)
        f1s.append(2.0 * true_positive / denominator)
    return {"accuracy": float(np.mean(predicted == labels)), "macro_f1": float(np.mean(f1s))}
