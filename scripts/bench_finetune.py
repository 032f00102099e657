"""Fine-tuning step throughput on the config's own training batches: one JSON line.

    python scripts/bench_finetune.py --config configs/finetune-rerank-minilm.yaml \
        [--set finetune.pack_rows=false] [--steps 40]

Builds the batches ``mlm-jax finetune`` would train on (its first ``--steps`` steps) and times
the real train step on them, from the config's ``model.init_from`` (or scratch: the speed is
the same). Reports pairs per second, the tokens of those pairs per second (padding excluded),
the rows the step actually ran and what share of their tokens was padding, so that packed
(``finetune.pack_rows``) and one-pair-per-row runs compare on equal work. Compilation (once
per packed row count) is reported apart from the median step.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np
from bench_train import step_bench_parser  # same folder

from mlm_jax import config as config_lib
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.model import sharding
from mlm_jax.state import train_state
from mlm_jax.training import finetune, runs
from mlm_jax.training import step as step_lib


def main() -> None:
    parser = step_bench_parser(__doc__.splitlines()[0], 40, "a finetune config YAML")
    args = parser.parse_args()
    config = config_lib.load(args.config, args.set)
    steps = max(args.steps, 10)

    mesh = sharding.make_mesh(config)
    batches = finetune.training_batches(config, tokenizer_lib.load(config.data.tokenizer), mesh)
    host = [batches(s) for s in range(steps)]
    graphdef, _, shardings = train_state.abstract_train_state(config, mesh)
    state = runs.fresh_state(config, mesh, shardings)
    train_step = step_lib.make_train_step(config, mesh, graphdef, shardings)

    compile_s, times, shapes = 0.0, [], set()
    for batch in host:
        started = time.perf_counter()
        state, metrics = train_step(state, sharding.host_batch_to_global(batch, mesh))
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - started
        shape = batch["input_ids"].shape
        if shape in shapes:
            times.append(seconds)
        else:  # a new packed row count: this step compiled
            shapes.add(shape)
            compile_s += seconds
    median = statistics.median(times)
    pairs = len(host[0].get("cls_index", host[0]["input_ids"]))
    real = np.mean([b["segment_ids"].astype(bool).sum() for b in host])
    rows = np.mean([b["input_ids"].shape[0] for b in host])
    print(json.dumps({
        "config": args.config, "set": args.set, "pack_rows": config.finetune.pack_rows,
        "devices": jax.device_count(), "backend": jax.default_backend(),
        "seq_len": config.data.seq_len, "pairs_per_step": pairs,
        "rows_per_step": round(float(rows), 2),
        "padding_fraction": round(1 - float(real) / (rows * config.data.seq_len), 3),
        "compile_s": round(compile_s, 2), "timed_steps": len(times),
        "median_step_s": round(median, 4), "pairs_per_s": round(pairs / median, 1),
        "real_tokens_per_s": round(float(real) / median, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
