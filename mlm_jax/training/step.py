"""The jitted train step and the jitted eval step (the state they map: :mod:`mlm_jax.state`).

``train_step(state, batch) -> (state, metrics)`` is a pure function compiled once
with explicit shardings and a donated state, for any objective of
:mod:`mlm_jax.model.objectives` (pretraining and fine-tuning alike). Gradient accumulation
runs inside it as a ``lax.scan`` over micro-batches; the loss is normalized by the weight
of the whole step (masked tokens, or examples), so accumulation equals one large batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlm_jax.config import Config
from mlm_jax.model.attention import compiling_for
from mlm_jax.model.objectives import MLM
from mlm_jax.model.sharding import BATCH_AXES, batch_sharding
from mlm_jax.model.tasks import task_of
from mlm_jax.state.optim import make_optimizer
from mlm_jax.state.train_state import TrainState

Batch = dict[str, jax.Array]


def _split_micro_batches(batch: Batch, count: int, mesh: Mesh, example_key: str) -> Batch:
    """``[E*g, ...] -> [count, E/count*g, ...]`` taking every count-th example.

    An example is one weight of ``batch[example_key]``: a row in pretraining, a query
    with its ``g`` candidate rows in reranking; its rows stay together. Strided, not
    contiguous, so each micro-batch keeps rows on every device.
    """
    sharding = NamedSharding(mesh, P(None, BATCH_AXES))
    examples = batch[example_key].shape[0]

    def split(x):
        rows_per_example = x.shape[0] // examples
        x = x.reshape(examples // count, count, rows_per_example, *x.shape[1:]).swapaxes(0, 1)
        x = x.reshape(count, (examples // count) * rows_per_example, *x.shape[3:])
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree.map(split, batch)


def _grads_and_sums(graphdef, params, batch: Batch, key, accum: int, mesh: Mesh, objective):
    """Summed (unnormalized) gradients and sums over ``accum`` micro-batches."""

    def loss_and_aux(p, micro, micro_key):
        loss_sum, correct, weight_sum = objective.sums(graphdef, p, micro, micro_key)
        return loss_sum, (loss_sum, correct, weight_sum)

    grad_fn = jax.grad(loss_and_aux, has_aux=True)
    if accum == 1:
        return grad_fn(params, batch, key)

    def body(carry, xs):
        grads, sums = carry
        micro, index = xs
        micro_grads, micro_sums = grad_fn(params, micro, jax.random.fold_in(key, index))
        return (
            jax.tree.map(jnp.add, grads, micro_grads),
            jax.tree.map(jnp.add, sums, micro_sums),
        ), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    sums = (jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
    micro = _split_micro_batches(batch, accum, mesh, objective.example_key)
    (grads, sums), _ = jax.lax.scan(body, (zeros, sums), (micro, jnp.arange(accum)))
    return grads, sums


def make_train_step(
    config: Config,
    mesh: Mesh,
    graphdef: nnx.GraphDef,
    state_shardings: TrainState,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted ``train_step(state, batch) -> (state, metrics)``; ``state`` is donated.

    Pretraining and fine-tuning both train through here; the task's objective is what
    differs.

    A non-finite loss or gradient leaves params and optimizer state unchanged, still
    advances ``step``, and reports ``train/nonfinite = 1`` for the caller to act on.
    """
    tx, schedule = make_optimizer(config)
    objective = task_of(config).objective
    accum = config.optim.grad_accum_steps
    platform = mesh.devices.flat[0].platform  # attention is traced for the mesh's devices

    def train_step(state: TrainState, batch: Batch):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), compiling_for(platform):
            key = jax.random.fold_in(state.rng, state.step)
            grads, (loss_sum, correct, weight_sum) = _grads_and_sums(
                graphdef, state.params, batch, key, accum, mesh, objective
            )
            denom = jnp.where(weight_sum > 0, weight_sum, 1.0)
            grads = jax.tree.map(lambda g: g / denom, grads)
            loss, grad_norm = loss_sum / denom, optax.tree.norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

            def update(params, opt_state):
                updates, opt_state = tx.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state

            # A branch, not a select over every weight: selecting new-or-old elementwise
            # reads and writes params and both moments once more each step (6% of a
            # BERT-base step on a CPU).
            params, opt_state = jax.lax.cond(
                finite, update, lambda *kept: kept, state.params, state.opt_state
            )
            new_state = TrainState(
                step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng
            )
            metrics = {
                "train/loss": loss,
                objective.accuracy_name: correct / denom,
                "train/grad_norm": grad_norm,
                "train/learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
                "train/nonfinite": 1.0 - finite.astype(jnp.float32),
            }
            return new_state, metrics

    replicated = NamedSharding(mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )


def make_eval_step(
    config: Config, mesh: Mesh, graphdef: nnx.GraphDef, param_shardings: Any
) -> Callable[[nnx.State, Batch], dict[str, jax.Array]]:
    """The jitted ``eval_step(params, batch) -> {loss_sum, correct, weight_sum}``, no dropout.

    Sum over batches, then loss = loss_sum / weight_sum, accuracy = correct / weight_sum,
    perplexity = exp(loss).
    """
    del config  # the graph already holds the model config

    platform = mesh.devices.flat[0].platform

    def eval_step(params: nnx.State, batch: Batch):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), compiling_for(platform):
            loss_sum, correct, weight_sum = MLM.sums(graphdef, params, batch, None)
        return {"loss_sum": loss_sum, "correct": correct, "weight_sum": weight_sum}

    return jax.jit(
        eval_step,
        in_shardings=(param_shardings, batch_sharding(mesh)),
        out_shardings=NamedSharding(mesh, P()),
    )
