"""Reading Princeton WordNet's database files, as Debian's ``wordnet-base`` installs them.

Each ``data.{noun,verb,adj,adv}`` line is one synset: an offset, the lexicographer file
it came from (``noun.animal``, ``verb.motion``, ... as a number), its lemmas, pointers to
other synsets, then ``|`` and the gloss (a definition, often followed by quoted examples).
We only need lemmas, lexicographer file and gloss, so the pointers are skipped.

The files are looked up in ``$WNSEARCHDIR`` (WordNet's own variable) or else
``/usr/share/wordnet``.
"""

from __future__ import annotations

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
    root = Path(os.environ.get("WNSEARCHDIR") or DEFAULT_DIR)
    files = [root / f"data.{pos}" for pos in PARTS_OF_SPEECH]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(
            f"WordNet's {', '.join(missing)} not found in {root}; install Debian's wordnet-base "
            "(`apt-get install wordnet-base`) or set WNSEARCHDIR to a WordNet dict directory"
        )
    return files


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
