"""Throughput of finished (tokenized, packed, masked) host batches; prints one JSON line.

A >=20 MB corpus is made by repeating builtin:shakespeare (each copy's documents
tagged so none are duplicates), prepared with ``corpus.prepare`` and tokenized on
the fly with 0 and 2 Grain worker processes.

    python scripts/bench_pipeline.py [--megabytes 20] [--seconds 10] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import grain
import numpy as np

from mlm_jax import config as config_lib
from mlm_jax.data import builtin_corpora, pipeline, preparation, tokenizer


def write_corpus(path: Path, megabytes: float) -> int:
    documents = list(builtin_corpora.documents("shakespeare"))
    written, copy = 0, 0
    with path.open("w", encoding="utf-8") as handle:
        while written < megabytes * 1e6:
            for document in documents:
                text = f"(copy {copy}) {document}\n\n"
                handle.write(text)
                written += len(text.encode())
            copy += 1
    return written


def measure(config, seconds: float, warmup_steps: int = 3) -> dict:
    iterator = pipeline.make_train_iterator(config)
    try:
        started = time.perf_counter()
        for _ in range(warmup_steps):
            next(iterator)
        first_batches_s = time.perf_counter() - started
        tokens, slots, steps = 0, 0, 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            batch = next(iterator)
            tokens += int(np.count_nonzero(batch["segment_ids"]))
            slots += batch["segment_ids"].size
            steps += 1
        elapsed = time.perf_counter() - started
    finally:
        iterator.close()
    return {
        "tokens_per_s": round(tokens / elapsed),
        "batches_per_s": round(steps / elapsed, 2),
        "packing_efficiency": round(tokens / slots, 4),
        "startup_s": round(first_batches_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        text = root / "corpus.txt"
        size = write_corpus(text, args.megabytes)
        started = time.perf_counter()
        tokenizer.train_tokenizer(["builtin:shakespeare"], str(root / "tok"), args.vocab_size)
        meta = preparation.prepare([str(text)], str(root / "data"), valid_fraction=0.01)
        prepare_s = time.perf_counter() - started
        results = {}
        for workers in args.workers:
            config = config_lib.from_dict(
                {
                    "model": {"vocab_size": args.vocab_size},
                    "data": {
                        "source": str(root / "data"),
                        "tokenizer": str(root / "tok"),
                        "seq_len": args.seq_len,
                        "worker_count": workers,
                        "prefetch_batches": 4,
                    },
                    "train": {"global_batch_size": args.batch},
                }
            )
            results[f"workers_{workers}"] = measure(config, args.seconds)
    line = {
        "bench": "pipeline",
        "corpus_bytes": size,
        "train_documents": meta["splits"]["train"],
        "seq_len": args.seq_len,
        "global_batch_size": args.batch,
        "num_streams": config.num_streams,
        "vocab_size": args.vocab_size,
        "tokenizer_and_prepare_s": round(prepare_s, 1),
        **results,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "python": platform.python_version(),
        "grain": grain.__version__,
    }
    print(json.dumps(line), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
