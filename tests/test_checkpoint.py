"""Real Orbax checkpoints of a small sharded pytree on 8 simulated CPU devices."""

import glob
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mlm_jax import config as config_lib
from mlm_jax.errors import UserError
from mlm_jax.state import checkpoint

AXES = ("data", "fsdp", "tensor")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(**train):
    return config_lib.from_dict({"train": {"checkpoint_every": 1, **train}})


def make_state(mesh, seed=0, rows=64):
    """A train-state-like pytree: a sharded matrix, a replicated step, raw PRNG key data."""
    weights = jax.random.normal(jax.random.key(seed), (rows, 32), jnp.float32)
    return {
        "params": {"w": jax.device_put(weights, NamedSharding(mesh, P("fsdp", "tensor")))},
        "step": jax.device_put(jnp.int32(seed), NamedSharding(mesh, P())),
        "rng": jax.random.key_data(jax.random.key(seed + 100)),
        "dropout_key": jax.random.key(seed + 200),  # a typed key is stored as its key data
    }


def abstract(state, mesh, weight_spec=P("fsdp", "tensor")):
    """The abstract target: shapes and dtypes of ``state`` with shardings on ``mesh``."""

    def spec_for(path, leaf):
        spec = weight_spec if checkpoint._path_name(path) == "params/w" else P()
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(spec_for, state)


def assert_same_values(restored, expected):
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        assert got.dtype == want.dtype
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((2, 2, 2), AXES)


def test_round_trip_is_bit_exact(tmp_path, mesh):
    config = make_config()
    state = make_state(mesh, seed=3)
    data_state = {"epoch": 2, "streams": [{"row": 17}, {"row": 4}]}
    with checkpoint.Checkpointer(tmp_path, config) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.restore_latest(abstract(state, mesh)) is None
        assert ckpt.save(5, state, data_state)
        ckpt.wait()
        assert not ckpt.save(5, state, data_state, force=True)  # already on disk
    ckpt = checkpoint.Checkpointer(tmp_path, config)
    step, restored, restored_data = ckpt.restore_latest(abstract(state, mesh))
    assert (step, restored_data) == (5, data_state)
    assert_same_values(restored, state)
    assert restored["params"]["w"].sharding == state["params"]["w"].sharding
    assert restored["rng"].dtype == jnp.uint32
    assert ckpt.saved_config(5) == config.model_dump(mode="json")
    ckpt.close()


def test_restore_onto_a_smaller_mesh(tmp_path, mesh):
    config = make_config()
    state = make_state(mesh, seed=1)
    with checkpoint.Checkpointer(tmp_path, config) as ckpt:
        ckpt.save(1, state, {"epoch": 0})
    small_mesh = jax.make_mesh((4, 1, 1), AXES, devices=jax.devices()[:4])
    target = abstract(state, small_mesh, weight_spec=P("data", None))
    with checkpoint.Checkpointer(tmp_path, config) as ckpt:
        restored = ckpt.restore(1, target).state
    assert_same_values(restored, state)
    weights = restored["params"]["w"]
    assert weights.sharding == NamedSharding(small_mesh, P("data", None))
    assert {shard.device for shard in weights.addressable_shards} == set(jax.devices()[:4])
    assert weights.addressable_shards[0].data.shape == (16, 32)


def test_keeps_last_k_and_the_best(tmp_path, mesh):
    state = make_state(mesh)
    with checkpoint.Checkpointer(tmp_path, make_config(keep_checkpoints=2)) as ckpt:
        for step in range(1, 5):
            ckpt.save(step, state, {})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]

    best_dir = tmp_path / "best"
    losses = {1: 0.9, 2: 0.5, 3: 0.8, 4: 0.7, 5: 0.6}
    with checkpoint.Checkpointer(best_dir, make_config(keep_checkpoints=2, keep_best=True)) as ckpt:
        for step, loss in losses.items():
            ckpt.save(step, state, {}, metrics={"eval/loss": loss, "eval/accuracy": 0.1})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 5]  # 2: the lowest eval/loss, kept beyond the last two


