"""(short description, long description) pairs of the Debian archive's packages.

Read from apt's English description lists (``*_i18n_Translation-en*`` under
``/var/lib/apt/lists``); apt keeps them compressed, and ``apt-helper cat-file`` opens
every compression apt writes. Docker images of Debian skip those lists; fetch them with
``apt-get update -o Acquire::Languages=en``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

from mlm_jax.errors import UserError

LISTS = Path("/var/lib/apt/lists")
_APT_HELPER = Path("/usr/lib/apt/apt-helper")
_FETCH = "fetch them: apt-get update -o Acquire::Languages=en"


def stanza_pair(stanza: str) -> tuple[str, str] | None:
    """(short, long description) of one ``Translation-en`` stanza, or None."""
    lines = stanza.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("Description-en:")), None)
    if first is None:
        return None
    short = lines[first].partition(":")[2].strip()
    body = []
    for line in lines[first + 1 :]:
        if not line.startswith(" "):
            break
        body.append("" if line.strip() == "." else line.strip())
    long = " ".join(" ".join(body).split())
    if len(short.split()) < 2 or len(long) < 40 or "transitional" in short.lower():
        return None
    return short, long


def _lists() -> list[Path]:
    found = sorted(LISTS.glob("*_i18n_Translation-en*"))
    if not found:
        raise UserError(f"no Debian package descriptions under {LISTS}; {_FETCH}")
    return found


def _read(path: Path) -> str:
    if path.suffix in ("", ".txt") or not _APT_HELPER.exists():
        return path.read_text(encoding="utf-8", errors="replace")
    done = subprocess.run([str(_APT_HELPER), "cat-file", str(path)], capture_output=True)
    if done.returncode != 0:
        raise UserError(f"cannot read {path}: {done.stderr.decode().strip()[:200]}; {_FETCH}")
    return done.stdout.decode("utf-8", "replace")


def debian_pairs() -> Iterator[tuple[str, str]]:
    """(short description, long description) of every package apt describes in English."""
    for path in _lists():
        for stanza in _read(path).split("\n\n"):
            pair = stanza_pair(stanza)
            if pair:
                yield pair
