"""Fill-mask predictions with our JAX model, from an export directory or a run directory.

``load_model`` accepts three kinds of directory:

* our export (``mlm_jax.json`` + ``model.safetensors`` + ``spm.model``): the config and
  tokenizer it was trained with;
* any Hugging Face BERT / ModernBERT directory (``config.json`` + ``model.safetensors``
  + ``tokenizer.json``): the config is derived with :func:`hf_import.hf_model_config`;
* a training run (``config.yaml``/``checkpoints``): its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from mlm_jax import config as config_lib
from mlm_jax import export, hf_import
from mlm_jax import tokenizer as tokenizer_lib
from mlm_jax.errors import UserError

# As in Tokenizer.encode_with_specials, [MASK] swallows the whitespace before it.
_MASK_IN_TEXT = re.compile(r"\s*\[MASK\]")


def load_model(path: str | os.PathLike):
    """``(config, graphdef, params, tokenizer)`` for an export, a HF directory or a run."""
    from mlm_jax.model import abstract_encoder

    directory = Path(path)
    if (directory / "mlm_jax.json").is_file():
        saved = json.loads((directory / "mlm_jax.json").read_text())["config"]
        saved["data"]["tokenizer"] = str(directory)  # the export carries its tokenizer
        config = config_lib.from_dict(saved, origin=str(directory / "mlm_jax.json"))
        params = export.from_hf_state_dict(config, hf_import.read_safetensors(directory))
    elif (directory / "config.json").is_file():
        model = hf_import.hf_model_config(directory)
        seq_len = min(512, model.get("max_position_embeddings", 512))
        raw = {"model": model, "data": {"tokenizer": str(directory), "seq_len": seq_len}}
        config = config_lib.from_dict(raw, origin=str(directory / "config.json"))
        params = hf_import.load_hf_checkpoint(directory, config)
    elif (directory / "config.yaml").is_file() or (directory / "checkpoints").is_dir():
        from mlm_jax import train

        config, graphdef, params = train.load_run_params(str(directory))
        return config, graphdef, params, tokenizer_lib.load(config.data.tokenizer)
    else:
        raise UserError(
            f"{str(directory)!r} is neither an export (config.json) nor a run directory "
            "(config.yaml, checkpoints/); pass one of them"
        )
    config.model.dtype = "float32"  # inference from host parameters: full precision
    graphdef = abstract_encoder(config.model)[0]
    return config, graphdef, params, tokenizer_lib.load(config.data.tokenizer)


def predict_masks(
    config, graphdef, params, tokenizer, text: str, top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """Top-k ``(piece, probability)`` for each ``[MASK]`` of ``text``, in order."""
    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    ids = [tokenizer.cls_id, *tokenizer.encode_with_specials(text).tolist(), tokenizer.sep_id]
    masked = [i for i, token in enumerate(ids) if token == tokenizer.mask_id]
    if not masked:
        raise UserError(f"no [MASK] in {text!r}; write [MASK] where a token should be predicted")
    limit = config.model.max_position_embeddings
    if config.model.family == "bert" and len(ids) > limit:
        raise UserError(f"the text is {len(ids)} tokens, the model takes {limit}; shorten it")
    input_ids = np.asarray([ids], np.int32)  # [1, L]
    positions = np.arange(len(ids), dtype=np.int32)[None]

    @jax.jit
    def probabilities(state, input_ids, positions):
        model = nnx.merge(graphdef, state)
        logits = model.full_logits(input_ids, jax.numpy.ones_like(input_ids), positions)
        return jax.nn.softmax(logits[0, :, : config.model.vocab_size], axis=-1)  # [L, V]

    probs = np.asarray(probabilities(params, input_ids, positions))[masked]  # [M, V]
    k = min(top_k, probs.shape[-1])
    best = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [
        [(tokenizer.id_to_piece(int(token)), float(row[token])) for token in order]
        for row, order in zip(probs, best, strict=True)
    ]


def fill_mask(path: str | os.PathLike, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """Load the model at ``path`` and predict each ``[MASK]`` of ``text`` (top-k pieces)."""
    config, graphdef, params, tokenizer = load_model(path)
    return predict_masks(config, graphdef, params, tokenizer, text, top_k)


def print_fill_mask(path: str | os.PathLike, text: str, top_k: int = 5) -> None:
    """Print each ``[MASK]``'s candidates with probabilities and the filled-in text."""
    predictions = fill_mask(path, text, top_k)
    for number, candidates in enumerate(predictions, start=1):
        print(f"[MASK] {number} of {len(predictions)}:")
        for piece, probability in candidates:
            print(f"  {probability:7.2%}  {piece}")
    best = iter(_surface(candidates[0][0]) for candidates in predictions)
    print("top-1: " + _MASK_IN_TEXT.sub(lambda _: next(best), text).strip())


def _surface(piece: str) -> str:
    """How a piece reads after the preceding text: "▁the" -> " the", "##s"/"s" -> "s"."""
    if piece.startswith("▁"):
        return " " + piece[1:]
    return piece.removeprefix("##")