def test_saves_only_on_the_configured_cadence_unless_forced(tmp_path, mesh):
    state = make_state(mesh)
    with checkpoint.Checkpointer(tmp_path, make_config(checkpoint_every=10)) as ckpt:
        assert [ckpt.save(step, state, {}) for step in (1, 10, 15)] == [False, True, False]
        assert ckpt.save(15, state, {}, force=True)
        ckpt.wait()
        assert ckpt.all_steps() == [10, 15]


def test_damaged_newest_falls_back_and_is_moved_aside(tmp_path, mesh, caplog):
    config = make_config()
    with checkpoint.Checkpointer(tmp_path, config) as ckpt:
        for step in (1, 2):
            ckpt.save(step, make_state(mesh, seed=step), {"step": step})
    data_files = glob.glob(str(tmp_path / "checkpoints" / "2" / "state" / "d" / "*"))
    assert data_files
    for path in data_files:
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)

    target = abstract(make_state(mesh), mesh)
    with (
        caplog.at_level(logging.WARNING, logger="mlm_jax.state.checkpoint"),
        checkpoint.Checkpointer(tmp_path, config) as ckpt,
    ):
        step, restored, data_state = ckpt.restore_latest(target)
        assert (step, data_state) == (1, {"step": 1})
        assert_same_values(restored, make_state(mesh, seed=1))
        assert ckpt.all_steps() == [1]
        assert ckpt.save(2, make_state(mesh, seed=2), {"step": 2})  # step 2 is free again
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "checkpoints/2 is damaged" in warnings[0] and "resumed from step 1" in warnings[0]
    (moved,) = os.listdir(tmp_path / "checkpoints" / "damaged")
    assert moved.startswith("2-")
    assert os.path.getsize(data_files[0].replace("/2/", f"/damaged/{moved}/")) > 0


def test_no_readable_checkpoint_is_a_user_error_and_moves_nothing(tmp_path, mesh):
    config = make_config()
    with checkpoint.Checkpointer(tmp_path, config) as ckpt:
        ckpt.save(1, make_state(mesh), {})
    for path in glob.glob(str(tmp_path / "checkpoints" / "1" / "state" / "d" / "*")):
        os.remove(path)
    with (
        checkpoint.Checkpointer(tmp_path, config) as ckpt,
        pytest.raises(UserError, match=r"no checkpoint .* can be read .*use a new --workdir"),
    ):
        ckpt.restore_latest(abstract(make_state(mesh), mesh))
    assert sorted(os.listdir(tmp_path / "checkpoints"))[0] == "1"
    with checkpoint.Checkpointer(tmp_path, config) as ckpt:
        with pytest.raises(UserError, match="checkpoint at step 1 .* cannot be read"):
            ckpt.restore(1, abstract(make_state(mesh), mesh))
        with pytest.raises(UserError, match=r"no checkpoint at step 3 .*saved steps: \[1\]"):
            ckpt.restore(3, abstract(make_state(mesh), mesh))


def test_mismatched_model_is_refused(tmp_path, mesh):
    saved_config = config_lib.from_dict({"model": {"hidden_size": 64}})
    with checkpoint.Checkpointer(tmp_path, saved_config) as ckpt:
        ckpt.save(7, make_state(mesh, rows=64), {}, force=True)
    wider = abstract(make_state(mesh, rows=128), mesh)
    with checkpoint.Checkpointer(tmp_path, make_config()) as ckpt:
        with pytest.raises(UserError) as error:
            ckpt.restore_latest(wider)
        message = str(error.value)
        assert "checkpoint at step 7" in message and "model.hidden_size=64 (now 128)" in message
        assert message.endswith("use a new --workdir or matching model.* settings")
        assert "\n" not in message

    # Same config, different tree: the message names the array instead.
    with checkpoint.Checkpointer(tmp_path, saved_config) as ckpt:
        extra_leaf = {**abstract(make_state(mesh), mesh), "ema": wider["params"]["w"]}
        with pytest.raises(UserError, match="no array ema, which this config needs"):
            ckpt.restore(7, extra_leaf)
        with pytest.raises(UserError, match=r"params/w of shape \(64, 32\) \(this config: \(128"):
            ckpt.restore(7, wider)


