"""Our SentencePiece tokenizer as Hugging Face tokenizer files that give the same ids.

``AutoTokenizer.from_pretrained`` on an export must turn text into exactly the ids our
:mod:`mlm_jax.data.tokenizer` gives, special tokens included. We rebuild the model with the
``tokenizers`` library from the SentencePiece model proto itself (pieces, scores,
normalizer spec) rather than going through ``transformers``' slow-tokenizer converters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlm_jax import artifacts
from mlm_jax.config import Config
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.errors import UserError
from mlm_jax.hf import names
from mlm_jax.hf.spm_model_file import read_model_file

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_OUR_TOKENIZER_FILES = ("spm.model", "meta.json")
# What else a Hugging Face tokenizer may keep beside TOKENIZER_FILES (WordPiece, BPE).
_HF_VOCABULARY_FILES = ("vocab.txt", "vocab.json", "merges.txt", "added_tokens.json")


def hf_tokenizer_files(tokenizer_dir: str | os.PathLike, config: Config) -> dict[str, bytes]:
    """Tokenizer files for ``AutoTokenizer``: converted from ``spm.model``, or copied."""
    directory = Path(tokenizer_dir)
    if not (directory / "spm.model").is_file():
        tokenizer_lib.load(directory)  # raises the usual UserError when there is none
        # Only the tokenizer's own files: the directory may be a whole model (weights, model
        # configs, a sentence-transformers pooling folder), which the export must not copy.
        files = {
            name: (directory / name).read_bytes()
            for name in (*TOKENIZER_FILES, *_HF_VOCABULARY_FILES)
            if (directory / name).is_file()
        }
        if "tokenizer_config.json" not in files:
            files["tokenizer_config.json"] = artifacts.json_bytes(_tokenizer_config(config))
        return files
    backend = sentencepiece_to_tokenizers(directory / "spm.model")
    files = {
        "tokenizer.json": backend.to_str(pretty=True).encode(),
        "tokenizer_config.json": artifacts.json_bytes(_tokenizer_config(config)),
        "special_tokens_map.json": artifacts.json_bytes(
            {_SPECIAL_KEYS[token]: _added_token_dict(token) for token in _SPECIAL_KEYS}
        ),
    }
    for name in _OUR_TOKENIZER_FILES:  # so mlm_jax's own loader reads the export too
        files[name] = (directory / name).read_bytes()
    return files


_SPECIAL_KEYS = {
    "[PAD]": "pad_token",
    "[UNK]": "unk_token",
    "[CLS]": "cls_token",
    "[SEP]": "sep_token",
    "[MASK]": "mask_token",
}


def _added_token_dict(token: str) -> dict[str, Any]:
    # lstrip: "of [MASK] is" swallows the space before [MASK], as encode_with_specials does.
    return {
        "content": token,
        "lstrip": True,
        "rstrip": False,
        "normalized": False,
        "single_word": False,
        "special": True,
    }


def _tokenizer_config(config: Config) -> dict[str, Any]:
    inputs = ["input_ids", "attention_mask"]
    if config.model.family == "bert":
        inputs.insert(1, "token_type_ids")
    ids = dict(zip(tokenizer_lib.SPECIAL_TOKENS, range(5), strict=True))
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": names.hf_max_positions(config),
        "model_input_names": inputs,
        "clean_up_tokenization_spaces": False,
        **{key: token for token, key in _SPECIAL_KEYS.items()},
        "added_tokens_decoder": {str(ids[t]): _added_token_dict(t) for t in _SPECIAL_KEYS},
    }


def sentencepiece_to_tokenizers(model_path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` that gives SentencePiece's ids, with our special tokens.

    Follows the model's own normalizer spec, as ``SentencePieceProcessor.encode`` does:
    the precompiled NFKC(-casefold) map, extra-whitespace removal, whitespace as "▁" and
    a dummy "▁" prefix on every text between special tokens ("always": we encode each
    such chunk separately); byte fallback for characters outside the vocabulary; the
    five special tokens split out before normalization; ``[CLS] $A [SEP]`` added.
    """
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE, Unigram

    proto = read_model_file(Path(model_path).read_bytes())
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    pieces = [(piece.piece, piece.score) for piece in proto.pieces]
    byte_fallback = trainer.byte_fallback
    if trainer.model_type == 1:  # unigram
        model = Unigram(pieces, unk_id=trainer.unk_id, byte_fallback=byte_fallback)
    elif trainer.model_type == 2:  # bpe: merges ranked by the score of the merged piece
        vocab = {piece: index for index, (piece, _) in enumerate(pieces)}
        normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
        ranked = sorted(
            (-score, index, piece[:cut], piece[cut:])
            for piece, (score, index) in normal.items()
            for cut in range(1, len(piece))
            if piece[:cut] in normal and piece[cut:] in normal
        )
        merges = [(left, right) for _, _, left, right in ranked]
        model = BPE(
            vocab, merges, unk_token=trainer.unk_piece, fuse_unk=True, byte_fallback=byte_fallback
        )
    else:
        raise UserError(
            f"{model_path} is a SentencePiece model of type {trainer.model_type}; "
            "only unigram and bpe convert to Hugging Face, retrain with one of them"
        )
    backend = HFTokenizer(model)
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # only spaces: SentencePiece leaves newlines alone
        steps += [
            normalizers.Replace(Regex(r"\A +| +\z"), ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if spec.add_dummy_prefix:
        # Metaspace skips the prefix when the text already starts with "▁"; SentencePiece doesn't.
        steps.append(normalizers.Replace(Regex(r"\A▁"), "▁▁"))
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="always", split=False
        )
    backend.normalizer = normalizers.Sequence(steps)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(content=" ", left=1)] if spec.add_dummy_prefix else [])
    )
    backend.add_special_tokens(
        [
            AddedToken(token, lstrip=True, rstrip=False, normalized=False, special=True)
            for token in tokenizer_lib.SPECIAL_TOKENS
        ]
    )
    cls, sep = ("[CLS]", tokenizer_lib.CLS_ID), ("[SEP]", tokenizer_lib.SEP_ID)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[cls, sep]
    )
    return backend
