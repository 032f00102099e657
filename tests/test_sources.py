"""Reading inputs: globs, directories of shards, and byte-range slices that add up to the
whole file (same documents, same positions, same counts) for plain text and JSONL.
"""

import gzip
import json
import random
from pathlib import Path

import pytest

from mlm_jax.data import sources
from mlm_jax.errors import UserError

MESSY_SCENES = 40  # the shared scenes the messy files hold


@pytest.fixture(scope="module")
def messy_files(scenes, tmp_path_factory):
    """Real text with irregular separators: runs of blank lines, blank lines holding spaces
    and tabs, CRLF line ends, leading blank lines and a line of non-UTF-8 bytes."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("messy")
    parts = [b"\n\n"]
    for number, scene in enumerate(scenes[:MESSY_SCENES]):
        ending = "\r\n" if number % 7 == 0 else "\n"
        parts.append(scene.replace("\n", ending).encode())
        parts.append(rng.choice([b"\n\n", b"\n  \n", b"\n\n\n\n", b"\r\n\r\n", b"\n \t\n\n"]))
    parts.append(b"bad \xff bytes\nand its next line\n")
    text = root / "plays.txt"
    text.write_bytes(b"".join(parts))
    records = [{"text": s} if n % 5 else {"other": s} for n, s in enumerate(scenes[:MESSY_SCENES])]
    jsonl = root / "plays.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    return [str(text), str(jsonl)]


@pytest.mark.parametrize("shard_bytes", [97, 1000, 20_000])
def test_byte_ranges_add_up_to_the_whole_file(messy_files, shard_bytes):
    for path in messy_files:
        whole_stats = sources.ReadStats()
        whole = list(sources.read_shard(sources.Shard(0, path), "text", whole_stats))
        shards = sources.plan_shards([path], "text", shard_bytes)
        assert len(shards) > 1
        stats = sources.ReadStats()
        sliced = [doc for shard in shards for doc in sources.read_shard(shard, "text", stats)]
        assert sliced == whole
        assert stats == whole_stats


def test_positions_are_byte_offsets_of_documents(messy_files):
    path = messy_files[0]
    data = Path(path).read_bytes()
    stats = sources.ReadStats()
    documents = list(sources.read_shard(sources.Shard(0, path), "text", stats))
    assert len(documents) == 41 and stats.undecodable_lines == 1
    for position, document in documents:
        assert position == 0 or data[position - 1 : position] == b"\n"
        first_line = data[position:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        assert document.split("\n", 1)[0] == first_line


def test_jsonl_positions_and_skipped_lines(messy_files, scenes):
    stats = sources.ReadStats()
    documents = list(sources.read_shard(sources.Shard(0, messy_files[1]), "text", stats))
    assert [text for _, text in documents] == [
        s for n, s in enumerate(scenes[:MESSY_SCENES]) if n % 5
    ]
    assert stats.skipped_records == 8


def test_lines_stream_the_same_text_as_documents(messy_files):
    for path in messy_files:
        by_document, by_line = sources.ReadStats(), sources.ReadStats()
        expected = [
            line.strip()
            for document in sources.iter_documents([path], stats=by_document)
            for line in document.splitlines()
            if line.strip()
        ]
        assert list(sources.iter_lines([path], stats=by_line)) == expected
        assert by_line == by_document


def test_globs_and_directories_of_shards(scenes, tmp_path):
    shards = tmp_path / "corpus" / "2024"
    shards.mkdir(parents=True)
    for number in range(3):
        with gzip.open(shards / f"part-{number:05d}.txt.gz", "wt") as handle:
            handle.write("\n\n".join(scenes[number * 5 : number * 5 + 5]))
    (shards / ".part-00000.txt.gz.crc").write_bytes(b"\x00hidden checksum")
    (tmp_path / "corpus" / "README.md").write_text("Not part of the pattern.\n")
    pattern = str(tmp_path / "corpus" / "**" / "part-*.txt.gz")
    files = sources.expand_inputs([pattern])
    assert [f.rsplit("/", 1)[1] for f in files] == [f"part-{n:05d}.txt.gz" for n in range(3)]
    assert list(sources.iter_documents([pattern])) == scenes[:15]
    # A directory holds the same shards, plus the README; hidden files are left out.
    assert sources.expand_inputs([str(shards)]) == files
    assert len(sources.expand_inputs([str(tmp_path / "corpus")])) == 4
    # An input named twice, by a pattern and by path, is read once.
    assert sources.expand_inputs([pattern, files[0]]) == files
    with pytest.raises(UserError, match="matches no files"):
        sources.expand_inputs([str(tmp_path / "corpus" / "*.parquet")])
