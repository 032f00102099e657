"""`mlm-jax data relevance --pairs`: split by query, BM25 hard negatives, BM25 candidate lists.

The pairs are real text: WordNet 3.0 words paired with their definitions (a few words
paired with two, to exercise queries with several relevant passages). Every expectation
about BM25 is recomputed here with bm25s directly, not through mlm_jax's index.
"""

import json
import os

import bm25s
import numpy as np
import pytest
from conftest import run_cli

from mlm_jax.data import finetune_data, wordnet

_PAIRS, _HELD_OUT, _NEGATIVES, _CANDIDATES = 600, 60, 5, 20


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """600 noun pairs (word → definition); every 50th word also gets its next synset's gloss."""
    synsets = [s for s in wordnet.synsets() if s.pos == "noun" and len(s.gloss) > 30]
    records = [{"query": s.lemmas[0], "passage": s.gloss} for s in synsets[1000 : 1000 + _PAIRS]]
    extra = [{"query": records[i]["query"], "passage": records[i + 1]["passage"]}
             for i in range(0, _PAIRS - 1, 50)]  # fmt: skip
    return _write(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", records + extra)


@pytest.fixture(scope="module")
def pairs_set(pairs_file):
    out = pairs_file.parent / "set"
    options = ["--eval-queries", _HELD_OUT, "--negatives", _NEGATIVES]
    result = run_cli("data", "relevance", "--pairs", pairs_file, "--out", out, *options,
                     check=True)  # fmt: skip
    assert f"{_HELD_OUT} held-out queries with BM25's top {_CANDIDATES}" in result.stdout
    return out


def _relevant(pairs_file):
    relevant = {}
    for record in _read(pairs_file):
        relevant.setdefault(record["query"], set()).add(record["passage"])
    return relevant


def _direct_bm25(pairs_file):
    """(collection, bm25s retriever) built here, straight from the pairs file."""
    collection = list(dict.fromkeys(r["passage"] for r in _read(pairs_file)))
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(collection, stopwords="en", show_progress=False),
                    show_progress=False)  # fmt: skip
    return collection, retriever


def _query_words(query):
    return bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]


def test_split_by_query_and_held_out_queries_never_train(pairs_file, pairs_set):
    relevant = _relevant(pairs_file)
    train = finetune_data.read_rerank(pairs_set / "train.jsonl")
    held = finetune_data.read_rerank(pairs_set / "eval.jsonl", evaluation=True)
    train_queries, held_queries = {q.query for q in train}, {q.query for q in held}
    assert len(held_queries) == _HELD_OUT
    assert train_queries | held_queries == set(relevant) and not train_queries & held_queries
    for query in train:  # every relevant passage of a training query is a positive
        assert set(query.positives) == relevant[query.query]
    meta = json.loads((pairs_set / "meta.json").read_text())
    assert meta["queries"] == {"train": len(relevant) - _HELD_OUT, "dev": 0, "eval": _HELD_OUT}
    # Another seed holds out other queries; the same seed the same ones.
    again = pairs_set.parent / "again"
    run_cli("data", "relevance", "--pairs", pairs_file, "--out", again, "--eval-queries",
            _HELD_OUT, "--negatives", _NEGATIVES, "--seed", 1, check=True)  # fmt: skip
    other = {r["query"] for r in _read(again / "eval.jsonl")}
    assert len(other) == _HELD_OUT and other != held_queries


def test_a_dev_split_leaves_the_held_out_queries_and_never_trains(pairs_file, pairs_set):
    """--dev-queries carves candidate lists out of the training side: the held-out queries
    stay those of the set built without it, and no dev answer is a training negative."""
    relevant = _relevant(pairs_file)
    out = pairs_set.parent / "with-dev"
    result = run_cli("data", "relevance", "--pairs", pairs_file, "--out", out,
                     "--eval-queries", _HELD_OUT, "--negatives", _NEGATIVES,
                     "--dev-queries", 40, check=True)  # fmt: skip
    assert "BM25 negatives, 40 dev queries, " in result.stdout
    held = {r["query"] for r in _read(out / "eval.jsonl")}
    assert held == {r["query"] for r in _read(pairs_set / "eval.jsonl")}
    dev = finetune_data.read_rerank(out / "dev.jsonl", evaluation=True)
    train = finetune_data.read_rerank(out / "train.jsonl")
    dev_queries, train_queries = {q.query for q in dev}, {q.query for q in train}
    assert len(dev_queries) == 40 and not dev_queries & (held | train_queries)
    assert dev_queries | held | train_queries == set(relevant)
    assert all(len(q.positives) + len(q.negatives) == _CANDIDATES for q in dev)
    dev_answers = {p for q in dev_queries for p in relevant[q]}
    assert not dev_answers & {p for q in train for p in q.negatives}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["queries"] == {"train": len(train_queries), "dev": 40, "eval": _HELD_OUT}


