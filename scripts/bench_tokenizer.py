"""Benchmark: SentencePiece training time on a builtin corpus and encode throughput.

Prints one JSON line. Usage: python scripts/bench_tokenizer.py [--corpus builtin:shakespeare]
"""

import argparse
import json
import os
import platform
import tempfile
import time

import sentencepiece

from mlm_jax.data import sources, tokenizer


def _encode_rate(tok: tokenizer.SentencePieceTokenizer, texts: list[str], threads: int) -> float:
    tok.threads = threads
    tok.encode_batch(texts[:50])  # warm the processor
    started = time.perf_counter()
    tokens = sum(len(row) for row in tok.encode_batch(texts))
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="builtin:shakespeare")
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    documents = list(sources.iter_documents([args.corpus]))
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        tokenizer.train_tokenizer([args.corpus], os.path.join(workdir, "tok"), args.vocab_size)
        train_s = time.perf_counter() - started
        tok = tokenizer.load(os.path.join(workdir, "tok"))
        one = _encode_rate(tok, documents, 1)
        every = _encode_rate(tok, documents, os.cpu_count() or 1)
    record = {
        "bench": "tokenizer",
        "corpus": args.corpus,
        "corpus_mb": round(sum(len(d.encode()) for d in documents) / 1e6, 2),
        "vocab_size": args.vocab_size,
        "train_s": round(train_s, 2),
        "encode_tokens_per_s_1_core": round(one),
        "encode_tokens_per_s_all_cores": round(every),
        "cores": os.cpu_count(),
        "sentencepiece": sentencepiece.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
