"""ModernBERT as transformers builds it: sliding-window layers, biases, import and export.

A randomly initialised ``transformers.ModernBertForMaskedLM`` in its default layer pattern
(a global layer every third, the others a sliding window with their own rotary base), with
and without biases, goes through ``hf:`` import, our forward pass on rows longer than the
window (padded, and packed with several documents), export back, and a short ``train``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_VOCAB, require, run_cli, write_config
from flax import nnx

from mlm_jax import config as config_lib
from mlm_jax.hf import names, reader
from mlm_jax.model import attention as attention_lib
from mlm_jax.model.encoder import Encoder

torch = require("torch")
transformers = require("transformers")

WINDOW = 16  # transformers' local_attention: a token sees 8 tokens either side
LENGTH = 64  # rows four windows long
TOLERANCE = 1e-4
BIASES = {"attention_bias": True, "mlp_bias": True, "norm_bias": True, "classifier_bias": True}


def _hf_model(biases: bool, seed: int = 0, vocab: int = TINY_VOCAB):
    """transformers' ModernBERT at its defaults but for size, every tensor off its init."""
    torch.manual_seed(seed)
    hf_config = transformers.ModernBertConfig(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=128, local_attention=WINDOW,
        pad_token_id=0, attn_implementation="eager", **(BIASES if biases else {}),
    )  # fmt: skip
    model = transformers.ModernBertForMaskedLM(hf_config)
    global_, local = "full_attention", "sliding_attention"
    assert model.config.layer_types == [global_, local, local, global_]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():  # the tied decoder moves with the embeddings
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _imported(directory):
    settings = {**reader.hf_model_config(directory), "dropout_rate": 0.0}
    config = config_lib.from_dict({"model": {**settings, "attention_dropout_rate": 0.0}})
    params = reader.load_hf_checkpoint(directory, config)
    model = nnx.merge(nnx.split(Encoder(config.model, rngs=nnx.Rngs(0)))[0], params)
    return config, params, model


def _documents(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(5, TINY_VOCAB, n).astype(np.int32) for n in (LENGTH, 41, 23)]


def _theirs(hf_model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)
        )
    return out.logits.numpy()


def _ours_padded(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    return np.asarray(model.full_logits(ids, mask, positions))[..., :TINY_VOCAB]


def _padded(documents):
    ids = np.zeros((len(documents), LENGTH), np.int32)
    mask = np.zeros_like(ids)
    for row, doc in enumerate(documents):
        ids[row, : len(doc)], mask[row, : len(doc)] = doc, 1
    return ids, mask


@pytest.mark.parametrize("biases", [False, True], ids=["bias-free", "biases"])
def test_transformers_modernbert_imports_matches_and_exports_back(biases, tmp_path):
    hf_model = _hf_model(biases)
    hf_model.save_pretrained(tmp_path / "hf")
    config, params, model = _imported(tmp_path / "hf")
    m = config.model
    assert (m.global_attn_every_n_layers, m.local_attention) == (3, WINDOW)
    assert (m.rope_theta, m.local_rope_theta) == (160000.0, 10000.0)
    assert all(getattr(m, flag) == biases for flag in BIASES)
    assert [m.attention_window(n) for n in range(4)] == [None, 8, 8, None]

    # Padded rows, one as long as the row (LENGTH tokens, four windows).
    documents = _documents(seed=1)
    ids, mask = _padded(documents)
    theirs = _theirs(hf_model, ids, mask)
    ours = _ours_padded(model, ids, mask)
    real = mask.astype(bool)
    assert np.abs(theirs - ours)[real].max() <= TOLERANCE
    # The sliding window matters: all-global layers give other logits.
    global_model = nnx.merge(
        nnx.split(
            Encoder(m.model_copy(update={"global_attn_every_n_layers": 1}), rngs=nnx.Rngs(0))
        )[0],
        params,
    )
    assert np.abs(_ours_padded(global_model, ids, mask) - theirs)[real].max() > 100 * TOLERANCE

    # Packed: the two shorter documents in one row, positions restarting, each scored alone
    # by transformers (no attention across documents in either kind of layer).
    short = documents[1:]
    packed = np.concatenate(short + [np.zeros(LENGTH - sum(map(len, short)), np.int32)])
    segments = np.concatenate(
        [np.full(len(d), i + 1, np.int32) for i, d in enumerate(short)]
        + [np.zeros(LENGTH - sum(map(len, short)), np.int32)]
    )
    positions = np.concatenate(
        [np.arange(len(d), dtype=np.int32) for d in short]
        + [np.zeros(LENGTH - sum(map(len, short)), np.int32)]
    )
    ours_packed = np.asarray(model.full_logits(packed[None], segments[None], positions[None]))
    start = 0
    for doc in short:
        alone = _theirs(hf_model, doc[None], np.ones((1, len(doc)), np.int64))[0]
        got = ours_packed[0, start : start + len(doc), :TINY_VOCAB]
        assert np.abs(alone - got).max() <= TOLERANCE
        start += len(doc)

    # Export back: the very tensors transformers saved, and a config it reads the same.
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "hf" / "model.safetensors"))
    exported = names.to_hf_state_dict(config, params)
    assert set(exported) == set(saved) - {"decoder.weight"}  # tied to the embeddings
    for name, value in exported.items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)
    back = transformers.ModernBertForMaskedLM(
        transformers.ModernBertConfig(**names.hf_config(config), attn_implementation="eager")
    )
    missing, unexpected = back.load_state_dict(
        {k: torch.from_numpy(v) for k, v in exported.items()}, strict=False
    )
    assert not unexpected and set(missing) <= {"decoder.weight"}, (missing, unexpected)
    back.tie_weights()
    assert back.config.layer_types == hf_model.config.layer_types
    assert np.abs(_theirs(back.eval(), ids, mask) - ours)[real].max() <= TOLERANCE


