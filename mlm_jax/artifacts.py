"""Writing artifacts so that readers only ever see whole ones, and reading JSONL files.

Every stage that writes a directory (tokenizer, dataset, export) builds it in a
hidden staging directory beside the target, then swaps it in with renames; a single
file is written beside its target and renamed over it. A crash or an error leaves the
previous artifact exactly as it was. JSONL (one JSON value per line) is the format of
every pairs, relevance, teacher, candidate and query file: one reader and one writer
here, so each names a bad line the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mlm_jax.errors import UserError


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory; on a clean exit it replaces ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staging.chmod(0o755)
        yield staging
        swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` to ``out``; an existing ``out`` is retired only after."""
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, retired / out.name)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out)


def json_bytes(value: Any) -> bytes:
    """The JSON form every artifact file of ours uses: indented, UTF-8, newline-ended."""
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def write_jsonl_directory(out: str | os.PathLike, files: dict[str, list[dict]], meta: dict) -> None:
    """A directory of ``NAME.jsonl`` files (one JSON object per line) and ``meta.json``."""
    with staged_directory(out) as staging:
        for name, rows in files.items():
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            (staging / f"{name}.jsonl").write_text(lines, encoding="utf-8")
        (staging / "meta.json").write_bytes(json_bytes(meta))


def write_text_atomic(path: Path, text: str) -> None:
    """``path`` holds ``text`` whole, or keeps what it held (written beside, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """One JSON value per line, written atomically; the number of lines."""
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    write_text_atomic(Path(path), "".join(lines))
    return len(lines)


def read_jsonl(
    path: str | os.PathLike, *, missing: str, expected: str, option: str | None = None
) -> Iterator[tuple[str, Any]]:
    """``("FILE:LINE", value)`` of each non-blank line, read lazily.

    Each problem is one UserError naming the file (after ``option``, the flag that named
    it, if any): a missing file ends in ``missing`` (what to pass instead); a line that is
    not UTF-8 or not JSON names its line and ends in ``expected`` (what a line holds).
    """
    path = Path(path)
    named = f"{option} {path}" if option else str(path)
    if not path.is_file():
        raise UserError(f"{named}: file not found; {missing}")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{where}: not UTF-8 text; write {expected}") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: not valid JSON ({exc.msg}); write {expected}") from None
