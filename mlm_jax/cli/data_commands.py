"""``mlm-jax tokenizer`` and ``mlm-jax data``: text in, tokenizers, datasets and reranking
sets out."""

from __future__ import annotations

import argparse

from mlm_jax.cli.arguments import add_config_args, load_config
from mlm_jax.errors import UserError


def _cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from mlm_jax.data import tokenizer

    tokenizer.train_tokenizer(
        inputs=args.input,
        out=args.out,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        lowercase=args.lowercase,
        max_sentences=args.max_sentences,
        threads=args.threads,
        text_field=args.text_field,
    )


def _cmd_data_prepare(args: argparse.Namespace) -> None:
    from mlm_jax.data import preparation

    preparation.prepare(
        inputs=args.input,
        out=args.out,
        valid_fraction=args.valid_fraction,
        force=args.force,
        text_field=args.text_field,
        beam_runner=args.beam_runner,
        beam_options=args.beam_options,
    )


def _cmd_data_relevance(args: argparse.Namespace) -> None:
    if args.pairs is not None:
        from mlm_jax.data import relevance_pairs

        if args.source is not None or args.passage is not None:
            raise UserError("--pairs builds from a pairs file; drop --source and --passage")
        relevance_pairs.build(
            args.pairs,
            out=args.out,
            eval_queries=args.eval_queries,
            train_queries=args.train_queries,
            dev_queries=args.dev_queries or 0,
            negatives=args.negatives,
            candidates=20 if args.candidates is None else args.candidates,
            seed=args.seed,
            force=args.force,
        )
        return
    from mlm_jax.data import relevance_sets

    if args.candidates is not None:
        raise UserError("--candidates is for --pairs sets; WordNet sets use --negatives")
    if args.dev_queries is not None:
        raise UserError("--dev-queries is for --pairs sets; build the pairs with `data pairs`")
    relevance_sets.build(
        args.source or "wordnet",
        out=args.out,
        train_queries=6000 if args.train_queries is None else args.train_queries,
        eval_queries=args.eval_queries,
        negatives=args.negatives,
        seed=args.seed,
        passage=args.passage or "usage",
        force=args.force,
    )


def _cmd_data_pairs(args: argparse.Namespace) -> None:
    import json

    from mlm_jax.data import pair_sources

    print(json.dumps(pair_sources.write(args.source, args.out)))


def _cmd_data_teacher(args: argparse.Namespace) -> None:
    import json

    from mlm_jax.data import teacher

    print(json.dumps(teacher.write(args.bi_encoder, args.train, args.out, args.bm25_weight)))


def _cmd_data_verify(args: argparse.Namespace) -> None:
    from mlm_jax.data import integrity

    integrity.verify(args.dataset, tokenizer=args.tokenizer)


def _cmd_data_peek(args: argparse.Namespace) -> None:
    from mlm_jax.data import peek

    peek.peek(
        load_config(args),
        batches=args.batches,
        process_index=args.process_index,
        process_count=args.process_count,
        out=args.out,
    )


def add_tokenizer_parser(commands) -> None:
    tok = commands.add_parser("tokenizer", help="train a SentencePiece tokenizer")
    tok_commands = tok.add_subparsers(dest="action", required=True)
    train = tok_commands.add_parser("train", help="train on text files or builtin:NAME")
    train.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="files, dirs, globs, builtin:NAME, or a dataset directory from `data prepare`",
    )
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    train.add_argument("--lowercase", action="store_true", help="case-fold (NFKC + casefold)")
    train.add_argument(
        "--max-sentences", type=int, default=2_000_000, help="sample at most this many sentences"
    )
    train.add_argument("--threads", type=int, default=None, help="default: all cores")
    train.add_argument(
        "--text-field", default="text", help="JSONL field or Parquet column holding the text"
    )
    train.set_defaults(handler=_cmd_tokenizer_train)


