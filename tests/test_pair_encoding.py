"""Cross-encoder rows from real tokenizer output: pair truncation and token types, the
sentence-pair training batch, packed rows and each process's share of them."""

import json

import numpy as np
from flax import nnx
from test_finetune import _speeches  # the same real Shakespeare speeches

from mlm_jax.data import finetune_data


def test_pair_encoding_keeps_the_query_and_token_types(run_inputs):
    from mlm_jax.data import tokenizer as tokenizer_lib

    tok = tokenizer_lib.load(run_inputs["tokenizer"])
    encoder = finetune_data.PairEncoder(tok, seq_len=24, max_query_tokens=6)
    query, passage = "Now, fair Hippolyta, our nuptial hour draws on apace", "word " * 50
    rows = encoder.encode([(query, passage), ("short", "also short")])
    q_ids = tok.encode(query)
    ids, types = rows["input_ids"][0], rows["token_type_ids"][0]
    assert ids[0] == tok.cls_id and ids[1:7].tolist() == q_ids[:6].tolist() and ids[7] == tok.sep_id
    assert ids[-1] == tok.sep_id and rows["segment_ids"][0].all()  # truncated to exactly 24
    assert types[:8].tolist() == [0] * 8 and types[8:].tolist() == [1] * 16
    short = rows["segment_ids"][1].sum()
    assert rows["input_ids"][1, short:].tolist() == [0] * (24 - short)
    whole_query = tok.encode("short").tolist()
    assert rows["input_ids"][1, 1 : 1 + len(whole_query)].tolist() == whole_query


def test_a_sentence_pair_training_batch_carries_both_texts(run_inputs, tmp_path):
    """From the file to the step's rows: each row holds its example's text_a as segment A
    and its text_b as segment B, with the example's label."""
    from mlm_jax.data import tokenizer as tokenizer_lib

    tok = tokenizer_lib.load(run_inputs["tokenizer"])
    pairs = [("the king is dead", "long live the king", 1), ("a horse", "my kingdom", 0),
             ("fair is foul", "and foul is fair", 1), ("to be", "or not to be", 0)]  # fmt: skip
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(
        json.dumps({"text_a": a, "text_b": b, "label": y}) + "\n" for a, b, y in pairs
    ))  # fmt: skip
    examples = finetune_data.read_classify(path, num_labels=2)
    encoder = finetune_data.PairEncoder(tok, seq_len=32, max_query_tokens=16)
    batch = finetune_data.classify_batch(examples, encoder, step=0, batch_size=4, seed=0)
    by_first = {tuple(tok.encode(a).tolist()): (b, y) for a, b, y in pairs}
    for ids, types, label in zip(batch["input_ids"], batch["token_type_ids"], batch["labels"],
                                 strict=True):  # fmt: skip
        first = ids[1 : np.argmax(ids == tok.sep_id)]
        text_b, expected = by_first[tuple(first.tolist())]
        second = ids[(types == 1) & (ids != tok.sep_id)]
        assert second.tolist() == tok.encode(text_b).tolist() and label == expected


def test_packed_rows_give_the_logits_of_one_pair_per_row(run_inputs):
    """Packing is layout only: every pair's logits equal its own row's, bit for bit in fp32."""
    from mlm_jax.config import ModelConfig
    from mlm_jax.data import tokenizer as tokenizer_lib
    from mlm_jax.model.cross_encoder import CrossEncoder

    tok = tokenizer_lib.load(run_inputs["tokenizer"])
    encoder = finetune_data.PairEncoder(tok, seq_len=32, max_query_tokens=6)
    speeches = [(f"who speaks as {who}", " ".join(lines)[: 20 + 9 * i])
                for i, (who, lines) in enumerate(_speeches()[:12])]  # fmt: skip
    pairs = [*speeches, ("a sentence alone", None)]
    one_per_row, packed = encoder.encode(pairs), encoder.pack(pairs, multiple=2)
    rows = packed["input_ids"].shape[0]
    assert rows % 2 == 0 and rows < len(pairs)  # fewer rows than pairs: short ones share
    flat = {k: v.reshape(-1) for k, v in packed.items() if k != "cls_index"}
    cls = packed["cls_index"]
    assert (flat["input_ids"][cls] == tok.cls_id).all() and (flat["positions"][cls] == 0).all()
    for i, length in enumerate(one_per_row["segment_ids"].sum(1)):  # each pair's tokens intact
        span = slice(cls[i], cls[i] + length)
        assert flat["input_ids"][span].tolist() == one_per_row["input_ids"][i, :length].tolist()
        assert len(set(flat["segment_ids"][span])) == 1
    assert len(set(zip(cls // 32, flat["segment_ids"][cls], strict=True))) == len(pairs)
    cfg = ModelConfig(family="bert", num_layers=2, hidden_size=32, num_heads=2,
                      intermediate_size=64, vocab_size=tok.vocab_size,
                      max_position_embeddings=32)  # fmt: skip
    model = CrossEncoder(cfg, 2, rngs=nnx.Rngs(0))
    expected = model(*(one_per_row[k] for k in ARGS))
    np.testing.assert_allclose(
        model(*(packed[k] for k in ARGS), cls_index=packed["cls_index"]), expected, atol=1e-5
    )


ARGS = ("input_ids", "segment_ids", "positions", "token_type_ids")


def test_process_shares_of_a_packed_batch_make_up_the_whole(run_inputs):
    """Two processes pack the same global batch and take halves: rows, pairs and targets."""
    from mlm_jax.data import tokenizer as tokenizer_lib

    queries = [finetune_data.RankingQuery(who, [" ".join(lines)], [q for q, _ in _speeches()[:3]],
                                          teacher={})
               for who, lines in _speeches()[:4]]  # fmt: skip
    encoder = finetune_data.PairEncoder(tokenizer_lib.load(run_inputs["tokenizer"]), 48, 8)
    whole = finetune_data.rerank_batch(queries, encoder, 3, 4, 2, 0, pack=8)
    halves = [finetune_data.rerank_batch(queries, encoder, 3, 4, 2, 0, pack=8, process=(i, 2))
              for i in range(2)]  # fmt: skip
    for key, value in whole.items():
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), value)
    assert whole["cls_index"].shape == (12,) and whole["weights"].shape == (4,)
    unpacked = finetune_data.rerank_batch(queries, encoder, 3, 4, 2, 0)
    flat = whole["input_ids"].reshape(-1)
    for i, start in enumerate(whole["cls_index"]):  # the same pairs, in the same order
        length = unpacked["segment_ids"][i].sum()
        assert flat[start : start + length].tolist() == unpacked["input_ids"][i, :length].tolist()


# ----------------------------------------------------------------------------- learning, export
