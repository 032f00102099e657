"""``mlm-jax data pairs``: pairs files from real text, and the dictionary parsing of
dictd's GCIDE format."""

import json

import pytest
from conftest import run_cli

from mlm_jax.data import pair_sources


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


@pytest.mark.parametrize("source", ["pydocs", "wordnet"])
def test_pairs_command_writes_distinct_pairs_of_real_text(source, tmp_path):
    out = tmp_path / "pairs" / f"{source}.jsonl"
    result = run_cli("data", "pairs", "--source", source, "--out", out)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert summary["pairs"] == len(lines) > 1000 and summary["queries"] <= len(lines)
    assert len({(x["query"], x["passage"]) for x in lines}) == len(lines)
    assert all(set(x) == {"query", "passage"} and len(x["passage"]) >= 40 for x in lines)


def test_an_unknown_source_is_one_line_naming_the_sources(tmp_path):
    result = run_cli("data", "pairs", "--source", "nowhere", "--out", tmp_path / "p.jsonl")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "pydocs" in result.stderr and not (tmp_path / "p.jsonl").exists()
