"""The ``mlm-jax`` command: parses arguments and hands each subcommand to one library call.

Library modules are imported inside the handlers so ``mlm-jax --help`` and the
cheap commands start fast and never import JAX. A :class:`UserError` anywhere
becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlm_jax.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse prints usage and exits 2 on bad arguments; we want our one-line form."""

    def error(self, message: str) -> None:
        raise UserError(f"{self.prog}: {message}; see `{self.prog} --help`")


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.learning_rate=1e-4 (repeatable)",
    )


def _add_distributed_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process (jax.distributed)")
    group.add_argument("--coordinator", help="HOST:PORT of process 0 (env MLM_JAX_COORDINATOR)")
    group.add_argument(
        "--num-processes", type=int, help="process count (env MLM_JAX_NUM_PROCESSES)"
    )
    group.add_argument("--process-id", type=int, help="this process (env MLM_JAX_PROCESS_ID)")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="initialise jax.distributed with JAX's cluster auto-detection (TPU VM, SLURM, MPI)",
    )


def _load_config(args: argparse.Namespace):
    from mlm_jax import config

    return config.load(args.config, args.overrides)


def _start_distributed(args: argparse.Namespace) -> None:
    from mlm_jax import distributed

    distributed.initialize(
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        auto=args.distributed,
    )


def _cmd_config_show(args: argparse.Namespace) -> None:
    from mlm_jax import config

    sys.stdout.write(config.dump(_load_config(args)))


def _cmd_config_schema(args: argparse.Namespace) -> None:
    from mlm_jax import config

    print("\n".join(config.schema_lines()))


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
        _load_config(args),
        batches=args.batches,
        process_index=args.process_index,
        process_count=args.process_count,
        out=args.out,
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from mlm_jax.training import pretrain

    config = _load_config(args)
    _start_distributed(args)
    if args.plan:
        from mlm_jax.planning import plan

        plan.check_before_training(config)
    pretrain.run(config, workdir=args.workdir or _default_workdir(args.config))


def _cmd_plan(args: argparse.Namespace) -> None:
    config = _load_config(args)
    target = args.target or config.mesh.target
    if target is None:
        raise UserError(f"{args.config} names no mesh.target; pass --target, e.g. v5p-8")
    if target != "cpu":
        # Compile-only TPU devices: JAX must not look for a real accelerator first.
        os.environ["JAX_PLATFORMS"] = "cpu"
    from mlm_jax.planning import plan

    plan.run(config, target, json_out=args.json, hlo_out=args.hlo)


def _cmd_eval(args: argparse.Namespace) -> None:
    from mlm_jax.training import pretrain

    _start_distributed(args)
    pretrain.evaluate_run(
        args.workdir, step=args.step, batches=args.batches, mask_rate=args.mask_rate
    )


def _cmd_export(args: argparse.Namespace) -> None:
    from mlm_jax import export

    _start_distributed(args)
    export.export_run(
        args.workdir, out=args.out, step=args.step, force=args.force, verify=not args.no_verify
    )


def _cmd_predict(args: argparse.Namespace) -> None:
    from mlm_jax.inference import fill_mask as inference

    inference.print_fill_mask(args.model, args.text, top_k=args.top_k)


def _cmd_finetune(args: argparse.Namespace) -> None:
    from mlm_jax.training import finetune

    config = _load_config(args)
    _start_distributed(args)
    finetune.run(config, workdir=args.workdir or _default_workdir(args.config))


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
    )


def _cmd_search(args: argparse.Namespace) -> None:
    from mlm_jax.inference import search

    search.print_search(
        args.collection, args.model, query=args.query, queries=args.queries, top_k=args.top_k,
        seq_len=args.seq_len, windows=args.windows, fusion=not args.no_fusion,
    )  # fmt: skip


def _cmd_fuse(args: argparse.Namespace) -> None:
    import json

    from mlm_jax.inference import fusion

    print(json.dumps(fusion.fit(args.model, args.dev)))


def _cmd_report(args: argparse.Namespace) -> None:
    from mlm_jax.training import report

    report.plot_run(args.workdir, out=args.out)


def _default_workdir(config_path: str) -> str:
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", stem)


def _tokenizer_parser(commands) -> None:
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


def _data_parser(commands) -> None:
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
    _add_config_args(peek)
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


