"""Named compile targets: TPU slices (compile-only devices from libtpu) and this host's CPU.

Chip figures come from Google's Cloud TPU system-architecture pages (v4, v5e, v5p, v6e;
read 2026-12) and, for v4's inter-chip interconnect, from the TPU v4 paper
(arXiv:2304.01433: six ICI links of 50 GB/s). They are per chip: peak dense bf16
FLOP/s, HBM capacity and bandwidth, bidirectional ICI bandwidth. The roofline of
:mod:`mlm_jax.planning.roofline` reads nothing else.

Slice names follow Cloud TPU: ``v4-N`` and ``v5p-N`` count TensorCores (two per chip,
fused into one "megacore" device), ``v5e-N`` and ``v6e-N`` count chips. An explicit
topology, e.g. ``v5p:4x4x2``, is accepted too.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from mlm_jax.errors import UserError

GIB = 2**30


@dataclass(frozen=True)
class Chip:
    generation: str  # "v5p"
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s, bidirectional, all links of one chip
    cores_per_chip: int  # TensorCores a slice name counts per chip
    torus_dims: int  # 3: v4/v5p cubes; 2: v5e/v6e pods
    max_chips: int


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 275e12, 32 * GIB, 1200e9, 300e9, 2, 3, 4096),
    "v5e": Chip("v5e", 197e12, 16e9, 819e9, 400e9, 1, 2, 256),
    "v5p": Chip("v5p", 459e12, 95 * GIB, 2765e9, 1200e9, 2, 3, 8960),
    "v6e": Chip("v6e", 918e12, 32e9, 1638e9, 800e9, 1, 2, 256),
}

_EXAMPLES = "e.g. v5p-8, v5p-64, v4-32, v5e-16, v6e-256, v5p:4x4x2, or cpu"


@dataclass(frozen=True)
class Slice:
    """A named TPU slice: its chip and torus shape (one compile-only device per chip)."""

    name: str
    chip: Chip
    shape: tuple[int, ...]  # chips along each torus axis

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def topology_name(self) -> str:
        return f"{self.chip.generation}:" + "x".join(map(str, self.shape))


def parse_slice(name: str) -> Slice:
    """``v5p-64`` (cores or chips, as Cloud TPU counts them) or ``v5p:4x4x2`` -> a Slice."""
    explicit = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", name)
    if explicit:
        chip = CHIPS[explicit.group(1)]
        shape = tuple(int(n) for n in explicit.group(2).split("x"))
        if len(shape) != chip.torus_dims or min(shape) < 1:
            raise UserError(
                f"--target {name}: a {chip.generation} torus has {chip.torus_dims} axes; "
                f"write it like {_EXAMPLES}"
            )
        return Slice(name, chip, shape)
    named = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", name)
    if not named:
        raise UserError(f"--target {name!r} is not a TPU slice name; use {_EXAMPLES}")
    chip = CHIPS[named.group(1)]
    count = int(named.group(2))
    chips, rest = divmod(count, chip.cores_per_chip)
    if rest or chips < 1 or chips & (chips - 1) or chips > chip.max_chips:
        raise UserError(
            f"--target {name}: {chip.generation} slices here come in powers of two of up to "
            f"{chip.max_chips} chips ({chip.cores_per_chip} per chip in the name); "
            f"use {_EXAMPLES}, or an explicit topology like {chip.generation}:2x2"
            + ("x1" if chip.torus_dims == 3 else "")
        )
    if chip.torus_dims == 3 and chips < 4:
        raise UserError(
            f"--target {name}: the smallest {chip.generation} slice has 4 chips "
            f"({chip.generation}-8); use {_EXAMPLES}"
        )
    return Slice(name, chip, _torus_shape(chips, chip.torus_dims))


def _torus_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The near-cubic shape Cloud TPU uses: 4 -> 2x2x1, 32 -> 2x4x4; 8 -> 2x4, 256 -> 16x16."""
    shape = [1] * dims
    while math.prod(shape) < chips:
        shape[shape.index(min(shape))] *= 2
    shape.sort()
    if dims == 3 and shape[0] == 1:  # a single host's 2x2x1
        shape = shape[1:] + [1]
    return tuple(shape)


def _host_bounds(tpu: Slice) -> tuple[int, int, int]:
    """Chips per host along each axis: a v4/v5p host holds 2x2x1, a v5e/v6e host 2x4."""
    if tpu.chip.torus_dims == 3:
        return (2, 2, 1)
    a, b = tpu.shape
    return (min(a, 2), min(b, 4), 1) if tpu.chips >= 8 else (a, b, 1)


def require_libtpu(tpu: Slice) -> None:
    """Refuse in one line a slice target on a host without libtpu."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise UserError(
            f"--target {tpu.name} compiles with libtpu, which is not installed; "
            "install the TPU extra: pip install -e '.[tpu]' (or pip install 'jax[tpu]')"
        ) from None


def compile_only_devices(tpu: Slice):
    """The slice's devices from libtpu, for compiling only; nothing runs on them.

    Must be called before JAX has picked a backend in this process with
    ``JAX_PLATFORMS=cpu`` set (``mlm-jax plan`` does so), so libtpu is loaded as a
    compiler and never looks for a chip, and before anything in it compiles: JAX decides
    once per process whether to use its persistent cache, which this turns off.
    """
    # libtpu asks the VM's metadata for these; on a host that is no TPU VM it would
    # print a page of warnings and fail.
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault(
        "TPU_ACCELERATOR_TYPE", f"{tpu.chip.generation}-{tpu.chips * tpu.chip.cores_per_chip}"
    )
    os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")
    # libtpu locks /tmp/libtpu_lockfile to keep two processes off one chip; compiling
    # touches no chip, so two plans (or test workers) may run side by side.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
    require_libtpu(tpu)
    import jax
    from jax.experimental import topologies

    # A compile-only client cannot load an executable back, so with a persistent cache
    # (JAX_COMPILATION_CACHE_DIR) every later plan would warn once per program and
    # compile anyway: the cache only costs a plan, never saves it one.
    jax.config.update("jax_enable_compilation_cache", False)
    topology = topologies.get_topology_desc(
        platform="tpu",
        topology_name=tpu.topology_name,
        chip_config_name="megacore" if tpu.chip.cores_per_chip == 2 else "default",
        chips_per_host_bounds=_host_bounds(tpu),
        num_slices=1,
    )
    return list(topology.devices)
