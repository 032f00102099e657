"""The cross-encoder: a pretrained encoder with a pooler and a classifier on ``[CLS]``.

Classification and reranking both fine-tune this model: ``num_outputs`` classes, or one
output whose logit is the relevance score. Its tensors are those of Hugging Face's
``BertForSequenceClassification`` / ``ModernBertForSequenceClassification``
(:mod:`mlm_jax.hf.names`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mlm_jax.model.attention import dropout
from mlm_jax.model.encoder import Dense, Encoder, LayerNorm, gelu


class CrossEncoder(nnx.Module):
    """Encoder + pooler on ``[CLS]`` + classifier: logits ``[N, num_outputs]``, a row per text
    (or, for packed rows, per ``cls_index``)."""

    def __init__(self, cfg, num_outputs: int, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        dtype = self.encoder.dtype
        bert = cfg.family == "bert"
        pooler_bias = bert or cfg.classifier_bias
        self.pooler = Dense(d, d, ("embed", None), use_bias=pooler_bias, dtype=dtype, rngs=rngs)
        self.pooler_norm = (
            None
            if bert
            else LayerNorm(d, eps=cfg.layer_norm_eps, use_bias=cfg.norm_bias, rngs=rngs)
        )
        self.classifier = Dense(
            d, num_outputs, ("embed", None), use_bias=True, dtype=dtype, rngs=rngs
        )

    def __call__(
        self, input_ids, segment_ids, positions, token_type_ids, dropout_key=None, cls_index=None
    ):
        encoder_key = head_key = None
        if dropout_key is not None:
            encoder_key, head_key = (jax.random.fold_in(dropout_key, i) for i in range(2))
        cls = self.encoder.cls_hidden(
            input_ids, segment_ids, positions, token_type_ids, encoder_key, cls_index
        )
        if self.pooler_norm is None:
            pooled = jnp.tanh(self.pooler(cls))  # BertPooler
        else:
            pooled = self.pooler_norm(gelu(self.pooler(cls)))  # ModernBertPredictionHead
        return self.classifier(
            dropout(pooled, self.cfg.dropout_rate, head_key, self.cfg.dropout_bits)
        )  # [B, C]


def num_outputs(config) -> int:
    return config.finetune.num_labels if config.finetune.task == "classify" else 1


def abstract_cross_encoder(config) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, params)`` of the cross-encoder, made of shapes only."""
    outputs = num_outputs(config)
    return nnx.split(nnx.eval_shape(lambda: CrossEncoder(config.model, outputs, rngs=nnx.Rngs(0))))
