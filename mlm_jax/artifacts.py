"""Writing an artifact directory so that readers only ever see a whole one.

Every stage that writes a directory (tokenizer, dataset, export) builds it in a
hidden staging directory beside the target, then swaps it in with renames. A crash
or an error leaves the previous directory exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
