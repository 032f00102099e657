"""Reading raw text inputs into documents.

An input is a path or ``builtin:NAME``. Paths may be plain text (documents are
separated by blank lines), ``.gz``/``.bz2``/``.xz`` compressed files, JSONL with a
text field (one document per line), or directories searched recursively.
Every stage that takes text (tokenizer training, dataset preparation) reads it
through :func:`iter_documents`, so they agree on what a document is.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import os
from collections.abc import Iterator
from pathlib import Path

from mlm_jax import builtin_corpora
from mlm_jax.errors import UserError

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclasses.dataclass
class ReadStats:
    """What reading saw; undecodable lines are counted, not fatal."""

    files: int = 0
    documents: int = 0
    characters: int = 0
    undecodable_lines: int = 0
    skipped_json_lines: int = 0

    def summary(self) -> str:
        text = f"{self.files} files, {self.documents} documents, {self.characters} characters"
        if self.undecodable_lines:
            text += f", {self.undecodable_lines} lines with non-UTF-8 bytes (replaced)"
        if self.skipped_json_lines:
            text += f", {self.skipped_json_lines} JSONL lines without text skipped"
        return text


def expand_inputs(inputs: list[str]) -> list[str]:
    """Turn inputs into a sorted, de-duplicated list of files and ``builtin:`` names."""
    if not inputs:
        raise UserError("no input given; pass --input PATH (a file, a directory or builtin:NAME)")
    files: list[str] = []
    for item in inputs:
        if item.startswith("builtin:"):
            builtin_corpora.check_available(item.removeprefix("builtin:"))
            files.append(item)
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.parts[-1:])
            )
            if not found:
                raise UserError(f"input directory {item!r} holds no files; point at text files")
            files.extend(found)
        elif path.is_file():
            files.append(str(path))
        else:
            raise UserError(f"input {item!r} does not exist; check the path or use builtin:NAME")
    return list(dict.fromkeys(files))


def _open_text_bytes(path: str) -> io.BufferedIOBase:
    suffix = Path(path).suffix.lower()
    opener = _OPENERS.get(suffix, open)
    return opener(path, "rb")


def _inner_suffix(path: str) -> str:
    """The suffix that tells the format, looking through a compression suffix."""
    p = Path(path.lower())
    if p.suffix in _OPENERS:
        p = p.with_suffix("")
    return p.suffix


def _check_not_binary(path: str, head: bytes) -> None:
    if b"\x00" in head:
        raise UserError(
            f"input {path!r} looks binary (NUL bytes); pass text, .gz/.bz2/.xz or JSONL files"
        )


def _decoded_lines(path: str, stats: ReadStats) -> Iterator[str]:
    try:
        with _open_text_bytes(path) as handle:
            first = True
            for raw in handle:
                if first:
                    _check_not_binary(path, raw[:8192])
                    first = False
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    stats.undecodable_lines += 1
                    yield raw.decode("utf-8", errors="replace")
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"cannot read input {path!r} ({exc}); check the file is intact") from None


def _paragraph_documents(lines: Iterator[str]) -> Iterator[str]:
    block: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped:
            block.append(stripped)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _jsonl_documents(
    path: str, lines: Iterator[str], text_field: str, stats: ReadStats
) -> Iterator[str]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(
                f"{path}:{number}: not valid JSON; each line of a JSONL file must be an object"
            ) from None
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            stats.skipped_json_lines += 1
            continue
        yield text.strip()


def _file_documents(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    lines = _decoded_lines(path, stats)
    if _inner_suffix(path) in _JSONL_SUFFIXES:
        yield from _jsonl_documents(path, lines, text_field, stats)
    else:
        yield from _paragraph_documents(lines)


def iter_documents(
    inputs: list[str], text_field: str = "text", stats: ReadStats | None = None
) -> Iterator[str]:
    """Yield every document of the inputs in a fixed order."""
    stats = stats if stats is not None else ReadStats()
    for item in expand_inputs(inputs):
        stats.files += 1
        if item.startswith("builtin:"):
            documents = builtin_corpora.documents(item.removeprefix("builtin:"))
        else:
            documents = _file_documents(item, text_field, stats)
        for document in documents:
            stats.documents += 1
            stats.characters += len(document)
            yield document


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
