"""The one "directory -> model" loader for everything that predicts or scores.

It accepts what the other commands produce and what the ecosystem ships:

* our export (``mlm_jax.json`` + ``model.safetensors`` + ``spm.model``): the config and
  tokenizer it was trained with, a pretrained encoder or a fine-tuned cross-encoder;
* any Hugging Face BERT / ModernBERT directory (``config.json`` + ``model.safetensors``
  + ``tokenizer.json``), its config derived by :func:`mlm_jax.hf.reader.hf_model_config`;
* a training or fine-tuning run (``config.yaml``/``checkpoints``): its newest checkpoint.

Models load on this host's devices with float32 products by default, as ``transformers``
computes; ``dtype=None`` keeps the products the model records (``model.dtype``), which a
reranker scores with (:mod:`mlm_jax.inference.scoring`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from mlm_jax import config as config_lib
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.errors import UserError
from mlm_jax.hf import reader
from mlm_jax.model import sharding
from mlm_jax.state import restore, train_state


@dataclass
class Loaded:
    config: Any
    graphdef: Any
    params: Any
    tokenizer: Any

    @property
    def fine_tuned(self) -> bool:
        return self.config.finetune is not None


def model_kind(path: str | os.PathLike) -> str:
    """``export``, ``run`` or ``foreign`` (a Hugging Face BERT we did not write), read from
    the directory's files alone, so a caller can refuse a bad path before any work."""
    directory = Path(path)
    if (directory / "mlm_jax.json").is_file():
        return "export"
    if (directory / "config.yaml").is_file() or (directory / "checkpoints").is_dir():
        return "run"
    if (directory / "config.json").is_file():
        return "foreign"
    raise UserError(
        f"{str(directory)!r} is neither an export (config.json) nor a run directory "
        "(config.yaml, checkpoints/); pass one of them"
    )


def load(path: str | os.PathLike, dtype: str | None = "float32") -> Loaded:
    """The model in ``path``, whatever kind of directory it is (see the module docstring),
    its products in ``dtype`` (None: the ``model.dtype`` it records)."""
    directory = Path(path)
    kind = model_kind(directory)
    if kind == "export":
        config, params = reader.read_export(directory)
    elif kind == "run":
        config, _, params = restore.restore_params(str(directory))
    else:
        config, params = _foreign(directory)
    config.model.dtype = dtype or config.model.dtype
    graphdef, _, shardings = train_state.abstract_train_state(config, sharding.make_mesh(config))
    params = jax.device_put(params, shardings.params)
    return Loaded(config, graphdef, params, tokenizer_lib.load(config.data.tokenizer))


def _foreign(directory: Path):
    """A Hugging Face BERT/ModernBERT that we did not write."""
    model = reader.hf_model_config(directory)
    seq_len = min(512, model.get("max_position_embeddings", 512))
    raw = {"model": model, "data": {"tokenizer": str(directory), "seq_len": seq_len}}
    config = config_lib.from_dict(raw, origin=str(directory / "config.json"))
    return config, reader.load_hf_checkpoint(directory, config)