def _reference(q, k, v, segment_ids, window):
    mask = attention_lib.segment_mask(segment_ids) & attention_lib.band(q.shape[1], window)
    return attention_lib.explicit_attention(q, k, v, mask, jnp.float32, 0.0, None, 8)


def _qkv_and_segments(length: int, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q, k, v = (jax.random.normal(key, (2, length, 2, 16)) for key in keys)
    # Row 0: documents of 100, 60 and 30 tokens, then padding; row 1: one document.
    ids = np.zeros((2, length), np.int32)
    ids[0, :100], ids[0, 100:160], ids[0, 160:190] = 1, 2, 3
    ids[1] = 1
    return q, k, v, jnp.asarray(ids)


def test_blocked_window_computes_the_banded_square():
    length, window = 256, 16
    q, k, v, segment_ids = _qkv_and_segments(length)
    assert attention_lib.blocked_window_pays(length, window)
    blocked = attention_lib.windowed_attention(
        q, k, v, segment_ids, window, jnp.float32, 0.0, None, 8
    )
    np.testing.assert_allclose(blocked, _reference(q, k, v, segment_ids, window), atol=1e-5)
    # With dropout, the same key gives the same output and another key another one.
    drop = lambda key: attention_lib.windowed_attention(  # noqa: E731
        q, k, v, segment_ids, window, jnp.float32, 0.5, key, 8
    )
    first, again = drop(jax.random.key(1)), drop(jax.random.key(1))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - drop(jax.random.key(2))).max() > 0.1


def test_splash_local_mask_computes_the_banded_square():
    """Pallas' splash kernel in interpret mode on this CPU, with the sliding-window mask."""
    from mlm_jax.model import splash

    length, window = 256, 16
    q, k, v, segment_ids = _qkv_and_segments(length, seed=3)
    out = splash.splash_attention(q, k, v, segment_ids, jnp.float32, window=window, interpret=True)
    np.testing.assert_allclose(out, _reference(q, k, v, segment_ids, window), atol=2e-5)


def test_train_from_a_transformers_modernbert_then_export(run_inputs, tmp_path):
    """`train` from `hf:` (its shapes in model.*), a few steps, then `export`, which checks
    transformers' logits on the written directory against ours."""
    hf_model = _hf_model(biases=True, seed=2, vocab=640)  # the shared tokenizer's 600 fit
    hf_model.save_pretrained(tmp_path / "hf")
    settings = {**reader.hf_model_config(tmp_path / "hf"), "init_from": f"hf:{tmp_path / 'hf'}"}
    config = write_config(
        tmp_path / "run.yaml", run_inputs, model=settings,
        data={"seq_len": LENGTH}, train={"steps": 3, "eval_every": 0, "checkpoint_every": 3},
    )  # fmt: skip
    run_cli("train", "--config", config, "--workdir", tmp_path / "run", check=True)
    losses = [
        json.loads(line).get("train/loss")
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(loss is not None and np.isfinite(loss) for loss in losses), losses
    export = run_cli("export", "--workdir", tmp_path / "run", "--out", tmp_path / "out")
    assert export.returncode == 0, export.stderr
    assert "export verified" in export.stdout + export.stderr
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["layer_types"] == hf_model.config.layer_types
    assert exported["attention_bias"] and exported["local_attention"] == WINDOW
