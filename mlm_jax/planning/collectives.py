"""The collectives of a compiled program, read from its optimized HLO text.

Each collective is counted once where it is issued (the ``-done`` half of an async pair,
or the synchronous op). On TPU a reduce-scatter is emitted as a fusion that calls an
``all-reduce-scatter`` computation; it is counted as a reduce-scatter and the all-reduce
inside it is not counted again.

Bytes moved per device follow the ring algorithms the collectives use, for a group of
``n`` devices: an all-gather receives ``(n-1)/n`` of its output, a reduce-scatter sends
``(n-1)/n`` of its input, an all-reduce does both (``2(n-1)/n``), an all-to-all
exchanges ``(n-1)/n``, a collective-permute sends its whole operand once.

Collectives inside a loop body (gradient accumulation) run once per iteration; the
counts here are per appearance in the program, and :func:`summarize` multiplies by
the trip counts XLA records on the loops.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
}  # fmt: skip
_ARRAY = re.compile(r"\b(pred|[su]8|[su]16|[su]32|[su]64|bf16|f16|f32|f64)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][\w-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) \((.*?)\) -> (.*) \{$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.-]+)")
_BODY = re.compile(r"body=%([\w.-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclass(frozen=True)
class Collective:
    kind: str
    op_name: str  # the JAX operation that issued it (HLO metadata)
    bytes: int  # size of the result (reduce-scatter: of the operand)
    group: int  # devices taking part
    computation: str  # the HLO computation it sits in

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


def array_bytes(shape_text: str) -> int:
    """Bytes of every array in an HLO shape (a tuple's elements summed)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape_text):
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * _DTYPE_BYTES[dtype]
    return total


def _group_size(attributes: str, fallback: int) -> int:
    explicit = re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)
    if explicit:
        return len(explicit.group(1).split(","))
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", attributes)
    if iota:
        return int(iota.group(2))
    return fallback


def _kind(opcode: str) -> str | None:
    base = opcode.removesuffix("-done")
    if opcode.endswith("-start") or base not in KINDS:
        return None
    return base


def parse(hlo_text: str, device_count: int) -> tuple[list[Collective], dict[str, int]]:
    """``(collectives, trip_counts)``: every collective, and each loop body's trip count."""
    collectives: list[Collective] = []
    trips: dict[str, int] = {}
    headers: dict[str, tuple[str, str]] = {}
    fused_collectives: set[str] = set()
    computation = ""
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            computation = header.group(1)
            headers[computation] = (header.group(2), header.group(3))
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        _, shape, opcode, rest = match.groups()
        op_name = (_OP_NAME.search(rest) or [None, ""])[1]
        if opcode == "while":
            body, trip = _BODY.search(rest), _TRIP.search(rest)
            if body and trip:
                trips[body.group(1)] = int(trip.group(1))
            continue
        called = _CALLS.search(rest)
        if opcode == "fusion" and called and "all-reduce-scatter" in called.group(1):
            fused_collectives.add(called.group(1))
            operand, result = headers.get(called.group(1), ("", shape))
            size_in, size_out = array_bytes(operand), array_bytes(result)
            group = max(1, round(size_in / size_out)) if size_out else device_count
            collectives.append(Collective("reduce-scatter", op_name, size_in, group, computation))
            continue
        kind = _kind(opcode)
        if kind is not None:
            size = array_bytes(shape)
            collectives.append(
                Collective(kind, op_name, size, _group_size(rest, device_count), computation)
            )
    kept = [c for c in collectives if c.computation not in fused_collectives]
    return kept, trips


def readable_op(op_name: str) -> str:
    """An op name without the jit wrapper and layer numbers, so layers group together."""
    name = re.sub(r"^jit\([^)]*\)/", "", op_name)
    return re.sub(r"layer\d+", "layer*", name) or "(no metadata)"


def summarize(hlo_text: str, device_count: int) -> dict:
    """Counts, bytes and ring traffic per kind, and the busiest issuing operations.

    Collectives inside a loop body count once per trip (nested loops multiply).
    """
    collectives, trips = parse(hlo_text, device_count)
    by_kind: dict[str, dict[str, float]] = {}
    by_op: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: {"count": 0, "moved": 0.0})
    for c in collectives:
        times = trips.get(c.computation, 1)
        entry = by_kind.setdefault(c.kind, {"count": 0, "bytes": 0, "moved": 0.0})
        entry["count"] += times
        entry["bytes"] += times * c.bytes
        entry["moved"] += times * c.moved
        op = by_op[(c.kind, readable_op(c.op_name))]
        op["count"] += times
        op["moved"] += times * c.moved
    top = sorted(by_op.items(), key=lambda item: -item[1]["moved"])
    return {
        "by_kind": {k: by_kind[k] for k in KINDS if k in by_kind},
        "by_op": [
            {"kind": kind, "op": op, "count": v["count"], "moved_bytes": v["moved"]}
            for (kind, op), v in top
        ],
        "moved_bytes": sum(v["moved"] for v in by_kind.values()),
    }
