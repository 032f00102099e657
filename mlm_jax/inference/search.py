"""``mlm-jax search``: BM25 over a passage collection, then a cross-encoder re-ranks its top K.

The two-stage job rerankers exist for. BM25 (:mod:`mlm_jax.data.bm25_index`, cached beside
the collection) picks each query's ``top_k`` candidates from the whole collection; the
reranker scores every (query, candidate) pair exactly as ``mlm-jax score`` would and
orders them by that score, BM25's order breaking ties. A model that carries fitted fusion
weights (``mlm-jax fuse``, :mod:`mlm_jax.inference.fusion`: BM25's, and a bi-encoder's
whose cosines are then computed too) is ordered by the fused score instead, unless
``fusion=False``.

Collection: JSONL, one passage per line, as ``{"text": ...}``, ``{"passage": ...}`` or a
JSON string. Queries file: JSONL, ``{"query": ...}`` or a JSON string per line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlm_jax import artifacts
from mlm_jax.data import bm25_index
from mlm_jax.errors import UserError
from mlm_jax.inference import fusion as fusion_lib


def _json_lines(path: str | Path, option: str, expected: str):
    """``(where, value)`` of each non-blank line; one-line errors naming the option."""
    return artifacts.read_jsonl(
        path, option=option, missing=f"pass a JSONL file with {expected}", expected=expected
    )


def _text(value, keys: tuple[str, ...], where: str, expected: str) -> str:
    if isinstance(value, dict):
        value = next((value[k] for k in keys if isinstance(value.get(k), str)), None)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: no text; write {expected}")
    return value


def read_collection(path: str | Path) -> list[str]:
    """The passages of a collection file, in file order."""
    expected = 'one {"text": ...} (or {"passage": ...}) per line'
    passages = [_text(v, ("text", "passage"), where, expected)
                for where, v in _json_lines(path, "--collection", expected)]  # fmt: skip
    if not passages:
        raise UserError(f"--collection {path}: no passages; write {expected}")
    return passages


def read_queries(path: str | Path) -> list[str]:
    expected = 'one {"query": ...} per line'
    queries = [_text(v, ("query",), where, expected)
               for where, v in _json_lines(path, "--queries", expected)]  # fmt: skip
    if not queries:
        raise UserError(f"--queries {path}: no queries; write {expected}")
    return queries


def search(
    collection: str, model: str, queries: list[str], top_k: int = 20, seq_len=None, windows=None,
    fusion: bool = True, dtype=None,
) -> list[dict]:  # fmt: skip
    """Per query ``{"query", "results": [{"rank", "score", "reranker", "bm25", "text"}, ...]}``
    (and ``"bi_encoder"``, the cosine, when the model's fusion weighs it); ``score`` is the
    fused score when the model carries fusion weights, else the reranker's."""
    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    passages = read_collection(collection)
    from mlm_jax.inference import scoring

    # The model is checked before the index is built: a wrong --model writes nothing.
    rerank = scoring.load_reranker(model, seq_len=seq_len, windows=windows, dtype=dtype)
    weights = fusion_lib.read(model) if fusion else None
    index = bm25_index.cached(collection, passages)
    candidates, bm25 = index.top_k(queries, top_k)
    pairs = [(q, passages[i]) for q, row in zip(queries, candidates, strict=True) for i in row]
    scores = rerank(pairs)
    cosines = fusion_lib.bi_encoder_cosines(weights, pairs)
    results = []
    for row, (query, ids, first_stage) in enumerate(zip(queries, candidates, bm25, strict=True)):
        mine = slice(row * len(ids), (row + 1) * len(ids))
        reranker, mine_cos = scores[mine], None if cosines is None else cosines[mine]
        final = reranker
        if weights is not None:
            final = fusion_lib.fused(reranker, first_stage, weights.bm25_weight, mine_cos,
                                     weights.bi_encoder_weight)  # fmt: skip
        order = np.argsort(-final, kind="stable")  # stable: BM25's order among equal scores
        results.append({"query": query, "results": [
            {"rank": r + 1, "score": float(final[i]), "reranker": float(reranker[i]),
             "bm25": float(first_stage[i]),
             **({} if mine_cos is None else {"bi_encoder": float(mine_cos[i])}),
             "text": passages[ids[i]]}
            for r, i in enumerate(order)
        ]})  # fmt: skip
    return results


def print_search(collection: str, model: str, query: str | None = None,
                 queries: str | None = None, top_k: int = 20, seq_len=None,
                 windows=None, fusion: bool = True, dtype=None) -> list[dict]:  # fmt: skip
    """``mlm-jax search``: one query prints a header then ``rank, score, bm25, passage``
    lines (tab-separated); ``--queries`` prints one JSON object per query."""
    if (query is None) == (queries is None):
        raise UserError('pass one query ("text") or --queries F.jsonl, not both')
    texts = [query] if queries is None else read_queries(queries)
    results = search(collection, model, texts, top_k, seq_len, windows, fusion, dtype)
    if queries is not None:
        for result in results:
            print(json.dumps(result, ensure_ascii=False))
        return results
    print("rank\tscore\tbm25\tpassage")
    for item in results[0]["results"]:
        print(f"{item['rank']}\t{item['score']:.6f}\t{item['bm25']:.4f}\t{item['text']}")
    return results
