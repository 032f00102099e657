"""Fusing a reranker's scores with BM25's: ``mlm-jax fuse`` fits it, ``search`` applies it.

On a collection it was not trained on, a cross-encoder can order BM25's candidates worse
than BM25 did; BM25's term statistics belong to the collection, the model's judgement to
its training text. The fused score of a query's candidates is

    (1 - w) * z(reranker) + w * z(bm25)

where ``z`` is the z-score within that query's candidate list (both scores' scales then
drop out) and ``w`` is one number per model, fitted by ``mlm-jax fuse`` on the dev split of
the model's training mixture (``dev.jsonl`` of ``mlm-jax data relevance --dev-queries``):
the weight with the best mean MRR@10 over the dev files, each file counting once. It is
stored beside the model as ``bm25_fusion.json``; ``mlm-jax export`` copies it and
``search`` uses it unless ``--no-fusion``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlm_jax import artifacts
from mlm_jax.data import bm25_index, finetune_data
from mlm_jax.data.ranking_metrics import mean_ranking_metrics
from mlm_jax.errors import UserError

FILE = "bm25_fusion.json"
WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)  # steps of 0.05


def _z(scores) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    return (scores - scores.mean()) / (scores.std() + 1e-9)


def fused(reranker, bm25, weight: float) -> np.ndarray:
    """One query's fused candidate scores (``weight`` 0: the reranker's order)."""
    return (1.0 - weight) * _z(reranker) + weight * _z(bm25)


def read(model: str | Path) -> float | None:
    """The BM25 weight stored with ``model``, or None when it has none."""
    path = Path(model) / FILE
    if not path.is_file():
        return None
    try:
        weight = json.loads(path.read_text())["bm25_weight"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is damaged; refit it: mlm-jax fuse --model {model}") from None
    if not isinstance(weight, int | float) or not 0 <= weight <= 1:
        raise UserError(f"{path}: bm25_weight must lie in [0, 1]; refit with `mlm-jax fuse`")
    return float(weight)


def _dev_lists(dev_files: list[str]):
    """Per dev file: its candidate lists, relevance labels and BM25 scores."""
    lists = []
    for path in dev_files:
        queries = finetune_data.read_rerank(path, evaluation=True)
        relevant = [np.asarray([1] * len(q.positives) + [0] * len(q.negatives)) for q in queries]
        lists.append((path, queries, relevant, bm25_index.candidate_scores(queries)))
    return lists


def fit(model: str, dev_files: list[str]) -> dict:
    """Fit the BM25 weight of ``model`` on ``dev_files`` and write it beside the model."""
    from mlm_jax.inference import scoring

    if not dev_files:
        raise UserError("--dev needs at least one dev.jsonl (`data relevance --dev-queries N`)")
    score = scoring.load_reranker(model, chunk_rows=64)
    table = {}  # file -> [MRR@10 at each weight]
    for path, queries, relevant, bm25 in _dev_lists(dev_files):
        flat = score([(q.query, p) for q in queries for p in q.positives + q.negatives])
        reranker = np.split(flat, np.cumsum([len(b) for b in bm25])[:-1])
        table[path] = [
            mean_ranking_metrics([fused(r, b, w) for r, b in zip(reranker, bm25, strict=True)],
                                 relevant)["mrr@10"]
            for w in WEIGHTS
        ]  # fmt: skip
    means = np.mean(list(table.values()), axis=0)
    best = int(np.argmax(means))  # the first of equals: the least BM25
    record = {
        "bm25_weight": float(WEIGHTS[best]),
        "dev_mrr@10": round(float(means[best]), 4),
        "dev_mrr@10_reranker_alone": round(float(means[0]), 4),
        "dev_mrr@10_per_file": {p: round(v[best], 4) for p, v in table.items()},
    }
    artifacts.write_text_atomic(Path(model) / FILE, json.dumps(record, indent=2) + "\n")
    return record
