"""Attention paths side by side, forward and backward: one JSON line.

    python scripts/bench_attention.py [--batch 32] [--seq 512] [--heads 12] [--head-dim 64]

Runs every path :func:`mlm_jax.model.encoder.attention_path` can pick on this backend
(``explicit`` and ``xla`` everywhere, ``cudnn`` on a GPU) on the same random packed
rows, reports each path's median time for the value and both input gradients, and its
largest relative difference from the float32 reference (written-out products in
float32), so a fused kernel is checked before its speed is believed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax.model import attention as attention_lib


def packed_inputs(batch: int, seq: int, heads: int, head_dim: int):
    """q, k, v and the segment mask of rows that each pack two documents and padding."""
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (batch, seq, heads, head_dim)) for key in keys)
    first, second = seq // 2, seq // 2 - seq // 8
    segments = np.zeros((batch, seq), np.int32)
    segments[:, :first], segments[:, first : first + second] = 1, 2
    segments = jnp.asarray(segments)
    return q, k, v, attention_lib.Segments(segments, attention_lib.segment_mask(segments))


def value_and_grads(path: str, dtype):
    """jit of (output, d/dq, d/dk, d/dv) of a fixed random projection of the output."""

    def loss(q, k, v, mask, probe):
        out = attention_lib.attention(
            q,
            k,
            v,
            mask,
            dtype=dtype,
            dropout_rate=0.0,
            dropout_bits=8,
            key=None,
            kernel=path,
        )
        return jnp.sum(out * probe), out

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    return jax.jit(lambda q, k, v, mask, probe: grad(q, k, v, mask, probe)[::-1])


def relative_difference(a, b) -> float:
    """Largest ``|a - b| / max|b|`` over the output and the three gradients."""
    return max(
        float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def median_seconds(function, *args, repeats: int = 20) -> float:
    jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    args = parser.parse_args()
    q, k, v, mask = packed_inputs(args.batch, args.seq, args.heads, args.head_dim)
    probe = jax.random.normal(jax.random.key(1), q.shape)
    reference = value_and_grads("explicit", jnp.float32)(q, k, v, mask, probe)
    paths = [("explicit", jnp.float32), ("xla", jnp.float32), ("explicit", jnp.bfloat16)]
    if jax.default_backend() == "gpu":
        paths.append(("cudnn", jnp.bfloat16))
    results = {}
    for path, dtype in paths:
        function = value_and_grads(path, dtype)
        name = f"{path}/{jnp.dtype(dtype).name}"
        results[name] = {
            "ms": round(1e3 * median_seconds(function, q, k, v, mask, probe), 3),
            "rel_diff_vs_fp32": round(
                relative_difference(function(q, k, v, mask, probe), reference), 5
            ),
        }
    print(
        json.dumps(
            {
                "bench": "attention",
                **vars(args),
                "backend": jax.default_backend(),
                "device_kind": jax.devices()[0].device_kind,
                "paths": results,
                "jax_version": jax.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
