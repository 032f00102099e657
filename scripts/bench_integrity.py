"""Time the start-of-run dataset check and the full verify on many shards (one JSON line).

Writes ``--shards`` files of ``--shard-kb`` KiB with an integrity record, as ``data prepare``
would, then times ``integrity.check_dataset`` (a stat per file) and the checksum pass of
``mlm-jax data verify`` over them.

    python scripts/bench_integrity.py --shards 5000 --shard-kb 64
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from mlm_jax.data import integrity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=5000)
    parser.add_argument("--shard-kb", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shards = []
        for index in range(args.shards):
            path = root / "builder" / f"corpus-train.array_record-{index:05d}-of-{args.shards:05d}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(os.urandom(args.shard_kb * 1024))
            shards.append(path)
        meta = {integrity.META_KEY: integrity.record(root, shards)}
        started = time.perf_counter()
        integrity.check_dataset(root, meta)
        check_s = time.perf_counter() - started
        started = time.perf_counter()
        for path in shards:
            integrity.checksum(path)
        checksum_s = time.perf_counter() - started
    total_mb = args.shards * args.shard_kb / 1024
    print(json.dumps({
        "bench": "integrity", "shards": args.shards, "shard_kb": args.shard_kb,
        "start_check_s": round(check_s, 4), "checksums_s": round(checksum_s, 3),
        "checksum_mb_per_s": round(total_mb / checksum_s, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
