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

from mlm_jax.data import bm25_index, finetune_data
from mlm_jax.inference.ranking_metrics import mean_ranking_metrics

# Each held-out query's candidates as fine-tuning's evaluation reads them: the relevant
# ones first, then the rest (finetune_data.RankingQuery), scored by each ranker in turn.


def _candidates(query) -> list[str]:
    return query.positives + query.negatives


def _split(flat: np.ndarray, queries) -> list[np.ndarray]:
    return np.split(np.asarray(flat), np.cumsum([len(_candidates(q)) for q in queries])[:-1])


def bi_encoder(path: str, queries):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    passages = sorted({p for q in queries for p in _candidates(q)})
    encode = lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True)  # noqa: E731
    passage_vectors = dict(zip(passages, encode(passages), strict=True))
    query_vectors = encode([q.query for q in queries])
    return [
        np.asarray([passage_vectors[p] @ vector for p in _candidates(q)])
        for q, vector in zip(queries, query_vectors, strict=True)
    ]


def reranker(path: str, queries, seq_len: int | None, windows: str | None):
    """Scores as ``mlm-jax score`` computes them (``seq_len`` and ``windows`` as its
    options; None: the model's own)."""
    from mlm_jax.inference import scoring

    score = scoring.load_reranker(path, chunk_rows=64, seq_len=seq_len, windows=windows)
    return _split(score([(q.query, p) for q in queries for p in _candidates(q)]), queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", nargs="+", required=True, help="eval.jsonl of --pairs sets")
    parser.add_argument("--bi-encoder", help="a sentence-transformers model directory")
    parser.add_argument("--model", action="append", default=[], help="mlm_jax reranker")
    parser.add_argument("--seq-len", type=int, help="rows for --model (default: its training's)")
    parser.add_argument("--windows", choices=("maxp", "firstp"), help="long passages (--model)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for eval_file in args.eval:
        lists = finetune_data.read_rerank(eval_file, evaluation=True)
        relevant = [np.asarray([1] * len(q.positives) + [0] * len(q.negatives)) for q in lists]
        rankers = [("bm25", bm25_index.candidate_scores)]
        if args.bi_encoder:
            rankers.append(("bi-encoder", lambda x: bi_encoder(args.bi_encoder, x)))
        rankers += [(f"reranker:{m}", lambda x, m=m: reranker(m, x, args.seq_len, args.windows))
                    for m in args.model]  # fmt: skip
        for name, scores_of in rankers:
            started = time.perf_counter()
            metrics = mean_ranking_metrics(scores_of(lists), relevant)
            print(json.dumps({
                "eval": eval_file, "ranker": name, "queries": len(lists),
                **({"seq_len": args.seq_len, "windows": args.windows} if "reranker" in name
                   else {}),
                "answer_in_candidates": float(np.mean([r.max() for r in relevant])),
                **{k: round(v, 4) for k, v in metrics.items()},
                "seconds": round(time.perf_counter() - started, 1),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
