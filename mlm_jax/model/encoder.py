"""The encoder: BERT (post-LN) and ModernBERT (pre-LN, rotary, GeGLU, sliding windows) in NNX.

Read top to bottom: building blocks (Dense, LayerNorm; attention lives in
:mod:`mlm_jax.model.attention`), the two block families, the embeddings, the MLM
head, then the :class:`Encoder` that ties them together, and finally ``param_count`` /
``flops_per_token``.

Parameters are float32 and every one carries logical axis names (see
``mlm_jax.model.sharding.LOGICAL_RULES``). Every matrix product goes through
:mod:`mlm_jax.model.precision`: with ``model.dtype: bfloat16`` its operands are bfloat16 in
the forward and the backward pass and it accumulates in float32; layer norms,
softmax, the residual stream and the loss stay float32.

The names of these parameters in transformers' ``BertForMaskedLM`` and
``ModernBertForMaskedLM``, and the config fields each family maps onto, live in one place:
:mod:`mlm_jax.hf.names`. Both activations are exact-erf GELU (HF ``"gelu"``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mlm_jax.config import Config, ModelConfig
from mlm_jax.model import precision
from mlm_jax.model.attention import Segments, attention, dropout, segment_mask
from mlm_jax.model.sharding import constrain

# Large enough that padded vocab columns never win a softmax or an argmax, small
# enough that (logit - max) never overflows to -inf in float32.
PADDED_LOGIT = -1e9

_std_init = jax.nn.initializers.truncated_normal(stddev=0.02)
_zeros = jax.nn.initializers.zeros
_ones = jax.nn.initializers.ones


def _param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str | None, ...]):
    """A float32 parameter carrying logical axis names (sharded later, not eagerly)."""
    init = nnx.with_partitioning(init, axes, eager_sharding=False)
    return nnx.Param(init(rngs.params(), shape, jnp.float32))


def _split_key(key: jax.Array | None, count: int) -> list[jax.Array | None]:
    """``count`` independent keys for the dropout sites of one block (or Nones)."""
    if key is None:
        return [None] * count
    return [jax.random.fold_in(key, i) for i in range(count)]


def _lookup(table: jax.Array, ids: jax.Array, table_axes) -> jax.Array:
    """Rows of ``table`` for ``ids``, batch-sharded like the activations.

    Under fsdp the table's embed axis is gathered first (as for any weight); without
    the constraint the partitioner reshards the gathered rows expensively.
    """
    rows = jnp.take(constrain(table, table_axes), ids, axis=0)  # [B, L, D]
    return constrain(rows, ("batch", "length", "act_embed"))


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)  # exact erf, HF "gelu"


class Dense(nnx.Module):
    """``x @ kernel (+ bias)``; kernel ``[in, *out]``, matmul in ``dtype``, f32 accumulate."""

    def __init__(self, in_features, out_shape, axes, *, use_bias, dtype, rngs: nnx.Rngs):
        out_shape = tuple(out_shape) if isinstance(out_shape, tuple | list) else (out_shape,)
        self.dtype = dtype
        self.kernel = _param(rngs, _std_init, (in_features, *out_shape), axes)
        self.bias = _param(rngs, _zeros, out_shape, axes[1:]) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = precision.dense(x, self.kernel[...], self.dtype)
        if self.bias is not None:
            y = y + self.bias[...]
        return checkpoint_name(y, "dense")  # float32; what model.remat=dense keeps


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 (HF semantics: biased variance, eps inside the sqrt)."""

    def __init__(self, features: int, *, eps: float, use_bias: bool, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = _param(rngs, _ones, (features,), ("norm",))
        self.bias = _param(rngs, _zeros, (features,), ("norm",)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """HF-style rotary embedding (rotate_half layout) of ``[B, L, H, Dh]`` in float32."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, Dh/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, L, 1, Dh]
    x = x.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * jnp.cos(angles) + rotated * jnp.sin(angles)


# ----------------------------------------------------------------------------- blocks


class BertBlock(nnx.Module):
    """Post-LN block: x = LN(x + Attn(x)); x = LN(x + MLP(x)); biases everywhere."""

    def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs):
        d, i = cfg.hidden_size, cfg.intermediate_size
        self.cfg = cfg
        dense = dict(use_bias=True, dtype=dtype, rngs=rngs)
        self.query = Dense(d, d, ("embed", "heads"), **dense)
        self.key = Dense(d, d, ("embed", "heads"), **dense)
        self.value = Dense(d, d, ("embed", "heads"), **dense)
        self.attention_output = Dense(d, d, ("heads", "embed"), **dense)
        self.attention_norm = LayerNorm(d, eps=cfg.layer_norm_eps, use_bias=True, rngs=rngs)
        self.intermediate = Dense(d, i, ("embed", "mlp"), **dense)
        self.output = Dense(i, d, ("mlp", "embed"), **dense)
        self.output_norm = LayerNorm(d, eps=cfg.layer_norm_eps, use_bias=True, rngs=rngs)
        self.dtype = dtype

    def __call__(self, x, segments: Segments, positions, key):
        cfg = self.cfg
        b, length, _ = x.shape
        heads = (b, length, cfg.num_heads, cfg.hidden_size // cfg.num_heads)
        attn_key, attn_out_key, mlp_key = _split_key(key, 3)
        q, k, v = (proj(x).reshape(heads) for proj in (self.query, self.key, self.value))
        a = attention(
            q,
            k,
            v,
            segments,
            dtype=self.dtype,
            dropout_rate=cfg.attention_dropout_rate,
            dropout_bits=cfg.dropout_bits,
            key=attn_key,
            kernel=cfg.attention_kernel,
        )
        a = self.attention_output(a.reshape(x.shape))  # [B, L, D]
        x = self.attention_norm(x + dropout(a, cfg.dropout_rate, attn_out_key, cfg.dropout_bits))
        h = self.output(gelu(self.intermediate(x)))  # [B, L, D]
        x = self.output_norm(x + dropout(h, cfg.dropout_rate, mlp_key, cfg.dropout_bits))
        return constrain(x, ("batch", "length", "act_embed"))


class ModernBlock(nnx.Module):
    """Pre-LN block with rotary attention and a GeGLU MLP (ModernBERT).

    Layer ``index`` attends globally or through a sliding window
    (``ModelConfig.attention_window``), each kind with its own rotary base; biases only
    where the config asks (ModernBERT has none).
    """

    def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs, *, index: int):
        d, i = cfg.hidden_size, cfg.intermediate_size
        self.cfg = cfg
        self.dtype = dtype
        self.index = index
        self.theta = cfg.rope_theta if cfg.attention_window(index) is None else cfg.local_rope_theta
        norm = dict(eps=cfg.layer_norm_eps, use_bias=cfg.norm_bias, rngs=rngs)
        attn = dict(use_bias=cfg.attention_bias, dtype=dtype, rngs=rngs)
        mlp = dict(use_bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)
        # HF uses Identity for layer 0's attn_norm: the embeddings were just normed.
        self.attn_norm = None if index == 0 else LayerNorm(d, **norm)
        self.Wqkv = Dense(d, (3, d), ("embed", None, "heads"), **attn)
        self.Wo = Dense(d, d, ("heads", "embed"), **attn)
        self.mlp_norm = LayerNorm(d, **norm)
        self.Wi = Dense(d, (2, i), ("embed", None, "mlp"), **mlp)
        self.mlp_Wo = Dense(i, d, ("mlp", "embed"), **mlp)

    def __call__(self, x, segments: Segments, positions, key):
        cfg = self.cfg
        b, length, d = x.shape
        heads = (b, length, cfg.num_heads, d // cfg.num_heads)
        attn_key, attn_out_key, mlp_key = _split_key(key, 3)
        h = x if self.attn_norm is None else self.attn_norm(x)
        qkv = self.Wqkv(h)  # [B, L, 3, D]
        q, k, v = (qkv[:, :, j].reshape(heads) for j in range(3))
        q, k = rotary(q, positions, self.theta), rotary(k, positions, self.theta)
        a = attention(
            q,
            k,
            v,
            segments,
            dtype=self.dtype,
            dropout_rate=cfg.attention_dropout_rate,
            dropout_bits=cfg.dropout_bits,
            key=attn_key,
            kernel=cfg.attention_kernel,
            window=cfg.attention_window(self.index, length),
        )
        a = self.Wo(a.reshape(x.shape))
        x = x + dropout(
            a, cfg.attention_dropout_rate, attn_out_key, cfg.dropout_bits
        )  # HF attn.out_drop
        gated = self.Wi(self.mlp_norm(x))  # [B, L, 2, I]
        h = gelu(gated[:, :, 0]) * gated[:, :, 1]
        x = x + self.mlp_Wo(dropout(h, cfg.dropout_rate, mlp_key, cfg.dropout_bits))
        return constrain(x, ("batch", "length", "act_embed"))


# ----------------------------------------------------------------------------- embeddings, head


class BertEmbeddings(nnx.Module):
    """Word + learned absolute position + token type, then LayerNorm."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.word_embeddings = _param(
            rngs, _std_init, (cfg.padded_vocab_size, d), ("vocab", "embed")
        )
        self.position_embeddings = _param(
            rngs, _std_init, (cfg.max_position_embeddings, d), ("positions", "embed")
        )
        self.token_type_embeddings = _param(
            rngs, _std_init, (cfg.type_vocab_size, d), ("types", "embed")
        )
        self.norm = LayerNorm(d, eps=cfg.layer_norm_eps, use_bias=True, rngs=rngs)

    def table(self) -> jax.Array:
        return self.word_embeddings[...]

    def __call__(self, input_ids, positions, token_type_ids):
        x = _lookup(self.word_embeddings[...], input_ids, ("vocab", None))  # [B, L, D]
        x = x + _lookup(self.position_embeddings[...], positions, (None, None))
        x = x + _lookup(self.token_type_embeddings[...], token_type_ids, (None, None))
        return self.norm(x)


class ModernEmbeddings(nnx.Module):
    """Token embeddings then LayerNorm; positions enter through rotary attention."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.tok_embeddings = _param(
            rngs, _std_init, (cfg.padded_vocab_size, cfg.hidden_size), ("vocab", "embed")
        )
        self.norm = LayerNorm(
            cfg.hidden_size, eps=cfg.layer_norm_eps, use_bias=cfg.norm_bias, rngs=rngs
        )

    def table(self) -> jax.Array:
        return self.tok_embeddings[...]

    def __call__(self, input_ids, positions, token_type_ids):
        return self.norm(_lookup(self.tok_embeddings[...], input_ids, ("vocab", None)))


class MLMHead(nnx.Module):
    """Transform (dense, GELU, LayerNorm), then the tied vocab projection plus a bias."""

    def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs):
        bert = cfg.family == "bert"
        d = cfg.hidden_size
        self.dtype = dtype
        self.vocab_size = cfg.vocab_size
        self.dense = Dense(
            d, d, ("embed", "act_embed"), use_bias=bert or cfg.classifier_bias, dtype=dtype,
            rngs=rngs,
        )  # fmt: skip
        self.norm = LayerNorm(d, eps=cfg.layer_norm_eps, use_bias=bert or cfg.norm_bias, rngs=rngs)
        self.decoder_bias = _param(rngs, _zeros, (cfg.padded_vocab_size,), ("vocab",))

    def __call__(self, hidden: jax.Array, table: jax.Array) -> jax.Array:
        h = self.norm(gelu(self.dense(hidden)))  # [B, P, D]
        # The layout the word lookup gathered the table into: XLA then gathers it once per
        # step for both, instead of again for the decoder.
        table = constrain(table, ("vocab", None))
        logits = precision.einsum("bpd,vd->bpv", h, table, self.dtype)  # the tied decoder
        # Padding columns get PADDED_LOGIT through the bias vector: a select over the
        # [B, P, V] logits would cost a pass there and another in the backward.
        real = jnp.arange(logits.shape[-1]) < self.vocab_size
        return logits + jnp.where(real, self.decoder_bias[...], PADDED_LOGIT)  # [..., Vpad]


# ----------------------------------------------------------------------------- encoder


def _call_block(block, x, segments, positions, key):
    return block(x, segments, positions, key)


def _rematerialized(remat: str):
    """How a block runs under ``model.remat``: as is, or recomputed in the backward pass.

    ``dense`` keeps the outputs of the dense layers (tagged in :class:`Dense`) and
    recomputes attention, activations and norms from them; ``full`` keeps only the
    block's input. Either costs at most one more forward pass per step.
    """
    if remat == "none":
        return _call_block
    policy = (
        jax.checkpoint_policies.save_only_these_names("dense")
        if remat == "dense"
        else jax.checkpoint_policies.nothing_saveable
    )
    return nnx.remat(_call_block, policy=policy)


class Encoder(nnx.Module):
    """A masked-language-model encoder of family ``cfg.family``.

    ``dropout_key=None`` everywhere means eval mode (no dropout).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = precision.compute_dtype(cfg.dtype)
        if cfg.family == "bert":
            self.embeddings = BertEmbeddings(cfg, rngs)
            layers = [BertBlock(cfg, self.dtype, rngs) for _ in range(cfg.num_layers)]
            self.final_norm = None  # post-LN: every block already ends in a norm
        else:
            self.embeddings = ModernEmbeddings(cfg, rngs)
            layers = [ModernBlock(cfg, self.dtype, rngs, index=i) for i in range(cfg.num_layers)]
            self.final_norm = LayerNorm(
                cfg.hidden_size, eps=cfg.layer_norm_eps, use_bias=cfg.norm_bias, rngs=rngs
            )
        self.layers = nnx.List(layers)
        self.head = MLMHead(cfg, self.dtype, rngs)

    def encode(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        token_type_ids: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Final hidden states ``[B, L, D]`` (float32)."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        keys = _split_key(dropout_key, len(self.layers) + 1)
        x = self.embeddings(input_ids, positions, token_type_ids)  # [B, L, D]
        x = dropout(x, self.cfg.dropout_rate, keys[0], self.cfg.dropout_bits)
        x = constrain(x, ("batch", "length", "act_embed"))
        segments = Segments(segment_ids, segment_mask(segment_ids))  # mask [B, 1, L, L]
        run_block = _rematerialized(self.cfg.remat)
        for index, (layer, key) in enumerate(zip(self.layers, keys[1:], strict=True)):
            with jax.named_scope(f"layer{index}"):  # names the HLO ops `mlm-jax plan` groups
                x = run_block(layer, x, segments, positions, key)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def mlm_logits(self, hidden: jax.Array, mlm_positions: jax.Array) -> jax.Array:
        """Logits ``[B, P, Vpad]`` at the ``mlm_positions [B, P]`` only (the sparse head)."""
        picked = jnp.take_along_axis(hidden, mlm_positions[..., None], axis=1)  # [B, P, D]
        return self.head(picked, self.embeddings.table())

    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        mlm_positions: jax.Array,
        token_type_ids: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """The training forward pass: MLM logits ``[B, P, Vpad]`` at the masked positions."""
        hidden = self.encode(input_ids, segment_ids, positions, token_type_ids, dropout_key)
        return self.mlm_logits(hidden, mlm_positions)

    def full_logits(self, input_ids, segment_ids, positions, token_type_ids=None) -> jax.Array:
        """Logits ``[B, L, Vpad]`` for every token (export parity, fill-mask); eval mode."""
        hidden = self.encode(input_ids, segment_ids, positions, token_type_ids)
        return self.head(hidden, self.embeddings.table())

    def cls_hidden(
        self, input_ids, segment_ids, positions, token_type_ids=None, dropout_key=None,
        cls_index=None,
    ) -> jax.Array:  # fmt: skip
        """Hidden state ``[N, D]`` of each text's [CLS] for fine-tuning heads.

        One text per row (``N = B``) starts each row; packed rows hold several, whose
        [CLS] tokens ``cls_index`` locates as flat ``row * L + offset``.
        """
        hidden = self.encode(input_ids, segment_ids, positions, token_type_ids, dropout_key)
        if cls_index is None:
            return hidden[:, 0]
        return hidden.reshape(-1, hidden.shape[-1])[cls_index]


# ----------------------------------------------------------------------------- accounting


def abstract_encoder(cfg: ModelConfig):
    """``(graphdef, state)`` of an encoder made of shapes only: nothing is allocated."""
    return nnx.split(nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0))))


