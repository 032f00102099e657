"""The jitted train/eval steps: mesh invariance, accumulation, overfitting, NaN guard."""

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlm_jax.model import sharding
from mlm_jax.state import train_state
from mlm_jax.training import step as step_lib

VOCAB, SEQ = conftest.TINY_VOCAB, conftest.TINY_SEQ
PEAK_LR = 3e-3


def tiny_config(*extra: str):
    return conftest.tiny_config(
        "data.max_predictions=6",
        "train.steps=50",
        f"optim.learning_rate={PEAK_LR}",
        "optim.warmup_steps=2",
        *extra,
    )


def random_batch(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Packed rows of two documents plus padding, following the data contract."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, (rows, SEQ)).astype(np.int32)
    segments = np.zeros((rows, SEQ), np.int32)
    positions = np.zeros((rows, SEQ), np.int32)
    for row in range(rows):
        cut, end = rng.integers(8, 20), rng.integers(24, SEQ + 1)
        segments[row, :cut], segments[row, cut:end] = 1, 2
        positions[row, :cut], positions[row, cut:end] = np.arange(cut), np.arange(end - cut)
        ids[row, end:] = 0
    mlm_positions = np.stack([rng.choice(20, 6, replace=False) for _ in range(rows)])
    labels = np.take_along_axis(ids, mlm_positions, axis=1)
    weights = np.ones((rows, 6), np.float32)
    weights[:, -1] = 0.0  # an empty slot, as when a row has fewer maskable tokens
    masked_ids = ids.copy()
    np.put_along_axis(masked_ids, mlm_positions, 4, axis=1)  # [MASK]
    return {
        "input_ids": masked_ids,
        "segment_ids": segments,
        "positions": positions,
        "mlm_positions": mlm_positions.astype(np.int32),
        "mlm_labels": labels.astype(np.int32),
        "mlm_weights": weights,
    }


def run_steps(config, batches, devices=None):
    """Train on ``batches``; returns (per-step metrics, final state, initial params on host)."""
    mesh = sharding.make_mesh(config, devices)
    graphdef, state, shardings = train_state.init_train_state(config, mesh)
    initial = jax.tree.map(np.array, state.params)  # a copy: the step donates the state
    train_step = step_lib.make_train_step(config, mesh, graphdef, shardings)
    history = []
    for batch in batches:
        state, metrics = train_step(state, sharding.host_batch_to_global(batch, mesh))
        history.append({k: float(v) for k, v in metrics.items()})
    return history, state, initial


def params_numpy(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


# Two equivalent runs may differ by float32 rounding of a parameter (rtol) plus 1e-4 of one
# update (atol): Adam moves every parameter by about the learning rate per step, so a dropped,
# doubled or misrouted gradient shows up thousands of times above this.
PARAM_RTOL, PARAM_ATOL = 1e-5, 1e-4 * PEAK_LR


def assert_same_params(state, reference, label: str) -> None:
    assert jax.tree.structure(state.params) == jax.tree.structure(reference.params)
    named = jax.tree_util.tree_leaves_with_path(reference.params)
    for (path, expected), value in zip(named, jax.tree.leaves(state.params), strict=True):
        np.testing.assert_allclose(
            np.asarray(value),
            np.asarray(expected),
            rtol=PARAM_RTOL,
            atol=PARAM_ATOL,
            err_msg=f"{label}: {jax.tree_util.keystr(path)}",
        )


def assert_params_moved(state, initial_params) -> None:
    """Guards the comparisons below against comparing parameters that never left init."""
    moved = [
        float(np.abs(np.asarray(a) - b).max())
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(initial_params), strict=True)
    ]
    assert max(moved) > PEAK_LR, moved  # more than one step at the peak learning rate


@pytest.mark.parametrize("family", ["bert", "modern"])
def test_same_losses_on_every_mesh(family):
    batches = [random_batch(8, seed) for seed in range(5)]
    # Dropout on: the per-step key must give the same masks whatever the mesh.
    extra = (f"model.family={family}", "model.dropout_rate=0.1")
    meshes = [
        ("8x1x1", ("mesh.data=8",), None),
        ("2x2x2", ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), None),
        ("1x1x1", ("mesh.data=1",), jax.devices()[:1]),
    ]
    if family == "modern":
        meshes = meshes[:2]  # the single-device case is family-independent; save a compile
    runs = {}
    for name, mesh_args, devices in meshes:
        history, state, initial = run_steps(tiny_config(*extra, *mesh_args), batches, devices)
        runs[name] = (history, jax.tree.map(np.asarray, state), initial)
    reference_history, reference, reference_initial = runs["8x1x1"]
    # Five steps with warmup_steps=2: four of them with a learning rate above zero.
    assert_params_moved(reference, reference_initial)
    for name, (history, state, _) in runs.items():
        if name == "8x1x1":
            continue
        for key, rtol in (("train/loss", 1e-4), ("train/grad_norm", 1e-5)):
            np.testing.assert_allclose(
                [m[key] for m in history],
                [m[key] for m in reference_history],
                rtol=rtol,
                err_msg=f"{key} on mesh {name}",
            )
        assert_same_params(state, reference, f"mesh {name}")


