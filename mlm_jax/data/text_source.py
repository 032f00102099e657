"""Documents of plain-text and JSONL files, optionally compressed, read by byte range.

A plain-text document is a run of non-blank lines; JSONL holds one document per
line in a text field. Each document carries its *position*: the byte offset of its
first line in the (decompressed) file. A byte range ``[start, stop)`` owns exactly
the documents whose first line begins inside it, so reading the ranges of a file
one after another yields the same documents, with the same positions, as reading
the whole file at once. That is what lets a Beam worker take one slice of a large
file while another worker takes the next.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlm_jax.errors import UserError

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# How far a reader steps back at a time to find the line before its range.
_BACK_STEP = 1 << 16


def inner_suffix(path: str) -> str:
    """The suffix that tells the format, looking through a compression suffix."""
    p = Path(path.lower())
    if p.suffix in _OPENERS:
        p = p.with_suffix("")
    return p.suffix


def is_compressed(path: str) -> bool:
    return Path(path.lower()).suffix in _OPENERS


def _open_bytes(path: str) -> io.BufferedIOBase:
    opener = _OPENERS.get(Path(path.lower()).suffix, open)
    return opener(path, "rb")


def _check_not_binary(path: str, head: bytes) -> None:
    if b"\x00" in head:
        raise UserError(
            f"input {path!r} looks binary (NUL bytes); pass text, .gz/.bz2/.xz, JSONL or "
            "Parquet (.parquet) files"
        )


def _decode(raw: bytes) -> tuple[str, bool]:
    """The text of a line, and whether it held bytes that are not UTF-8 (replaced)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def _line_before(handle, offset: int) -> bytes:
    """The whole line that ends just before ``offset`` (a line start), read backwards."""
    end = offset
    chunks: list[bytes] = []
    position = offset - 1  # skip the newline that ends that line
    while position > 0:
        step = min(_BACK_STEP, position)
        handle.seek(position - step)
        chunk = handle.read(step)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            chunks.append(chunk[cut + 1 :])
            break
        chunks.append(chunk)
        position -= step
    chunks.reverse()
    handle.seek(end)
    return b"".join(chunks)


def _seek_line_start(handle, start: int) -> int:
    """Move to the first line that begins at or after ``start``; return its offset."""
    if start == 0:
        return 0
    handle.seek(start - 1)
    # The byte before ``start`` ends or belongs to a line owned by the previous range.
    return start - 1 + len(handle.readline())


def _follows_blank_line(handle, offset: int) -> bool:
    """Whether the line before ``offset`` is blank (or there is none): a document starts here."""
    if offset == 0:
        return True
    # Decoded without counting: the range that owns that line counts its bad bytes.
    return not _line_before(handle, offset).decode("utf-8", errors="replace").strip()


@contextlib.contextmanager
def _reading(path: str) -> Iterator[io.BufferedIOBase]:
    try:
        with _open_bytes(path) as handle:
            yield handle
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"cannot read input {path!r} ({exc}); check the file is intact") from None


def _lines(path: str, handle, offset: int) -> Iterator[tuple[int, bytes]]:
    """(offset, raw line) from ``offset``, a line start, to the end of the file."""
    for index, raw in enumerate(handle):
        if index == 0 and offset == 0:
            _check_not_binary(path, raw[:8192])
        yield offset, raw
        offset += len(raw)


def _paragraphs(path: str, stats: Any, start: int, stop: int | None) -> Iterator[tuple[int, str]]:
    block: list[str] = []
    block_offset = 0
    with _reading(path) as handle:
        first = _seek_line_start(handle, start)
        previous_blank = _follows_blank_line(handle, first)
        for offset, raw in _lines(path, handle, first):
            line, undecodable = _decode(raw)
            line = line.strip()
            if not line:
                if block:
                    yield block_offset, "\n".join(block)
                    block = []
                previous_blank = True
                continue
            if previous_blank:  # a document starts on this line
                if stop is not None and offset >= stop:
                    return
                block_offset, block = offset, [line]
            elif block:
                block.append(line)
            else:  # the tail of a document that an earlier range owns (and counts)
                continue
            stats.undecodable_lines += undecodable
            previous_blank = False
    if block:
        yield block_offset, "\n".join(block)


def _jsonl(
    path: str, text_field: str, stats: Any, start: int, stop: int | None
) -> Iterator[tuple[int, str]]:
    with _reading(path) as handle:
        first = _seek_line_start(handle, start)
        for number, (offset, raw) in enumerate(_lines(path, handle, first), 1):
            if stop is not None and offset >= stop:
                return
            where = f"{path}:{number}" if start == 0 else f"{path} (line at byte {offset})"
            document = _json_text(where, raw, text_field, stats)
            if document is not None:
                yield offset, document


def _json_text(where: str, raw: bytes, text_field: str, stats: Any) -> str | None:
    """The stripped text of one JSONL line, or None when it has none (counted as skipped)."""
    line, undecodable = _decode(raw)
    stats.undecodable_lines += undecodable
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        raise UserError(
            f"{where}: not valid JSON; each line of a JSONL file must be an object"
        ) from None
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str) or not text.strip():
        stats.skipped_records += 1
        return None
    return text.strip()


def read_documents(
    path: str, text_field: str, stats: Any, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, str]]:
    """Yield ``(position, document)`` for the documents whose first line starts in range."""
    if inner_suffix(path) in JSONL_SUFFIXES:
        return _jsonl(path, text_field, stats, start, stop)
    return _paragraphs(path, stats, start, stop)


def read_lines(path: str, text_field: str, stats: Any) -> Iterator[str]:
    """Every non-blank line of a file, stripped, without ever holding a whole document.

    For plain text this streams line by line, so a file without blank lines (one
    sentence per line, say) never becomes one giant document in memory. Documents
    and characters are still counted the way :func:`read_documents` counts them.
    """
    if inner_suffix(path) in JSONL_SUFFIXES:
        for _, document in _jsonl(path, text_field, stats, 0, None):
            stats.documents += 1
            stats.characters += len(document)
            yield from document.splitlines()
        return
    in_document = False
    with _reading(path) as handle:
        for _, raw in _lines(path, handle, 0):
            line, undecodable = _decode(raw)
            stats.undecodable_lines += undecodable
            line = line.strip()
            if not line:
                in_document = False
                continue
            stats.documents += not in_document
            stats.characters += len(line) + in_document
            in_document = True
            yield line
