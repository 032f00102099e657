"""``mlm-jax data pairs``: pairs files from real text, and the parsing of each source's
format: dictd's GCIDE, roff manual pages, apt's description lists, wiki markup."""

import json

import pytest
from conftest import run_cli

from mlm_jax.data import debian_pairs, manpage_pairs, pair_sources, wikipedia_pairs
from mlm_jax.errors import UserError


@pytest.fixture(scope="module")
def make_pairs():
    return pair_sources


# Shaped like the entries of /usr/share/dictd/gcide.dict.dz: headword line with the
# pronunciation between backslashes, inflections in brackets, then paragraphs.
QUOTED = (
    'Retreat \\Re*treat"\\, v. i. [imp. & p. p. {Retreated}; p. pr. &\n'
    "   vb. n. {Retreating}.]\n"
    "   To make a retreat; to retire from any position or place; to\n"
    "   withdraw; as, the defeated army retreated from the field.\n"
    "   [1913 Webster]\n\n"
    "         The rapid currents drive\n"
    "         Towards the retreating sea their furious tide.\n"
    "                                                  --Milton.\n"
    "   [1913 Webster]\n\n"
    "   {Retreating color}, a color that seems to recede.\n"
    "      --Some Author.\n"
    "   [1913 Webster]\n"
)
UNQUOTED = (
    'Cockle \\Coc"kle\\, v. t. [imp. & p. p. {Cockled}.] [Of uncertian origin.]\n'
    "   To cause to contract into wrinkles or ridges, as some kinds\n"
    "   of cloth after a wetting.\n"
    "   [1913 Webster]\n\n"
    "   {Cockling sea}, waves dashing against each other with a short\n"
    "      and quick motion. --Ham. Nav. Encyc.\n"
    "      [1913 Webster]\n"
)


def test_definition_drops_pronunciation_inflections_and_part_of_speech(make_pairs):
    word, definition = make_pairs._gcide_definition(QUOTED)
    assert word == "Retreat"
    assert definition == (
        "To make a retreat; to retire from any position or place; to withdraw; "
        "as, the defeated army retreated from the field."
    )


def test_usage_appends_the_quotation_and_stops_at_a_sub_entry(make_pairs):
    word, passage = make_pairs._gcide_usage(QUOTED)
    assert word == "Retreat"
    assert passage.endswith(
        'from the field; "The rapid currents drive Towards the retreating sea their furious tide."'
    )
    assert "Retreating color" not in passage and "Milton" not in passage


def test_usage_leaves_out_an_entry_without_quotation(make_pairs):
    assert make_pairs._gcide_definition(UNQUOTED)[0] == "Cockle"
    assert make_pairs._quotations(UNQUOTED) == []
    assert make_pairs._gcide_usage(UNQUOTED) is None


# Shaped like /usr/share/man/man2/read.2.gz of Debian's manpages-dev.
READ_2 = r""".\" Copyright (C) 1992 Drew Eckhardt
.TH read 2 2023-02-05 "Linux man-pages 6.03"
.SH NAME
read \- read from a file descriptor
.SH LIBRARY
Standard C library
.RI ( libc ", " \-lc )
.SH SYNOPSIS
.nf
.B #include <unistd.h>
.fi
.SH DESCRIPTION
.BR read ()
attempts to read up to
.I count
bytes from file descriptor
.I fd
into the buffer starting at
.IR buf .
.PP
On files that support seeking, the read operation commences at the file offset,
and the file offset is incremented by the number of bytes read.
.\" Here a comment the reader never sees.
It is not an error if this number is smaller than the number of bytes requested\(em
for example, because fewer bytes are actually available right now.
.SH RETURN VALUE
On success, the number of bytes read is returned.
"""