def _run_parsers(commands) -> None:
    train = commands.add_parser("train", help="pretrain (resumes from the workdir)")
    _add_config_args(train)
    train.add_argument("--workdir", help="run directory (default runs/CONFIG_NAME)")
    train.add_argument(
        "--plan", action="store_true",
        help="first compile the step for this run's devices and stop (exit 2) if it cannot fit",
    )  # fmt: skip
    _add_distributed_args(train)
    train.set_defaults(handler=_cmd_train)

    plan = commands.add_parser(
        "plan", help="compile a run for a TPU slice on this host: memory, FLOPs, collectives"
    )
    _add_config_args(plan)
    plan.add_argument(
        "--target",
        help="a TPU slice (v5p-8, v5p-64, v4-32, v5e-16, v6e-256, v5p:4x4x2) or cpu (this "
        "host); default: the config's mesh.target",
    )
    plan.add_argument("--json", help="also write the plan as JSON to this file")
    plan.add_argument("--hlo", help="write the train step's optimized HLO text to this file")
    plan.set_defaults(handler=_cmd_plan)

    evaluate = commands.add_parser("eval", help="MLM loss/accuracy/perplexity on validation")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--step", type=int, help="checkpoint step (default newest)")
    evaluate.add_argument("--batches", type=int, help="validation batches (default from config)")
    evaluate.add_argument(
        "--mask-rate", type=float,
        help="score at this mask rate instead of the run's own (compare recipes at one rate)",
    )  # fmt: skip
    _add_distributed_args(evaluate)
    evaluate.set_defaults(handler=_cmd_eval)

    export = commands.add_parser("export", help="write a Hugging Face model directory")
    export.add_argument("--workdir", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--step", type=int, help="checkpoint step (default newest)")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.add_argument("--no-verify", action="store_true", help="skip the transformers check")
    _add_distributed_args(export)
    export.set_defaults(handler=_cmd_export)

    predict = commands.add_parser("predict", help="fill-mask predictions")
    predict.add_argument("--model", required=True, help="a run directory or an export")
    predict.add_argument("text", help='text containing [MASK], e.g. "To be or not to [MASK]."')
    predict.add_argument("--top-k", type=int, default=5)
    predict.set_defaults(handler=_cmd_predict)

    finetune = commands.add_parser("finetune", help="fine-tune a classifier or reranker")
    _add_config_args(finetune)
    finetune.add_argument("--workdir", help="run directory (default runs/CONFIG_NAME)")
    _add_distributed_args(finetune)
    finetune.set_defaults(handler=_cmd_finetune)

    score = commands.add_parser("score", help="rank candidates with a fine-tuned reranker")
    score.add_argument("--model", required=True)
    score.add_argument("--query")
    score.add_argument("--candidates", help="JSONL with a text/passage field per line")
    score.add_argument("--queries", help="JSONL with query and candidates per line")
    score.add_argument("--top-k", type=int, default=10)
    _add_passage_args(score)
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
        help="order by the reranker alone, ignoring the BM25 weight the model carries",
    )  # fmt: skip
    _add_passage_args(search)
    search.set_defaults(handler=_cmd_search)

    fuse = commands.add_parser(
        "fuse", help="fit the weight of BM25 in a reranker's order on dev candidate lists; "
        "stored with the model (bm25_fusion.json), applied by search",
    )  # fmt: skip
    fuse.add_argument("--model", required=True, help="a fine-tuned reranker run or export")
    fuse.add_argument(
        "--dev", required=True, nargs="+",
        help="dev.jsonl of `data relevance --dev-queries`, from the model's training sets",
    )  # fmt: skip
    fuse.set_defaults(handler=_cmd_fuse)

    report = commands.add_parser("report", help="plot a run's curves into a PNG")
    report.add_argument("--workdir", required=True)
    report.add_argument("--out", help="PNG path (default WORKDIR/report.png)")
    report.set_defaults(handler=_cmd_report)


_SEARCH_DESCRIPTION = """\
BM25 picks each query's top K passages; the reranker re-orders them, fused with BM25 by the
weight stored with the model (mlm-jax fuse), unless --no-fusion.

The shipped reranker (configs/finetune-rerank-minilm.yaml) was trained on six kinds of
offline text: dictionary words -> definitions (WordNet, Webster's 1913), docstring
summaries -> bodies, manual-page summaries -> descriptions, Debian package short -> long
descriptions, Wikipedia titles and sections -> paragraphs. On a kind it never saw (each
left out in turn, MRR@10 over BM25's top 20) it beat BM25 by +0.03 to +0.08 and matched the
zero-shot MiniLM bi-encoder on average (0.592 vs 0.590), trailing it on Wikipedia sections
(0.50 vs 0.54) and docstrings (0.33 vs 0.34). On text unlike all six, expect it near BM25;
for question-like queries over encyclopaedic text a bi-encoder may do better. Figures:
docs/benchmarks.md, "A reranker that travels".
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mlm-jax",
        description="Pretrain BERT-style encoders with masked-language modelling on JAX.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    config = commands.add_parser("config", help="show the resolved config or the schema")
    config_commands = config.add_subparsers(dest="action", required=True)
    show = config_commands.add_parser("show", help="print the resolved YAML")
    _add_config_args(show, required=False)
    show.set_defaults(handler=_cmd_config_show)
    schema = config_commands.add_parser("schema", help="list every field")
    schema.set_defaults(handler=_cmd_config_schema)
    _tokenizer_parser(commands)
    _data_parser(commands)
    _run_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