KILLED_SAVE = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    from mlm_jax import config
    from mlm_jax.state import checkpoint
    every_step = config.from_dict({"train": {"checkpoint_every": 1}})
    ckpt = checkpoint.Checkpointer(sys.argv[1], every_step)
    small = {"w": jnp.ones((64, 32)), "big": jnp.zeros((4,))}
    ckpt.save(1, small, {"step": 1})
    ckpt.wait()
    big = {"w": jnp.ones((64, 32)), "big": jax.random.normal(jax.random.key(0), (48_000_000,))}
    ckpt.save(2, big, {"step": 2})
    print("save returned", flush=True)
    ckpt.wait()
    print("committed", flush=True)
    """
)


def test_save_killed_midway_is_never_restored(tmp_path, mesh):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO_ROOT,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "save returned"
        os.kill(child.pid, 9)
    finally:
        child.wait(timeout=60)
    leftovers = glob.glob(str(tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp*"))
    assert leftovers, "the save committed before the kill; enlarge the array"
    assert not (tmp_path / "checkpoints" / "2").exists()

    sharding = NamedSharding(mesh, P())
    target = {
        "w": jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=sharding),
        "big": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding),
    }
    with checkpoint.Checkpointer(tmp_path, make_config()) as ckpt:
        assert ckpt.latest_step() == 1
        step, restored, data_state = ckpt.restore_latest(target)
        assert (step, data_state) == (1, {"step": 1})
        np.testing.assert_array_equal(np.asarray(restored["w"]), np.ones((64, 32)))
        assert ckpt.save(2, restored, {"step": 2})  # the same step saves cleanly afterwards
    assert not glob.glob(str(tmp_path / "checkpoints" / "*.orbax-checkpoint-tmp*"))
    assert json.loads((tmp_path / "checkpoints" / "2" / "data" / "metadata").read_text()) == {
        "step": 2
    }


TWO_PROCESS_ROUND_TRIP = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
    from mlm_jax import config
    from mlm_jax.state import checkpoint
    every_step = config.from_dict({"train": {"checkpoint_every": 1}})
    expected = np.arange(8 * 8, dtype=np.float32).reshape(8, 8)

    def global_array(mesh, spec):
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(expected.shape, sharding, lambda i: expected[i])

    mesh = jax.make_mesh((2, 2, 1), ("data", "fsdp", "tensor"))
    ckpt = checkpoint.Checkpointer(sys.argv[1], every_step)
    ckpt.save(1, {"w": global_array(mesh, P("data", "fsdp"))}, {"rows": 5})
    ckpt.close()

    other = jax.make_mesh((4, 1, 1), ("data", "fsdp", "tensor"))
    sharding = NamedSharding(other, P(None, "data"))
    ckpt = checkpoint.Checkpointer(sys.argv[1], every_step)
    target = {"w": jax.ShapeDtypeStruct(expected.shape, jnp.float32, sharding=sharding)}
    step, state, data_state = ckpt.restore_latest(target)
    assert (step, data_state) == (1, {"rows": 5})
    assert state["w"].sharding == sharding
    for shard in state["w"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), expected[shard.index])
    ckpt.close()
    print("ok", jax.process_index(), flush=True)
    """
)


def test_two_processes_save_and_restore_onto_another_layout(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                TWO_PROCESS_ROUND_TRIP,
                str(tmp_path),
                f"127.0.0.1:{port}",
                str(process_id),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            cwd=REPO_ROOT,
        )  # fmt: skip
        for process_id in (0, 1)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    for process_id, (child, (out, err)) in enumerate(zip(children, outputs, strict=True)):
        assert child.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == f"ok {process_id}"
    data_item = tmp_path / "checkpoints" / "1" / "data"
    assert json.loads((data_item / "metadata").read_text()) == {"rows": 5}
