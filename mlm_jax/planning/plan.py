"""``mlm-jax plan``: compile a run's real programs for a TPU slice (or this host), ahead of time.

Nothing runs and nothing is allocated: the train state and batches are shapes carrying
the mesh's shardings, and ``jit(...).lower(...).compile()`` targets libtpu's compile-only
devices. Three programs are compiled, the ones ``mlm-jax train`` runs: the initializer,
the train step and the eval step. From them the plan reads per-device memory (XLA's own
buffer assignment), HLO FLOPs and bytes, and the collectives, then predicts a step with
:mod:`mlm_jax.planning.roofline`.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from mlm_jax.errors import UserError
from mlm_jax.model import encoder, sharding
from mlm_jax.planning import collectives, isolation, roofline, targets, traffic
from mlm_jax.state import train_state
from mlm_jax.training import step

GB = 2**30  # reports are in GiB, as TPU HBM is published
FIT_KNOBS = (
    "lower train.global_batch_size, raise optim.grad_accum_steps, shard the weights with "
    "mesh.fsdp/mesh.tensor, or recompute activations with model.remat=dense|full"
)


def abstract_batch(config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """A pretraining batch (DESIGN §4) as shapes sharded over the mesh's batch axes."""
    rows, length = config.train.global_batch_size, config.data.seq_len
    slots = config.data.predictions_per_row
    placed = sharding.batch_sharding(mesh)
    shapes = {
        "input_ids": ((rows, length), jnp.int32),
        "segment_ids": ((rows, length), jnp.int32),
        "positions": ((rows, length), jnp.int32),
        "mlm_positions": ((rows, slots), jnp.int32),
        "mlm_labels": ((rows, slots), jnp.int32),
        "mlm_weights": ((rows, slots), jnp.float32),
    }
    return {k: jax.ShapeDtypeStruct(s, d, sharding=placed) for k, (s, d) in shapes.items()}


def _memory(compiled) -> dict[str, int]:
    """Per-device bytes of one program; donated inputs that the outputs reuse count once."""
    stats = compiled.memory_analysis()
    memory = {
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes - stats.alias_size_in_bytes,
        "temporaries": stats.temp_size_in_bytes,
        "generated_code": stats.generated_code_size_in_bytes,
    }
    memory["total"] = sum(memory.values())
    return memory


def _compile(name: str, jitted, *args, capacity: float):
    """``(compiled, record)``; a program XLA cannot fit becomes the one-line refusal."""
    started = time.perf_counter()
    lowered = jitted.lower(*args)
    try:
        compiled = lowered.compile()
    except Exception as error:  # XLA reports an over-full program as RESOURCE_EXHAUSTED
        text = str(error)
        if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
            raise
        used = re.search(r"Used ([\d.]+[KMGT]?) of ([\d.]+[KMGT]?) hbm", text)
        what = (
            f"needs {used.group(1)} of {used.group(2)} HBM per device"
            if used
            else (f"does not fit {capacity / GB:.1f} GiB per device")
        )
        raise UserError(f"the {name} {what} (XLA refused to compile it); {FIT_KNOBS}") from None
    seconds = time.perf_counter() - started
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost or {}
    record = {
        "compile_s": round(seconds, 2),
        "memory": _memory(compiled),
        "hlo_flops": float(cost.get("flops", 0.0)),
        "hlo_bytes": float(cost.get("bytes accessed", 0.0)),
    }
    return compiled, record


def _replicated_share(abstract_state, mesh, min_size: int = 2**14) -> float:
    """Share of large parameter elements held whole on every device."""
    large = [x for x in jax.tree.leaves(abstract_state.params) if math.prod(x.shape) >= min_size]
    total = sum(math.prod(x.shape) for x in large)
    whole = sum(math.prod(x.shape) for x in large if x.sharding.is_fully_replicated)
    return whole / max(total, 1)


def _kernel_flops(config, hlo_text: str) -> float:
    """FLOPs of the splash-attention kernels of one step, all devices together.

    XLA's cost analysis does not look inside custom calls, so they are counted here: per
    layer, the forward's two products and the backward's seven (the scores recomputed
    twice, the probabilities' gradient twice, and dq, dk, dv), each ``2 * tokens * K * D``
    FLOPs for the K keys per query the kernel computes (masked blocks included; a sliding
    window's layers skip the blocks outside its band).
    """
    if "splash" not in hlo_text:
        return 0.0
    from mlm_jax.model import splash

    m, length = config.model, config.data.seq_len
    tokens = config.train.global_batch_size * length
    keys = sum(
        splash.keys_computed(length, m.attention_window(n, length)) for n in range(m.num_layers)
    )
    return 9 * 2 * tokens * keys * m.hidden_size


