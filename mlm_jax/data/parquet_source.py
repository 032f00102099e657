"""Documents of Parquet files: one document per row of a text column, read with pyarrow.

Rows are read a batch at a time from one row group at a time, so memory holds one
batch, never a whole file. A row's *position* is its row number in the file, which
is what keeps document ids equal whichever slice of row groups a worker reads.
Rows whose text is null, empty or blank are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mlm_jax.errors import UserError

SUFFIXES = (".parquet", ".pq")
_BATCH_ROWS = 1024


def is_parquet(path: str) -> bool:
    return path.lower().endswith(SUFFIXES)


def _open(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read Parquet file {path!r} ({reason}); check the file") from None


def _check_text_column(path: str, parquet_file, text_field: str) -> None:
    import pyarrow as pa

    schema = parquet_file.schema_arrow
    if text_field not in schema.names:
        raise UserError(
            f"Parquet file {path!r} has no column {text_field!r} (it has {schema.names}); "
            "pass --text-field with the column that holds the text"
        )
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(
            f"column {text_field!r} of Parquet file {path!r} holds {kind}, not text; pass "
            "--text-field with a string column"
        )


def _text_bytes(row_group, text_field: str) -> int:
    """Compressed bytes of the text column in a row group: what a reader of it loads."""
    for index in range(row_group.num_columns):
        column = row_group.column(index)
        if column.path_in_schema == text_field:
            return column.total_compressed_size
    return row_group.total_byte_size


def row_group_ranges(path: str, text_field: str, target_bytes: int | None) -> list[tuple[int, int]]:
    """Check the text column, then cut the row groups into ranges of about ``target_bytes``.

    ``None`` means one range for the whole file. A file without row groups gives none.
    """
    parquet_file = _open(path)
    _check_text_column(path, parquet_file, text_field)
    metadata = parquet_file.metadata
    count = metadata.num_row_groups
    if target_bytes is None:
        return [(0, count)] if count else []
    ranges: list[tuple[int, int]] = []
    first, size = 0, 0
    for index in range(count):
        size += _text_bytes(metadata.row_group(index), text_field)
        if size >= target_bytes:
            ranges.append((first, index + 1))
            first, size = index + 1, 0
    if first < count:
        ranges.append((first, count))
    return ranges


def read_documents(
    path: str, text_field: str, stats: Any, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, str]]:
    """Yield ``(row number, text)`` for the rows of row groups ``start`` to ``stop``."""
    import pyarrow as pa

    parquet_file = _open(path)
    _check_text_column(path, parquet_file, text_field)
    metadata = parquet_file.metadata
    stop = metadata.num_row_groups if stop is None else stop
    row = sum(metadata.row_group(index).num_rows for index in range(start))
    try:
        for group in range(start, stop):
            batches = parquet_file.iter_batches(
                batch_size=_BATCH_ROWS, row_groups=[group], columns=[text_field]
            )
            for batch in batches:
                for text in batch.column(0).to_pylist():
                    if text is None or not text.strip():
                        stats.skipped_records += 1
                    else:
                        yield row, text.strip()
                    row += 1
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read Parquet file {path!r} ({exc}); check the file") from None
