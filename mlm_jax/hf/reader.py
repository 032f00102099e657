"""Hugging Face checkpoints in: ``model.init_from: hf:PATH``, and inference on HF directories.

Reads ``config.json`` and ``model.safetensors`` (never pickle) of a ``BertModel``,
``BertForMaskedLM`` or ``ModernBertForMaskedLM`` (sliding-window and global layers in
ModernBERT's pattern, with or without biases), checks the shapes against ``model.*``,
and creates a missing MLM head the way ``transformers`` does, with one
warning listing it. Tensor names come from :mod:`mlm_jax.hf.names`' tables.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from mlm_jax import config as config_lib
from mlm_jax.config import Config
from mlm_jax.errors import UserError
from mlm_jax.hf import names

logger = logging.getLogger(__name__)

# Tensors of HF checkpoints that an MLM encoder does not use.
_IGNORED_HF_PREFIXES = ("bert.pooler.", "pooler.", "cls.seq_relationship.")
_IGNORED_HF_SUFFIXES = ("position_ids",)


def _read_hf_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(
            f"{str(path)!r} has no config.json; point model.init_from at a Hugging Face "
            "model directory (hf:PATH)"
        )
    stat = config_path.stat()
    return dict(_parsed_json(str(config_path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _parsed_json(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """One parse per file version: an import reads config.json from several places."""
    del mtime_ns, size  # cache keys: a rewritten file is parsed again
    return json.loads(Path(path).read_text())


def hf_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``model.*`` config values that match the HF checkpoint at ``path``."""
    path = Path(path)
    hf = _read_hf_config(path)
    kind = hf.get("model_type")
    if kind == "bert":
        if hf.get("hidden_act", "gelu") != "gelu":
            raise UserError(
                f"{path} uses hidden_act={hf['hidden_act']!r}; only exact 'gelu' BERTs import"
            )
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise UserError(f"{path} uses relative positions; only absolute-position BERTs import")
        return {
            "family": "bert",
            "num_layers": hf["num_hidden_layers"],
            "hidden_size": hf["hidden_size"],
            "num_heads": hf["num_attention_heads"],
            "intermediate_size": hf["intermediate_size"],
            "vocab_size": hf["vocab_size"],
            "max_position_embeddings": hf["max_position_embeddings"],
            "type_vocab_size": hf.get("type_vocab_size", 2),
            "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
        }
    if kind == "modernbert":
        return _modern_model_config(path, hf)
    raise UserError(f"{path} holds a {kind!r} model; only bert and modernbert checkpoints import")


def _modern_model_config(path: Path, hf: dict[str, Any]) -> dict[str, Any]:
    layers = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [
        "full_attention" if i % hf.get("global_attn_every_n_layers", 3) == 0 else "sliding"
        for i in range(layers)
    ]
    rope = hf.get("rope_parameters") or {}
    full, sliding = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
    scaled = {k.get("rope_type", "default") for k in (full, sliding)} - {"default"}
    if scaled:
        raise UserError(
            f"{path} scales its rotary embeddings ({', '.join(sorted(scaled))}); only the "
            "default rotary embedding imports"
        )
    for field in ("hidden_activation", "classifier_activation"):
        if hf.get(field, "gelu") != "gelu":
            raise UserError(f"{path} uses {field}={hf[field]!r}; only gelu (exact erf) imports")
    return {
        "family": "modern",
        "num_layers": layers,
        "hidden_size": hf["hidden_size"],
        "num_heads": hf["num_attention_heads"],
        "intermediate_size": hf["intermediate_size"],
        "vocab_size": hf["vocab_size"],
        "max_position_embeddings": hf.get("max_position_embeddings", 8192),
        "layer_norm_eps": hf.get("norm_eps", 1e-5),
        "rope_theta": full.get("rope_theta", hf.get("global_rope_theta", 160000.0)),
        "local_rope_theta": sliding.get("rope_theta", hf.get("local_rope_theta", 10000.0)),
        "global_attn_every_n_layers": _global_interval(path, types),
        "local_attention": hf.get("local_attention", 128),
        **{f: bool(hf.get(f, False)) for f in _MODERN_BIASES},
    }


_MODERN_BIASES = ("attention_bias", "mlp_bias", "norm_bias", "classifier_bias")


def _global_interval(path: Path, types: list[str]) -> int:
    """The n of a layer pattern where layer i is global exactly when i % n == 0."""
    layers = len(types)
    globals_ = [i for i, kind in enumerate(types) if kind == "full_attention"]
    every = globals_[1] if len(globals_) > 1 else layers
    if globals_ != list(range(0, layers, every)):
        raise UserError(
            f"{path} places its global-attention layers at {globals_}; only the pattern "
            "'layer i is global when i % n == 0' (ModernBERT's) imports"
        )
    return every


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(load_file(str(path / shard)))
        return tensors
    raise UserError(
        f"{str(path)!r} has no model.safetensors; re-save the model with "
        "`save_pretrained(dir, safe_serialization=True)` (pickled .bin files are not read)"
    )