def add_data_parser(commands) -> None:
    data = commands.add_parser("data", help="prepare or inspect a dataset")
    data_commands = data.add_subparsers(dest="action", required=True)
    prepare = data_commands.add_parser("prepare", help="text → TFDS ArrayRecord dataset")
    prepare.add_argument(
        "--input", nargs="+", required=True, help="files, dirs, globs, or builtin:NAME"
    )
    prepare.add_argument("--out", required=True, help="dataset directory")
    prepare.add_argument("--valid-fraction", type=float, default=0.01)
    prepare.add_argument(
        "--text-field", default="text", help="JSONL field or Parquet column holding the text"
    )
    prepare.add_argument("--force", action="store_true", help="replace a different dataset")
    prepare.add_argument(
        "--beam-runner",
        help="build with Apache Beam on this runner (DirectRunner, DataflowRunner, FlinkRunner, "
        "...); needs the beam extra. Default: this process",
    )
    prepare.add_argument(
        "--beam-options",
        help='Beam pipeline flags as one string, e.g. "--direct_num_workers=0 '
        '--direct_running_mode=multi_processing"',
    )
    prepare.set_defaults(handler=_cmd_data_prepare)
    verify = data_commands.add_parser(
        "verify", help="check every file's checksum and every record of a prepared dataset"
    )
    verify.add_argument("dataset", help="a directory written by `mlm-jax data prepare`")
    verify.add_argument("--tokenizer", help="also check this tokenizer directory")
    verify.set_defaults(handler=_cmd_data_verify)
    peek = data_commands.add_parser("peek", help="show the batches a process would see")
    add_config_args(peek)
    peek.add_argument("--batches", type=int, default=1)
    peek.add_argument("--process-index", type=int, default=0)
    peek.add_argument("--process-count", type=int, default=1)
    peek.add_argument("--out", help="write JSONL here instead of printing")
    peek.set_defaults(handler=_cmd_data_peek)
    relevance = data_commands.add_parser(
        "relevance", help="build a reranking set (query, positive, negatives) from real text"
    )
    relevance.add_argument(
        "--pairs", help='JSONL of {"query", "passage"} lines: split by query, BM25 negatives'
    )
    relevance.add_argument("--source", help="wordnet (the default without --pairs)")
    relevance.add_argument("--out", required=True, help="directory for train/eval JSONL")
    relevance.add_argument(
        "--train-queries", type=int, help="default: 6000 (wordnet), every query left (--pairs)"
    )
    relevance.add_argument("--eval-queries", type=int, default=300)
    relevance.add_argument(
        "--dev-queries", type=int,
        help="--pairs: also write dev.jsonl, candidate lists of N more untrained queries "
        "(what `mlm-jax fuse` fits on)",
    )  # fmt: skip
    relevance.add_argument("--negatives", type=int, default=7, help="negatives per query")
    relevance.add_argument(
        "--candidates", type=int, help="--pairs: BM25 candidates per held-out query (default 20)"
    )
    relevance.add_argument("--seed", type=int, default=0)
    relevance.add_argument(
        "--passage", help="wordnet: usage (the default; quoted examples) or definition (gloss)"
    )
    relevance.add_argument("--force", action="store_true", help="replace an existing --out")
    relevance.set_defaults(handler=_cmd_data_relevance)
    pairs = data_commands.add_parser(
        "pairs", help='write {"query", "passage"} pairs from real text on this machine'
    )
    pairs.add_argument(
        "--source",
        required=True,
        help="wordnet, wordnet-usage (WordNet 3.0), pydocs (the standard library's "
        "docstrings), gcide, gcide-usage (Webster's 1913, apt-get install dict-gcide), "
        "manpages (apt-get install manpages manpages-dev), debian (package descriptions: "
        "apt-get update -o Acquire::Languages=en), wikipedia (pip install --no-deps gensim)",
    )
    pairs.add_argument("--out", required=True, help="the pairs JSONL to write")
    pairs.set_defaults(handler=_cmd_data_pairs)
    teacher = data_commands.add_parser(
        "teacher", help="add a bi-encoder's (and BM25's) scores to a reranking training file"
    )
    teacher.add_argument("--bi-encoder", required=True, help="a sentence-transformers directory")
    teacher.add_argument(
        "--train", required=True, nargs="+",
        help="train.jsonl of `data relevance`; several make one mixed file (cap each set's "
        "share with `data relevance --train-queries`)",
    )  # fmt: skip
    teacher.add_argument("--out", required=True, help="the same lines with teacher scores")
    teacher.add_argument(
        "--bm25-weight", type=float, default=0.0,
        help="mix in each line's BM25 scores (0: the bi-encoder alone)",
    )  # fmt: skip
    teacher.set_defaults(handler=_cmd_data_teacher)
