"""Throughput accounting: the matmul peak a device can reach, and MFU against it.

Accelerators use their published dense peak. A CPU has none worth quoting, so we
measure one: a large jitted matmul on the dtype path the model uses (fp32, or bf16
inputs with fp32 accumulation). MFU is model FLOPs per second over that peak.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device from the vendors' data sheets (no sparsity).
_PUBLISHED_BF16_PEAK = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def measure_matmul_peak(dtype: str = "float32", size: int = 1024, repeats: int = 8) -> float:
    """FLOP/s of one device on a jitted ``size``² matmul, for the model's dtype path.

    fp32, or bf16 inputs accumulating in fp32; the best of three timed rounds.
    """
    compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (size, size), compute)
    b = jax.random.normal(key_b, (size, size), compute)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            out = matmul(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * size**3 / best


@functools.cache
def device_peak_flops(dtype: str = "float32") -> float:
    """Peak FLOP/s of all devices together: published for accelerators, measured on CPU."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        for name, peak in _PUBLISHED_BF16_PEAK.items():
            if name.lower() in device.device_kind.lower():
                scale = 1.0 if dtype == "bfloat16" else 0.5
                return peak * scale * jax.device_count()
    # Simulated CPU devices share the same cores: the host's peak is the whole budget.
    return measure_matmul_peak(dtype)


def mfu(flops_per_token: float, tokens_per_s: float, dtype: str) -> float:
    return flops_per_token * tokens_per_s / device_peak_flops(dtype)
