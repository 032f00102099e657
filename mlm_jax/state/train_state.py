"""The train state: what it holds, its shapes and shardings, and how a fresh one is made.

One owner for the state of every run: the run's task (:mod:`mlm_jax.model.tasks`) says
which model, the optimizer (:mod:`mlm_jax.state.optim`) what else the state carries, and
the mesh where each array lives. Checkpoints restore into :func:`abstract_train_state`'s
target; the train step (:mod:`mlm_jax.training.step`) maps one state to the next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlm_jax.config import Config
from mlm_jax.model.sharding import tree_shardings
from mlm_jax.model.tasks import task_of
from mlm_jax.state.optim import make_optimizer


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; the model graph lives apart (``graphdef``)."""

    step: jax.Array  # int32 scalar: optimizer steps taken (skipped non-finite ones too)
    params: nnx.State  # float32 parameters, sharded by logical axes
    opt_state: Any  # optax state, sharded like the parameters
    rng: jax.Array  # uint32[2] dropout key; per step fold_in(rng, step)


class Placed(NamedTuple):
    """A train state with what goes with it: the model graph and where each leaf lives."""

    graphdef: nnx.GraphDef
    state: TrainState  # arrays, or ShapeDtypeStructs for an abstract state
    shardings: TrainState  # a NamedSharding per leaf


def abstract_train_state(config: Config, mesh: Mesh) -> Placed:
    """The run's task's abstract state, allocating nothing.

    Its ``state`` holds ``jax.ShapeDtypeStruct``s carrying their shardings: the
    restore target for a checkpoint on this mesh.
    """
    tx, _ = make_optimizer(config)
    graphdef, abstract_params = task_of(config).abstract()
    replicated = NamedSharding(mesh, P())
    abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=abstract_params,
        opt_state=jax.eval_shape(tx.init, abstract_params),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
    shardings = TrainState(
        step=replicated,
        params=tree_shardings(abstract_state.params, mesh),
        opt_state=tree_shardings(abstract_state.opt_state, mesh),
        rng=replicated,
    )
    with_shardings = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )
    return Placed(graphdef, with_shardings, shardings)


def fresh_train_state(config: Config, params: nnx.State) -> TrainState:
    """Step 0 around ``params``: a new optimizer state and the dropout key of the seed."""
    tx, _ = make_optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.fold_in(jax.random.PRNGKey(config.train.seed), 1),  # not the init key
    )


def train_state_from_params(config: Config, params: Any, shardings: TrainState) -> TrainState:
    """A fresh state around given parameters (``init_from``), placed by ``shardings``."""
    params = jax.device_put(params, shardings.params)
    return jax.jit(lambda p: fresh_train_state(config, p), out_shardings=shardings)(params)


def state_initializer(config: Config, shardings: TrainState) -> Callable[[jax.Array], TrainState]:
    """The jitted ``key -> TrainState`` of a fresh run of the config's task, born sharded.

    Weights and optimizer state come out of one program with ``out_shardings``: no
    device ever holds the whole model. The key is an argument, not a constant, so one
    compilation serves every seed and XLA has no input-free expression to fold.
    ``mlm-jax plan`` compiles exactly this function for a TPU slice.
    """

    task = task_of(config)

    def init(key: jax.Array) -> TrainState:
        params = nnx.split(task.build(nnx.Rngs(key)))[1]
        return fresh_train_state(config, params)

    return jax.jit(init, out_shardings=shardings)


def init_train_state(config: Config, mesh: Mesh) -> Placed:
    """A fresh state, initialized already sharded."""
    graphdef, _, shardings = abstract_train_state(config, mesh)
    state = state_initializer(config, shardings)(jax.random.key(config.train.seed))
    return Placed(graphdef, state, shardings)