def resolve_target(target: str, config):
    """``(devices, hardware)`` for a slice name, ``cpu`` (this host) or ``local`` (this run's)."""
    if target == "cpu":
        devices = jax.devices("cpu")
        return devices, roofline.cpu_hardware(len(devices), config.model.dtype)
    if target == "local":
        return jax.devices(), roofline.local_hardware(config.model.dtype)
    tpu = targets.parse_slice(target)
    if jax.default_backend() != "cpu":
        raise UserError(
            f"--target {target} compiles on a CPU host; run `mlm-jax plan` with JAX_PLATFORMS=cpu"
        )
    return targets.compile_only_devices(tpu), roofline.tpu_hardware(tpu)


def make_plan(config, target: str, hlo_out: str | None = None) -> dict:
    """Compile the run's initializer, train step and eval step for ``target``; the report.

    ``hlo_out`` receives the train step's optimized HLO text, to read what XLA made of it.
    """
    if config.finetune is not None:
        raise UserError("mlm-jax plan compiles pretraining configs; drop the finetune section")
    from mlm_jax.training.pretrain import eval_config

    devices, hardware = resolve_target(target, config)
    mesh = sharding.make_mesh(config, devices)
    graphdef, abstract, shardings = train_state.abstract_train_state(config, mesh)
    capacity = hardware.memory_bytes
    key = jax.eval_shape(jax.random.key, 0)
    _, init = _compile(
        "initializer", train_state.state_initializer(config, shardings), key, capacity=capacity
    )
    train_step = step.make_train_step(config, mesh, graphdef, shardings)
    compiled, train = _compile(
        "train step", train_step, abstract, abstract_batch(config, mesh), capacity=capacity
    )
    evaluating = eval_config(config)
    eval_step = step.make_eval_step(evaluating, mesh, graphdef, shardings.params)
    _, evaluation = _compile(
        "eval step", eval_step, abstract.params, abstract_batch(evaluating, mesh),
        capacity=capacity,
    )  # fmt: skip
    hlo_text = compiled.as_text()
    if hlo_out:
        Path(hlo_out).write_text(hlo_text)
    exchanged = collectives.summarize(hlo_text, len(devices))
    train["kernel_flops"] = _kernel_flops(config, hlo_text) / len(devices)
    train["hbm_bytes"] = traffic.hbm_bytes(hlo_text)
    tokens = config.train.global_batch_size * config.data.seq_len
    model_flops = encoder.flops_per_token(config) * tokens / len(devices)
    # XLA's cost analysis counts a loop's body once: under gradient accumulation the
    # micro-batch loop is nearly the whole step, so its FLOPs are scaled by the trip count.
    # It also misses FLOPs inside custom calls (counted above) and in collective matmuls;
    # the model's own FLOPs are a floor on what the step executes.
    train["hlo_flops"] *= config.optim.grad_accum_steps
    executed = max(train["hlo_flops"] + train["kernel_flops"], model_flops)
    prediction = roofline.predict(
        hardware, executed, train["hbm_bytes"],
        exchanged["moved_bytes"], model_flops, tokens,
    )  # fmt: skip
    programs = {"initializer": init, "train_step": train, "eval_step": evaluation}
    peak = max(p["memory"]["total"] for p in programs.values())
    return {
        "target": hardware.name,
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "hardware": vars(hardware),
        "mesh": dict(mesh.shape),
        "global_batch_size": config.train.global_batch_size,
        "seq_len": config.data.seq_len,
        "grad_accum_steps": config.optim.grad_accum_steps,
        "remat": config.model.remat,
        "parameters": encoder.param_count(config),
        "replicated_parameter_share": _replicated_share(abstract, mesh),
        "programs": programs,
        "peak_memory_bytes": peak,
        "memory_capacity_bytes": capacity,
        "fits": peak <= capacity,
        "model_flops_per_device": model_flops,
        "collectives": exchanged,
        "prediction": prediction,
    }


def check_fits(report: dict) -> None:
    """Refuse a run whose largest program exceeds a device's memory, naming the knobs."""
    if report["fits"]:
        return
    worst = max(report["programs"], key=lambda p: report["programs"][p]["memory"]["total"])
    raise UserError(
        f"the {worst.replace('_', ' ')} needs {report['peak_memory_bytes'] / GB:.1f} GiB per "
        f"device, more than the {report['memory_capacity_bytes'] / GB:.1f} GiB of a "
        f"{report['target']} device; {FIT_KNOBS}"
    )


