"""Benchmark checkpoint save/restore for a BERT-base-sized train state; prints one JSON line.

The state is random arrays with the shapes of BERT-base parameters plus two Adam moments
(about 110M parameters x 3 in float32, 1.3 GB); no model is built. Measured:

- blocked_async_s: how long ``Checkpointer.save`` keeps the caller (the training loop) waiting;
- sync_save_s: a save followed by ``wait`` (what a synchronous checkpoint costs);
- restore_s: restoring the newest checkpoint onto the same sharding.

Usage: python scripts/bench_checkpoint.py [--dir DIR]  (default: a temporary directory, removed)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax import config as config_lib
from mlm_jax.state import checkpoint

HIDDEN, LAYERS, INTERMEDIATE, VOCAB, POSITIONS = 768, 12, 3072, 30592, 512


def bert_base_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of BERT-base with an MLM head (vocab padded to 128)."""
    shapes = {
        "embeddings/word": (VOCAB, HIDDEN),
        "embeddings/position": (POSITIONS, HIDDEN),
        "embeddings/token_type": (2, HIDDEN),
        "embeddings/norm/scale": (HIDDEN,),
        "embeddings/norm/bias": (HIDDEN,),
        "mlm_head/dense/kernel": (HIDDEN, HIDDEN),
        "mlm_head/dense/bias": (HIDDEN,),
        "mlm_head/norm/scale": (HIDDEN,),
        "mlm_head/norm/bias": (HIDDEN,),
        "mlm_head/decoder_bias": (VOCAB,),
    }
    for layer in range(LAYERS):
        prefix = f"layers/{layer}"
        for name in ("query", "key", "value", "attention_out"):
            shapes[f"{prefix}/{name}/kernel"] = (HIDDEN, HIDDEN)
            shapes[f"{prefix}/{name}/bias"] = (HIDDEN,)
        shapes[f"{prefix}/mlp_in/kernel"] = (HIDDEN, INTERMEDIATE)
        shapes[f"{prefix}/mlp_in/bias"] = (INTERMEDIATE,)
        shapes[f"{prefix}/mlp_out/kernel"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{prefix}/mlp_out/bias"] = (HIDDEN,)
        for norm in ("attention_norm", "mlp_norm"):
            shapes[f"{prefix}/{norm}/scale"] = (HIDDEN,)
            shapes[f"{prefix}/{norm}/bias"] = (HIDDEN,)
    return shapes


def random_train_state(seed: int = 0) -> dict:
    """Params and two Adam moments with BERT-base shapes, as nested dicts of device arrays."""
    key = jax.random.key(seed)
    state: dict = {"step": jnp.int32(1000)}
    for group in ("params", "adam_mu", "adam_nu"):
        for index, (name, shape) in enumerate(bert_base_shapes().items()):
            *parents, leaf = [group, *name.split("/")]
            node = state
            for parent in parents:
                node = node.setdefault(parent, {})
            leaf_key = jax.random.fold_in(key, index * 3 + len(state))
            node[leaf] = jax.random.normal(leaf_key, shape, jnp.float32)
    return jax.block_until_ready(state)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run(directory: str) -> dict:
    config = config_lib.from_dict({"train": {"checkpoint_every": 1, "keep_checkpoints": 10}})
    state = random_train_state()
    nbytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    data_state = {"epoch": 0, "row": 123}
    ckpt = checkpoint.Checkpointer(directory, config)

    # Warm-up: first-save costs (threads, directory creation) count in neither number.
    ckpt.save(1, state, data_state)
    ckpt.wait()

    blocked_async_s, _ = timed(lambda: ckpt.save(2, state, data_state))
    async_commit_s, _ = timed(ckpt.wait)

    def sync_save():
        ckpt.save(3, state, data_state)
        ckpt.wait()

    sync_save_s, _ = timed(sync_save)

    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state
    )
    restore_s, (_, restored, _, _) = timed(lambda: jax.block_until_ready(ckpt.restore(3, target)))
    restored_words = np.asarray(restored["params"]["embeddings"]["word"])
    assert np.array_equal(restored_words, np.asarray(state["params"]["embeddings"]["word"]))
    ckpt.close()
    device = jax.devices()[0]
    return {
        "bench": "checkpoint",
        "blocked_async_s": round(blocked_async_s, 3),
        "async_commit_s": round(async_commit_s, 3),
        "sync_save_s": round(sync_save_s, 3),
        "ratio": round(blocked_async_s / sync_save_s, 4),
        "restore_s": round(restore_s, 3),
        "bytes": nbytes,
        "params": sum(int(np.prod(s)) for s in bert_base_shapes().values()),
        "jax": jax.__version__,
        "orbax": importlib.metadata.version("orbax-checkpoint"),
        "device": f"{device.platform}:{device.device_kind} x{jax.device_count()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where to write checkpoints (default: a temp dir, removed)")
    args = parser.parse_args()
    directory = args.dir or tempfile.mkdtemp(prefix="bench_checkpoint_")
    try:
        print(json.dumps(run(directory)), flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
