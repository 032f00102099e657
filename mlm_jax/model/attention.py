"""Attention of the encoder: the segment mask, the paths that compute it, and dropout.

Every path computes softmax attention within each packed document (a query sees a key
only in its own segment; padding only padding). :func:`attention_path` chooses the path
for the platform the program is traced for (:func:`compiling_for`), which `mlm-jax plan`
sets to TPU on a CPU host.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax.model import precision


def dropout(x: jax.Array, rate: float, key: jax.Array | None, bits: int) -> jax.Array:
    """Inverted dropout; ``key=None`` means deterministic (eval).

    ``bits`` random bits decide each element (the config's ``model.dropout_bits``). Drawing
    the random words is most of dropout's cost on a CPU (threefry is ~20 integer rounds per
    pair of words), so 8 bits per element quarter it. The draws stay threefry's
    partitionable ones: an element's bits depend on its index, not on the mesh.
    """
    if key is None or rate == 0.0:
        return x
    if bits == 32:
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
    keep, keep_probability = _narrow_keep_mask(key, x.shape, rate, bits)
    return jnp.where(keep, x * (1.0 / keep_probability), jnp.zeros_like(x)).astype(x.dtype)


def _narrow_keep_mask(key, shape: tuple[int, ...], rate: float, bits: int):
    """A keep mask from ``bits``-bit draws, each 32-bit word split into ``32 // bits``, and
    the keep probability it really has (``1 - rate`` rounded to a multiple of 2^-bits)."""
    per_word = 32 // bits
    last = shape[-1] if shape else 1
    words = jax.random.bits(key, (*shape[:-1], -(-last // per_word)), jnp.uint32)
    narrow = jax.lax.bitcast_convert_type(words, jnp.uint8 if bits == 8 else jnp.uint16)
    draws = narrow.reshape(*shape[:-1], -1)[..., :last].reshape(shape)
    threshold = max(1, round((1.0 - rate) * 2**bits))
    return draws < threshold, threshold / 2**bits


class Segments(NamedTuple):
    """Which document each token belongs to, as ids and as the dense mask they imply."""

    ids: jax.Array  # [B, L] int32: 1, 2, ... per packed document, 0 for padding
    mask: jax.Array  # [B, 1, L, L] bool; XLA drops it where a kernel takes the ids


_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "target_platform", default=None
)


@contextlib.contextmanager
def compiling_for(platform: str):
    """Trace attention for ``platform`` (the mesh's devices), not this process's backend:
    ``mlm-jax plan`` traces on a CPU host for compile-only TPU devices."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def segment_mask(segment_ids: jax.Array) -> jax.Array:
    """``[B, 1, L, L]`` bool: query attends key iff both are in the same segment.

    Padding (segment 0) attends only padding, so no row is fully masked (no NaNs) and
    real tokens never see padding or another packed document.
    """
    return segment_ids[:, None, :, None] == segment_ids[:, None, None, :]


@jax.named_scope("attention")
def attention(
    q, k, v, segments: Segments, *, dtype, dropout_rate: float, dropout_bits: int, key,
    kernel="auto", window=None,
):  # fmt: skip
    """Scaled dot-product attention over ``[B, L, H, Dh]`` inputs, bidirectional.

    ``window``: a sliding-window layer's reach, the number of tokens a query sees on
    either side (ModernBERT's ``local_attention // 2``); None for a global layer and for
    a window that spans the row (``ModelConfig.attention_window(layer, length)``). Four
    paths compute the same function (the CPU ones tested, splash in Pallas' interpret
    mode; the cuDNN one checked on a GPU by ``scripts/bench_attention.py``), chosen by
    :func:`attention_path`; a window turns each into its local form. Returns float32.
    """
    length = q.shape[1]
    path = attention_path(kernel, dtype, dropout_rate if key is not None else 0.0, length)
    if path == "splash":
        from mlm_jax.model import splash

        return splash.splash_attention(q, k, v, segments.ids, dtype, window=window)
    if window is not None and path != "cudnn" and blocked_window_pays(length, window):
        return windowed_attention(
            q, k, v, segments.ids, window, dtype, dropout_rate, key, dropout_bits
        )
    if path == "explicit":
        mask = segments.mask if window is None else segments.mask & band(length, window)
        return explicit_attention(q, k, v, mask, dtype, dropout_rate, key, dropout_bits)
    q, k, v = (t.astype(dtype) for t in (q, k, v))
    out = jax.nn.dot_product_attention(
        q, k, v, mask=segments.mask,
        implementation="cudnn" if path == "cudnn" else None,
        local_window_size=None if window is None else (window, window),
    )  # fmt: skip
    return out.astype(jnp.float32)


def attention_path(kernel: str, dtype, dropout_rate: float, length: int = 128) -> str:
    """Which attention implementation a layer traces: ``explicit``, ``xla``, ``cudnn``
    or ``splash``.

    * on a TPU without dropout, rows a multiple of 128 long: Pallas' splash kernel
      (:mod:`mlm_jax.model.splash`), flash attention with segment ids, in either dtype.

    * fp32 without dropout: ``jax.nn.dot_product_attention`` (XLA's own lowering).
    * bf16 on a GPU without dropout: cuDNN's fused flash-attention kernel. Its forward
      and backward products take bf16 operands and accumulate in fp32 inside the
      kernel, as the policy asks, and the ``[B, H, L, L]`` scores never reach memory,
      which at sequence 512 is most of the step's memory traffic.
    * everything else: the products written out under the precision policy.
      ``dot_product_attention`` has no dropout on the probabilities, and its XLA
      backward runs both products on float32 cotangents, which would put bf16 training
      back on the fp32 units.
    """
    if kernel != "auto":  # the config's "explicit", or a path named by a benchmark
        return kernel
    if dropout_rate > 0.0:
        return "explicit"
    # Chosen where the program is traced, so a run trained on GPUs evaluates on a CPU.
    platform = _TARGET_PLATFORM.get() or jax.default_backend()
    if platform == "tpu" and length % 128 == 0:
        return "splash"
    if dtype == jnp.float32:
        return "xla"
    return "cudnn" if platform == "gpu" else "explicit"


def explicit_attention(q, k, v, mask, dtype, dropout_rate: float, key, dropout_bits: int):
    """Softmax attention written out: both products under the precision policy."""
    scale = q.shape[-1] ** -0.5
    logits = precision.einsum("bqhd,bkhd->bhqk", q, k, dtype) * scale  # [B, H, L, L] f32
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1), dropout_rate, key, dropout_bits)  # f32
    return precision.einsum("bhqk,bkhd->bqhd", probs, v, dtype)


