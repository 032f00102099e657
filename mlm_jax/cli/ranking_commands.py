"""``mlm-jax score``, ``search`` and ``fuse``: a fine-tuned reranker put to work."""

from __future__ import annotations

import argparse


def _cmd_score(args: argparse.Namespace) -> None:
    from mlm_jax.inference import scoring

    scoring.print_scores(
        args.model,
        query=args.query,
        candidates=args.candidates,
        queries=args.queries,
        top_k=args.top_k,
        seq_len=args.seq_len,
        windows=args.windows,
        dtype=args.dtype,
    )


def _cmd_search(args: argparse.Namespace) -> None:
    from mlm_jax.inference import search

    search.print_search(
        args.collection, args.model, query=args.query, queries=args.queries, top_k=args.top_k,
        seq_len=args.seq_len, windows=args.windows, fusion=not args.no_fusion, dtype=args.dtype,
    )  # fmt: skip


def _cmd_fuse(args: argparse.Namespace) -> None:
    import json

    from mlm_jax.inference import fusion

    print(json.dumps(fusion.fit(args.model, args.dev, args.bi_encoder, args.dtype)))


_SEARCH_DESCRIPTION = """\
BM25 picks each query's top K passages; the reranker re-orders them, fused with BM25 and,
when the model names one, with a bi-encoder's cosines, by the weights stored with the model
(mlm-jax fuse), unless --no-fusion.

The shipped reranker (configs/finetune-rerank-minilm.yaml) was trained on six kinds of
offline text: dictionary words -> definitions (WordNet, Webster's 1913), docstring
summaries -> bodies, manual-page summaries -> descriptions, Debian package short -> long
descriptions, Wikipedia titles and sections -> paragraphs; it fuses BM25 and the zero-shot
MiniLM bi-encoder it started from. On a kind it never saw (each left out in turn, MRR@10
over BM25's top 20) it beat BM25 by +0.04 to +0.10 and the zero-shot bi-encoder on every
kind, by 0.023 on average (0.613 vs 0.590). On text unlike all six, expect less than that
table's average; its worst margins were +0.04 over BM25 and +0.006 over the bi-encoder
(docstrings). On a collection you can train on, a reranker fine-tuned on it alone can do
better: on WordNet's glosses, by 0.016. Figures: docs/benchmarks.md, "A reranker that travels".
"""


def _add_passage_args(command: argparse.ArgumentParser) -> None:
    from mlm_jax.inference.passage_windows import MODES  # numpy only: cheap at start-up

    command.add_argument(
        "--seq-len", type=int, help="row length (default: what the model records, else the "
        "rows it was trained on)",
    )  # fmt: skip
    command.add_argument(
        "--windows", choices=MODES, help="a passage longer than a row: best of "
        "half-overlapping windows (maxp) or its opening only (firstp); default: the model's",
    )  # fmt: skip


def _add_dtype_arg(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--dtype", choices=("float32", "bfloat16"), help="the reranker's matrix products "
        "(default: the model.dtype it was trained with; float32 matches transformers)",
    )  # fmt: skip


def add_ranking_parsers(commands) -> None:
    score = commands.add_parser("score", help="rank candidates with a fine-tuned reranker")
    score.add_argument("--model", required=True)
    score.add_argument("--query")
    score.add_argument("--candidates", help="JSONL with a text/passage field per line")
    score.add_argument("--queries", help="JSONL with query and candidates per line")
    score.add_argument("--top-k", type=int, default=10)
    _add_passage_args(score)
    _add_dtype_arg(score)
    score.set_defaults(handler=_cmd_score)

    search = commands.add_parser(
        "search",
        help="BM25 over a collection, then a fine-tuned reranker re-ranks its top K",
        description=_SEARCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_argument("--collection", required=True, help='JSONL of {"text"} passages')
    search.add_argument("--model", required=True, help="a fine-tuned reranker run or export")
    search.add_argument("--top-k", type=int, default=20, help="BM25 candidates to re-rank")
    search.add_argument("--queries", help='JSONL of {"query"} lines; prints JSON per query')
    search.add_argument("query", nargs="?", help="one query; prints rank, score, bm25, passage")
    search.add_argument(
        "--no-fusion", action="store_true",
        help="order by the reranker alone, ignoring the fusion weights the model carries",
    )  # fmt: skip
    _add_passage_args(search)
    _add_dtype_arg(search)
    search.set_defaults(handler=_cmd_search)

    fuse = commands.add_parser(
        "fuse", help="fit the weights of BM25 (and of a bi-encoder) in a reranker's order on "
        "dev candidate lists; stored with the model (bm25_fusion.json), applied by search",
    )  # fmt: skip
    fuse.add_argument("--model", required=True, help="a fine-tuned reranker run or export")
    fuse.add_argument(
        "--dev", required=True, nargs="+",
        help="dev.jsonl of `data relevance --dev-queries`, from the model's training sets",
    )  # fmt: skip
    fuse.add_argument(
        "--bi-encoder", help="also weigh this mean-pooling bi-encoder's cosines (a "
        "sentence-transformers BERT directory, e.g. the reranker's starting model)",
    )  # fmt: skip
    _add_dtype_arg(fuse)
    fuse.set_defaults(handler=_cmd_fuse)
