"""(article and section title, the section's first paragraph) pairs from the English
Wikipedia sample that ships inside the ``gensim`` wheel (``pip install --no-deps gensim``).

The sample holds about a hundred articles, so each section is a query: "Anarchism" is
paired with the article's lead paragraph and "Anarchism: History" with the first paragraph
of that section. Wiki markup (templates, references, tables, links, emphasis) is removed.
"""

from __future__ import annotations

import bz2
import importlib.util
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from mlm_jax.errors import UserError

SAMPLE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_HEADING = re.compile(r"^(={2,})\s*(.+?)\s*\1\s*$", re.MULTILINE)
_NOT_PROSE = ("see also", "references", "external links", "further reading", "notes",
              "bibliography", "sources", "citations", "footnotes")  # fmt: skip
_INNERMOST = [
    re.compile(r"\{\{[^{}]*\}\}"),  # templates
    re.compile(r"\{\|[^{}]*?\|\}", re.DOTALL),  # tables
    re.compile(r"\[\[(?:File|Image|Category|[a-z-]{2,12}):[^\[\]]*\]\]", re.IGNORECASE),
]
_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]|]*)\]\]")
_MARKUP = [
    (re.compile(r"<!--.*?-->", re.DOTALL), ""),
    (re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.DOTALL), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\[https?://\S+\s([^\]]*)\]"), r"\1"),
    (re.compile(r"\[https?://\S+\]"), ""),
    (re.compile(r"'{2,}"), ""),
]


def plain_text(markup: str) -> str:
    """Wiki markup as a reader sees it, paragraphs kept apart by blank lines."""
    for pattern, replacement in _MARKUP:
        markup = pattern.sub(replacement, markup)
    previous = None
    while previous != markup:  # nested markup goes from the inside out
        previous = markup
        for pattern in _INNERMOST:
            markup = pattern.sub("", markup)
        markup = _LINK.sub(r"\1", markup)
    return markup


def _first_paragraph(text: str) -> str | None:
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [ln for ln in paragraph.splitlines() if ln.strip() and ln[0] not in "*#:;|!{}"]
        prose = " ".join(" ".join(lines).split())
        if len(prose) >= 80 and "{{" not in prose:  # unbalanced markup: not prose
            return prose
    return None


def article_pairs(title: str, markup: str) -> Iterator[tuple[str, str]]:
    """(title, lead paragraph), then ("title: heading", first paragraph) per section."""
    parts = _HEADING.split(plain_text(markup))
    sections = [(title, parts[0])]
    sections += [(f"{title}: {parts[i + 1]}", parts[i + 2]) for i in range(1, len(parts) - 2, 3)]
    for query, text in sections:
        paragraph = _first_paragraph(text)
        if paragraph and query.rpartition(": ")[2].lower() not in _NOT_PROSE:
            yield query, paragraph


def _sample() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the Wikipedia sample comes with gensim: pip install --no-deps gensim")
    return Path(spec.submodule_search_locations[0]) / SAMPLE


def wikipedia_pairs() -> Iterator[tuple[str, str]]:
    """Pairs of every article of the sample (redirects skipped)."""
    with bz2.open(_sample()) as stream:
        for _, element in ET.iterparse(stream):
            if not element.tag.endswith("page"):
                continue
            title = element.findtext("{*}title") or ""
            text = element.findtext("{*}revision/{*}text") or ""
            if title and not text.lstrip().upper().startswith("#REDIRECT"):
                yield from article_pairs(title, text)
            element.clear()