def param_count(config: Config) -> int:
    """Number of parameters (padded vocab included), from shapes only."""
    params = abstract_encoder(config.model)[1]
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def flops_per_token(config: Config) -> float:
    """Training model FLOPs per input token (forward + backward = 3x forward, 2 per MAC).

    With L layers, width D, intermediate I, sequence S, P predictions per row and
    padded vocab V::

        6 * L * N_block  +  12 * D * sum(K_l)  +  6 * (P / S) * (D*D + D*V)

    ``N_block`` is the matmul parameter count of one block (bert: 4D^2 + 2DI,
    modern: 4D^2 + 3DI). ``K_l`` is the keys a query of layer l meets: S in a global
    layer (the full bidirectional S x S score and value products, D*S MACs each per
    token, masked or not), ``min(S, 2w + 1)`` in a sliding layer of reach w. The head
    (transform dense + tied decoder) runs only at the P masked positions, so its cost
    per input token scales with P/S. Embedding gathers, norms and softmax are not
    counted.
    """
    m = config.model
    d, i, s = m.hidden_size, m.intermediate_size, config.data.seq_len
    p, v = config.data.predictions_per_row, m.padded_vocab_size
    block = 4 * d * d + (2 * d * i if m.family == "bert" else 3 * d * i)
    windows = (m.attention_window(n) for n in range(m.num_layers))
    keys = sum(s if w is None else min(s, 2 * w + 1) for w in windows)
    return float(6 * m.num_layers * block + 12 * d * keys + 6 * (p / s) * (d * d + d * v))