# ----------------------------------------------------------------------------- sliding window


def band(length: int, window: int) -> jax.Array:
    """``[L, L]`` bool: the keys at most ``window`` positions from each query."""
    offsets = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
    return jnp.abs(offsets) <= window


def blocked_window_pays(length: int, window: int) -> bool:
    """Whether :func:`windowed_attention` applies and beats masking the whole square.

    It needs rows that split into blocks of ``window`` tokens, and it computes
    ``3 * window`` keys per query where the square computes ``length``: at least twice
    less work, or the square's single large products win.
    """
    return length % window == 0 and length >= 6 * window


def windowed_attention(q, k, v, segment_ids, window: int, dtype, dropout_rate, key, dropout_bits):
    """Sliding-window attention in O(L * window): each block of ``window`` queries meets
    the keys of its own block and its two neighbours, the only keys its band can reach.

    The same function as the banded square (segments respected, padding sees padding),
    with the products under the precision policy and dropout on the probabilities.
    """
    b, length, h, d = q.shape
    blocks = length // window

    def neighbours(t, fill):  # [B, L, ...] -> [B, n, 3w, ...]: blocks i-1, i and i+1
        edges = [(0, 0), (window, window)] + [(0, 0)] * (t.ndim - 2)
        t = jnp.pad(t, edges, constant_values=fill).reshape(b, blocks + 2, window, *t.shape[2:])
        return jnp.concatenate([t[:, :-2], t[:, 1:-1], t[:, 2:]], axis=2)

    queries = q.reshape(b, blocks, window, h, d)
    keys, values = neighbours(k, 0.0), neighbours(v, 0.0)  # [B, n, 3w, H, Dh]
    # Keys past either end of the row carry segment -1, which no query has.
    same = (
        segment_ids.reshape(b, blocks, window)[..., :, None]
        == neighbours(segment_ids, -1)[..., None, :]
    )  # [B, n, w, 3w]
    # Query r of a block sits at offset window + r among its 3w keys.
    reach = np.abs(np.arange(window)[:, None] + window - np.arange(3 * window)[None, :]) <= window
    scale = d**-0.5
    logits = precision.einsum("bnqhd,bnkhd->bhnqk", queries, keys, dtype) * scale
    logits = jnp.where((same & reach)[:, None], logits, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1), dropout_rate, key, dropout_bits)
    out = precision.einsum("bhnqk,bnkhd->bnqhd", probs, values, dtype)
    return out.reshape(b, length, h, d)
