"""Mesh construction, the rules table, sharded init, batch placement, the sharding guard."""

import conftest
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mlm_jax.errors import UserError
from mlm_jax.model import encoder as encoder_lib
from mlm_jax.model import sharding

tiny_config = conftest.tiny_config


def test_make_mesh_shapes():
    assert sharding.make_mesh(tiny_config()).devices.shape == (8, 1, 1)
    mesh = sharding.make_mesh(tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    single = sharding.make_mesh(tiny_config(), devices=jax.devices()[:1])
    assert single.devices.size == 1


def test_make_mesh_rejects_impossible_shapes():
    with pytest.raises(UserError, match="does not fit"):
        sharding.make_mesh(tiny_config("mesh.fsdp=3"))


def test_rules_table():
    assert sharding.logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert sharding.logical_to_spec(("embed", None, "heads")) == P("fsdp", None, "tensor")
    assert sharding.logical_to_spec(("batch", "length")) == P(("data", "fsdp"), None)
    assert sharding.logical_to_spec(("norm",)) == P(None)


def test_fresh_params_are_placed_by_their_axes():
    config = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    mesh = sharding.make_mesh(config)
    _, params, shardings = conftest.sharded_params(config, mesh, 0)
    table = params["embeddings"]["word_embeddings"].get_value()
    assert table.shape == (384, 32)
    assert table.sharding.spec == P("tensor", "fsdp")
    assert {shard.data.shape for shard in table.addressable_shards} == {(192, 16)}
    kernel = params["layers"][0]["intermediate"]["kernel"].get_value()
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert jax.tree.structure(params) == jax.tree.structure(shardings)
    sharding.assert_params_sharded(params, mesh, min_size=1024)


def test_sharded_init_is_the_module_its_seed_builds():
    """The jitted initializer takes the seed's key as an input (so XLA has no constant
    initializer to fold), and still builds the weights ``nnx.Rngs(seed)`` builds."""
    config = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    _, sharded, _ = conftest.sharded_params(config, sharding.make_mesh(config), 3)
    eager = nnx.split(encoder_lib.Encoder(config.model, rngs=nnx.Rngs(3)))[1]
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(eager), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_init_is_the_same_model_on_any_mesh():
    config = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    _, sharded, _ = conftest.sharded_params(config, sharding.make_mesh(config), 3)
    single_mesh = sharding.make_mesh(tiny_config(), devices=jax.devices()[:1])
    _, single, _ = conftest.sharded_params(tiny_config(), single_mesh, 3)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_guard_fires_when_parameters_are_replicated_under_fsdp():
    config = tiny_config("mesh.data=2", "mesh.fsdp=4")
    mesh = sharding.make_mesh(config)
    _, params, _ = conftest.sharded_params(config, mesh, 0)
    sharding.assert_params_sharded(params, mesh, min_size=1024)  # correctly sharded: passes
    replicated = jax.device_put(params, NamedSharding(mesh, P()))
    with pytest.raises(ValueError, match="fully replicated"):
        sharding.assert_params_sharded(replicated, mesh, min_size=1024)
    # Pure data parallelism replicates by design: nothing to complain about.
    data_mesh = sharding.make_mesh(tiny_config())
    sharding.assert_params_sharded(jax.device_put(params, NamedSharding(data_mesh, P())), data_mesh)


def test_indivisible_parameter_is_a_user_error():
    config = tiny_config("model.hidden_size=36", "model.num_heads=4", "mesh.data=1", "mesh.fsdp=8")
    with pytest.raises(UserError, match="cannot split"):
        conftest.sharded_params(config, sharding.make_mesh(config), 0)


def test_host_batch_to_global_splits_rows_over_data_and_fsdp():
    mesh = sharding.make_mesh(tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"))
    batch = {
        "input_ids": np.arange(8 * 32, dtype=np.int32).reshape(8, 32),
        "mlm_weights": np.ones((8, 5), np.float32),
    }
    arrays = sharding.host_batch_to_global(batch, mesh)
    ids = arrays["input_ids"]
    assert ids.shape == (8, 32) and ids.sharding.spec == P(("data", "fsdp"))
    assert {shard.data.shape for shard in ids.addressable_shards} == {(2, 32)}
    np.testing.assert_array_equal(np.asarray(ids), batch["input_ids"])
    assert arrays["mlm_weights"].shape == (8, 5)
