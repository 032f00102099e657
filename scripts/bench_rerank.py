"""Held-out re-ranking quality of BM25, a zero-shot bi-encoder and mlm_jax rerankers.

Reads the ``eval.jsonl`` of ``mlm-jax data relevance --pairs`` sets (each held-out
query's BM25 top-k over the collection, with BM25's scores) and prints one JSON line per
(set, ranker): MRR@10, NDCG@10, Recall@1/10, all on the same candidate lists.

    python scripts/bench_rerank.py --eval runs/rel-pydocs/eval.jsonl \\
        --bi-encoder PATH/TO/all-MiniLM-L6-v2 --model runs/rerank-minilm

``--bi-encoder`` scores a candidate by the cosine of sentence-transformers embeddings;
``--model`` (repeatable) is a fine-tuned run or export, scored as ``mlm-jax score`` does,
and, when it carries fusion weights (``mlm-jax fuse``: BM25's, and the bi-encoder's
it names), also fused as ``mlm-jax search`` orders (ranker ``fused:MODEL``). ``--mean
FILE`` reads such JSON lines back and prints each ranker's mean over the sets (the
leave-one-domain-out table of ``scripts/bench_lodo.sh``). ``--unseen-by FILE...`` keeps
only the held-out queries that none of those training or dev files holds: a large held-out
set drawn for one model can then score another that trained on part of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from mlm_jax.data import bm25_index, finetune_data
from mlm_jax.data.ranking_metrics import paired_difference, per_query_metrics
from mlm_jax.errors import UserError
from mlm_jax.inference import fusion, scoring

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


def reranker(path: str, queries, seq_len: int | None, windows: str | None, dtype: str | None):
    """Scores as ``mlm-jax score`` computes them (``seq_len``, ``windows`` and ``dtype`` as its
    options; None: the model's own)."""
    score = scoring.load_reranker(
        path, chunk_rows=64, seq_len=seq_len, windows=windows, dtype=dtype
    )
    return _split(score([(q.query, p) for q in queries for p in _candidates(q)]), queries)


def _rankers(args):
    """``(name, scores_of(queries))`` per ranker, in the order they are printed."""
    yield "bm25", bm25_index.candidate_scores
    if args.bi_encoder:
        yield "bi-encoder", lambda queries: bi_encoder(args.bi_encoder, queries)
    for model in args.model:
        kept = {}  # the reranker's scores, which its fused row reuses

        def alone(queries, model=model, kept=kept):
            kept["scores"] = reranker(model, queries, args.seq_len, args.windows, args.dtype)
            return kept["scores"]

        weights = fusion.read(model)  # read once: it also checks the bi-encoder is there

        def fused(queries, weights=weights, kept=kept):
            bm25 = bm25_index.candidate_scores(queries)
            pairs = [(q.query, p) for q in queries for p in _candidates(q)]
            cosines = fusion.bi_encoder_cosines(weights, pairs)
            cosines = [None] * len(bm25) if cosines is None else _split(cosines, queries)
            return [
                fusion.fused(r, b, weights.bm25_weight, c, weights.bi_encoder_weight)
                for r, b, c in zip(kept["scores"], bm25, cosines, strict=True)
            ]

        yield f"reranker:{model}", alone
        if weights is not None:
            yield f"fused:{model}", fused


def held_out_lists(eval_files: list[str], unseen_by: list[str]) -> list[tuple[str, list]]:
    """Each eval file's candidate lists, less the queries of the ``unseen_by`` files (any
    reranking set: train, dev or eval): all read before any ranker scores, so that a bad
    file is refused before minutes of scoring, not after."""
    missing = "pass a train.jsonl or dev.jsonl of `mlm-jax data relevance --pairs`"
    seen = {
        q.query
        for path in unseen_by
        for q in finetune_data.read_rerank(path, evaluation=True, missing=missing)
    }
    lists = []
    for path in eval_files:
        queries = finetune_data.read_rerank(
            path, evaluation=True, missing="pass an eval.jsonl of `mlm-jax data relevance --pairs`"
        )
        kept = [q for q in queries if q.query not in seen]
        if not kept:
            raise UserError(f"--unseen-by leaves none of {path}'s queries to score")
        lists.append((path, kept))
    return lists


def _ranker_kind(name: str) -> str:
    return name.split(":", 1)[0]


def print_means(path: str) -> None:
    """One JSON line per ranker kind: its mean over the sets of ``path``'s lines."""
    with open(path, encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    kinds = dict.fromkeys(_ranker_kind(line["ranker"]) for line in lines)
    for kind in kinds:
        mine = [line for line in lines if _ranker_kind(line["ranker"]) == kind]
        keys = [k for k in mine[0] if k.startswith(("mrr", "ndcg", "recall"))]
        print(
            json.dumps(
                {
                    "ranker": kind,
                    "sets": len(mine),
                    **{
                        f"mean_{k}": round(float(np.mean([line[k] for line in mine])), 4)
                        for k in keys
                    },
                }
            )
        )


def print_paired(eval_file: str, reference: str, reciprocal_ranks: dict) -> None:
    """One JSON line per other ranker: its MRR@10 minus ``reference``'s on the same queries,
    with the 95% interval of a paired bootstrap (is the gap more than the queries' noise?)."""
    for name, values in reciprocal_ranks.items():
        if name != reference:
            difference, low, high = paired_difference(values, reciprocal_ranks[reference])
            print(json.dumps({
                "eval": eval_file, "ranker": name, "minus": reference,
                "mrr@10_difference": round(difference, 4),
                "ci95": [round(low, 4), round(high, 4)],
            }), flush=True)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", nargs="+", help="eval.jsonl of --pairs sets")
    parser.add_argument("--mean", help="JSON lines of this script: print each ranker's mean")
    parser.add_argument("--bi-encoder", help="a sentence-transformers model directory")
    parser.add_argument("--model", action="append", default=[], help="mlm_jax reranker")
    parser.add_argument("--seq-len", type=int, help="rows for --model (default: its training's)")
    parser.add_argument("--windows", choices=("maxp", "firstp"), help="long passages (--model)")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), help="--model's products (default: its own)"
    )
    parser.add_argument(
        "--paired",
        metavar="RANKER",
        help="also print each other ranker's MRR@10 minus this one's (a name as printed, "
        "e.g. bm25 or fused:MODEL) with a paired-bootstrap 95%% interval",
    )
    parser.add_argument(
        "--unseen-by",
        nargs="+",
        default=[],
        metavar="FILE",
        help="score only the held-out queries that no query line of these JSONL files (the "
        "train.jsonl or dev.jsonl some model was fitted on) holds",
    )
    return parser


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    try:
        run(args, parser)
    except UserError as error:  # a bad file or model: one line, as the mlm-jax commands give
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run(args, parser: argparse.ArgumentParser) -> None:
    if args.mean:
        return print_means(args.mean)
    if not args.eval:
        parser.error("pass --eval FILE... (or --mean FILE)")
    for model in args.model:  # refused now, by the scorer's own test, not minutes in
        scoring.check_reranker_path(model)
    # The rankers' names are known before any of them scores (only fusion files are read):
    # a --paired name that is none of them is refused before minutes of scoring, not after.
    names = [name for name, _ in _rankers(args)]
    if args.paired and args.paired not in names:
        parser.error(f"--paired {args.paired!r} is none of this run's rankers: {', '.join(names)}")
    held_out = held_out_lists(args.eval, args.unseen_by)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for eval_file, lists in held_out:
        relevant = [np.asarray([1] * len(q.positives) + [0] * len(q.negatives)) for q in lists]
        reciprocal_ranks = {}
        for name, scores_of in _rankers(args):
            started = time.perf_counter()
            per_query = per_query_metrics(scores_of(lists), relevant)
            reciprocal_ranks[name] = per_query["mrr@10"]
            print(json.dumps({
                "eval": eval_file, "ranker": name, "queries": len(lists),
                **({"seq_len": args.seq_len, "windows": args.windows, "dtype": args.dtype}
                   if name.startswith(("reranker", "fused")) else {}),
                "answer_in_candidates": float(np.mean([r.max() for r in relevant])),
                **{k: round(float(v.mean()), 4) for k, v in per_query.items()},
                "seconds": round(time.perf_counter() - started, 1),
            }), flush=True)  # fmt: skip
        if args.paired:
            print_paired(eval_file, args.paired, reciprocal_ranks)


if __name__ == "__main__":
    main()
