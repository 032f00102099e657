"""The optimizer: AdamW or LAMB with decoupled weight decay, a schedule, and clipping.

Gradient accumulation is not here: ``step.py`` sums micro-batch gradients inside
the jitted step, so the optimizer sees one update per step.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from mlm_jax.config import Config


def make_schedule(config: Config) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then linear / cosine / wsd / constant.

    ``wsd`` holds the peak until the last ``decay_fraction`` of all steps, then
    decays linearly. Decays end at ``peak * end_learning_rate_ratio`` on the last step.
    """
    o = config.optim
    total, warmup = config.train.steps, min(o.warmup_steps, config.train.steps)
    peak, end = o.learning_rate, o.learning_rate * o.end_learning_rate_ratio
    decay_steps = max(total - warmup, 1)
    if o.schedule == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    elif o.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=o.end_learning_rate_ratio)
    elif o.schedule == "wsd":
        decay = min(max(round(total * o.decay_fraction), 1), decay_steps)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, end, decay)],
            [decay_steps - decay],
        )
    else:
        after = optax.constant_schedule(peak)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
    """True for matrices (kernels, embedding tables); False for biases and norm scales."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(config: Config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)`` for ``config.optim``; clipping first, then AdamW or LAMB."""
    o = config.optim
    schedule = make_schedule(config)
    common = dict(b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask)
    make = optax.lamb if o.name == "lamb" else optax.adamw
    tx = make(schedule, **common)
    if o.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(o.clip_norm), tx)
    return tx, schedule
