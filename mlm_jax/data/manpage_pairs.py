"""(what a page documents, its DESCRIPTION) pairs from Debian's Linux manual pages.

The query is the summary of a page's NAME line (``read \\- read from a file descriptor``
gives "read from a file descriptor"); the passage is the prose of its DESCRIPTION section,
roff requests and escapes removed, up to its first ``MAX_WORDS`` words. Pages that only
point at another page (``.so``) are skipped. The pages are those of Debian's ``manpages``
and ``manpages-dev`` (system calls, library functions, file formats, overviews; ``apt-get
install manpages manpages-dev``), so the set is the same on every machine that has them,
whatever else it has installed.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

from mlm_jax.errors import UserError

MAN_ROOT = Path("/usr/share/man")
DPKG_INFO = Path("/var/lib/dpkg/info")
PACKAGES = ("manpages", "manpages-dev")
# A DESCRIPTION runs to 460 words on average; its first 200 say what the page is about
# and keep a re-ranking pass over BM25's candidates affordable.
MAX_WORDS = 200
_SECTION = re.compile(r'^\.SH\s+"?([^"\n]*)"?\s*$', re.MULTILINE)
# Font changes, size changes, zero-width and hyphenation marks: nothing to read.
_SILENT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\s[+-]?\d+|\\[&%c:]|\\\*(\(..|\[[^\]]*\]|.)")
_NAMED = {"aq": "'", "em": "-", "en": "-", "lq": '"', "rq": '"', "oq": "'", "cq": "'",
          "bu": "*", "co": "(c)", "mu": "x", "ga": "`", "ti": "~", "ha": "^"}  # fmt: skip
_CHARACTER = re.compile(r"\\(\((..)|\[([^\]]*)\])")
# Requests that only lay out the page; their arguments are not prose.
_LAYOUT = {
    "PP", "LP", "P", "TP", "TQ", "RS", "RE", "HP", "sp", "br", "nf", "fi", "in", "ti",
    "ne", "ad", "na", "hy", "nh", "ft", "ps", "ll", "EX", "EE", "UE", "ME",
}  # fmt: skip


def unescape(text: str) -> str:
    """Roff text as a reader sees it: escapes resolved, comments dropped."""
    text = text.split('\\"', 1)[0]
    text = _SILENT.sub("", text)
    text = _CHARACTER.sub(lambda m: _NAMED.get(m.group(2) or m.group(3), ""), text)
    return text.replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ").replace("\\", "")


def _text_of(line: str) -> str:
    """The prose a source line contributes: a font request's arguments, a text line whole."""
    if not line.startswith((".", "'")):
        return unescape(line)
    request, _, arguments = line[1:].partition(" ")
    if request in _LAYOUT or request.startswith('\\"'):
        return ""
    words = re.findall(r'"[^"]*"|\S+', arguments)
    joiner = "" if len(request) == 2 and request.isupper() and request[0] in "BIR" else " "
    return unescape(joiner.join(w.strip('"') for w in words))


def _prose(lines: list[str]) -> str:
    return " ".join(" ".join(_text_of(line) for line in lines).split())


def page_pair(source: str) -> tuple[str, str] | None:
    """(NAME summary, DESCRIPTION prose) of one page's roff source, or None."""
    sections = _SECTION.split(source)
    named = {sections[i].strip().upper(): sections[i + 1] for i in range(1, len(sections) - 1, 2)}
    if "NAME" not in named or "DESCRIPTION" not in named:
        return None
    name = _prose(named["NAME"].splitlines())
    _, dash, summary = name.partition(" - ")
    description = " ".join(_prose(named["DESCRIPTION"].splitlines()).split()[:MAX_WORDS])
    if not dash or len(summary.split()) < 2 or len(description) < 40:
        return None
    return summary.strip(), description


def _pages() -> list[Path]:
    """The pages of Debian's ``manpages`` and ``manpages-dev``: the same set on every
    machine that has them, whatever else is installed."""
    pages = []
    for package in PACKAGES:
        listing = DPKG_INFO / f"{package}.list"
        if listing.is_file():
            pages += [Path(line) for line in listing.read_text().splitlines()
                      if line.startswith(f"{MAN_ROOT}/man") and line.endswith(".gz")]  # fmt: skip
    if not pages:
        raise UserError(
            f"Debian's manual pages are not installed; apt-get install {' '.join(PACKAGES)}"
        )
    return sorted(pages)


def manpage_pairs() -> Iterator[tuple[str, str]]:
    """(NAME summary, DESCRIPTION) of every page of Debian's Linux manual pages."""
    for path in _pages():
        if not path.is_file():  # a link dpkg lists, or a page removed by hand
            continue
        try:
            source = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        if source.startswith(".so "):
            continue
        pair = page_pair(source)
        if pair:
            yield pair
