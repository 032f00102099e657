"""Corpus: a real TFDS ArrayRecord dataset built from text, read back without TensorFlow."""

import json
import os

import pytest

from mlm_jax.data import corpus, preparation, sources
from mlm_jax.errors import UserError


@pytest.fixture(scope="module")
def text_file(scenes, tmp_path_factory):
    """40 shared scenes and a 41st document; not ``real_text``, which must stay valid UTF-8."""
    path = tmp_path_factory.mktemp("text") / "plays.txt"
    # One line with bytes that are not UTF-8: counted and replaced, never fatal.
    path.write_bytes("\n\n".join(scenes[:40]).encode() + b"\n\nbroken \xff\xfe line\n")
    return str(path)


@pytest.fixture(scope="module")
def prepared(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"
    meta = preparation.prepare([text_file], str(out), valid_fraction=0.2)
    return out, meta


def _texts(source):
    return [source[i] for i in range(len(source))]


def test_prepare_writes_both_splits_and_meta(prepared, text_file):
    out, meta = prepared
    documents = list(sources.iter_documents([text_file]))
    on_disk = json.loads((out / "meta.json").read_text())
    assert {k: v for k, v in meta.items() if k != "reused"} == on_disk
    assert meta["reused"] is False
    assert meta["input_fingerprint"] == sources.fingerprint([text_file])
    assert meta["splits"]["train"] + meta["splits"]["validation"] == len(documents) == 41
    assert meta["undecodable_lines"] == 1
    assert meta["characters"] == sum(len(d) for d in documents)
    assert (meta["tfds_name"], meta["tfds_version"]) == ("mlm_jax_corpus", "1.0.0")
    train = _texts(corpus.open_split(str(out), "train"))
    validation = _texts(corpus.open_split(str(out), "validation"))
    assert sorted(train + validation) == sorted(documents)
    # The split follows the text hash, so it is stable and duplicates stay together.
    assert all(corpus.validation_score(t) < 0.2 for t in validation)
    assert all(corpus.validation_score(t) >= 0.2 for t in train)
    assert any("broken \ufffd\ufffd line" in t for t in train + validation)
    # Doc ids are (input 0, byte offset of the document), whichever split holds it.
    offsets = [position for position, _ in sources.read_shard(sources.Shard(0, text_file), "text",
                                                              sources.ReadStats())]  # fmt: skip
    ids = [int(r["doc_id"]) for split in meta["splits"] for r in _rows(out, split)]
    assert sorted(ids) == [corpus.doc_id(0, offset) for offset in offsets]
    assert meta["engine"] == "single-process"


def _rows(out, split):
    records = corpus.open_split(str(out), split)
    return [records._open()[i] for i in range(len(records))]


def test_each_input_is_read_once(tmp_path, text_file, monkeypatch):
    """Both splits come from one pass: every input file is opened for text exactly once."""
    from mlm_jax.data import text_source

    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "A second input."}\n{"text": "And its second document."}\n')
    opened = []
    real_open = text_source._open_bytes

    def counting_open(path):
        opened.append(path)
        return real_open(path)

    monkeypatch.setattr(text_source, "_open_bytes", counting_open)
    meta = preparation.prepare([text_file, str(other)], str(tmp_path / "ds"), valid_fraction=0.2)
    assert sorted(opened) == sorted([text_file, str(other)])
    assert meta["splits"]["train"] and meta["splits"]["validation"]
    assert meta["documents"] == 43


def test_doc_id_packs_input_and_position():
    assert corpus.doc_id(0, 0) == 0
    assert corpus.doc_id(3, 17) == 3 * 2**40 + 17
    with pytest.raises(UserError, match="1 TiB"):
        corpus.doc_id(0, 2**40)


