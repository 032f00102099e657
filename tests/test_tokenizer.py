"""Tokenizer training on real text: special ids, round trips, determinism, errors."""

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import VOCAB

from mlm_jax.data import sources, tokenizer
from mlm_jax.errors import UserError

UNICODE_LINES = [
    "To be, or not to be: that is the question.",
    "Naïve café déjà vu — «quoted» and ‘curly’.",
    "数字 12345 and emoji 🙂 in one line.",
    "  extra   whitespace\tand tabs  ",
]


def test_special_ids_fixed(run_inputs):
    tok = tokenizer.load(run_inputs["tokenizer"])
    pieces = [tok.id_to_piece(i) for i in range(5)]
    assert pieces == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    text = "The capital of [MASK] is Paris.[SEP]"
    expected = [*tok.encode("The capital of"), 4, *tok.encode(" is Paris."), 3]
    assert tok.encode_with_specials(text).tolist() == expected


def test_unicode_round_trip_with_byte_fallback(run_inputs):
    tok = tokenizer.load(run_inputs["tokenizer"])
    ids = tok.encode_batch(UNICODE_LINES)
    assert all(row.dtype == np.int32 for row in ids)
    for line, row in zip(UNICODE_LINES, ids, strict=True):
        assert tokenizer.UNK_ID not in row.tolist()
        assert tok.decode(row) == " ".join(line.split())  # NFKC keeps these; spaces collapse


def test_retraining_is_byte_identical(run_inputs, real_text, tmp_path):
    """In process, the shared tokenizer's text and vocabulary give the CLI's very model."""
    out = run_inputs["tokenizer"]
    again = tmp_path / "again"
    tokenizer.train_tokenizer([str(real_text)], str(again), vocab_size=VOCAB)
    assert (again / "spm.model").read_bytes() == (out / "spm.model").read_bytes()


