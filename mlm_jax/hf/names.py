"""Our parameters as Hugging Face tensors and ``config.json``, and back: the name tables.

Pretrained encoders map onto ``BertForMaskedLM`` / ``ModernBertForMaskedLM`` (the table
in :mod:`mlm_jax.model.encoder`); fine-tuned cross-encoders onto the matching
``*ForSequenceClassification``, the encoder's tensors without the MLM head plus

  bert:   pooler -> ``bert.pooler.dense``; classifier -> ``classifier``
  modern: pooler -> ``head.dense``; pooler_norm -> ``head.norm``; classifier -> ``classifier``

Our kernels are ``[in, *out]``; torch ``Linear.weight`` is ``[out, in]``. The vocabulary
axis is padded to a multiple of 128 inside the model; exports hold ``model.vocab_size``
rows and imports pad them back. Tied copies (``cls.predictions.decoder.weight``,
``decoder.weight``) are not written, as ``save_pretrained`` does not write them:
``tie_word_embeddings`` restores them on load.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from mlm_jax import distributed
from mlm_jax.config import Config, ModelConfig
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.errors import UserError
from mlm_jax.model.cross_encoder import abstract_cross_encoder, num_outputs
from mlm_jax.model.encoder import abstract_encoder
from mlm_jax.model.tasks import task_of

# ----------------------------------------------------------------------------- tensor names

# Kinds of leaves: "kernel" (transposed to torch [out, in]), "bias" (flattened: a fused
# Wqkv's [3, D] is torch's [3D]), "plain" (same array), "vocab" (first axis cut to
# model.vocab_size on export, zero-padded on import).


def _dense(ours: tuple, hf: str) -> list[tuple[tuple, str, str]]:
    return [
        (ours + ("kernel",), f"{hf}.weight", "kernel"),
        (ours + ("bias",), f"{hf}.bias", "bias"),
    ]


def _norm(ours: tuple, hf: str) -> list[tuple[tuple, str, str]]:
    return [(ours + ("scale",), f"{hf}.weight", "plain"), (ours + ("bias",), f"{hf}.bias", "plain")]


def _bert_names(cfg: ModelConfig) -> list[tuple[tuple, str, str]]:
    e = "bert.embeddings"
    names = [
        (("embeddings", "word_embeddings"), f"{e}.word_embeddings.weight", "vocab"),
        (("embeddings", "position_embeddings"), f"{e}.position_embeddings.weight", "plain"),
        (("embeddings", "token_type_embeddings"), f"{e}.token_type_embeddings.weight", "plain"),
        *_norm(("embeddings", "norm"), f"{e}.LayerNorm"),
    ]
    for n in range(cfg.num_layers):
        hf = f"bert.encoder.layer.{n}"
        names += [
            *_dense(("layers", n, "query"), f"{hf}.attention.self.query"),
            *_dense(("layers", n, "key"), f"{hf}.attention.self.key"),
            *_dense(("layers", n, "value"), f"{hf}.attention.self.value"),
            *_dense(("layers", n, "attention_output"), f"{hf}.attention.output.dense"),
            *_norm(("layers", n, "attention_norm"), f"{hf}.attention.output.LayerNorm"),
            *_dense(("layers", n, "intermediate"), f"{hf}.intermediate.dense"),
            *_dense(("layers", n, "output"), f"{hf}.output.dense"),
            *_norm(("layers", n, "output_norm"), f"{hf}.output.LayerNorm"),
        ]
    return names + [
        *_dense(("head", "dense"), "cls.predictions.transform.dense"),
        *_norm(("head", "norm"), "cls.predictions.transform.LayerNorm"),
        (("head", "decoder_bias"), "cls.predictions.bias", "vocab"),
    ]


def _modern_names(cfg: ModelConfig) -> list[tuple[tuple, str, str]]:
    names = [
        (("embeddings", "tok_embeddings"), "model.embeddings.tok_embeddings.weight", "vocab"),
        *_norm(("embeddings", "norm"), "model.embeddings.norm"),
    ]
    for n in range(cfg.num_layers):
        hf = f"model.layers.{n}"
        names += [
            *_norm(("layers", n, "attn_norm"), f"{hf}.attn_norm"),
            *_dense(("layers", n, "Wqkv"), f"{hf}.attn.Wqkv"),
            *_dense(("layers", n, "Wo"), f"{hf}.attn.Wo"),
            *_norm(("layers", n, "mlp_norm"), f"{hf}.mlp_norm"),
            *_dense(("layers", n, "Wi"), f"{hf}.mlp.Wi"),
            *_dense(("layers", n, "mlp_Wo"), f"{hf}.mlp.Wo"),
        ]
    return names + [
        *_norm(("final_norm",), "model.final_norm"),
        *_dense(("head", "dense"), "head.dense"),
        *_norm(("head", "norm"), "head.norm"),
        (("head", "decoder_bias"), "decoder.bias", "vocab"),
    ]


def abstract_params(cfg: ModelConfig) -> nnx.State:
    return abstract_encoder(cfg)[1]


def leaf_names(cfg: ModelConfig, abstract: nnx.State) -> dict[tuple, tuple[str, str]]:
    """Our parameter path -> (HF tensor name, kind), for exactly the leaves the model has."""
    table = _bert_names(cfg) if cfg.family == "bert" else _modern_names(cfg)
    lookup = {ours: (hf, kind) for ours, hf, kind in table}
    paths = [tuple(path) for path, _ in nnx.to_flat_state(abstract)]
    unmapped = [path for path in paths if path not in lookup]
    if unmapped:  # a model change that this table does not know: a bug, not a user error
        raise AssertionError(f"parameters without a Hugging Face name: {unmapped}")
    return {path: lookup[path] for path in paths}


def to_hf_state_dict(config: Config, params: nnx.State) -> dict[str, np.ndarray]:
    """Our parameters -> HF ``*ForMaskedLM`` tensors (float32, vocab padding removed).

    Gathers sharded parameters, so every process of a multi-host run must call it.
    """
    cfg = config.model
    host = distributed.gather_to_host(params)
    names = leaf_names(cfg, host)
    tensors = {}
    for path, var in nnx.to_flat_state(host):
        hf_name, kind = names[tuple(path)]
        value = np.asarray(var.get_value(), dtype=np.float32)
        if kind == "kernel":
            value = value.reshape(value.shape[0], -1).T
        elif kind == "bias":
            value = value.reshape(-1)
        elif kind == "vocab":
            value = value[: cfg.vocab_size]
        tensors[hf_name] = np.ascontiguousarray(value)
    return tensors


def from_hf_state_dict(config: Config, tensors: dict[str, np.ndarray]) -> nnx.State:
    """HF tensors (our export's names, tied copies optional) -> an ``nnx.State`` of numpy arrays.

    Raises UserError naming the first missing tensor or wrong shape.
    """
    cfg = config.model
    abstract = abstract_params(cfg)
    names = leaf_names(cfg, abstract)
    leaves = []
    for path, var in nnx.to_flat_state(abstract):
        hf_name, kind = names[tuple(path)]
        shape = tuple(var.get_value().shape)
        expected = _hf_shape(shape, kind, cfg.vocab_size)
        if hf_name not in tensors:
            raise UserError(
                f"checkpoint lacks tensor {hf_name!r}; is it a {cfg.family} model "
                "with these model.* settings?"
            )
        value = np.asarray(tensors[hf_name], dtype=np.float32)
        if value.shape != expected:
            raise UserError(
                f"tensor {hf_name!r} has shape {value.shape}, the config expects {expected}; "
                "set model.* to the checkpoint's values (see `hf_model_config`)"
            )
        if kind in ("kernel", "bias"):
            value = value.T.reshape(shape)
        elif kind == "vocab":
            value = np.concatenate([value, np.zeros((shape[0] - value.shape[0], *shape[1:]))])
        leaves.append((path, var.replace(np.ascontiguousarray(value, dtype=np.float32))))
    return nnx.from_flat_state(leaves)


def _hf_shape(shape: tuple[int, ...], kind: str, vocab_size: int) -> tuple[int, ...]:
    if kind == "kernel":
        return (int(np.prod(shape[1:])), shape[0])
    if kind == "bias":
        return (int(np.prod(shape)),)
    if kind == "vocab":
        return (vocab_size, *shape[1:])
    return shape


# ----------------------------------------------------------------------------- config.json


def hf_max_positions(config: Config) -> int:
    """The positions a Hugging Face copy of the model announces (config and tokenizer).

    BERT has a learned table of ``max_position_embeddings`` rows; rotary (modern) has no
    table, so any length works and we announce at least the training length.
    """
    m = config.model
    if m.family == "bert":
        return m.max_position_embeddings
    return max(m.max_position_embeddings, config.data.seq_len)


def hf_config(config: Config) -> dict[str, Any]:
    """``config.json`` of the matching ``transformers`` class, computing what our model does."""
    m = config.model
    common = {
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "intermediate_size": m.intermediate_size,
        "initializer_range": 0.02,
        "pad_token_id": tokenizer_lib.PAD_ID,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }
    if m.family == "bert":
        return {
            "architectures": ["BertForMaskedLM"],
            "model_type": "bert",
            **common,
            "hidden_act": "gelu",  # exact erf GELU, as model.gelu
            "hidden_dropout_prob": m.dropout_rate,
            "attention_probs_dropout_prob": m.attention_dropout_rate,
            "max_position_embeddings": hf_max_positions(config),
            "type_vocab_size": m.type_vocab_size,
            "layer_norm_eps": m.layer_norm_eps,
            "position_embedding_type": "absolute",
            "is_decoder": False,
            "add_cross_attention": False,
            "classifier_dropout": None,
        }
    max_positions = hf_max_positions(config)
    types = [
        "full_attention" if m.attention_window(n) is None else "sliding_attention"
        for n in range(m.num_layers)
    ]
    return {
        "architectures": ["ModernBertForMaskedLM"],
        "model_type": "modernbert",
        **common,
        "hidden_activation": "gelu",
        "classifier_activation": "gelu",  # the MLM head's transform activation
        "max_position_embeddings": max_positions,
        "norm_eps": m.layer_norm_eps,
        "norm_bias": m.norm_bias,
        "attention_bias": m.attention_bias,
        "mlp_bias": m.mlp_bias,
        "classifier_bias": m.classifier_bias,  # head.dense
        "decoder_bias": True,
        "embedding_dropout": m.dropout_rate,
        "attention_dropout": m.attention_dropout_rate,
        "mlp_dropout": m.dropout_rate,
        "classifier_dropout": 0.0,
        "classifier_pooling": "cls",
        "layer_types": types,
        "global_attn_every_n_layers": m.global_attn_every_n_layers,
        "local_attention": m.local_attention,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": m.rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": m.local_rope_theta},
        },
        "global_rope_theta": m.rope_theta,  # transformers 4.x reads these two
        "local_rope_theta": m.local_rope_theta,
        "initializer_cutoff_factor": 2.0,
        "cls_token_id": tokenizer_lib.CLS_ID,
        "sep_token_id": tokenizer_lib.SEP_ID,
        "bos_token_id": tokenizer_lib.CLS_ID,
        "eos_token_id": tokenizer_lib.SEP_ID,
        "sparse_prediction": False,
        "deterministic_flash_attn": False,
    }


# ----------------------------------------------------------------------------- classifiers

_HEAD_NAMES = {
    "bert": {"pooler": "bert.pooler.dense", "classifier": "classifier"},
    "modern": {"pooler": "head.dense", "pooler_norm": "head.norm", "classifier": "classifier"},
}
_MLM_HEAD_PREFIXES = {"bert": ("cls.",), "modern": ("head.", "decoder.")}
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_ARCHITECTURES = {
    "bert": "BertForSequenceClassification",
    "modern": "ModernBertForSequenceClassification",
}


def to_hf_tensors(config, params: nnx.State) -> dict[str, np.ndarray]:
    """Our fine-tuned parameters -> HF sequence-classification tensors (collective)."""
    family = config.model.family
    host = distributed.gather_to_host(params)
    tensors = {
        name: value
        for name, value in to_hf_state_dict(config, host["encoder"]).items()
        if not name.startswith(_MLM_HEAD_PREFIXES[family])
    }
    for path, var in nnx.to_flat_state(host):
        if path[0] == "encoder":
            continue
        value = np.asarray(var.get_value(), np.float32)
        name = f"{_HEAD_NAMES[family][path[0]]}.{_LEAF_NAMES[path[-1]]}"
        tensors[name] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
    return tensors


def from_hf_tensors(config, tensors: dict[str, np.ndarray]) -> nnx.State:
    """HF sequence-classification tensors -> our parameters (host numpy); the MLM head zeros."""
    family, abstract = config.model.family, abstract_cross_encoder(config)[1]
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), abstract["encoder"])
    encoder_tensors = to_hf_state_dict(config, zeros)  # every name, MLM head included
    encoder_tensors.update(tensors)
    encoder = nnx.to_flat_state(from_hf_state_dict(config, encoder_tensors))
    leaves = [(("encoder", *path), var) for path, var in encoder]
    for path, var in nnx.to_flat_state(abstract):
        if path[0] == "encoder":
            continue
        name = f"{_HEAD_NAMES[family][path[0]]}.{_LEAF_NAMES[path[-1]]}"
        if name not in tensors:
            raise UserError(f"checkpoint lacks tensor {name!r}; export the fine-tuned run again")
        value = np.asarray(tensors[name], np.float32)
        value = value.T if path[-1] == "kernel" else value
        if value.shape != var.get_value().shape:
            raise UserError(f"tensor {name!r} has shape {value.shape}, expected {var.shape}")
        leaves.append((path, var.replace(np.ascontiguousarray(value))))
    return nnx.from_flat_state(leaves)


def hf_classifier_config(config) -> dict:
    """``config.json`` of the matching ``*ForSequenceClassification``."""
    hf = hf_config(config)
    outputs = num_outputs(config)
    hf["architectures"] = [_ARCHITECTURES[config.model.family]]
    hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(outputs)}
    hf["label2id"] = {f"LABEL_{i}": i for i in range(outputs)}
    if config.finetune.task == "rerank":
        # CrossEncoder applies a sigmoid to one-label models unless told otherwise.
        hf["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    return hf


# ----------------------------------------------------------------------------- by task

# How each kind of task (``mlm_jax.model.tasks``) travels to and from transformers:
# (our parameters -> tensors, config.json, tensors -> our parameters).
_BY_EXPORT_KIND = {
    "masked_lm": (to_hf_state_dict, hf_config, from_hf_state_dict),
    "sequence_classification": (to_hf_tensors, hf_classifier_config, from_hf_tensors),
}


def exported(config, params: nnx.State) -> tuple[dict[str, np.ndarray], dict]:
    """``(tensors, config.json)`` of the run's model as transformers reads it (collective)."""
    to_tensors, to_config, _ = _BY_EXPORT_KIND[task_of(config).export_kind]
    return to_tensors(config, params), to_config(config)


def imported(config, tensors: dict[str, np.ndarray]) -> nnx.State:
    """Our export's tensors -> the run's parameters (host numpy)."""
    return _BY_EXPORT_KIND[task_of(config).export_kind][2](config, tensors)