def test_readable_by_tfds_without_tensorflow(prepared):
    import tensorflow_datasets as tfds

    out, meta = prepared
    builder = tfds.builder_from_directory(str(out / meta["builder_dir"]))
    source = builder.as_data_source(split="train")
    assert len(source) == meta["splits"]["train"]
    assert isinstance(source[0]["text"], bytes) and "doc_id" in source[0]
    by_name = tfds.data_source("mlm_jax_corpus", split="validation", data_dir=str(out))
    assert len(by_name) == meta["splits"]["validation"]
    # The same dataset opened as a TFDS name in a data_dir, the way wikipedia would be.
    records = corpus.open_split("mlm_jax_corpus", "validation", data_dir=str(out))
    assert _texts(records) == [r["text"].decode() for r in by_name]


def test_rerun_is_a_no_op(prepared, text_file, capsys):
    out, meta = prepared
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = preparation.prepare([text_file], str(out), valid_fraction=0.2)
    assert again["reused"] is True and again["splits"] == meta["splits"]
    assert "nothing to do" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_other_inputs_refused_without_force_and_replaced_with_it(tmp_path, text_file):
    out = tmp_path / "ds"
    preparation.prepare([text_file], str(out), valid_fraction=0.2)
    other = tmp_path / "other.txt"
    other.write_text("A different corpus.\n\nWith two documents.\n")
    with pytest.raises(UserError, match="already holds .* --force"):
        preparation.prepare([str(other)], str(out))
    with pytest.raises(UserError, match="already holds"):
        preparation.prepare([text_file], str(out), valid_fraction=0.3)  # other options
    meta = preparation.prepare([str(other)], str(out), valid_fraction=0.0, force=True)
    assert meta["splits"] == {"train": 2}
    assert sorted(_texts(corpus.open_split(str(out), "train"))) == [
        "A different corpus.",
        "With two documents.",
    ]
    assert sorted(os.listdir(tmp_path)) == ["ds", "other.txt"]  # no staging left behind


def test_failed_build_leaves_existing_dataset_intact(tmp_path, text_file, monkeypatch):
    out = tmp_path / "ds"
    preparation.prepare([text_file], str(out), valid_fraction=0.2)
    meta_before = (out / "meta.json").read_text()
    other = tmp_path / "other.txt"
    other.write_text("Some other text.\n")

    def failing_build(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(corpus, "build_single_process", failing_build)
    with pytest.raises(RuntimeError, match="disk full"):
        preparation.prepare([str(other)], str(out), force=True)
    assert (out / "meta.json").read_text() == meta_before
    assert len(corpus.open_split(str(out), "train")) > 0
    assert sorted(os.listdir(tmp_path)) == ["ds", "other.txt"]


def test_bad_inputs_are_user_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(UserError, match="hold no documents"):
        preparation.prepare([str(empty)], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="does not exist"):
        preparation.prepare([str(tmp_path / "missing.txt")], str(tmp_path / "out"))
    with pytest.raises(UserError, match="valid-fraction"):
        preparation.prepare([str(empty)], str(tmp_path / "out"), valid_fraction=1.5)
    with pytest.raises(UserError, match=r"pattern .*nothing-\*\.txt.* matches no files"):
        preparation.prepare([str(tmp_path / "nothing-*.txt")], str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["empty.txt"]


def test_bad_glob_via_cli_is_one_line(tmp_path):
    from conftest import run_cli

    result = run_cli("data", "prepare", "--input", tmp_path / "shards" / "*.parquet",
                     "--out", tmp_path / "out")  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "matches no files" in lines[0] and "quote it" in lines[0]
    assert not (tmp_path / "out").exists()


def test_open_split_errors(prepared, tmp_path):
    out, _ = prepared
    with pytest.raises(UserError, match="not a prepared dataset"):
        corpus.open_split(str(tmp_path / "nowhere"), "train")
    with pytest.raises(UserError, match="no split 'test'"):
        corpus.open_split(str(out), "test")
    with pytest.raises(UserError, match="no feature 'body'.*data.text_feature"):
        corpus.open_split(str(out), "train", feature="body")
    with pytest.raises(UserError, match="cannot open TFDS dataset"):
        corpus.open_split("no_such_dataset/1.0.0", "train", data_dir=str(out))
    with pytest.raises(UserError, match="data_dir .* does not exist"):
        corpus.open_split("mlm_jax_corpus", "train", data_dir=str(tmp_path / "nowhere"))
