"""Parquet inputs: several files, row groups read one batch at a time, null and empty rows,
a chosen text column, and a file without it refused before anything is written.
"""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from mlm_jax.data import corpus, parquet_source, preparation, sources
from mlm_jax.errors import UserError


def _write_groups(path, groups, column="text"):
    """One row group per list in ``groups`` (an empty list makes an empty row group)."""
    schema = pa.schema([(column, pa.string()), ("id", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for number, texts in enumerate(groups):
            ids = [number * 1000 + i for i in range(len(texts))]
            writer.write_table(pa.table({column: texts, "id": ids}, schema=schema))
    return path


@pytest.fixture(scope="module")
def parquet_dir(scenes, tmp_path_factory):
    root = tmp_path_factory.mktemp("parquet") / "shards"
    root.mkdir()
    _write_groups(root / "part-0.parquet", [scenes[0:10], [], scenes[10:20]])
    _write_groups(root / "part-1.parquet", [scenes[20:30] + [None, "   "], scenes[30:40]])
    _write_groups(root / "part-2.parquet", [scenes[40:60]])
    return root


def test_fixture_really_has_an_empty_row_group_and_nulls(parquet_dir):
    first = pq.ParquetFile(parquet_dir / "part-0.parquet").metadata
    assert [first.row_group(i).num_rows for i in range(first.num_row_groups)] == [10, 0, 10]
    assert pq.read_table(parquet_dir / "part-1.parquet").column("text").null_count == 1


def test_prepare_reads_every_row_with_text(parquet_dir, scenes, tmp_path):
    meta = preparation.prepare([str(parquet_dir)], str(tmp_path / "ds"), valid_fraction=0.2)
    assert meta["documents"] == 60 and meta["skipped_records"] == 2
    assert meta["splits"]["train"] + meta["splits"]["validation"] == 60
    texts = []
    for split in meta["splits"]:
        texts += list(corpus.open_split(str(tmp_path / "ds"), split).iter_texts())
    assert sorted(texts) == sorted(scene.strip() for scene in scenes[:60])


def test_positions_are_row_numbers_across_row_groups(parquet_dir, scenes):
    stats = sources.ReadStats()
    path = str(parquet_dir / "part-1.parquet")
    rows = list(parquet_source.read_documents(path, "text", stats))
    # Rows 10 (null) and 11 (blank) are skipped; the next group starts at row 12.
    assert [row for row, _ in rows] == [*range(10), *range(12, 22)]
    assert rows[10][1] == scenes[30].strip() and stats.skipped_records == 2
    # Reading row groups separately gives the same rows and positions.
    second = list(parquet_source.read_documents(path, "text", sources.ReadStats(), 1, 2))
    assert second == rows[10:]


def test_row_group_ranges_follow_the_target_size(parquet_dir):
    path = str(parquet_dir / "part-0.parquet")
    assert parquet_source.row_group_ranges(path, "text", None) == [(0, 3)]
    assert parquet_source.row_group_ranges(path, "text", 1) == [(0, 1), (1, 2), (2, 3)]
    assert parquet_source.row_group_ranges(path, "text", 1 << 30) == [(0, 3)]


def test_text_field_names_the_column(scenes, tmp_path):
    path = _write_groups(tmp_path / "body.parquet", [scenes[:5]], column="body")
    stats = sources.ReadStats()
    assert len(list(sources.iter_documents([str(path)], "body", stats))) == 5
    with pytest.raises(UserError, match=r"has no column 'text' \(it has \['body', 'id'\]\)"):
        list(sources.iter_documents([str(path)]))
    with pytest.raises(UserError, match="holds int64, not text"):
        list(sources.iter_documents([str(path)], "id"))


def test_missing_column_via_cli_is_one_line_and_writes_nothing(parquet_dir, scenes, tmp_path):
    (tmp_path / "in").mkdir()
    bad = _write_groups(tmp_path / "in" / "notes.parquet", [scenes[:3]], column="content")
    out = tmp_path / "out"
    result = run_cli("data", "prepare", "--input", parquet_dir, bad, "--out", out)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "notes.parquet" in lines[0] and "['content', 'id']" in lines[0]
    assert "--text-field" in lines[0] and "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_corrupt_parquet_is_a_user_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(UserError, match="cannot read Parquet file"):
        list(sources.iter_documents([str(path)]))