def test_a_manual_page_gives_its_summary_and_its_description_as_prose():
    summary, description = manpage_pairs.page_pair(READ_2)
    assert summary == "read from a file descriptor"
    assert description.startswith(
        "read() attempts to read up to count bytes from file descriptor fd into the buffer "
        "starting at buf. On files that support seeking,"
    )
    assert description.endswith("requested- for example, because fewer bytes are actually "
                                "available right now.")  # fmt: skip
    assert "comment" not in description and "On success" not in description
    assert manpage_pairs.page_pair(READ_2.replace(".SH DESCRIPTION", ".SH OVERVIEW")) is None


# A stanza of apt's Translation-en list (bookworm main).
STANZA = """Package: 0ad-data
Description-md5: 26581e685027d5ae84824362a4ba59ee
Description-en: Real-time strategy game of ancient warfare (data files)
 0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
 real-time strategy (RTS) game of ancient warfare.
 .
 This package contains the main data files required by 0 A.D.
"""


def test_a_debian_stanza_gives_its_short_and_long_description():
    short, long = debian_pairs.stanza_pair(STANZA)
    assert short == "Real-time strategy game of ancient warfare (data files)"
    assert long == ('0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform '
                    "real-time strategy (RTS) game of ancient warfare. This package contains "
                    "the main data files required by 0 A.D.")  # fmt: skip
    transitional = STANZA.replace("(data files)", "- transitional package")
    assert debian_pairs.stanza_pair(transitional) is None


MARKUP = """{{Infobox person|name={{lang|fr|X}}}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]]<ref name="a">A book.</ref> \
known for her work on [[Charles Babbage]]'s [[Analytical Engine|engine]].<ref>Another.</ref> \
[[File:Ada.jpg|thumb|A portrait by [[Alfred Chalon]]]]
{| class="wikitable"
| a cell
|}

== Early life ==
<!-- editors' note -->
Lovelace was born in London. She was the only legitimate child of the poet Lord Byron and \
[https://example.org his wife] Anne Isabella Milbanke.

== References ==
A list of sources that is long enough to be a paragraph if it were prose in an article.
"""


def test_wiki_markup_becomes_prose_and_each_section_a_query():
    pairs = dict(wikipedia_pairs.article_pairs("Ada Lovelace", MARKUP))
    assert pairs == {
        "Ada Lovelace": "Ada Lovelace was an English mathematician known for her work on "
        "Charles Babbage's engine.",
        "Ada Lovelace: Early life": "Lovelace was born in London. She was the only legitimate "
        "child of the poet Lord Byron and his wife Anne Isabella Milbanke.",
    }


def test_missing_system_text_is_a_user_error_naming_the_install(monkeypatch, tmp_path):
    monkeypatch.setattr(manpage_pairs, "DPKG_INFO", tmp_path)
    with pytest.raises(UserError, match="apt-get install manpages manpages-dev"):
        list(manpage_pairs.manpage_pairs())
    monkeypatch.setattr(debian_pairs, "LISTS", tmp_path)
    with pytest.raises(UserError, match="Acquire::Languages=en"):
        list(debian_pairs.debian_pairs())


@pytest.mark.parametrize("source", ["pydocs", "wordnet", "wikipedia"])
def test_pairs_command_writes_distinct_pairs_of_real_text(source, tmp_path):
    out = tmp_path / "pairs" / f"{source}.jsonl"
    result = run_cli("data", "pairs", "--source", source, "--out", out)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert summary["pairs"] == len(lines) > 1000 and summary["queries"] <= len(lines)
    assert len({(x["query"], x["passage"]) for x in lines}) == len(lines)
    assert all(set(x) == {"query", "passage"} and len(x["passage"]) >= 40 for x in lines)
    if source == "wikipedia":  # wiki markup is gone (docstrings may quote any of it)
        assert not any(m in x["passage"] for x in lines for m in ("<ref", "{{", "'''"))


def test_an_unknown_source_is_one_line_naming_the_sources(tmp_path):
    result = run_cli("data", "pairs", "--source", "nowhere", "--out", tmp_path / "p.jsonl")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "pydocs" in result.stderr and not (tmp_path / "p.jsonl").exists()
