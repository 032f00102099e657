"""A run's parameters read back from its checkpoints, for eval, export, inference and
``model.init_from``. Nothing here reads a dataset or builds a train step: restoring a
checkpoint needs only the run's config and the mesh to place it on.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from flax import nnx

from mlm_jax import config as config_lib
from mlm_jax.errors import UserError
from mlm_jax.model import sharding
from mlm_jax.state import checkpoint, train_state

SINGLE_HOST_MESH = ["mesh.data=-1", "mesh.fsdp=1", "mesh.tensor=1"]


class RestoredParams(NamedTuple):
    """A checkpoint's parameters and what reads them."""

    config: config_lib.Config
    graphdef: nnx.GraphDef
    params: nnx.State


# ----------------------------------------------------------------------------- restoring


def read_config(workdir: str | Path):
    """A run's resolved config, on this host's devices (restoring for eval/export/inference)."""
    if not (Path(workdir) / "config.yaml").is_file():
        raise UserError(f"{workdir} is not a run directory (no config.yaml); train first")
    return config_lib.load(Path(workdir) / "config.yaml", SINGLE_HOST_MESH)


def restore_params(
    workdir: str | Path, step_number: int | None = None, config=None, mesh=None, missing=None
):
    """The parameters of a run's checkpoint (newest, or ``step_number``).

    ``config`` and ``mesh`` default to the run's own config on this host's devices;
    ``missing`` is the error when the run has no checkpoint.
    """
    config = config or read_config(workdir)
    mesh = mesh or sharding.make_mesh(config)
    graphdef, abstract, _ = train_state.abstract_train_state(config, mesh)
    with checkpoint.Checkpointer(workdir, config) as ckpt:
        if step_number is not None:
            restored = ckpt.restore(step_number, abstract)
        else:
            restored = ckpt.restore_latest(abstract)
    if restored is None:
        raise UserError(missing or f"{workdir} has no checkpoint yet; train it first")
    return RestoredParams(config, graphdef, restored.state.params)
