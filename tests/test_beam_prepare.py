"""`data prepare` on Apache Beam (DirectRunner, two worker processes) against the
single-process build of the same real text: same documents, splits, doc ids and order.
"""

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from mlm_jax.data import beam_prepare, corpus, integrity, preparation, sources
from mlm_jax.errors import UserError

TWO_WORKERS = "--direct_num_workers=2 --direct_running_mode=multi_processing"


@pytest.fixture(scope="module")
def inputs(scenes, tmp_path_factory):
    """~450 KB of Shakespeare and Python docstrings in four formats, in a directory."""
    docstrings = [d for d in sources.iter_documents(["builtin:pydocs"]) if len(d) > 200][:300]
    root = tmp_path_factory.mktemp("beam_inputs")
    (root / "shards").mkdir()
    # Irregular blank lines, so byte ranges cut inside documents and between them.
    (root / "shards" / "plays.txt").write_text("\n\n\n".join(scenes[:30]) + "\n \n")
    with gzip.open(root / "shards" / "plays.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps({"text": scene}) + "\n" for scene in scenes[30:50])
    table = pa.table({"text": docstrings[:200]})
    pq.write_table(table, root / "shards" / "docs.parquet", row_group_size=25)
    (root / "shards" / "more.txt").write_text("\n\n".join(docstrings[200:]))
    return [str(root / "shards")]


def _records(out, split):
    records = corpus.open_split(str(out), split)
    source = records._open()
    return [(int(source[i]["doc_id"]), source[i]["text"].decode()) for i in range(len(records))]


def _without_engine(meta):
    """What both engines must agree on (their shards' bytes may differ: see tfds_writer)."""
    return {k: v for k, v in meta.items() if k not in ("engine", "reused", "integrity")}


@pytest.fixture(scope="module")
def both(inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("beam_out")
    single = preparation.prepare(inputs, str(root / "single"), valid_fraction=0.1)
    beam = preparation.prepare(
        inputs,
        str(root / "beam"),
        valid_fraction=0.1,
        beam_runner="DirectRunner",
        beam_options=TWO_WORKERS,
        shard_bytes=20_000,  # many slices of the text files and Parquet row groups
    )
    return root, single, beam


def test_beam_and_single_process_build_the_same_dataset(both, inputs):
    root, single, beam = both
    assert beam["engine"] == "beam:DirectRunner" and single["engine"] == "single-process"
    assert _without_engine(beam) == _without_engine(single)
    assert single["documents"] == len(list(sources.iter_documents(inputs)))
    assert single["splits"]["validation"] > 0
    for split in ("train", "validation"):
        records = _records(root / "beam", split)
        assert records == _records(root / "single", split)
        # Ids are (input index, position in it): distinct, and every input contributes.
        ids = [doc_id for doc_id, _ in records]
        assert len(set(ids)) == len(ids)
    inputs_seen = {doc_id >> 40 for doc_id, _ in _records(root / "beam", "train")}
    assert inputs_seen == {0, 1, 2, 3}
    sliced = sources.plan_shards(inputs, "text", 20_000)
    assert len(sliced) > 2 * len(sources.plan_shards(inputs, "text"))
    # Both record every shard's size and checksum, and the full check passes on both.
    for engine in ("single", "beam"):
        recorded = (single if engine == "single" else beam)["integrity"]["files"]
        assert sum(".array_record-" in name for name in recorded) >= 2
        assert integrity.verify(str(root / engine)) == sorted(recorded)


def test_doc_ids_point_at_the_document(both, inputs):
    """A doc id is (input index, position): a byte offset in text, a row number in Parquet."""
    root, _, _ = both
    files = sources.expand_inputs(inputs)
    rows = pq.read_table(files[0]).column("text").to_pylist()  # docs.parquet sorts first
    checked = 0
    for split in ("train", "validation"):
        for doc_id, text in _records(root / "beam", split):
            path, position = files[doc_id >> 40], doc_id & ((1 << 40) - 1)
            if path.endswith(".parquet"):
                assert rows[position].strip() == text
            elif path.endswith(".txt"):
                with open(path, "rb") as handle:
                    handle.seek(position)
                    assert text.startswith(handle.readline().decode().strip())
            checked += 1
    assert checked > 300


@pytest.mark.parametrize("options", [TWO_WORKERS, None], ids=["2-workers", "in-process"])
def test_worker_failure_leaves_out_untouched(inputs, tmp_path, options):
    """A truncated .gz fails its worker mid-build: the old dataset stays, no staging is left,
    and the worker's error comes back as the one-line error it raised."""
    out = tmp_path / "ds"
    preparation.prepare(inputs, str(out), valid_fraction=0.1)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    broken = tmp_path / "broken"
    broken.mkdir()
    with open(os.path.join(inputs[0], "plays.txt"), "rb") as handle:
        data = gzip.compress(handle.read())
    (broken / "plays.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"^cannot read input .*plays\.txt\.gz.*intact$"):
        preparation.prepare(
            [*inputs, str(broken)],
            str(out),
            valid_fraction=0.1,
            force=True,
            beam_runner="DirectRunner",
            beam_options=options,
        )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["broken", "ds"]


def test_empty_validation_split_is_dropped_like_single_process(tmp_path):
    text = tmp_path / "few.txt"
    text.write_text("One short document.\n\nAnother one.\n\nAnd a third.\n")
    single = preparation.prepare([str(text)], str(tmp_path / "single"), valid_fraction=0.01)
    beam = preparation.prepare(
        [str(text)], str(tmp_path / "beam"), valid_fraction=0.01, beam_runner="DirectRunner"
    )
    assert beam["splits"] == single["splits"] == {"train": 3}
    assert _records(tmp_path / "beam", "train") == _records(tmp_path / "single", "train")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no documents"):
        preparation.prepare([str(empty)], str(tmp_path / "none"), beam_runner="DirectRunner")
    assert not (tmp_path / "none").exists()


def _one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_missing_apache_beam_is_one_line(tmp_path, inputs):
    """A stand-in package that fails to import, first on the path, as if Beam were absent."""
    shadow = tmp_path / "shadow" / "apache_beam"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named apache_beam')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    out = tmp_path / "out"
    result = run_cli("data", "prepare", "--input", *inputs, "--out", out,
                     "--beam-runner", "DirectRunner", env=env)  # fmt: skip
    line = _one_error_line(result)
    assert "apache-beam" in line and "pip install" in line
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["shadow"]


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--beam-runner", "NoSuchRunner"], "not a usable Beam runner"),
        (["--beam-options=--direct_num_workers=2"], "needs --beam-runner"),
        (["--beam-runner", "DirectRunner", "--beam-options", "workers=2"], "Beam flags"),
        (["--beam-runner", "DirectRunner", "--text-field", "body"], "has no column 'body'"),
    ],
)
def test_bad_beam_flags_are_one_line(tmp_path, inputs, flags, fragment):
    out = tmp_path / "out"
    result = run_cli("data", "prepare", "--input", *inputs, "--out", out, *flags)
    assert fragment in _one_error_line(result)
    assert not out.exists()


def test_an_empty_corpus_fails_cleanly_whichever_empty_split_is_reported_first():
    """TFDS's writers race: an empty corpus may report validation first, then train."""
    inputs = ["empty.txt"]
    message = "The total number of generated examples is 0 for split {}. This should be >0!"
    both = ("train", "validation")
    validation_first = ValueError(message.format("validation"))
    retry = beam_prepare._splits_after_failure(validation_first, both, inputs)
    assert retry == ("train",)
    for error, splits in [(message.format("validation"), retry), (message.format("train"), both)]:
        with pytest.raises(UserError, match="no documents"):
            beam_prepare._splits_after_failure(ValueError(error), splits, inputs)
    with pytest.raises(KeyError):  # anything else is not ours to reword
        beam_prepare._splits_after_failure(KeyError("x"), both, inputs)
