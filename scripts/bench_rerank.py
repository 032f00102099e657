"""Held-out re-ranking quality of BM25, a zero-shot bi-encoder and mlm_jax rerankers.

Reads the ``eval.jsonl`` of ``mlm-jax data relevance --pairs`` sets (each held-out
query's BM25 top-k over the collection, with BM25's scores) and prints one JSON line per
(set, ranker): MRR@10, NDCG@10, Recall@1/10, all on the same candidate lists.

    python scripts/bench_rerank.py --eval runs/rel-pydocs/eval.jsonl \\
        --bi-encoder PATH/TO/all-MiniLM-L6-v2 --model runs/rerank-minilm

``--bi-encoder`` scores a candidate by the cosine of sentence-transformers embeddings;
``--model`` (repeatable) is a fine-tuned run or export, scored as ``mlm-jax score`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from mlm_jax.data.relevance_pairs import candidate_lists, relevance_arrays
from mlm_jax.training.ranking_metrics import mean_ranking_metrics


def _split(flat: np.ndarray, lists: dict[str, list[dict]]) -> list[np.ndarray]:
    return np.split(np.asarray(flat), np.cumsum([len(rows) for rows in lists.values()])[:-1])


def bm25(lists):
    return [np.asarray([r["bm25"] for r in rows]) for rows in lists.values()]


def bi_encoder(path: str, lists):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    passages = sorted({r["passage"] for rows in lists.values() for r in rows})
    queries = list(lists)
    encode = lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True)  # noqa: E731
    passage_vectors = dict(zip(passages, encode(passages), strict=True))
    query_vectors = encode(queries)
    return [
        np.asarray([passage_vectors[r["passage"]] @ vector for r in lists[query]])
        for query, vector in zip(queries, query_vectors, strict=True)
    ]


def reranker(path: str, lists, seq_len: int | None):
    """Scores as ``mlm-jax score`` computes them, rows cut at ``seq_len`` if given."""
    from mlm_jax.inference import scoring

    score = scoring.load_reranker(path, chunk_rows=64, seq_len=seq_len)
    pairs = [(query, r["passage"]) for query, rows in lists.items() for r in rows]
    return _split(score(pairs), lists)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", nargs="+", required=True, help="eval.jsonl of --pairs sets")
    parser.add_argument("--bi-encoder", help="a sentence-transformers model directory")
    parser.add_argument("--model", action="append", default=[], help="mlm_jax reranker")
    parser.add_argument("--seq-len", type=int, help="rows for --model (default: its training's)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for eval_file in args.eval:
        lists = candidate_lists(eval_file)
        relevant = relevance_arrays(lists)
        rankers = [("bm25", bm25)]
        if args.bi_encoder:
            rankers.append(("bi-encoder", lambda x: bi_encoder(args.bi_encoder, x)))
        rankers += [(f"reranker:{m}", lambda x, m=m: reranker(m, x, args.seq_len))
                    for m in args.model]  # fmt: skip
        for name, scores_of in rankers:
            started = time.perf_counter()
            metrics = mean_ranking_metrics(scores_of(lists), relevant)
            print(json.dumps({
                "eval": eval_file, "ranker": name, "queries": len(lists),
                "answer_in_candidates": float(np.mean([r.max() for r in relevant])),
                **{k: round(v, 4) for k, v in metrics.items()},
                "seconds": round(time.perf_counter() - started, 1),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
