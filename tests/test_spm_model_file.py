"""Our SentencePiece model-file reader against SentencePiece itself, on real models."""

from __future__ import annotations

import pytest
import sentencepiece as spm

from mlm_jax.hf.spm_model_file import read_model_file


@pytest.mark.parametrize(
    "options",
    [
        dict(model_type="unigram", byte_fallback=True, normalization_rule_name="nmt_nfkc_cf"),
        dict(model_type="bpe", byte_fallback=False, add_dummy_prefix=False,
             normalization_rule_name="identity", remove_extra_whitespaces=False),
    ],
    ids=["unigram", "bpe"],
)  # fmt: skip
def test_reader_agrees_with_sentencepiece(tmp_path, real_text, options):
    prefix = tmp_path / "m"
    spm.SentencePieceTrainer.train(
        input=str(real_text), model_prefix=str(prefix), vocab_size=400, unk_id=1,
        bos_id=-1, eos_id=-1, pad_id=0, user_defined_symbols=["[MASK]"], **options,
    )  # fmt: skip
    path = f"{prefix}.model"
    with open(path, "rb") as handle:
        model = read_model_file(handle.read())
    processor = spm.SentencePieceProcessor(model_file=path)
    assert len(model.pieces) == processor.get_piece_size()
    for index, piece in enumerate(model.pieces):
        assert piece.piece == processor.id_to_piece(index)
        assert piece.score == pytest.approx(processor.get_score(index), abs=0)
        assert (piece.type == 2) == processor.is_unknown(index)
        assert (piece.type == 3) == processor.is_control(index)
        assert (piece.type == 6) == processor.is_byte(index)
    trainer, normalizer = model.trainer_spec, model.normalizer_spec
    assert trainer.model_type == {"unigram": 1, "bpe": 2}[options["model_type"]]
    assert trainer.byte_fallback == options["byte_fallback"]
    assert trainer.unk_id == 1 and trainer.unk_piece == "<unk>"
    assert normalizer.add_dummy_prefix == options.get("add_dummy_prefix", True)
    assert normalizer.remove_extra_whitespaces == options.get("remove_extra_whitespaces", True)
    # identity has no character map; NFKC ships one
    assert bool(normalizer.precompiled_charsmap) == (
        options["normalization_rule_name"] != "identity"
    )


def test_a_truncated_file_is_an_error():
    with pytest.raises(ValueError, match="truncated"):
        read_model_file(b"\x0a\x05ab")  # field 1 says 5 bytes follow; 2 do
