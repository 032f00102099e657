"""Where a train step's time goes, from a ``jax.profiler`` trace: one JSON line.

    python scripts/bench_step_profile.py --config configs/tiny.yaml [--set k=v ...] [--steps 5]

Traces ``--steps`` steps of ``bench_train``'s compiled step with XLA's per-operation
trace events on, then charges each operation's time to what it computes: matrix
products (any operation with a dot or convolution inside, the matrix units' work) or
else the function of ours (or library) that the compiled HLO's metadata names as its
source. Reports milliseconds per step and shares of the summed operation time, largest
first, with the largest single operations. On a CPU, operations can overlap on the
thread pool, so the sum can exceed the step's wall time; shares are of the sum.
"""

from __future__ import annotations

import os

# Per-operation trace events; read by XLA when jax starts, so set before importing it.
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_cpu_enable_xprof_traceme=true"])
)

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
from bench_train import compiled_step  # noqa: E402  same folder

from mlm_jax import config as config_lib  # noqa: E402
from mlm_jax.planning import hlo  # noqa: E402

_FRAME = re.compile(r"stack_frame_id=(\d+)")
_TABLE_ROW = re.compile(r"^(\d+) (.*)$")
_FIELD = re.compile(r"(\w+)=(\d+)")
_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")
_MATRIX_OPS = {"dot", "convolution"}


class Hlo:
    """The compiled module (:mod:`mlm_jax.planning.hlo` reads its instructions), the
    opcodes inside each computation, and the source tables XLA prints before the module
    (file, function and line of every stack frame)."""

    def __init__(self, text: str):
        module = hlo.read(text)
        self.instructions = {i.name: i for i in module.instructions}
        self.bodies = collections.defaultdict(set)  # computation -> opcodes inside
        for instruction in module.instructions:
            self.bodies[instruction.computation].add(instruction.opcode)
        self.tables = collections.defaultdict(dict)  # table -> id -> row text
        table = None
        for line in text.splitlines():
            row = _TABLE_ROW.match(line)
            if table and row:
                self.tables[table][int(row.group(1))] = row.group(2)
            else:
                table = line if line in _TABLES else None

    def source(self, line: str) -> str:
        """``file.py:function`` that traced an instruction (the innermost stack frame;
        JAX keeps only user frames), optax's as one optimizer entry."""
        match = _FRAME.search(line)
        frame = self.tables["StackFrames"].get(int(match.group(1))) if match else None
        if frame is None:
            return "(no source)"
        location = self.tables["FileLocations"][
            int(dict(_FIELD.findall(frame))["file_location_id"])
        ]
        fields = dict(_FIELD.findall(location))
        path = self.tables["FileNames"][int(fields["file_name_id"])].strip('"')
        if "/optax/" in path:
            return "optax (optimizer update)"
        function = self.tables["FunctionNames"][int(fields["function_name_id"])].strip('"')
        return f"{Path(path).name}:{function.replace('.<locals>', '')}"

    def charge(self, name: str) -> str:
        """What an operation's time is charged to: matrix products, or its source."""
        instruction = self.instructions[name]
        inside = {instruction.opcode} | self.bodies.get(instruction.called, set())
        if inside & _MATRIX_OPS or (
            instruction.opcode == "custom-call" and "matmul" in instruction.rest
        ):
            return "matrix products"
        return self.source(instruction.rest)


def operation_times(trace_dir: str, instructions) -> collections.Counter:
    """Summed nanoseconds per HLO instruction over the trace's XLA operation events."""
    from jax.profiler import ProfileData

    (path,) = Path(trace_dir).rglob("*.xplane.pb")
    totals = collections.Counter()
    for plane in ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in instructions:
                    totals[event.name] += event.duration_ns
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="config YAML (default: built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=5, help="traced steps")
    parser.add_argument("--top", type=int, default=12, help="sources and operations listed")
    args = parser.parse_args()
    config = config_lib.load(args.config, args.set)

    _, compiled, state, batches, _ = compiled_step(config)
    module = Hlo(compiled.as_text())
    for index in range(2):  # warm-up
        state, metrics = compiled(state, batches[index % 2])
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for index in range(args.steps):
            state, metrics = compiled(state, batches[index % 2])
        jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        times = operation_times(trace_dir, module.instructions)

    total = sum(times.values()) or 1
    by_source = collections.Counter()
    for name, ns in times.items():
        by_source[module.charge(name)] += ns
    per_step_ms = lambda ns: round(ns / args.steps / 1e6, 2)  # noqa: E731
    print(
        json.dumps(
            {
                "bench": "step_profile",
                "config": args.config,
                "overrides": args.set,
                "steps": args.steps,
                "operations_ms_per_step": per_step_ms(total),
                "matrix_share": round(by_source["matrix products"] / total, 4),
                "by_source": [
                    {"where": where, "ms": per_step_ms(ns), "share": round(ns / total, 4)}
                    for where, ns in by_source.most_common(args.top)
                ],
                "largest_operations": [
                    {
                        "op": name,
                        "opcode": module.instructions[name].opcode,
                        "charged_to": module.charge(name),
                        "ms": per_step_ms(ns),
                    }
                    for name, ns in times.most_common(args.top)
                ],
                "traced_operations": len(times),
                "device_kind": jax.devices()[0].device_kind,
                "jax_version": jax.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
