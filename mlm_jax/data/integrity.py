"""Checksums of prepared datasets and tokenizers, and the checks that read them.

Datasets travel: copied to cluster storage, synced between buckets, mounted over FUSE. An
interrupted copy leaves files missing, short or full of other bytes, and the libraries
that read them (Riegeli, Grain, SentencePiece) then fail with pages of frames that name
neither the file nor the fix. So each artifact records, when it is written, every file's
size and a BLAKE2b checksum (``meta.json``, key ``integrity``), and three checks read it:

* :func:`check_dataset`, at the start of every command that reads a dataset: every
  file present at its recorded size. A ``stat`` per file: well under a second for
  thousands of shards.
* :func:`check_tokenizer`, whenever a tokenizer is loaded: its files' checksums (they
  are small).
* :func:`verify` (``mlm-jax data verify``): every checksum and every record readable,
  naming each damaged file; and :func:`locate_damage`, which a run that fails mid-read
  calls to say which shard broke.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from mlm_jax.errors import UserError

HASH = "blake2b-128"  # hashlib.blake2b with a 16-byte digest: fast, in the standard library
_CHUNK = 1 << 20
META_KEY = "integrity"

DATASET_FIX = "copy it again from the original, or rerun `mlm-jax data prepare`"
TOKENIZER_FIX = "copy it again from the original, or rerun `mlm-jax tokenizer train`"


def checksum(path: Path) -> str:
    """The file's BLAKE2b-128 in hex, read in 1 MiB chunks (bounded memory)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record(root: Path, files: list[Path]) -> dict:
    """The ``integrity`` entry of a meta.json: each file's size and checksum, by path
    relative to ``root``."""
    return {
        "hash": HASH,
        "files": {
            str(path.relative_to(root)): {"bytes": path.stat().st_size, "checksum": checksum(path)}
            for path in sorted(files)
        },
    }


def record_bytes(files: dict[str, bytes]) -> dict:
    """The ``integrity`` entry for files about to be written from these bytes."""
    digest = lambda data: hashlib.blake2b(data, digest_size=16).hexdigest()  # noqa: E731
    return {
        "hash": HASH,
        "files": {
            name: {"bytes": len(data), "checksum": digest(data)} for name, data in files.items()
        },
    }


def dataset_files(builder_dir: Path) -> list[Path]:
    """What a prepared dataset's integrity record covers: the TFDS builder directory."""
    return [p for p in builder_dir.rglob("*") if p.is_file()]


def _recorded(meta: dict) -> dict[str, dict]:
    return (meta.get(META_KEY) or {}).get("files", {})


def _size_problem(path: Path, expected: int) -> str | None:
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != expected:
        return f"has {size:,} bytes, {expected:,} when it was written (a partial or damaged copy)"
    return None


def check_dataset(root: Path, meta: dict) -> None:
    """Refuse a prepared dataset whose files are missing or of the wrong size.

    Datasets prepared before checksums were recorded have nothing to check.
    """
    for name, entry in _recorded(meta).items():
        problem = _size_problem(root / name, entry["bytes"])
        if problem:
            raise UserError(f"dataset file {root / name} {problem}; {DATASET_FIX}")


def check_tokenizer(directory: Path) -> None:
    """Refuse a tokenizer whose recorded files are missing, resized or changed."""
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"tokenizer file {meta_path} is not valid JSON; {TOKENIZER_FIX}") from None
    for name, entry in _recorded(meta).items():
        problem = _content_problem(directory / name, entry)
        if problem:
            raise UserError(f"tokenizer file {directory / name} {problem}; {TOKENIZER_FIX}")


def check_inputs(config) -> None:
    """The cheap checks of a config's tokenizer and prepared dataset, before a command
    does anything else (nothing loaded, nothing written)."""
    tokenizer = Path(config.data.tokenizer)
    if tokenizer.is_dir():
        check_tokenizer(tokenizer)
    root = Path(config.data.source)
    if config.data.data_dir is None and (root / "meta.json").is_file():
        try:
            meta = json.loads((root / "meta.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(
                f"dataset file {root / 'meta.json'} is not valid JSON; {DATASET_FIX}"
            ) from None
        check_dataset(root, meta)


# ----------------------------------------------------------------------------- full check


def _content_problem(path: Path, entry: dict) -> str | None:
    """A recorded file's size, then its checksum; None when both match."""
    problem = _size_problem(path, entry["bytes"])
    if problem is None and checksum(path) != entry["checksum"]:
        problem = "does not match its checksum (other bytes than were written)"
    return problem


def _damage(root: Path, name: str, entry: dict) -> str | None:
    """What is wrong with one recorded file, reading all of it; None when it is whole."""
    path = root / name
    problem = _content_problem(path, entry)
    if problem is None and ".array_record" in name:
        problem = _unreadable(path)
    return problem


def _unreadable(path: Path, batch: int = 1024) -> str | None:
    """Read every record of an ArrayRecord file, ``batch`` at a time."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(str(path), "readahead_buffer_size:0")
        try:
            total = reader.num_records()
            for first in range(0, total, batch):
                reader.read(list(range(first, min(first + batch, total))))
        finally:
            reader.close()
    except Exception as error:  # Riegeli reports damage as several exception types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        return f"has unreadable records ({reason})"
    return None


def _progress(items: list, label: str) -> Iterator:
    """Items with a progress counter on a terminal's stderr, redrawn in place (logs and
    pipes get none: a counter per shard would bury the lines that matter)."""
    shown = sys.stderr.isatty()
    for index, item in enumerate(items, 1):
        if shown:
            print(f"\r{label}: {index}/{len(items)}", end="", file=sys.stderr, flush=True)
        yield item
    if shown:
        print(file=sys.stderr, flush=True)


def verify(dataset: str, tokenizer: str | None = None) -> list[str]:
    """``mlm-jax data verify``: every file's checksum and every record's readability.

    Prints one line per damaged file (stdout) and raises a one-line UserError naming how
    many there are; returns the checked paths when everything is whole.
    """
    root = Path(dataset)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{dataset} is not a prepared dataset (no meta.json); check the path")
    meta = json.loads(meta_path.read_text())
    files = _recorded(meta)
    if not files:
        raise UserError(
            f"{dataset} was prepared without checksums; rerun `mlm-jax data prepare` to add them"
        )
    damaged = []
    for name in _progress(sorted(files), f"verifying {dataset}"):
        problem = _damage(root, name, files[name])
        if problem:
            damaged.append(f"{root / name} {problem}")
    if tokenizer is not None:
        try:
            check_tokenizer(Path(tokenizer))
        except UserError as error:
            damaged.append(str(error).split("; ")[0])
    for line in damaged:
        print(f"damaged: {line}")
    if damaged:
        raise UserError(f"{len(damaged)} damaged file(s), listed above; {DATASET_FIX}")
    print(
        f"{dataset}: {len(files)} files whole"
        + (f", tokenizer {tokenizer} whole" if tokenizer else "")
    )
    return sorted(files)


def locate_damage(root: Path) -> UserError | None:
    """The one-line error of a read that failed mid-run, naming the damaged file found by
    reading the dataset's recorded files in full; None when they are all whole (then the
    failure is not the data's, and the caller lets it surface as it is)."""
    meta_path = root / "meta.json"
    files = _recorded(json.loads(meta_path.read_text())) if meta_path.is_file() else {}
    for name in sorted(files):
        problem = _damage(root, name, files[name])
        if problem:
            return UserError(f"dataset file {root / name} {problem}; {DATASET_FIX}")
    return None
