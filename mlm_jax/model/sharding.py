"""The device mesh, the one logical-axis rules table, and sharded model creation.

The model names axes logically (``"embed"``, ``"heads"``...); ``LOGICAL_RULES`` maps
each name to mesh axes ``("data", "fsdp", "tensor")``. Names missing from the table
are replicated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlm_jax.errors import UserError

if TYPE_CHECKING:
    from mlm_jax.config import Config

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: dict[str, str | tuple[str, ...]] = {
    "batch": BATCH_AXES,  # activations and batches: data parallel over data x fsdp
    "embed": "fsdp",  # parameters: ZeRO-3 style sharding of the model dimension
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "kv": "tensor",
}


def make_mesh(config: Config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config.check_devices(len(devices))
    if len(devices) == len(jax.devices()) or devices[0].platform == "tpu":
        # Topology-aware order (ICI rings on TPU, NVLink islands on GPU), also for the
        # compile-only TPU devices of `mlm-jax plan`.
        grid = mesh_utils.create_device_mesh(shape, devices)
    else:
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: Sequence[str | None] | None) -> P:
    """Logical axis names -> ``PartitionSpec`` of mesh axes via ``LOGICAL_RULES``."""
    if not axes:
        return P()
    return P(*(LOGICAL_RULES.get(name) if name else None for name in axes))


def _mesh_axis_size(mesh: Mesh, entry) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names if n is not None)


def _variable_sharding(path: str, var: nnx.Variable, mesh: Mesh) -> NamedSharding:
    spec = logical_to_spec(var.get_metadata().get("out_sharding"))
    shape = var.get_value().shape
    for dim, entry in zip(shape, spec, strict=False):
        if entry is not None and dim % _mesh_axis_size(mesh, entry):
            raise UserError(
                f"parameter {path} has a dimension of {dim} that mesh axis {entry} "
                f"(size {_mesh_axis_size(mesh, entry)}) cannot split; change mesh.fsdp/mesh.tensor"
            )
    return NamedSharding(mesh, spec)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pytree holding ``nnx.Variable``s (params, optimizer state).

    Variables are sharded by their logical axes; any other array leaf (step counters)
    is replicated.
    """

    def one(path, leaf):
        if isinstance(leaf, nnx.Variable):
            return leaf.replace(_variable_sharding(jax.tree_util.keystr(path), leaf, mesh))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(
        one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def init_sharded(build, seed: int, shardings: Any) -> nnx.State:
    """The parameters of ``build(rngs)``, initialized straight into ``shardings``.

    The seed's key is an argument of the jitted initializer, not a constant inside it:
    one compilation serves every seed, and XLA is given no input-free constant
    expression to fold at compile time. ``nnx.Rngs(seed)`` makes the same key, so the
    values are those of ``build(nnx.Rngs(seed))`` (tested).
    """

    def init(key: jax.Array) -> nnx.State:
        return nnx.split(build(nnx.Rngs(key)))[1]

    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over ``("data", "fsdp")``; other dimensions whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded by :func:`batch_sharding`."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or set(MESH_AXES) - set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes))


def assert_params_sharded(
    state: Any, mesh: Mesh, min_size: int = 2**14, tolerance: float = 0.05
) -> None:
    """Raise if large parameters are fully replicated although fsdp*tensor > 1.

    Counts, among arrays with at least ``min_size`` elements, the share of elements
    held whole on every device; more than ``tolerance`` means the rules or the
    mesh leave the model unsharded (maxtext's assert_params_sufficiently_sharded).
    """
    if mesh.shape["fsdp"] * mesh.shape["tensor"] == 1:
        return
    flat = jax.tree_util.tree_leaves_with_path(state)
    large = [(jax.tree_util.keystr(p), x) for p, x in flat if x.size >= min_size]
    total = sum(x.size for _, x in large)
    replicated = [(name, x) for name, x in large if x.sharding.is_fully_replicated]
    share = sum(x.size for _, x in replicated) / max(total, 1)
    if share > tolerance:
        names = ", ".join(name for name, _ in replicated[:5])
        raise ValueError(
            f"{share:.0%} of large parameters are fully replicated on mesh "
            f"{dict(mesh.shape)} (e.g. {names}); check the logical axis rules"
        )
