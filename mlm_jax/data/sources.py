"""Reading raw text inputs into documents.

An input is a path, a glob pattern or ``builtin:NAME``. Paths may be plain text
(documents are separated by blank lines), ``.gz``/``.bz2``/``.xz`` compressed files,
JSONL with a text field (one document per line), Parquet with a text column (one
document per row), or directories of any of these, searched recursively.
Every stage that takes text (tokenizer training, dataset preparation) reads it
through this module, so they agree on what a document is.

Work can be cut into :class:`Shard` s, slices of one input that are read
independently (byte ranges of large uncompressed text, runs of Parquet row groups).
Each document has a *position* in its input (byte offset, row number or index),
the same whichever shard reads it: dataset doc ids are built from it.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from mlm_jax.data import builtin_corpora, parquet_source, text_source
from mlm_jax.errors import UserError

_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass
class ReadStats:
    """What reading saw; undecodable lines are counted, not fatal."""

    files: int = 0
    documents: int = 0
    characters: int = 0
    undecodable_lines: int = 0
    skipped_records: int = 0

    def add(self, other: ReadStats) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def summary(self) -> str:
        text = f"{self.files} files, {self.documents} documents, {self.characters} characters"
        if self.undecodable_lines:
            text += f", {self.undecodable_lines} lines with non-UTF-8 bytes (replaced)"
        if self.skipped_records:
            text += f", {self.skipped_records} JSONL lines or Parquet rows without text skipped"
        return text


@dataclasses.dataclass(frozen=True)
class Shard:
    """A slice of input number ``input_index``: bytes (text) or row groups (Parquet).

    ``stop=None`` reads to the end; a builtin corpus is always one whole shard.
    """

    input_index: int
    item: str
    start: int = 0
    stop: int | None = None


def expand_inputs(inputs: list[str]) -> list[str]:
    """Turn inputs into a sorted, de-duplicated list of files and ``builtin:`` names."""
    if not inputs:
        raise UserError("no input given; pass --input PATH (a file, a directory or builtin:NAME)")
    files: list[str] = []
    for item in inputs:
        if item.startswith("builtin:"):
            builtin_corpora.check_available(item.removeprefix("builtin:"))
            files.append(item)
        elif not Path(item).expanduser().exists() and _GLOB_CHARS & set(item):
            files.extend(_glob_files(item))
        else:
            files.extend(_path_files(item))
    return list(dict.fromkeys(files))


def _path_files(item: str) -> list[str]:
    path = Path(item).expanduser()
    if path.is_dir():
        found = sorted(
            str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        if not found:
            raise UserError(f"input directory {item!r} holds no files; point at text files")
        return found
    if path.is_file():
        return [str(path)]
    raise UserError(f"input {item!r} does not exist; check the path or use builtin:NAME")


def _glob_files(pattern: str) -> list[str]:
    """The files a pattern matches (``**`` spans directories), in sorted order."""
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [
        f for match in matches for f in (_path_files(match) if os.path.isdir(match) else [match])
    ]
    if not files:
        raise UserError(
            f"input pattern {pattern!r} matches no files; check the pattern (quote it so the "
            "shell passes it through)"
        )
    return files


def _file_shards(index: int, path: str, text_field: str, shard_bytes: int | None):
    if parquet_source.is_parquet(path):
        ranges = parquet_source.row_group_ranges(path, text_field, shard_bytes)
        return [Shard(index, path, start, stop) for start, stop in ranges] or [Shard(index, path)]
    size = os.path.getsize(path)
    if shard_bytes is None or text_source.is_compressed(path) or size <= shard_bytes:
        return [Shard(index, path)]
    cuts = list(range(0, size, shard_bytes))
    return [Shard(index, path, start, start + shard_bytes) for start in cuts]


def plan_shards(
    inputs: list[str], text_field: str = "text", shard_bytes: int | None = None
) -> list[Shard]:
    """Cut the inputs into shards of about ``shard_bytes`` (``None``: one per input).

    Checks what can be checked before reading: every input exists and every
    Parquet file has a text column.
    """
    shards: list[Shard] = []
    for index, item in enumerate(expand_inputs(inputs)):
        if item.startswith("builtin:"):
            shards.append(Shard(index, item))
        else:
            shards.extend(_file_shards(index, item, text_field, shard_bytes))
    return shards


def read_shard(shard: Shard, text_field: str, stats: ReadStats) -> Iterator[tuple[int, str]]:
    """Yield ``(position, document)`` for the documents of one shard, in order."""
    if shard.start == 0:
        stats.files += 1
    if shard.item.startswith("builtin:"):
        documents = enumerate(builtin_corpora.documents(shard.item.removeprefix("builtin:")))
    elif parquet_source.is_parquet(shard.item):
        documents = parquet_source.read_documents(
            shard.item, text_field, stats, shard.start, shard.stop
        )
    else:
        documents = text_source.read_documents(
            shard.item, text_field, stats, shard.start, shard.stop
        )
    for position, document in documents:
        stats.documents += 1
        stats.characters += len(document)
        yield position, document


def iter_documents(
    inputs: list[str], text_field: str = "text", stats: ReadStats | None = None
) -> Iterator[str]:
    """Yield every document of the inputs in a fixed order."""
    stats = stats if stats is not None else ReadStats()
    for shard in plan_shards(inputs, text_field):
        for _, document in read_shard(shard, text_field, stats):
            yield document


def iter_lines(
    inputs: list[str], text_field: str = "text", stats: ReadStats | None = None
) -> Iterator[str]:
    """Yield every non-blank line of every document, stripped, streaming plain text by line."""
    stats = stats if stats is not None else ReadStats()
    for shard in plan_shards(inputs, text_field):
        path = shard.item
        if path.startswith("builtin:") or parquet_source.is_parquet(path):
            for _, document in read_shard(shard, text_field, stats):
                yield from (line.strip() for line in document.splitlines() if line.strip())
        else:
            stats.files += 1
            for line in text_source.read_lines(path, text_field, stats):
                yield from (part.strip() for part in line.splitlines() if part.strip())


def fingerprint(inputs: list[str]) -> str:
    """A sha256 over the names and bytes of the inputs: equal inputs, equal fingerprint."""
    digest = hashlib.sha256()
    for item in expand_inputs(inputs):
        if item.startswith("builtin:"):
            digest.update(item.encode())
            digest.update(builtin_corpora.fingerprint(item.removeprefix("builtin:")).encode())
            continue
        digest.update(os.path.basename(item).encode())
        with open(item, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