def test_training_negatives_are_bm25s_hardest_other_passages(pairs_file, pairs_set):
    relevant = _relevant(pairs_file)
    collection, retriever = _direct_bm25(pairs_file)
    held = {r["query"] for r in _read(pairs_set / "eval.jsonl")}
    answers_of_held = {p for q in held for p in relevant[q]}
    lines = [r for r in _read(pairs_set / "train.jsonl") if "negatives" in r]
    for record in lines:
        scores = retriever.get_scores(_query_words(record["query"]))
        allowed = [i for i in range(len(collection)) if collection[i] not in answers_of_held
                   and collection[i] not in relevant[record["query"]]]  # fmt: skip
        best = sorted(allowed, key=lambda i: (-scores[i], i))[:_NEGATIVES]
        assert record["negatives"] == [collection[i] for i in best]
        assert record["positive"] in relevant[record["query"]]
        # Each passage's BM25 score rides along, positive first (a teacher may mix them in).
        shown = [collection.index(record["positive"]), *best]
        assert record["bm25"] == pytest.approx([scores[i] for i in shown], abs=1e-5)
    assert sum(len(r["negatives"]) == _NEGATIVES for r in lines) == len(lines)
    extra = [r for r in _read(pairs_set / "train.jsonl") if "passage" in r]
    assert extra  # the words given two glosses, on the training side
    for record in extra:
        score = retriever.get_scores(_query_words(record["query"]))[
            collection.index(record["passage"])
        ]
        assert record["bm25"] == pytest.approx(score, abs=1e-5)


def test_held_out_candidates_equal_a_direct_bm25s_query(pairs_file, pairs_set):
    relevant = _relevant(pairs_file)
    collection, retriever = _direct_bm25(pairs_file)
    lines = _read(pairs_set / "eval.jsonl")
    held = list(dict.fromkeys(r["query"] for r in lines))
    found = 0
    for query in held:
        mine = [r for r in lines if r["query"] == query]
        ids, scores = retriever.retrieve([_query_words(query)], k=_CANDIDATES, show_progress=False)
        assert [r["bm25"] for r in mine] == pytest.approx(scores[0].tolist(), abs=1e-5)
        # Equal scores may come in another order; the candidate sets above any tie agree.
        cut = scores[0][-1]
        direct = {collection[i] for i, s in zip(ids[0], scores[0], strict=True) if s > cut}
        assert direct <= {r["passage"] for r in mine}
        assert all(r["label"] == int(r["passage"] in relevant[query]) for r in mine)
        found += any(r["label"] for r in mine)
    meta = json.loads((pairs_set / "meta.json").read_text())
    assert meta["bm25_recall@20"] == pytest.approx(found / len(held), abs=1e-6)
    assert 0 < found < len(held)  # some answers were missed: those queries score 0


def test_evaluation_reads_bm25_scores_and_unanswered_queries(pairs_set):
    from mlm_jax.data import bm25_index
    from mlm_jax.data.ranking_metrics import mean_ranking_metrics

    queries = finetune_data.read_rerank(pairs_set / "eval.jsonl", evaluation=True)
    bm25 = bm25_index.candidate_scores(queries)
    relevant = [np.asarray([1] * len(q.positives) + [0] * len(q.negatives)) for q in queries]
    by_query = {}
    for record in _read(pairs_set / "eval.jsonl"):
        by_query.setdefault(record["query"], {})[record["passage"]] = record["bm25"]
    for query, scores in zip(queries, bm25, strict=True):
        assert scores.tolist() == pytest.approx(
            [by_query[query.query][p] for p in query.positives + query.negatives]
        )
    answered = [float(r.any()) for r in relevant]
    # A perfect ranker reaches exactly the share of queries whose answer BM25 retrieved.
    assert mean_ranking_metrics(relevant, relevant)["mrr@10"] == pytest.approx(np.mean(answered))
    with pytest.raises(Exception, match="has no positive passage"):
        finetune_data.read_rerank(pairs_set / "eval.jsonl")


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "file not found"),
        ('{"query": "whale"}\n', [], "1: field 'passage' is missing"),
        ('{"query": "whale", "passage": 3}\n', [], "1: field 'passage' must be a non-empty"),
        ("whale\n", [], "1: not valid JSON"),
        ("[1, 2]\n", [], "1: expected a JSON object"),
        ("\n\n", [], "no pairs"),
        ('{"query": "whale", "passage": "a big sea mammal"}\n', [], "leaves no training query"),
        (b"\xff\xfe\n", [], "not UTF-8 text"),
        ('{"query": "q", "passage": "a b"}\n', ["--source", "wordnet"], "drop --source"),
        ('{"query": "q", "passage": "p"}\n', ["--candidates", "0"], "--candidates must be"),
    ],
)
def test_bad_pairs_files_are_one_line_and_exit_2(tmp_path, content, extra, message):
    path = tmp_path / "pairs.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    result = run_cli("data", "relevance", "--pairs", path, "--out", tmp_path / "set", *extra)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "set").exists()


def test_existing_set_is_kept_without_force(pairs_file, pairs_set):
    before = (pairs_set / "eval.jsonl").read_bytes()
    result = run_cli("data", "relevance", "--pairs", pairs_file, "--out", pairs_set,
                     env={**os.environ})  # fmt: skip
    assert result.returncode == 2 and "--force" in result.stderr
    assert (pairs_set / "eval.jsonl").read_bytes() == before
