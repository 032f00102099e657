"""HBM traffic of an optimized TPU program, estimated from its HLO.

XLA's cost analysis sums the bytes every operation touches in any memory. On TPU, memory
space assignment moves many buffers into the on-chip vector memory (layouts marked
``S(1)``) and prefetches them with ``copy-start``/``copy-done``; a consumer then reads
on-chip memory, not HBM, and counting both the prefetch and the read counts those bytes
twice. This estimate counts what crosses the HBM interface: for every top-level operation
(fusion bodies and reductions run inside their operation), the operands and results that
live in HBM; for an asynchronous pair, the reads at its start and the writes at its done.
Loop bodies count once per trip. Operations that move no data (tuples, bitcasts, parameters,
constants, loops themselves) count nothing.
"""

from __future__ import annotations

from mlm_jax.planning import hlo

_NO_TRAFFIC = {
    "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while",
    "conditional", "call", "after-all", "partition-id", "replica-id", "iota",
}  # fmt: skip


def hbm_bytes(hlo_text: str) -> float:
    """Estimated bytes read from and written to HBM by one execution of the program."""
    module = hlo.read(hlo_text)
    nested = module.nested()
    total = 0.0
    for instruction in module.instructions:
        if instruction.computation in nested or instruction.opcode in _NO_TRAFFIC:
            continue
        reads = sum(
            hlo.array_bytes(module.shapes.get(name, ""), hbm_only=True)
            for name in instruction.operands
        )
        writes = hlo.array_bytes(instruction.shape, hbm_only=True)
        if instruction.opcode.endswith("-start"):
            writes = 0  # its result tuple names the buffers the matching done fills
        elif instruction.opcode.endswith("-done"):
            reads = 0
        total += module.times(instruction) * (reads + writes)
    return total