def format_report(report: dict, top_ops: int = 8) -> str:
    """The human-readable plan: memory, compile times, work, collectives, prediction."""
    hw, pred = report["hardware"], report["prediction"]
    lines = [
        f"plan for {report['target']}: {report['devices']} x {report['device_kind']}, mesh "
        + " ".join(f"{k}={v}" for k, v in report["mesh"].items())
        + f"; {report['parameters'] / 1e6:.1f}M parameters, global batch "
        f"{report['global_batch_size']} x {report['seq_len']} tokens, "
        f"{report['grad_accum_steps']} micro-batch(es), remat {report['remat']}",
        f"memory per device (GiB, of {report['memory_capacity_bytes'] / GB:.1f}):",
    ]
    for name, program in report["programs"].items():
        m = program["memory"]
        lines.append(
            f"  {name:<12} arguments {m['arguments'] / GB:7.2f}  temporaries "
            f"{m['temporaries'] / GB:7.2f}  outputs {m['outputs'] / GB:6.2f}  code "
            f"{m['generated_code'] / GB:5.2f}  total {m['total'] / GB:7.2f}  "
            f"(compiled in {program['compile_s']:.1f} s)"
        )
    fit = "fits" if report["fits"] else "DOES NOT FIT"
    lines.append(
        f"  {fit}: peak {report['peak_memory_bytes'] / GB:.2f} GiB "
        f"({report['peak_memory_bytes'] / report['memory_capacity_bytes']:.0%} of the device); "
        f"large parameters replicated: {report['replicated_parameter_share']:.0%}"
    )
    train = report["programs"]["train_step"]
    lines += [
        "work per device and step (train step):",
        f"  model FLOPs {report['model_flops_per_device'] / 1e12:.2f} T (analytic, as MFU "
        f"counts); HLO FLOPs {train['hlo_flops'] / 1e12:.2f} T"
        + (
            f" + attention kernels {train['kernel_flops'] / 1e12:.2f} T"
            if train["kernel_flops"]
            else ""
        )
        + f"; HBM traffic {train['hbm_bytes'] / GB:.1f} GiB (XLA's bytes accessed, on-chip "
        f"memory included: {train['hlo_bytes'] / GB:.1f} GiB)",
        "collectives per step (count, bytes of results, ring bytes moved per device):",
    ]
    for kind, entry in report["collectives"]["by_kind"].items():
        lines.append(
            f"  {kind:<19} {entry['count']:6.0f}  {entry['bytes'] / GB:8.3f} GiB  "
            f"{entry['moved'] / GB:8.3f} GiB moved"
        )
    if not report["collectives"]["by_kind"]:
        lines.append("  none")
    for op in report["collectives"]["by_op"][:top_ops]:
        lines.append(
            f"    {op['kind']:<19} x{op['count']:<4.0f} {op['moved_bytes'] / GB:8.3f} GiB  "
            + op["op"]
        )
    lines += [
        f"prediction (roofline: max(compute, HBM) + ICI; peak {hw['peak_flops'] / 1e12:.3g} "
        f"TFLOP/s, HBM {hw['memory_bandwidth'] / 1e9:.4g} GB/s, ICI "
        f"{hw['interconnect_bandwidth'] / 1e9:.4g} GB/s per device):",
        f"  compute {pred['compute_s'] * 1e3:.1f} ms, HBM traffic {pred['memory_s'] * 1e3:.1f} "
        f"ms, collectives {pred['collective_s'] * 1e3:.1f} ms -> predicted step "
        f"{pred['step_s'] * 1e3:.1f} ms ({pred['bound']}-bound)",
        f"  predicted {pred['tokens_per_s']:,.0f} tokens/s, predicted MFU {pred['mfu']:.1%}",
    ]
    return "\n".join(lines)


def run(config, target: str, json_out: str | None = None, hlo_out: str | None = None) -> dict:
    """``mlm-jax plan``: print the plan, write it as JSON, refuse a run that does not fit."""
    if target in ("cpu", "local"):
        report = make_plan(config, target, hlo_out)
    else:  # libtpu's compiler can crash outright: compile where a crash is one line
        targets.require_libtpu(targets.parse_slice(target))
        try:
            report = isolation.call(make_plan, config, target, hlo_out)
        except isolation.Crashed as crash:
            raise UserError(
                f"libtpu's compiler crashed ({crash.signal_name}) compiling this run for "
                f"{target}; change train.global_batch_size or model.remat and plan again "
                f"(docs/planning.md; the compiler's log: {crash.log})"
            ) from None
    print(format_report(report), flush=True)
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
    check_fits(report)
    return report


def check_before_training(config) -> None:
    """``mlm-jax train --plan``: compile for this run's own devices and stop early if it
    cannot fit, before any data is read."""
    report = make_plan(config, "local")
    pred = report["prediction"]
    head = f"plan: peak {report['peak_memory_bytes'] / GB:.2f} GiB of "
    print(
        head + f"{report['memory_capacity_bytes'] / GB:.1f} GiB per device; predicted step "
        f"{pred['step_s'] * 1e3:.1f} ms, MFU {pred['mfu']:.1%}",
        flush=True,
    )
    check_fits(report)
