"""The encoder: shapes, logical axes, sparse head, packing isolation, HF parity."""

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mlm_jax import config as config_lib
from mlm_jax.errors import UserError
from mlm_jax.model import attention as attention_lib
from mlm_jax.model import encoder as model_lib

VOCAB, SEQ = conftest.TINY_VOCAB, conftest.TINY_SEQ


def tiny_config(family: str, *extra: str):
    return conftest.tiny_config(f"model.family={family}", *extra)


def make_model(family: str, *extra: str) -> model_lib.Encoder:
    return model_lib.Encoder(tiny_config(family, *extra).model, rngs=nnx.Rngs(0))


def packed_row(doc_lengths, seed=0):
    """One row ``[1, SEQ]`` of packed documents: ids, segment ids, positions."""
    rng = np.random.default_rng(seed)
    ids = np.zeros(SEQ, np.int32)
    segments = np.zeros(SEQ, np.int32)
    positions = np.zeros(SEQ, np.int32)
    start = 0
    for number, length in enumerate(doc_lengths, start=1):
        ids[start : start + length] = rng.integers(5, VOCAB, length)
        segments[start : start + length] = number
        positions[start : start + length] = np.arange(length)
        start += length
    return jnp.asarray(ids[None]), jnp.asarray(segments[None]), jnp.asarray(positions[None])


FAMILIES = ["bert", "modern"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_has_logical_axes(family):
    model = make_model(family)
    params = nnx.state(model, nnx.Param)
    leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Param))
    assert leaves
    for path, var in leaves:
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == var.get_value().ndim, jax.tree_util.keystr(path)
        assert var.get_value().dtype == jnp.float32


def test_param_count_matches_bert_formula():
    cfg = tiny_config("bert")
    d, i, n, vpad = 32, 64, 2, cfg.model.padded_vocab_size
    embeddings = vpad * d + 64 * d + 2 * d + 2 * d
    block = 4 * (d * d + d) + 2 * (2 * d) + (d * i + i) + (i * d + d)
    head = d * d + d + 2 * d + vpad
    assert model_lib.param_count(cfg) == embeddings + n * block + head


