"""Fill-mask predictions with our JAX model: an export, a Hugging Face BERT/ModernBERT
directory or a run directory (whatever :func:`mlm_jax.inference.loading.load` reads)."""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import numpy as np
from flax import nnx

from mlm_jax.errors import UserError
from mlm_jax.hf import names
from mlm_jax.inference import loading

# As in Tokenizer.encode_with_specials, [MASK] swallows the whitespace before it.
_MASK_IN_TEXT = re.compile(r"\s*\[MASK\]")
# A lone byte of a multi-byte character decodes to U+FFFD: the piece itself says more.
_PARTIAL = "\ufffd"


def load_encoder(path: str | os.PathLike):
    """``(config, graphdef, params, tokenizer)`` of the pretrained encoder at ``path``."""
    model = loading.load(path)
    if model.fine_tuned:
        raise UserError(f"{path} is a fine-tuned model; predict needs a pretrained encoder")
    return model.config, model.graphdef, model.params, model.tokenizer


def _input_ids(tokenizer, text: str) -> list[int]:
    return [tokenizer.cls_id, *tokenizer.encode_with_specials(text).tolist(), tokenizer.sep_id]


def top_tokens(
    config, graphdef, params, tokenizer, text: str, top_k: int = 5
) -> tuple[list[int], list[list[tuple[int, float]]]]:
    """``(input ids, top-k (token id, probability) per [MASK])`` for ``text``."""
    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    ids = _input_ids(tokenizer, text)
    masked = [i for i, token in enumerate(ids) if token == tokenizer.mask_id]
    if not masked:
        raise UserError(f"no [MASK] in {text!r}; write [MASK] where a token should be predicted")
    limit = names.hf_max_positions(config)
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
    return ids, [
        [(int(token), float(row[token])) for token in order]
        for row, order in zip(probs, best, strict=True)
    ]


def predict_masks(
    config, graphdef, params, tokenizer, text: str, top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """Top-k ``(piece, probability)`` for each ``[MASK]`` of ``text``, in order."""
    _, predictions = top_tokens(config, graphdef, params, tokenizer, text, top_k)
    return [[(tokenizer.id_to_piece(t), p) for t, p in candidates] for candidates in predictions]


def fill_mask(path: str | os.PathLike, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """Load the model at ``path`` and predict each ``[MASK]`` of ``text`` (top-k pieces)."""
    config, graphdef, params, tokenizer = load_encoder(path)
    return predict_masks(config, graphdef, params, tokenizer, text, top_k)


@dataclasses.dataclass(frozen=True)
class Reading:
    """How a predicted token reads in the text: ``"▁the"`` -> ``Reading("the", False)``."""

    text: str
    joins_previous: bool  # no space before it: a suffix ("s") or punctuation (",")


def read_token(tokenizer, token: int, previous: int | None) -> Reading:
    """How ``token`` reads right after the token ``previous`` (None: at the start).

    Decoding the pair and subtracting the first token's text works for every
    tokenizer kind alike: SentencePiece's "▁", WordPiece's "##" and byte-level
    BPE's "Ġ" all become a space, or its absence, in the decoded text.
    """
    piece = tokenizer.id_to_piece(token)
    specials = {tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id}
    if token in specials | {tokenizer.mask_id}:
        return Reading(piece, False)
    if previous is None or previous in specials:
        alone = tokenizer.decode([token])
        return Reading(piece, False) if _PARTIAL in alone else Reading(alone.strip(), False)
    head, joined = tokenizer.decode([previous]), tokenizer.decode([previous, token])
    if not joined.startswith(head):  # a decoder that rewrites across tokens: read it alone
        return read_token(tokenizer, token, None)
    tail = joined[len(head) :]
    if _PARTIAL in tail:
        return Reading(piece, False)
    # A bare word-start piece ("▁" before a word spelled piece by piece) reads as "".
    return Reading(tail.strip(), bool(tail.strip()) and not tail[:1].isspace())


def print_fill_mask(path: str | os.PathLike, text: str, top_k: int = 5) -> None:
    """Print each ``[MASK]``'s candidates as words, and the text filled with the top-1.

    The filled text takes, per mask, the most probable candidate that reads as text: a
    bare word-start piece ranks high in small vocabularies, but one slot cannot hold the
    rest of the word it starts, so it would fill the mask with nothing.
    A candidate that continues the word before the mask (a suffix, or punctuation)
    is shown as the word it makes, e.g. ``sweet,`` with a note, rather than as a bare
    piece.
    """
    config, graphdef, params, tokenizer = load_encoder(path)
    ids, predictions = top_tokens(config, graphdef, params, tokenizer, text, top_k)
    pieces = _MASK_IN_TEXT.split(text)
    filled = pieces[0]
    masked = [i for i, token in enumerate(ids) if token == tokenizer.mask_id]
    chosen: list[int] = []
    for number, (position, candidates) in enumerate(zip(masked, predictions, strict=True)):
        # An earlier mask right before this one reads as the token chosen for it.
        previous = ids[position - 1]
        if previous == tokenizer.mask_id:
            previous = chosen[-1]
        words = filled.split()
        before = words[-1] if words else ""  # [MASK] swallows the space before it
        print(f"[MASK] {number + 1} of {len(predictions)}:")
        readings = [(t, p, read_token(tokenizer, t, previous)) for t, p in candidates]
        for _, probability, reading in readings:
            shown = reading.text or "(start of a word spelled piece by piece)"
            if reading.joins_previous and before:
                shown = f"{before}{reading.text}   (continues {before!r})"
            print(f"  {probability:7.2%}  {shown}")
        token, _, best = next((r for r in readings if r[2].text), readings[0])
        chosen.append(token)
        filled += best.text if best.joins_previous or not filled else " " + best.text
        filled += pieces[number + 1]
    print("top-1: " + filled.strip())
