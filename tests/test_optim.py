"""Optimizer: weight-decay mask, schedule shapes, LAMB option."""

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mlm_jax.model import encoder as model_lib
from mlm_jax.state import optim


def make_config(*extra: str):
    return conftest.tiny_config(
        "train.steps=100", "optim.learning_rate=1e-2", "optim.warmup_steps=10", *extra
    )


def model_params(family="bert"):
    config = make_config(f"model.family={family}")
    return nnx.state(model_lib.Encoder(config.model, rngs=nnx.Rngs(0)), nnx.Param)


def flat(tree):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("family", ["bert", "modern"])
def test_decay_mask_excludes_biases_and_norms(family):
    mask = flat(optim.decay_mask(model_params(family)))
    for name, decays in mask.items():
        no_decay = "bias" in name or "norm" in name
        assert decays == (not no_decay), name
    assert any(mask.values()) and not all(mask.values())


def test_weight_decay_skips_biases_and_norms():
    config = make_config(
        "optim.weight_decay=0.5", "optim.warmup_steps=0", "optim.schedule=constant"
    )
    tx, _ = optim.make_optimizer(config)
    params = model_params()
    params = jax.tree.map(lambda x: x + 1.0, params)  # nonzero everywhere
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    for name, update in flat(updates).items():
        moved = bool(jnp.any(update != 0))
        assert moved == ("bias" not in name and "norm" not in name), name


def lr_values(*extra):
    _, schedule = optim.make_optimizer(make_config(*extra))
    return np.array([float(schedule(step)) for step in range(101)])


def test_linear_schedule_warms_up_then_decays_to_end():
    lr = lr_values("optim.schedule=linear", "optim.end_learning_rate_ratio=0.1")
    assert lr[0] == 0.0
    np.testing.assert_allclose(lr[5], 5e-3, rtol=1e-5)
    np.testing.assert_allclose(lr[10], 1e-2, rtol=1e-5)
    assert lr.max() == pytest.approx(1e-2, rel=1e-5)
    assert np.all(np.diff(lr[10:]) < 0)
    np.testing.assert_allclose(lr[100], 1e-3, rtol=1e-5)


def test_cosine_schedule_ends_at_ratio():
    lr = lr_values("optim.schedule=cosine", "optim.end_learning_rate_ratio=0.2")
    np.testing.assert_allclose(lr[10], 1e-2, rtol=1e-5)
    np.testing.assert_allclose(lr[55], 0.6e-2, rtol=1e-5)  # half way: (1 + 0.2) / 2
    np.testing.assert_allclose(lr[100], 2e-3, rtol=1e-5)


def test_wsd_schedule_plateaus_then_decays():
    lr = lr_values("optim.schedule=wsd", "optim.decay_fraction=0.2")
    np.testing.assert_allclose(lr[10:81], 1e-2, rtol=1e-6)  # stable until the last 20%
    assert np.all(np.diff(lr[80:]) < 0)
    np.testing.assert_allclose(lr[100], 0.0, atol=1e-9)


def test_constant_schedule_after_warmup():
    lr = lr_values("optim.schedule=constant")
    np.testing.assert_allclose(lr[10:], 1e-2, rtol=1e-6)
    assert np.all(np.diff(lr[:11]) > 0)


def _quadratic_steps(config, steps=20):
    tx, _ = optim.make_optimizer(config)
    params = {"w": jnp.full((4, 4), 3.0), "b": jnp.full((4,), 3.0)}
    state = tx.init(params)
    loss = lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))  # noqa: E731
    for _ in range(steps):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = jax.tree.map(jnp.add, params, updates)
    return float(loss(params))


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_optimizers_descend(name):
    config = make_config(
        f"optim.name={name}",
        "optim.learning_rate=0.3",
        "optim.warmup_steps=0",
        "optim.schedule=constant",
    )
    assert _quadratic_steps(config) < 0.1 * (20 * 9.0)