def test_flops_per_token_formula():
    cfg = tiny_config("bert")
    d, i, n, s, p, v = 32, 64, 2, SEQ, cfg.data.predictions_per_row, 384
    expected = 6 * n * (4 * d * d + 2 * d * i) + 12 * n * d * s + 6 * p / s * (d * d + d * v)
    assert model_lib.flops_per_token(cfg) == pytest.approx(expected, rel=1e-12)
    modern = tiny_config("modern")
    assert model_lib.flops_per_token(modern) - model_lib.flops_per_token(cfg) == pytest.approx(
        6 * n * d * i
    )
    # A sliding layer of reach 4 meets 9 keys, not SEQ: layer 1 of 2 here.
    windowed = tiny_config("modern", "model.local_attention=8")
    assert model_lib.flops_per_token(modern) - model_lib.flops_per_token(windowed) == (
        pytest.approx(12 * d * (s - 9))
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_head_equals_full_logits_at_masked_positions(family):
    model = make_model(family)
    ids, segments, positions = packed_row([20, 9])
    mlm_positions = jnp.asarray([[0, 3, 7, 19, 20, 28]], jnp.int32)
    sparse = model(ids, segments, positions, mlm_positions)  # [1, P, Vpad]
    full = model.full_logits(ids, segments, positions)  # [1, L, Vpad]
    gathered = jnp.take_along_axis(full, mlm_positions[..., None], axis=1)
    assert sparse.shape == (1, 6, model.cfg.padded_vocab_size)
    real = slice(0, VOCAB)
    np.testing.assert_allclose(sparse[..., real], gathered[..., real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_vocab_columns_never_win(family):
    model = make_model(family)
    ids, segments, positions = packed_row([SEQ])
    logits = model.full_logits(ids, segments, positions)
    assert logits.shape[-1] == 384
    assert bool(jnp.all(logits[..., VOCAB:] < model_lib.PADDED_LOGIT / 2))  # never predicted
    assert bool(jnp.all(jnp.argmax(logits, -1) < VOCAB))
    assert float(jax.nn.softmax(logits, -1)[..., VOCAB:].sum()) == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_documents_do_not_see_each_other(family):
    model = make_model(family)
    ids, segments, positions = packed_row([12, 14], seed=1)
    other_ids, _, _ = packed_row([12, 14], seed=2)
    changed = ids.at[:, 12:26].set(other_ids[:, 12:26])  # replace document 2 only
    alone = ids.at[:, 12:].set(0)  # document 1 alone, then padding
    alone_segments = segments.at[:, 12:].set(0)
    hidden = model.encode(ids, segments, positions)
    hidden_changed = model.encode(changed, segments, positions)
    hidden_alone = model.encode(alone, alone_segments, positions.at[:, 12:].set(0))
    assert not np.allclose(hidden[:, 12:26], hidden_changed[:, 12:26], atol=1e-3)
    np.testing.assert_allclose(hidden[:, :12], hidden_changed[:, :12], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hidden[:, :12], hidden_alone[:, :12], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_positions_restart_per_document(family):
    """A document's output depends on its own positions, not its offset in the row."""
    model = make_model(family)
    ids, segments, positions = packed_row([10, 10, 12], seed=3)
    first = model.encode(ids[:, :10], segments[:, :10], positions[:, :10])
    shifted_ids = jnp.concatenate([ids[:, 10:20], ids[:, :10]], axis=1)
    shifted_seg = jnp.concatenate([segments[:, 10:20], segments[:, :10] + 5], axis=1)
    shifted_pos = jnp.concatenate([positions[:, 10:20], positions[:, :10]], axis=1)
    later = model.encode(shifted_ids, shifted_seg, shifted_pos)[:, 10:]
    np.testing.assert_allclose(first, later, rtol=1e-5, atol=1e-5)


def test_explicit_attention_path_matches_dot_product_attention():
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (2, SEQ, 4, 8)) for key in keys)
    segments = jnp.asarray(np.repeat([[1, 1, 2, 0]], SEQ // 4, axis=1).repeat(2, 0))
    mask = attention_lib.segment_mask(segments)
    reference = jax.nn.dot_product_attention(q, k, v, mask=mask)
    explicit = attention_lib.explicit_attention(q, k, v, mask, jnp.float32, 0.0, None, 8)
    np.testing.assert_allclose(explicit, reference, rtol=1e-5, atol=1e-5)
    # The bf16 path is the same function up to bf16 rounding of the operands.
    low = attention_lib.explicit_attention(q, k, v, mask, jnp.bfloat16, 0.0, None, 8)
    reference_low = jax.nn.dot_product_attention(
        *(t.astype(jnp.bfloat16) for t in (q, k, v)), mask=mask
    ).astype(jnp.float32)
    np.testing.assert_allclose(low, reference_low, rtol=0.02, atol=0.02)


def test_dropout_only_with_a_key():
    model = make_model("bert", "model.dropout_rate=0.3", "model.attention_dropout_rate=0.3")
    ids, segments, positions = packed_row([SEQ])
    base = model.encode(ids, segments, positions)
    np.testing.assert_array_equal(base, model.encode(ids, segments, positions))
    one = model.encode(ids, segments, positions, dropout_key=jax.random.key(1))
    again = model.encode(ids, segments, positions, dropout_key=jax.random.key(1))
    two = model.encode(ids, segments, positions, dropout_key=jax.random.key(2))
    np.testing.assert_array_equal(one, again)
    assert not np.allclose(one, base, atol=1e-3)
    assert not np.allclose(one, two, atol=1e-3)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_dropout_drops_at_its_rate_and_keeps_the_expectation(bits):
    """Every width of draw drops close to the rate, independently per element (the odd
    last dimension and each byte of a word included), and rescales the kept ones so the
    mean is unchanged; 32 bits is jax.random.bernoulli, as runs before narrow draws had."""
    x = jnp.ones((64, 257, 33), jnp.float32)
    key = jax.random.key(3)
    out = np.asarray(attention_lib.dropout(x, 0.1, key, bits))
    dropped = out == 0
    assert abs(dropped.mean() - 0.1) < 0.003, dropped.mean()
    assert abs(out.mean() - 1.0) < 0.01, out.mean()
    # Neighbours (the bytes of one word) are not correlated: the rate of both dropped.
    both = (dropped[..., 1:] & dropped[..., :-1]).mean()
    assert abs(both - 0.01) < 0.002, both
    if bits == 32:
        keep = jax.random.bernoulli(key, 0.9, x.shape)
        np.testing.assert_array_equal(out, np.where(keep, 1 / 0.9, 0).astype(np.float32))
    assert np.asarray(attention_lib.dropout(x, 0.1, jax.random.key(4), bits) == 0).mean() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_compute_keeps_float32_params_and_logits(family):
    fp32 = make_model(family)
    bf16 = make_model(family, "model.dtype=bfloat16")
    ids, segments, positions = packed_row([20, 12])
    mlm_positions = jnp.arange(6, dtype=jnp.int32)[None]
    logits32 = fp32(ids, segments, positions, mlm_positions)
    logits16 = bf16(ids, segments, positions, mlm_positions)
    assert logits16.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    # Same weights (same seed); bf16 matmul inputs change logits by bf16 rounding only.
    difference = float(jnp.max(jnp.abs(logits16[..., :VOCAB] - logits32[..., :VOCAB])))
    assert 0.0 < difference < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_cls_hidden_equals_each_text_alone(family):
    """Two texts packed in one row: each text's [CLS] state (``cls_index`` = row * L +
    offset) is the one it gets alone in a row, so packing never changes a classifier's input."""
    model = make_model(family)
    ids, segments, positions = packed_row([20, 9], seed=3)
    packed = model.cls_hidden(ids, segments, positions, cls_index=jnp.asarray([0, 20]))
    for index, (start, length) in enumerate([(0, 20), (20, 9)]):
        alone = np.zeros((1, SEQ), np.int32)
        alone[0, :length] = np.asarray(ids)[0, start : start + length]
        mask = (np.arange(SEQ) < length).astype(np.int32)[None]
        position = np.where(mask, np.arange(SEQ), 0).astype(np.int32)
        expected = model.cls_hidden(jnp.asarray(alone), jnp.asarray(mask), jnp.asarray(position))
        np.testing.assert_allclose(packed[index], expected[0], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- HF parity


def _t(x):
    import torch

    return torch.tensor(np.asarray(x))


def _linear(layer, dense, split=None):
    kernel = np.asarray(dense.kernel[...])
    layer.weight.data = _t(kernel.reshape(kernel.shape[0], -1).T)
    if dense.bias is not None:
        layer.bias.data = _t(np.asarray(dense.bias[...]).reshape(-1))


def _norm(layer, norm):
    layer.weight.data = _t(norm.scale[...])
    if norm.bias is not None:
        layer.bias.data = _t(norm.bias[...])


def _to_hf_bert(model: model_lib.Encoder):
    transformers = conftest.require("transformers")
    cfg = model.cfg
    hf = transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            type_vocab_size=cfg.type_vocab_size,
            layer_norm_eps=cfg.layer_norm_eps,
            hidden_act="gelu",
        )
    ).eval()
    emb = model.embeddings
    hf.bert.embeddings.word_embeddings.weight.data = _t(emb.word_embeddings[...][: cfg.vocab_size])
    hf.bert.embeddings.position_embeddings.weight.data = _t(emb.position_embeddings[...])
    hf.bert.embeddings.token_type_embeddings.weight.data = _t(emb.token_type_embeddings[...])
    _norm(hf.bert.embeddings.LayerNorm, emb.norm)
    for block, layer in zip(model.layers, hf.bert.encoder.layer, strict=True):
        _linear(layer.attention.self.query, block.query)
        _linear(layer.attention.self.key, block.key)
        _linear(layer.attention.self.value, block.value)
        _linear(layer.attention.output.dense, block.attention_output)
        _norm(layer.attention.output.LayerNorm, block.attention_norm)
        _linear(layer.intermediate.dense, block.intermediate)
        _linear(layer.output.dense, block.output)
        _norm(layer.output.LayerNorm, block.output_norm)
    head = hf.cls.predictions
    _linear(head.transform.dense, model.head.dense)
    _norm(head.transform.LayerNorm, model.head.norm)
    head.bias.data = _t(model.head.decoder_bias[...][: cfg.vocab_size])
    hf.tie_weights()
    return hf


def _to_hf_modern(model: model_lib.Encoder):
    transformers = conftest.require("transformers")
    cfg = model.cfg
    hf = transformers.ModernBertForMaskedLM(
        transformers.ModernBertConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            norm_eps=cfg.layer_norm_eps,
            global_rope_theta=cfg.rope_theta,
            local_rope_theta=cfg.local_rope_theta,
            local_attention=cfg.local_attention,
            layer_types=[
                "full_attention" if cfg.attention_window(n) is None else "sliding_attention"
                for n in range(cfg.num_layers)
            ],
            pad_token_id=0,
            attn_implementation="eager",
        )
    ).eval()
    hf.model.embeddings.tok_embeddings.weight.data = _t(
        model.embeddings.tok_embeddings[...][: cfg.vocab_size]
    )
    _norm(hf.model.embeddings.norm, model.embeddings.norm)
    for index, (block, layer) in enumerate(zip(model.layers, hf.model.layers, strict=True)):
        if index == 0:
            assert block.attn_norm is None
        else:
            _norm(layer.attn_norm, block.attn_norm)
        _linear(layer.attn.Wqkv, block.Wqkv)
        _linear(layer.attn.Wo, block.Wo)
        _norm(layer.mlp_norm, block.mlp_norm)
        _linear(layer.mlp.Wi, block.Wi)
        _linear(layer.mlp.Wo, block.mlp_Wo)
    _norm(hf.model.final_norm, model.final_norm)
    _linear(hf.head.dense, model.head.dense)
    _norm(hf.head.norm, model.head.norm)
    hf.decoder.bias.data = _t(model.head.decoder_bias[...][: cfg.vocab_size])
    hf.tie_weights()
    return hf


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_hugging_face_logits(family):
    torch = conftest.require("torch")
    model = make_model(family, "model.layer_norm_eps=1e-5")
    # Perturb LN/bias params so the mapping of every tensor matters (init is ones/zeros).
    state = nnx.state(model, nnx.Param)
    noise = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(state))))
    nnx.update(
        model, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(noise), x.shape), state)
    )
    hf = _to_hf_bert(model) if family == "bert" else _to_hf_modern(model)
    ids, segments, positions = packed_row([SEQ], seed=4)
    ours = np.asarray(model.full_logits(ids, segments, positions))[..., :VOCAB]
    with torch.no_grad():
        theirs = hf(input_ids=_t(ids).long(), attention_mask=_t(segments > 0).long()).logits
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-4)


def test_attention_path_follows_dtype_dropout_and_backend():
    """auto: XLA's kernel for fp32, cuDNN's fused one only for bf16 on a GPU, and the
    products written out whenever dropout applies; explicit is obeyed."""
    on_gpu = jax.default_backend() == "gpu"
    assert attention_lib.attention_path("auto", jnp.float32, 0.0) == "xla"
    assert attention_lib.attention_path("auto", jnp.float32, 0.1) == "explicit"
    assert attention_lib.attention_path("auto", jnp.bfloat16, 0.1) == "explicit"
    assert attention_lib.attention_path("auto", jnp.bfloat16, 0.0) == (
        "cudnn" if on_gpu else "explicit"
    )
    assert attention_lib.attention_path("explicit", jnp.float32, 0.0) == "explicit"


def test_attention_kernel_is_auto_or_explicit():
    assert config_lib.load(None, []).model.attention_kernel == "auto"
    with pytest.raises(UserError, match="attention_kernel"):
        config_lib.load(None, ["model.attention_kernel=cudnn"])
