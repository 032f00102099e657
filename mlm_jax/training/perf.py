"""Throughput accounting: the matmul peak a device can reach, and MFU against it.

Accelerators use their published dense peak. A CPU has none worth quoting, so we
measure one: a large jitted matmul on the dtype path the model uses (fp32, or bf16
inputs with fp32 accumulation). MFU is model FLOPs per second over that peak.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp

# Per-device dense peaks from the vendors' data sheets, FLOP/s: (bf16 on the matrix
# units, fp32). On GPUs fp32 means the FMA units, not TF32 tensor cores, and is far
# below half the bf16 figure (H100 SXM: 67 vs 989 TFLOP/s). TPUs run fp32 matmuls as
# bf16 passes at JAX's default precision, so their fp32 figure is the bf16 one.
_PUBLISHED_PEAKS = {
    "H100": (989e12, 67e12),
    "H200": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),
    "TPU v5e": (197e12, 197e12),
    "TPU v5p": (459e12, 459e12),
    "TPU v6 lite": (918e12, 918e12),
}


@dataclass(frozen=True)
class Peak:
    """The peak MFU is measured against, and what that peak is of."""

    flops: float  # all devices together
    precision: str  # e.g. "bf16 dense, published for H100"

    def __str__(self) -> str:
        return f"{self.flops / 1e12:.3g} TFLOP/s ({self.precision})"


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


def measure_copy_bandwidth(megabytes: int = 256, repeats: int = 4) -> float:
    """Bytes/s one device reads plus writes on a jitted elementwise pass over a large array."""
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    scale = jax.jit(lambda a: a * 1.0001)
    scale(x).block_until_ready()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            out = scale(x)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * x.nbytes / best


@functools.cache
def device_peak(dtype: str = "float32") -> Peak:
    """Peak FLOP/s of all devices together: published for accelerators, measured on CPU."""
    device = jax.devices()[0]
    short = "bf16" if dtype == "bfloat16" else "fp32"
    if device.platform != "cpu":
        for name, (bf16, fp32) in _PUBLISHED_PEAKS.items():
            if name.lower() in device.device_kind.lower():
                per_device = bf16 if dtype == "bfloat16" else fp32
                what = "matrix units" if dtype == "bfloat16" or name.startswith("TPU") else "FMA"
                return Peak(
                    per_device * jax.device_count(),
                    f"{short} dense on the {what}, published for {name}",
                )
    # Simulated CPU devices share the same cores: the host's peak is the whole budget.
    return Peak(measure_matmul_peak(dtype), f"{short} matmul peak measured on this host")


def mfu(flops_per_token: float, tokens_per_s: float, dtype: str) -> float:
    return flops_per_token * tokens_per_s / device_peak(dtype).flops
