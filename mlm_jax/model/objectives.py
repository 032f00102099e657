"""Objectives: a model's forward pass and loss as ``(loss_sum, correct_sum, weight_sum)``.

Every objective returns sums, not means, so gradient accumulation and data parallelism
can add them up and divide once by the weight of the whole step. Pretraining and
fine-tuning differ only here (and in their batch source and model head): both train
through ``mlm_jax.training.step.make_train_step``; the run's task
(:mod:`mlm_jax.model.tasks`) says which objective it optimises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Sums = tuple[jax.Array, jax.Array, jax.Array]


@dataclass(frozen=True)
class Objective:
    """What a train step optimises."""

    sums: Callable[..., Sums]  # (graphdef, params, batch, dropout_key) -> sums
    example_key: str  # the batch leaf whose leading axis counts examples (one weight each)
    accuracy_name: str  # the metric name of correct_sum / weight_sum


# ----------------------------------------------------------------------------- pretraining


def mlm_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array):
    """Weighted sums over masked slots: ``(loss_sum, correct_sum, weight_sum)``.

    logits ``[B, P, V]`` float32; labels ``[B, P]``; weights ``[B, P]`` (0 for empty slots).
    """
    # Each pass over [B, P, V] costs as much as the vocabulary product at small widths, so
    # count them: the max serves both the stable log-sum-exp and the accuracy (a slot is
    # right when its label's logit is the max), where an argmax was one more, slow,
    # (value, index) reduction.
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    logz = top[..., 0] + jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1))  # [B, P]
    label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    correct = (label_logit >= top[..., 0]).astype(jnp.float32)
    return jnp.sum((logz - label_logit) * weights), jnp.sum(correct * weights), jnp.sum(weights)


def _mlm_forward_sums(graphdef, params, batch, dropout_key) -> Sums:
    model = nnx.merge(graphdef, params)
    logits = model(
        batch["input_ids"],
        batch["segment_ids"],
        batch["positions"],
        batch["mlm_positions"],
        token_type_ids=batch.get("token_type_ids"),
        dropout_key=dropout_key,
    )
    return mlm_sums(logits, batch["mlm_labels"], batch["mlm_weights"])


MLM = Objective(_mlm_forward_sums, "mlm_weights", "train/mlm_accuracy")


# ----------------------------------------------------------------------------- fine-tuning


def cross_entropy_sums(logits: jax.Array, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Classification: logits ``[B, C]``, ``labels [B]``, ``weights [B]``."""
    labels, weights = batch["labels"], batch["weights"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)


def _groups(logits: jax.Array, batch) -> jax.Array:
    """Scores ``[Q, 1 + k]`` of query-major rows; column 0 is the positive."""
    queries = batch["weights"].shape[0]
    return logits[:, 0].reshape(queries, -1)


def pointwise_sums(logits: jax.Array, batch):
    """Rerank: binary cross-entropy of every candidate against its 0/1 relevance."""
    scores, weights = _groups(logits, batch), batch["weights"]
    targets = jnp.zeros_like(scores).at[:, 0].set(1.0)
    losses = optax.sigmoid_binary_cross_entropy(scores, targets).mean(-1)  # [Q]
    correct = (jnp.argmax(scores, -1) == 0).astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)


def listwise_sums(logits: jax.Array, batch):
    """Rerank: softmax cross-entropy over each query's candidates, the positive the target."""
    scores, weights = _groups(logits, batch), batch["weights"]
    losses = jax.nn.logsumexp(scores, -1) - scores[:, 0]
    correct = (jnp.argmax(scores, -1) == 0).astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)


def distill_sums(logits: jax.Array, batch):
    """Rerank: softmax cross-entropy over each query's candidates against soft ``targets``
    (the label mixed with a teacher's softmax, made by the batch builder)."""
    scores, weights = _groups(logits, batch), batch["weights"]
    losses = -jnp.sum(batch["targets"] * jax.nn.log_softmax(scores, -1), -1)
    correct = (jnp.argmax(scores, -1) == 0).astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(correct * weights), jnp.sum(weights)


LOSSES = {
    "cross_entropy": cross_entropy_sums,
    "pointwise": pointwise_sums,
    "listwise": listwise_sums,
    "distill": distill_sums,
}


def cross_encoder_logits(graphdef, params, batch, dropout_key=None) -> jax.Array:
    """Logits ``[rows, outputs]`` of the cross-encoder for a pair batch."""
    model = nnx.merge(graphdef, params)
    return model(
        batch["input_ids"],
        batch["segment_ids"],
        batch["positions"],
        batch["token_type_ids"],
        dropout_key,
        batch.get("cls_index"),  # present when pairs are packed several to a row
    )


def finetune_objective(loss: str) -> Objective:
    """The cross-encoder under ``finetune.loss``; one weight per example (text or query)."""
    loss_sums = LOSSES[loss]

    def sums(graphdef, params, batch, dropout_key) -> Sums:
        return loss_sums(cross_encoder_logits(graphdef, params, batch, dropout_key), batch)

    return Objective(sums, "weights", "train/accuracy")
