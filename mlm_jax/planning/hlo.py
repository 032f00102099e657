"""Reading an optimized HLO module's text: instructions, computations, loops, buffer sizes.

Shared by the collective census (:mod:`mlm_jax.planning.collectives`) and the HBM traffic
estimate (:mod:`mlm_jax.planning.traffic`). Only what those need is parsed: each
instruction's name, result shape, opcode and attributes, the computation it sits in, and
the trip count XLA records on each loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
}  # fmt: skip
# An array with its optional layout, e.g. ``f32[64,768]{1,0:T(8,128)S(1)}``.
_ARRAY = re.compile(
    r"\b(pred|[su]8|[su]16|[su]32|[su]64|bf16|f16|f32|f64)\[([\d,]*)\](\{[^{}]*\})?"
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][\w-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) \((.*?)\) -> (.*) \{$")
_BODY = re.compile(r"body=%([\w.-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONDITION = re.compile(r"condition=%([\w.-]+)")
_CALLS = re.compile(r"calls=%([\w.-]+)")
_TO_APPLY = re.compile(r"to_apply=%([\w.-]+)")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")


@dataclass(frozen=True)
class Instruction:
    name: str
    shape: str  # the result's shape text, layouts included
    opcode: str
    rest: str  # operands and attributes
    computation: str

    @property
    def operands(self) -> list[str]:
        """Names of the operands (the text before the first closing parenthesis)."""
        return re.findall(r"%([\w.-]+)", self.rest.split(")", 1)[0])

    @property
    def called(self) -> str | None:
        match = _CALLS.search(self.rest)
        return match.group(1) if match else None


@dataclass
class Module:
    instructions: list[Instruction] = field(default_factory=list)
    signatures: dict[str, tuple[str, str]] = field(default_factory=dict)  # (params, result)
    trips: dict[str, int] = field(default_factory=dict)  # loop body -> trip count
    shapes: dict[str, str] = field(default_factory=dict)  # instruction -> result shape

    def nested(self) -> set[str]:
        """Computations run inside another operation: fusion bodies and the scalar
        reductions of reduce, scatter and all-reduce. Their ops never touch HBM
        themselves; the operation that runs them does."""
        called = {i.called for i in self.instructions if i.opcode == "fusion" and i.called}
        applied = {m for i in self.instructions for m in _TO_APPLY.findall(i.rest)}
        return called | applied

    def times(self, instruction: Instruction) -> int:
        """How often an instruction runs per execution: its loop's trip count, else once."""
        return self.trips.get(instruction.computation, 1)


def read(hlo_text: str) -> Module:
    module = Module()
    computation = ""
    loops: list[Instruction] = []
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            computation = header.group(1)
            module.signatures[computation] = (header.group(2), header.group(3))
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        instruction = Instruction(*match.groups(), computation)
        module.instructions.append(instruction)
        module.shapes[instruction.name] = instruction.shape
        if instruction.opcode == "while":
            loops.append(instruction)
    for loop in loops:
        body = _BODY.search(loop.rest)
        if body:
            module.trips[body.group(1)] = _trip_count(loop, module)
    return module


def _trip_count(loop: Instruction, module: Module) -> int:
    """XLA's recorded trip count, else the bound of a ``counter < N`` condition (the form
    ``lax.scan`` lowers to, counting from 0), else 1."""
    known = _TRIP.search(loop.rest)
    if known:
        return int(known.group(1))
    condition = _CONDITION.search(loop.rest)
    if condition is None:
        return 1
    bounds = [
        int(i.rest.split(")", 1)[0])
        for i in module.instructions
        if i.computation == condition.group(1) and i.opcode == "constant"
        and i.shape.startswith("s32[]")
    ]  # fmt: skip
    return max(bounds, default=1)


def array_count(shape_text: str) -> int:
    """Arrays in a shape: 1, or a tuple's length."""
    return len(_ARRAY.findall(shape_text))


def array_bytes(shape_text: str, hbm_only: bool = False) -> int:
    """Bytes of every array in a shape (a tuple's elements summed).

    ``hbm_only`` leaves out arrays that XLA placed in another memory space (``S(n)`` in
    the layout: on TPU the on-chip vector memory, scalars and sync flags).
    """
    total = 0
    for dtype, dims, layout in _ARRAY.findall(shape_text):
        space = _MEMORY_SPACE.search(layout or "")
        if hbm_only and space and space.group(1) != "0":
            continue
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * _DTYPE_BYTES[dtype]
    return total
