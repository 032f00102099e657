"""The collectives of a compiled program, read from its optimized HLO text.

Each collective is counted once where it is issued (the ``-done`` half of an async pair,
or the synchronous op). On TPU a reduce-scatter is emitted as a fusion that calls an
``all-reduce-scatter`` computation; it is counted as a reduce-scatter and the all-reduce
inside it is not counted again.

Bytes moved per device follow the ring algorithms the collectives use, for a group of
``n`` devices: an all-gather receives ``(n-1)/n`` of its output, a reduce-scatter sends
``(n-1)/n`` of its input, an all-reduce does both (``2(n-1)/n``), an all-to-all
exchanges ``(n-1)/n``, a collective-permute sends its whole operand once.

Collectives inside a loop body (gradient accumulation) run once per iteration: each is
counted with the trip count XLA records on its loop.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

from mlm_jax.planning import hlo

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclass(frozen=True)
class Collective:
    kind: str
    op_name: str  # the JAX operation that issued it (HLO metadata)
    bytes: int  # size of the result (reduce-scatter: of the operand)
    group: int  # devices taking part
    times: int  # executions per step (a loop body's trip count)

    @property
    def moved(self) -> float:
        """Bytes this device sends or receives over the interconnect, ring model."""
        n = self.group
        if n <= 1:
            return 0.0
        if self.kind == "all-reduce":
            return 2 * self.bytes * (n - 1) / n
        if self.kind == "collective-permute":
            return float(self.bytes)
        return self.bytes * (n - 1) / n


def _group_size(attributes: str, fallback: int) -> int:
    explicit = re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)
    if explicit:
        return len(explicit.group(1).split(","))
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", attributes)
    if iota:
        return int(iota.group(2))
    named = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", attributes)
    if named:  # e.g. mesh['axis_0'=1,'axis_1'=4] {'axis_1'}: the product of the named axes
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", named.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", named.group(2)))
    return fallback


def _kind(opcode: str) -> str | None:
    base = opcode.removesuffix("-done")
    if opcode.endswith("-start") or base not in KINDS:
        return None
    return base


def _op_name(instruction: hlo.Instruction) -> str:
    """The issuing operation; XLA's combiners merge many tensors into one collective, whose
    metadata then names only the first, so the others are counted beside it."""
    match = _OP_NAME.search(instruction.rest)
    name = match.group(1) if match else ""
    tensors = hlo.array_count(instruction.shape)
    return f"{name} (+{tensors - 1} combined)" if tensors > 1 else name


def parse(hlo_text: str, device_count: int) -> list[Collective]:
    """Every collective of a compiled program, each where it is issued."""
    module = hlo.read(hlo_text)
    scattering = {
        i.called for i in module.instructions
        if i.opcode == "fusion" and i.called and "all-reduce-scatter" in i.called
    }  # fmt: skip
    found = []
    for instruction in module.instructions:
        if instruction.computation in scattering:
            continue  # the all-reduce inside a reduce-scatter fusion, counted by the fusion
        times = module.times(instruction)
        if instruction.called in scattering:
            operand, result = module.signatures[instruction.called]
            size_in, size_out = hlo.array_bytes(operand), hlo.array_bytes(result)
            group = max(1, round(size_in / size_out)) if size_out else device_count
            found.append(Collective("reduce-scatter", _op_name(instruction), size_in, group, times))
            continue
        kind = _kind(instruction.opcode)
        if kind is not None:
            group = _group_size(instruction.rest, device_count)
            size = hlo.array_bytes(instruction.shape)
            found.append(Collective(kind, _op_name(instruction), size, group, times))
    return found


def readable_op(op_name: str) -> str:
    """An op name without the jit wrapper and layer numbers, so layers group together."""
    name = re.sub(r"^jit\([^)]*\)/", "", op_name)
    return re.sub(r"layer\d+", "layer*", name) or "(no metadata)"


def summarize(hlo_text: str, device_count: int) -> dict:
    """Counts, bytes and ring traffic per kind, and the busiest issuing operations."""
    by_kind: dict[str, dict[str, float]] = {}
    by_op: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: {"count": 0, "moved": 0.0})
    for c in parse(hlo_text, device_count):
        entry = by_kind.setdefault(c.kind, {"count": 0, "bytes": 0, "moved": 0.0})
        entry["count"] += c.times
        entry["bytes"] += c.times * c.bytes
        entry["moved"] += c.times * c.moved
        op = by_op[(c.kind, readable_op(c.op_name))]
        op["count"] += c.times
        op["moved"] += c.times * c.moved
    top = sorted(by_op.items(), key=lambda item: -item[1]["moved"])
    return {
        "by_kind": {k: by_kind[k] for k in KINDS if k in by_kind},
        "by_op": [
            {"kind": kind, "op": op, "count": v["count"], "moved_bytes": v["moved"]}
            for (kind, op), v in top
        ],
        "moved_bytes": sum(v["moved"] for v in by_kind.values()),
    }
