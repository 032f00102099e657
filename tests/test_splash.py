"""The TPU splash-attention path equals the explicit path (Pallas interpret mode on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax.model import attention as attention_lib
from mlm_jax.model import sharding, splash


def _packed(batch=2, seq=128, heads=2, head_dim=64):
    """Rows packing two documents and padding, as the pipeline makes them."""
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, probe = (jax.random.normal(key, (batch, seq, heads, head_dim)) for key in keys)
    segments = np.zeros((batch, seq), np.int32)
    segments[:, :70], segments[:, 70:110] = 1, 2
    segments[1, :40], segments[1, 40:] = 3, 4  # a second layout, no padding
    return q, k, v, probe, jnp.asarray(segments)


def _value_and_grads(attend, q, k, v, probe):
    def loss(q, k, v):
        out = attend(q, k, v)
        return jnp.sum(out * probe), out

    grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def test_splash_forward_and_backward_match_the_explicit_path():
    q, k, v, probe, segments = _packed()
    mask = attention_lib.segment_mask(segments)
    explicit = _value_and_grads(
        lambda q, k, v: attention_lib.explicit_attention(q, k, v, mask, jnp.float32, 0.0, None, 8),
        q, k, v, probe,
    )  # fmt: skip
    kernel = _value_and_grads(
        lambda q, k, v: splash.splash_attention(q, k, v, segments, jnp.float32, interpret=True),
        q, k, v, probe,
    )  # fmt: skip
    for ours, reference in zip(jax.tree.leaves(kernel), jax.tree.leaves(explicit), strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)


def test_splash_runs_per_device_under_the_mesh():
    """Under a mesh the kernel runs in shard_map: rows over data x fsdp, heads over tensor."""
    from conftest import tiny_config

    config = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    mesh = sharding.make_mesh(config)
    q, k, v, probe, segments = _packed(batch=4)
    mask = attention_lib.segment_mask(segments)
    reference = attention_lib.explicit_attention(q, k, v, mask, jnp.float32, 0.0, None, 8)

    def attend(q, k, v, segments):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return splash.splash_attention(q, k, v, segments, jnp.float32, interpret=True)

    rows = sharding.batch_sharding(mesh)  # as the train step places every batch input
    sharded = jax.jit(attend, in_shardings=rows, out_shardings=rows)

    np.testing.assert_allclose(sharded(q, k, v, segments), reference, rtol=1e-4, atol=1e-4)


def test_auto_picks_splash_only_on_tpu_without_dropout():
    with attention_lib.compiling_for("tpu"):
        assert attention_lib.attention_path("auto", jnp.bfloat16, 0.0, 1024) == "splash"
        assert attention_lib.attention_path("auto", jnp.float32, 0.0, 128) == "splash"
        assert attention_lib.attention_path("auto", jnp.bfloat16, 0.1, 1024) == "explicit"
        assert attention_lib.attention_path("auto", jnp.bfloat16, 0.0, 100) == "explicit"
    assert attention_lib.attention_path("auto", jnp.bfloat16, 0.0, 1024) != "splash"
