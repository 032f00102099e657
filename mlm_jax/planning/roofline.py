"""The hardware a plan is made for, and the roofline model that predicts a step from it.

The model, stated once: a step takes the longer of its compute (HLO FLOPs at the chip's
dense bf16 peak) and its HBM traffic (:mod:`mlm_jax.planning.traffic`'s estimate at the
HBM bandwidth), plus
its collectives (ring bytes per device at the chip's bidirectional ICI bandwidth),
with no overlap between the two terms. It is an estimate: it cannot know measured ICI
contention, how much of the collective time XLA hides behind matmuls, host input
stalls, or kernels that run below the roofline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mlm_jax.errors import UserError
from mlm_jax.planning.targets import CHIPS, Slice


@dataclass(frozen=True)
class Hardware:
    """Per-device figures of the devices a plan compiles for."""

    name: str
    devices: int
    peak_flops: float
    memory_bytes: float
    memory_bandwidth: float
    interconnect_bandwidth: float
    source: str


def tpu_hardware(tpu: Slice) -> Hardware:
    chip = tpu.chip
    return Hardware(
        name=tpu.name,
        devices=tpu.chips,
        peak_flops=chip.peak_flops,
        memory_bytes=chip.hbm_bytes,
        memory_bandwidth=chip.hbm_bandwidth,
        interconnect_bandwidth=chip.ici_bandwidth,
        source=f"TPU {chip.generation} published per-chip figures (docs/planning.md)",
    )


def cpu_hardware(devices: int, dtype: str) -> Hardware:
    """This host: memory is its RAM, peak a measured matmul; devices share both."""
    from mlm_jax.training.perf import measure_copy_bandwidth, measure_matmul_peak

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    bandwidth = measure_copy_bandwidth() / devices
    return Hardware(
        name="cpu",
        devices=devices,
        peak_flops=measure_matmul_peak(dtype) / devices,
        memory_bytes=ram / devices,
        memory_bandwidth=bandwidth,
        interconnect_bandwidth=bandwidth,  # simulated devices exchange through the same RAM
        source="this host: measured matmul peak and copy bandwidth, physical RAM, "
        "shared by the simulated devices",
    )


def predict(
    hardware: Hardware, hlo_flops: float, hbm_bytes: float, moved_bytes: float, model_flops: float,
    tokens: int,
) -> dict[str, float]:  # fmt: skip
    """Predicted step time, tokens/s and MFU (per-device inputs; see the module doc)."""
    compute_s = hlo_flops / hardware.peak_flops
    memory_s = hbm_bytes / hardware.memory_bandwidth
    collective_s = moved_bytes / hardware.interconnect_bandwidth
    step_s = max(compute_s, memory_s) + collective_s
    return {
        "compute_s": compute_s,
        "memory_s": memory_s,
        "collective_s": collective_s,
        "step_s": step_s,
        "bound": "compute" if compute_s >= memory_s else "memory",
        "tokens_per_s": tokens / step_s,
        "mfu": model_flops / (step_s * hardware.peak_flops),
    }


# Device kinds a running TPU reports, and the GPUs a run may be planned on (vendors'
# data sheets: dense bf16 peak, HBM bandwidth, NVLink bandwidth per GPU).
_TPU_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p",
              "TPU v5p": "v5p", "TPU v6 lite": "v6e"}  # fmt: skip
_GPUS = {"H100": (989e12, 3.35e12, 900e9), "H200": (989e12, 4.8e12, 900e9)}


def local_hardware(dtype: str) -> Hardware:
    """The devices this process trains on: a TPU by its chip, a GPU by its data sheet."""
    import jax

    devices = jax.devices()
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        return cpu_hardware(len(devices), dtype)
    if kind in _TPU_KINDS:
        chip = CHIPS[_TPU_KINDS[kind]]
        return Hardware(kind, len(devices), chip.peak_flops, chip.hbm_bytes, chip.hbm_bandwidth,
                        chip.ici_bandwidth, f"TPU {chip.generation} published figures")  # fmt: skip
    peak, hbm, link = next((v for k, v in _GPUS.items() if k in kind), (0.0, 0.0, 0.0))
    memory = (devices[0].memory_stats() or {}).get("bytes_limit", 0)
    if not peak:
        raise UserError(f"no published figures for {kind}; plan for a named --target instead")
    return Hardware(kind, len(devices), peak, memory, hbm, link, f"{kind} data sheet")