def uneven_batch(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Rows with 1..5 masked tokens: a per-micro-batch mean would weight them wrongly."""
    batch = random_batch(rows, seed)
    used = np.random.default_rng(seed).integers(1, 6, rows)
    batch["mlm_weights"] = (np.arange(6)[None, :] < used[:, None]).astype(np.float32)
    return batch


def test_grad_accumulation_equals_one_large_batch():
    # warmup_steps=1: the learning rate is 0 at step 0 only, so steps 1-3 update the params.
    batches = [uneven_batch(32, seed) for seed in range(4)]
    common = (
        "train.global_batch_size=32",
        "model.dropout_rate=0",
        "model.attention_dropout_rate=0",
        "optim.warmup_steps=1",
    )
    one, one_state, initial = run_steps(tiny_config(*common), batches)
    accum, accum_state, _ = run_steps(tiny_config(*common, "optim.grad_accum_steps=4"), batches)
    assert [m["train/learning_rate"] > 0 for m in one] == [False, True, True, True]
    for key in ("train/loss", "train/mlm_accuracy", "train/grad_norm"):
        np.testing.assert_allclose(
            [m[key] for m in accum], [m[key] for m in one], rtol=1e-5, err_msg=key
        )
    assert_params_moved(one_state, initial)
    assert_same_params(accum_state, one_state, "4 micro-batches vs one batch")


def rerank_batch(queries: int, candidates: int, seed: int) -> dict[str, np.ndarray]:
    """Query-major pair rows (``candidates`` per query, the positive first), 0/1 weights."""
    rng = np.random.default_rng(seed)
    rows = queries * candidates
    ids = rng.integers(5, VOCAB, (rows, SEQ)).astype(np.int32)
    used = rng.integers(8, SEQ + 1, rows)
    segments = (np.arange(SEQ)[None, :] < used[:, None]).astype(np.int32)
    ids[segments == 0] = 0
    weights = np.ones(queries, np.float32)
    weights[-1] = 0.0  # a padding query, as at the end of an epoch
    return {
        "input_ids": ids,
        "segment_ids": segments,
        "positions": np.broadcast_to(np.arange(SEQ, dtype=np.int32), (rows, SEQ)).copy(),
        "token_type_ids": (np.arange(SEQ)[None, :] >= 6).astype(np.int32).repeat(rows, 0),
        "weights": weights,
    }


def test_fine_tuning_accumulates_gradients_like_one_large_batch():
    """Fine-tuning trains through the same step: 2 micro-batches of queries = one batch.

    A micro-batch takes whole queries (all candidates of a query stay together), else
    rows would lose their query and the positive its column. Pointwise loss: under the
    listwise one the classifier bias gets no gradient at all (a shift of every score of
    a query), so Adam turns rounding noise into full-size steps and no two runs agree.
    """
    from mlm_jax.training import runs

    batches = [rerank_batch(16, 4, seed) for seed in range(4)]
    common = ("train.global_batch_size=16", "model.dropout_rate=0",
              "model.attention_dropout_rate=0", "optim.warmup_steps=1", "finetune.task=rerank",
              "finetune.loss=pointwise", "finetune.negatives_per_query=3",
              "finetune.train_file=unused.jsonl")  # fmt: skip
    results = {}
    for accum in (1, 2):
        config = tiny_config(*common, f"optim.grad_accum_steps={accum}")
        mesh = sharding.make_mesh(config)
        graphdef, _, shardings = train_state.abstract_train_state(config, mesh)
        state = runs.fresh_state(config, mesh, shardings)
        initial = jax.tree.map(np.array, state.params)
        train_step = step_lib.make_train_step(config, mesh, graphdef, shardings)
        history = []
        for batch in batches:
            state, metrics = train_step(state, sharding.host_batch_to_global(batch, mesh))
            history.append({k: float(v) for k, v in metrics.items()})
        results[accum] = (history, state, initial)
    (one, one_state, initial), (two, two_state, _) = results[1], results[2]
    for key in ("train/loss", "train/accuracy", "train/grad_norm"):
        np.testing.assert_allclose(
            [m[key] for m in two], [m[key] for m in one], rtol=1e-5, err_msg=key
        )
    assert_params_moved(one_state, initial)
    assert_same_params(two_state, one_state, "2 micro-batches of queries vs one batch")


class Compiled:
    """One compiled train and eval step for the default tiny config, shared by tests."""

    def __init__(self):
        self.config = tiny_config(
            "model.dropout_rate=0", "model.attention_dropout_rate=0", "optim.schedule=constant"
        )
        self.mesh = sharding.make_mesh(self.config)
        self.graphdef, self._state, shardings = train_state.init_train_state(self.config, self.mesh)
        self.train_step = step_lib.make_train_step(self.config, self.mesh, self.graphdef, shardings)
        self.eval_step = step_lib.make_eval_step(
            self.config, self.mesh, self.graphdef, shardings.params
        )

    def fresh_state(self):
        """A copy of the initial state (the step donates its input)."""
        return jax.tree.map(jnp.copy, self._state)

    def put(self, batch):
        return sharding.host_batch_to_global(batch, self.mesh)


@pytest.fixture(scope="module")
def compiled():
    return Compiled()


def test_overfits_a_fixed_batch(compiled):
    state, batch = compiled.fresh_state(), compiled.put(random_batch(8, seed=5))
    history = []
    for _ in range(30):
        state, metrics = compiled.train_step(state, batch)
        history.append({k: float(v) for k, v in metrics.items()})
    losses = [m["train/loss"] for m in history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert history[-1]["train/mlm_accuracy"] > history[0]["train/mlm_accuracy"]
    assert all(m["train/nonfinite"] == 0.0 for m in history)


def test_metrics_and_nonfinite_batch_skips_the_update(compiled):
    state = compiled.fresh_state()
    state, metrics = compiled.train_step(state, compiled.put(random_batch(8)))
    assert set(metrics) == {
        "train/loss",
        "train/mlm_accuracy",
        "train/grad_norm",
        "train/learning_rate",
        "train/nonfinite",
    }
    assert all(value.shape == () for value in metrics.values())
    assert float(metrics["train/learning_rate"]) == 0.0  # warmup starts at zero
    assert metrics["train/nonfinite"] == 0.0
    before = params_numpy(state)
    opt_before = [np.asarray(x) for x in jax.tree.leaves(state.opt_state)]
    poisoned = random_batch(8, seed=1)
    poisoned["mlm_weights"][3, 0] = np.nan
    state, metrics = compiled.train_step(state, compiled.put(poisoned))
    assert metrics["train/nonfinite"] == 1.0
    assert not np.isfinite(float(metrics["train/loss"]))
    assert int(state.step) == 2
    for a, b in zip(params_numpy(state), before, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state.opt_state), opt_before, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    state, metrics = compiled.train_step(state, compiled.put(random_batch(8, 2)))
    assert metrics["train/nonfinite"] == 0.0
    assert any(not np.array_equal(a, b) for a, b in zip(params_numpy(state), before, strict=True))


def test_eval_step_sums_match_the_train_loss(compiled):
    state, batch = compiled.fresh_state(), random_batch(8, seed=9)
    sums = compiled.eval_step(state.params, compiled.put(batch))
    assert float(sums["weight_sum"]) == float(batch["mlm_weights"].sum())
    assert 0.0 <= float(sums["correct"]) <= float(sums["weight_sum"])
    _, metrics = compiled.train_step(state, compiled.put(batch))
    eval_loss = float(sums["loss_sum"]) / float(sums["weight_sum"])
    np.testing.assert_allclose(eval_loss, float(metrics["train/loss"]), rtol=1e-5)
    np.testing.assert_allclose(
        float(sums["correct"]) / float(sums["weight_sum"]),
        float(metrics["train/mlm_accuracy"]),
        rtol=1e-5,
    )


def test_bfloat16_step_runs_finite():
    batch = random_batch(8)
    history, state, _ = run_steps(tiny_config("model.dtype=bfloat16"), [batch, batch, batch])
    assert all(np.isfinite(m["train/loss"]) and m["train/nonfinite"] == 0.0 for m in history)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))


def test_abstract_state_matches_real_state():
    config = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    mesh = sharding.make_mesh(config)
    _, abstract, _ = train_state.abstract_train_state(config, mesh)
    _, state, _ = train_state.init_train_state(config, mesh)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(state), strict=True):
        assert (a.shape, a.dtype) == (x.shape, x.dtype)
        assert a.sharding.is_equivalent_to(x.sharding, x.ndim)


@pytest.mark.parametrize("family", ["bert", "modern"])
def test_remat_recomputes_the_same_training(family):
    """model.remat trades memory for FLOPs only: dropout included, every mode trains alike."""
    batches = [random_batch(8, seed) for seed in range(3)]
    dropout = ("model.dropout_rate=0.1", "model.attention_dropout_rate=0.1")
    runs = {
        remat: run_steps(
            tiny_config(f"model.family={family}", f"model.remat={remat}", *dropout), batches
        )  # fmt: skip
        for remat in ("none", "dense", "full")
    }
    _, reference, initial = runs["none"]
    assert_params_moved(reference, initial)
    for remat in ("dense", "full"):
        history, state, _ = runs[remat]
        assert [h["train/loss"] for h in history] == pytest.approx(
            [h["train/loss"] for h in runs["none"][0]], rel=1e-6
        )
        assert_same_params(state, reference, f"remat={remat}")


def test_dropout_is_active_in_the_train_step_and_replays_from_its_key():
    """A positive rate changes the step (other loss, other weights) and the same seed
    replays it bit for bit; a zero rate is the deterministic forward pass."""
    batches = [random_batch(8, seed=s) for s in range(2)]
    rates = lambda r: (f"model.dropout_rate={r}", f"model.attention_dropout_rate={r}")  # noqa: E731
    none, _, _ = run_steps(tiny_config(*rates(0.0)), batches)
    dropped, state, _ = run_steps(tiny_config(*rates(0.2)), batches)
    again, replay, _ = run_steps(tiny_config(*rates(0.2)), batches)
    other_seed, _, _ = run_steps(tiny_config(*rates(0.2), "train.seed=1"), batches)
    assert [h["train/loss"] for h in dropped] == [h["train/loss"] for h in again]
    for a, b in zip(params_numpy(state), params_numpy(replay), strict=True):
        np.testing.assert_array_equal(a, b)
    assert abs(dropped[0]["train/loss"] - none[0]["train/loss"]) > 1e-3
    # The seed's dropout key reaches the masks (the weights' init also follows the seed, so
    # only the first loss, at identical init, would not tell: compare the gradients' norms).
    assert dropped[0]["train/grad_norm"] != other_seed[0]["train/grad_norm"]


def test_the_learning_rate_schedule_reaches_the_optimizer():
    """Warmup from 0: the first update is zero (the step only counts), later ones are not.
    The logged rate is the one applied."""
    batches = [random_batch(8, seed=s) for s in range(3)]
    history, state, initial = run_steps(tiny_config("optim.warmup_steps=2"), batches[:1])
    assert history[0]["train/learning_rate"] == 0.0
    for a, b in zip(params_numpy(state), jax.tree.leaves(initial), strict=True):
        np.testing.assert_array_equal(a, b)
    history, state, initial = run_steps(tiny_config("optim.warmup_steps=2"), batches)
    assert [h["train/learning_rate"] for h in history] == pytest.approx([0.0, PEAK_LR / 2, PEAK_LR])
    assert_params_moved(state, initial)


def test_lamb_trains_in_a_real_step():
    """LAMB, not only AdamW, through the real train step: it overfits a fixed batch, and
    its trust ratio makes its updates other than AdamW's from the same start. (Its steps
    scale with each layer's weight norm, ~0.02 at init here: hence the larger rate.)"""
    batch = random_batch(8, seed=5)
    config = tiny_config("optim.name=lamb", "optim.learning_rate=0.05")
    lamb, lamb_state, initial = run_steps(config, [batch] * 30)
    losses = [m["train/loss"] for m in lamb]
    assert losses[-1] < 0.6 * losses[0], losses
    assert all(m["train/nonfinite"] == 0.0 for m in lamb)
    assert_params_moved(lamb_state, initial)
    # Step 0 runs at warmup's rate 0; step 1 is the first real update of either optimizer.
    adamw, _, _ = run_steps(tiny_config("optim.learning_rate=0.05"), [batch] * 3)
    assert lamb[2]["train/loss"] != pytest.approx(adamw[2]["train/loss"], abs=1e-3)
