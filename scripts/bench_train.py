"""Train-step throughput on random batches: one JSON line.

    python scripts/bench_train.py --config configs/tiny.yaml [--set k=v ...] [--steps 20]

Reports compile time, the median step time, tokens/s, model TFLOP/s (from
``model.flops_per_token``), the matmul peak measured here for the model's dtype
path, and MFU against it. Batches follow the data contract (packed rows of two
documents, P masked slots per row); the data pipeline is not involved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from mlm_jax import config as config_lib
from mlm_jax.model import attention as attention_lib
from mlm_jax.model import encoder as model_lib
from mlm_jax.model import precision, sharding
from mlm_jax.state import train_state
from mlm_jax.training import perf
from mlm_jax.training import step as step_lib


def random_batch(config, rows: int, seed: int) -> dict[str, np.ndarray]:
    """``rows`` packed rows of two documents each, with P masked slots per row."""
    rng = np.random.default_rng(seed)
    length, slots = config.data.seq_len, config.data.predictions_per_row
    cut = length // 2
    positions = np.concatenate([np.arange(cut), np.arange(length - cut)]).astype(np.int32)
    segments = np.where(np.arange(length) < cut, 1, 2).astype(np.int32)
    mlm_positions = np.stack(
        [np.sort(rng.choice(length, slots, replace=False)) for _ in range(rows)]
    )
    return {
        "input_ids": rng.integers(5, config.model.vocab_size, (rows, length)).astype(np.int32),
        "segment_ids": np.tile(segments, (rows, 1)),
        "positions": np.tile(positions, (rows, 1)),
        "mlm_positions": mlm_positions.astype(np.int32),
        "mlm_labels": rng.integers(5, config.model.vocab_size, (rows, slots)).astype(np.int32),
        "mlm_weights": np.ones((rows, slots), np.float32),
    }


def compiled_step(config):
    """``(mesh, compiled train step, fresh state, two random batches, compile seconds)``."""
    mesh = sharding.make_mesh(config)
    graphdef, state, shardings = train_state.init_train_state(config, mesh)
    train_step = step_lib.make_train_step(config, mesh, graphdef, shardings)
    local_rows = config.train.global_batch_size // jax.process_count()
    batches = [
        sharding.host_batch_to_global(random_batch(config, local_rows, seed), mesh)
        for seed in range(2)
    ]
    started = time.perf_counter()
    compiled = train_step.lower(state, batches[0]).compile()
    return mesh, compiled, state, batches, time.perf_counter() - started


def step_bench_parser(description: str, steps: int = 20, config_help: str | None = None):
    """The options every step benchmark takes: a config, ``--set`` overrides, timed steps
    (``config_help`` makes ``--config`` required)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, required=config_help is not None,
                        help=config_help or "config YAML (default: built-in defaults)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=steps, help=f"timed steps (default {steps})")
    return parser


def main() -> None:
    parser = step_bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--hlo-out", default=None, help="also write the compiled step's HLO here")
    args = parser.parse_args()
    config = config_lib.load(args.config, args.set)
    steps = max(args.steps, 20)

    mesh, compiled, state, batches, compile_s = compiled_step(config)
    if args.hlo_out:
        with open(args.hlo_out, "w") as out:
            out.write(compiled.as_text())
    state, metrics = compiled(state, batches[0])  # warm-up: first-run allocations
    jax.block_until_ready(metrics)

    times = []
    for index in range(steps):
        started = time.perf_counter()
        state, metrics = compiled(state, batches[index % 2])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    step_s = statistics.median(times)

    tokens_per_s = config.train.global_batch_size * config.data.seq_len / step_s
    model_flops = model_lib.flops_per_token(config) * tokens_per_s
    on_cpu = jax.devices()[0].platform == "cpu"
    # Simulated CPU devices share the host's cores; accelerators each bring their own.
    devices = 1 if on_cpu else jax.local_device_count()
    peak = perf.measure_matmul_peak(config.model.dtype, size=2048 if on_cpu else 8192) * devices
    print(
        json.dumps(
            {
                "bench": "train",
                "config": args.config,
                "overrides": args.set,
                "family": config.model.family,
                "dtype": config.model.dtype,
                "attention": attention_lib.attention_path(
                    config.model.attention_kernel,
                    precision.compute_dtype(config.model.dtype),
                    config.model.attention_dropout_rate,
                ),
                # Per layer: None (global) or the sliding window's reach either side.
                "windows": [
                    config.model.attention_window(n) for n in range(config.model.num_layers)
                ],
                "params": model_lib.param_count(config),
                "global_batch_size": config.train.global_batch_size,
                "seq_len": config.data.seq_len,
                "grad_accum_steps": config.optim.grad_accum_steps,
                "mesh": dict(mesh.shape),
                "compile_s": round(compile_s, 3),
                "step_s": round(step_s, 5),
                "steps": steps,
                "tokens_per_s": round(tokens_per_s, 1),
                "model_tflops_per_s": round(model_flops / 1e12, 4),
                "peak_tflops_per_s": round(peak / 1e12, 4),
                "mfu": round(model_flops / peak, 4),
                "final_loss": float(metrics["train/loss"]),
                # Which precision the step's matrix products really run in (compiled HLO).
                "products": precision.operand_dtype_counts(compiled.as_text()),
                "device_kind": jax.devices()[0].device_kind,
                # JAX_THREEFRY_GPU_KERNEL_LOWERING: random bits from one kernel on GPUs.
                "threefry_gpu_kernel": bool(jax.config.jax_threefry_gpu_kernel_lowering),
                "device_count": jax.device_count(),
                "jax_version": jax.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
