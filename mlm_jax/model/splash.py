"""Attention on TPU through Pallas' splash kernel, with packed documents kept apart.

The kernel is flash attention: it walks the keys in blocks with a running softmax, so the
``[B, H, L, L]`` scores never reach HBM, and its backward recomputes them the same way.
Documents packed into one row stay apart through ``SegmentIds``: a query sees a key only
when both carry the same segment id (padding, id 0, sees only padding), exactly the mask
the explicit path builds. There is no dropout on the probabilities inside the kernel:
``attention_path`` sends a run with attention dropout to the explicit path instead.

Pallas kernels are not partitioned by XLA, so the kernel runs under ``shard_map``: each
device attends its own rows and its own heads (batch over ``data x fsdp``, heads over
``tensor``); attention needs nothing from other devices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from mlm_jax.model.sharding import BATCH_AXES, MESH_AXES

BLOCKS = (512, 256, 128)  # the largest that divides the sequence is used


def supports(length: int) -> bool:
    """The kernel tiles the sequence in blocks of at least 128 tokens."""
    return length % BLOCKS[-1] == 0


def _block(length: int) -> int:
    return next(b for b in BLOCKS if length % b == 0)


def keys_computed(length: int, window: int | None) -> float:
    """Keys per query the kernel computes, on average: whole blocks of keys, only those a
    sliding window's band touches (all of them for a global layer)."""
    if window is None:
        return float(length)
    block = _block(length)
    blocks = length // block
    reach = -(-window // block)  # neighbouring blocks the band reaches on each side
    touched = sum(min(blocks - 1, i + reach) - max(0, i - reach) + 1 for i in range(blocks))
    return touched * block / blocks


@functools.cache
def _kernel(heads: int, length: int, window: int | None, interpret: bool):
    block = _block(length)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    shape = (length, length)
    # A sliding-window layer's band: the kernel skips the blocks outside it entirely.
    one = (
        splash.FullMask(shape)
        if window is None
        else splash.LocalMask(shape, window_size=(window, window), offset=0)
    )
    mask = splash.MultiHeadMask([one] * heads)
    return splash.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def _attend(q, k, v, segment_ids, window: int | None, interpret: bool):
    """One device's rows: ``[b, h, L, Dh]`` inputs, ``[b, L]`` segment ids."""
    kernel = _kernel(q.shape[1], q.shape[2], window, interpret)
    segments = splash.SegmentIds(q=segment_ids, kv=segment_ids)
    return jax.vmap(kernel)(q, k, v, segment_ids=segments)


def splash_attention(
    q, k, v, segment_ids, dtype, *, window: int | None = None, interpret: bool = False
) -> jax.Array:
    """Softmax attention of ``[B, L, H, Dh]`` inputs within segments; float32 ``[B, L, H, Dh]``.

    Operands enter the kernel in ``dtype`` (bf16 under mixed precision); it accumulates
    both products in float32. ``interpret`` runs the kernel's Python on any backend
    (the CPU tests).
    """
    scale = q.shape[-1] ** -0.5
    heads_first = (0, 2, 1, 3)  # [B, L, H, Dh] <-> [B, H, L, Dh]
    q, k, v = (jnp.transpose(t, heads_first).astype(dtype) for t in ((q * scale), k, v))
    segment_ids = segment_ids.astype(jnp.int32)
    attend = functools.partial(_attend, window=window, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and set(MESH_AXES) <= set(mesh.axis_names):
        rows = P(BATCH_AXES, "tensor", None, None)
        attend = jax.shard_map(
            attend, mesh=mesh, in_specs=(rows, rows, rows, P(BATCH_AXES, None)),
            out_specs=rows, check_vma=False,
        )  # fmt: skip
    out = attend(q, k, v, segment_ids)
    return jnp.transpose(out, heads_first).astype(jnp.float32)