def _head_defaults(config: Config, hf: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """MLM-head tensors initialized as ``transformers`` does (normal dense, LN ones/zeros)."""
    d, v = config.model.hidden_size, config.model.vocab_size
    rng = np.random.default_rng(seed)
    std = hf.get("initializer_range", 0.02)
    if config.model.family == "bert":
        return {
            "cls.predictions.transform.dense.weight": rng.normal(0.0, std, (d, d)),
            "cls.predictions.transform.dense.bias": np.zeros(d),
            "cls.predictions.transform.LayerNorm.weight": np.ones(d),
            "cls.predictions.transform.LayerNorm.bias": np.zeros(d),
            "cls.predictions.bias": np.zeros(v),
        }
    m = config.model
    return {
        "head.dense.weight": rng.normal(0.0, std, (d, d)),
        **({"head.dense.bias": np.zeros(d)} if m.classifier_bias else {}),
        "head.norm.weight": np.ones(d),
        **({"head.norm.bias": np.zeros(d)} if m.norm_bias else {}),
        "decoder.bias": np.zeros(v),
    }


def _canonical_names(tensors: dict[str, np.ndarray], family: str) -> dict[str, np.ndarray]:
    """Add the base-model prefix when missing (``BertModel``), rename old LN gamma/beta."""
    prefix = "bert." if family == "bert" else "model."
    heads = ("cls.", "head.", "decoder.")
    out = {}
    for name, value in tensors.items():
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
        name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        if not name.startswith((prefix, *heads)):
            name = prefix + name
        out[name] = value
    return out


def load_hf_checkpoint(path: str | os.PathLike, config: Config, seed: int = 0) -> nnx.State:
    """Parameters from a HF BERT (``BertModel``/``BertForMaskedLM``) or ModernBERT directory.

    ``config.model`` must match the checkpoint (UserError naming the fields otherwise).
    A missing MLM head is initialized as ``transformers`` would, with one warning.
    Returns an ``nnx.State`` of host numpy arrays (place it with ``jax.device_put``).
    """
    path = Path(path)
    expected = hf_model_config(path)
    hf = _read_hf_config(path)
    ours = config.model.model_dump()
    mismatched = [
        f"model.{key}={ours[key]!r} (checkpoint: {value!r})"
        for key, value in expected.items()
        if not _same(ours[key], value)
    ]
    if mismatched:
        raise UserError(
            f"config does not match {path}: {', '.join(mismatched)}; set these model.* values"
        )
    tensors = _canonical_names(read_safetensors(path), config.model.family)
    tied = "cls.predictions.decoder.weight" if config.model.family == "bert" else "decoder.weight"
    table = tensors.get(_table_name(config))
    if tied in tensors and table is not None and not np.array_equal(tensors[tied], table):
        raise UserError(
            f"{path} has an output projection untied from the embeddings; "
            "our models tie them, so this checkpoint cannot be imported"
        )
    tensors.pop(tied, None)
    tensors.pop("cls.predictions.decoder.bias", None)  # the same tensor as cls.predictions.bias
    if config.model.family == "modern" and not hf.get("decoder_bias", True):
        tensors["decoder.bias"] = np.zeros(config.model.vocab_size, np.float32)  # a zero bias
    missing = {k: v for k, v in _head_defaults(config, hf, seed).items() if k not in tensors}
    if missing:
        logger.warning(
            "%s has no MLM head; initialized %s as transformers does",
            path,
            ", ".join(sorted(missing)),
        )
        tensors.update(missing)
    known = set(names.leaf_names(config.model, names.abstract_params(config.model)).values())
    known_names = {name for name, _ in known}
    unexpected = [
        name
        for name in tensors
        if name not in known_names
        and not name.startswith(_IGNORED_HF_PREFIXES)
        and not name.endswith(_IGNORED_HF_SUFFIXES)
    ]
    if unexpected:
        raise UserError(
            f"{path} holds tensors our {config.model.family} model has no place for "
            f"({', '.join(sorted(unexpected)[:5])}); import only BERT/ModernBERT MLM checkpoints"
        )
    return names.from_hf_state_dict(config, tensors)


def _table_name(config: Config) -> str:
    if config.model.family == "bert":
        return "bert.embeddings.word_embeddings.weight"
    return "model.embeddings.tok_embeddings.weight"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return bool(np.isclose(float(a), float(b), rtol=1e-6, atol=0.0))
    return a == b


def read_export(directory: Path):
    """``(config, params)`` of one of our exports, pretrained or fine-tuned; host arrays.

    The config is the one it was trained with, its tokenizer the export's own copy and
    its mesh this host's devices.
    """
    saved = json.loads((directory / "mlm_jax.json").read_text())["config"]
    saved["data"]["tokenizer"] = str(directory)  # the export carries its tokenizer
    saved["mesh"] = {"data": -1, "fsdp": 1, "tensor": 1}
    config = config_lib.from_dict(saved, origin=str(directory / "mlm_jax.json"))
    tensors = read_safetensors(directory)
    return config, names.imported(config, tensors)