def test_meta_consistent_with_model(run_inputs, real_text):
    out = run_inputs["tokenizer"]
    on_disk = json.loads((out / "meta.json").read_text())
    tok = tokenizer.load(out)
    assert on_disk["vocab_size"] == tok.vocab_size == VOCAB
    assert on_disk["special_ids"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert on_disk["input_fingerprint"] == sources.fingerprint([str(real_text)])
    assert on_disk["model_type"] == "unigram" and on_disk["byte_fallback"] is True
    assert on_disk["sentencepiece_version"]


def test_lowercase_and_bpe(real_text, tmp_path):
    tokenizer.train_tokenizer(
        [str(real_text)], str(tmp_path / "bpe"), 800, model_type="bpe", lowercase=True
    )
    tok = tokenizer.load(tmp_path / "bpe")
    assert tok.decode(tok.encode("HAMLET Speaks")) == "hamlet speaks"


def test_inputs_gz_bz2_jsonl_and_directories(scenes, tmp_path):
    import bz2
    import gzip

    docs = scenes[:6]
    folder = tmp_path / "mixed" / "nested"
    folder.mkdir(parents=True)
    with gzip.open(folder / "a.txt.gz", "wt") as f:
        f.write("\n\n".join(docs[:2]))
    with bz2.open(folder / "b.txt.bz2", "wt") as f:
        f.write("\n\n".join(docs[2:4]))
    (folder / "c.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs[4:]))
    found = list(sources.iter_documents([str(tmp_path / "mixed")]))
    assert len(found) == 6
    assert found[0] == docs[0]


def test_non_utf8_bytes_are_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\n\nbad \xff\xfe bytes here\n")
    stats = sources.ReadStats()
    docs = list(sources.iter_documents([str(path)], stats=stats))
    assert len(docs) == 2 and stats.undecodable_lines == 1


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("missing", "does not exist"),
        ("empty", "hold no text"),
        ("binary", "looks binary"),
        ("small_vocab", "too small"),
    ],
)
def test_bad_inputs(tmp_path, real_text, setup, fragment):
    inputs, vocab = [str(real_text)], VOCAB
    if setup == "missing":
        inputs = [str(tmp_path / "nope.txt")]
    elif setup == "empty":
        (tmp_path / "empty.txt").write_text("\n\n")
        inputs = [str(tmp_path / "empty.txt")]
    elif setup == "binary":
        (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
        inputs = [str(tmp_path / "blob.bin")]
    else:
        vocab = 100
    with pytest.raises(UserError, match=fragment):
        tokenizer.train_tokenizer(inputs, str(tmp_path / "out"), vocab)
    assert not (tmp_path / "out").exists()


def test_failed_retrain_keeps_existing_output(run_inputs, real_text, tmp_path):
    out = tmp_path / "keep"
    shutil.copytree(run_inputs["tokenizer"], out)  # a copy: the shared tokenizer stays as it is
    before = (out / "spm.model").read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "mlm_jax.cli", "tokenizer", "train", "--input",
         str(real_text), "--vocab-size", "60000", "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "<= " in last and "Traceback" not in result.stderr
    assert (out / "spm.model").read_bytes() == before


def test_builtin_corpora_are_real_and_large():
    text = "\n".join(sources.iter_documents(["builtin:shakespeare"]))
    assert len(text.encode()) > 1_000_000 and "Hamlet" in text
    with pytest.raises(UserError, match="unknown builtin corpus"):
        list(sources.iter_documents(["builtin:nothing"]))


def _generated_corpus(path, lines, seed):
    """Lines of 5-8 random Shakespeare lines each: real words, few exact repeats."""
    pool = [line for doc in sources.iter_documents(["builtin:shakespeare"]) for line in
            doc.splitlines() if len(line) > 20]  # fmt: skip
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(lines):
            handle.write(" ".join(rng.sample(pool, rng.randint(5, 8))) + "\n")
    return path


def _peak_rss_of_training(corpus_path, out, max_sentences, log):
    """Run `tokenizer train` in a child process; its own peak RSS in MB, from wait4."""
    with open(log, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "mlm_jax.cli", "tokenizer", "train", "--input", str(corpus_path),
             "--vocab-size", "500", "--max-sentences", str(max_sentences), "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, Path(log).read_text()
    return usage.ru_maxrss / 1024


def test_memory_stays_bounded_on_a_corpus_20x_the_sample(tmp_path):
    """Peak RSS with 20x more text than --max-sentences keeps differs from 1x by < 20 MB,
    while holding the whole large corpus would take more than 50 MB."""
    keep = 10_000
    small = _generated_corpus(tmp_path / "small.txt", keep, seed=1)
    large = _generated_corpus(tmp_path / "large.txt", 20 * keep, seed=2)
    assert large.stat().st_size > 50e6
    small_rss = _peak_rss_of_training(small, tmp_path / "tok1", keep, tmp_path / "small.log")
    large_rss = _peak_rss_of_training(large, tmp_path / "tok20", keep, tmp_path / "large.log")
    assert large_rss - small_rss < 20, (small_rss, large_rss)
    log = (tmp_path / "large.log").read_text()
    assert f"on a sample of {keep:,} of {20 * keep:,} sentences" in log
    assert re.search(r"peak RSS [\d,]+ MB", log)
    meta = json.loads((tmp_path / "tok20" / "meta.json").read_text())
    assert (meta["sampled_sentences"], meta["seen_sentences"]) == (keep, 20 * keep)


def test_trains_from_a_prepared_dataset_directory(run_inputs, real_text, tmp_path):
    from mlm_jax.data import corpus

    dataset = str(run_inputs["data"])  # prepared from real_text, a tenth held out
    meta = tokenizer.train_tokenizer([dataset], str(tmp_path / "tok"), 800)
    train_texts = list(corpus.open_split(dataset, "train").iter_texts())
    lines = [line for text in train_texts for line in text.splitlines() if line.strip()]
    # Only the train split is read: validation text stays unseen by the tokenizer.
    assert meta["seen_sentences"] == len(lines) < len(list(sources.iter_lines([str(real_text)])))
    assert tokenizer.load(tmp_path / "tok").vocab_size == 800


def test_trains_from_a_glob_of_parquet_files(scenes, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = scenes[:40]
    for number in range(2):
        table = pa.table({"body": docs[number * 20 : number * 20 + 20]})
        pq.write_table(table, tmp_path / f"part-{number}.parquet", row_group_size=7)
    pattern = str(tmp_path / "part-*.parquet")
    meta = tokenizer.train_tokenizer([pattern], str(tmp_path / "tok"), 600, text_field="body")
    expected = sum(len([x for x in d.splitlines() if x.strip()]) for d in docs)
    assert meta["seen_sentences"] == expected
