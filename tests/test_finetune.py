"""Fine-tuning: JSONL errors, ranking metrics, a reranker and a classifier on real
Shakespeare, CLI scoring, and export parity with sentence-transformers' CrossEncoder.

Relevance set: `mlm-jax data relevance --source wordnet` (WordNet 3.0): the
query is a single-sense word, the relevant passage its WordNet usage examples, the seven
negatives examples of other words on the same topic; the 300 held-out queries come from
synsets never seen in training. Classification set: passages labelled by their source, a
Shakespeare speech or a Python standard-library docstring.
"""

import json
import random
import re

import numpy as np
import pytest
from conftest import require, run_cli, write_config
from flax import nnx

from mlm_jax import config as config_lib
from mlm_jax.data import finetune_data, sources
from mlm_jax.data.ranking_metrics import classification_metrics, paired_difference, query_metrics
from mlm_jax.errors import UserError
from mlm_jax.model import objectives
from mlm_jax.state import train_state
from mlm_jax.training import runs

_SPEAKER = re.compile(r"^([A-Z][A-Za-z' ]{0,30}): (.*)$")


def _speeches() -> list[tuple[str, list[str]]]:
    speeches, current = [], None
    for doc in sources.iter_documents(["builtin:shakespeare"]):
        for line in doc.splitlines():
            match = _SPEAKER.match(line)
            if match:
                current = (match.group(1), [match.group(2)])
                speeches.append(current)
            elif current and not line.startswith(("Enter", "Exit", "Exeunt")):
                current[1].append(line)
            else:
                current = None
    return speeches


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _genre_records(per_class: int = 200, held_out: int = 60):
    """Passages labelled by where they come from: 0 = a Shakespeare speech, 1 = a Python
    standard-library docstring; 200 of each to train on, 60 of each held out."""
    plays = [" ".join(lines) for _, lines in _speeches() if len(" ".join(lines)) > 80]
    docs = [d for d in sources.iter_documents(["builtin:pydocs"]) if len(d) > 80]
    records = {0: plays, 1: docs}
    train, held = [], []
    for label, texts in records.items():
        random.Random(label).shuffle(texts)
        train += [{"text": t[:400], "label": label} for t in texts[:per_class]]
        held += [{"text": t[:400], "label": label} for t in texts[per_class : per_class + held_out]]
    random.Random(2).shuffle(train)
    return train, held


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The genre classification set, and the WordNet relevance set made by the CLI."""
    root = tmp_path_factory.mktemp("finetune_data")
    genre_train, genre_eval = _genre_records()
    run_cli("data", "relevance", "--source", "wordnet", "--out", root / "wordnet",
            "--train-queries", 6000, "--eval-queries", 300, check=True)  # fmt: skip
    return {
        "genre_train": _write_jsonl(root / "genre_train.jsonl", genre_train),
        "genre_eval": _write_jsonl(root / "genre_eval.jsonl", genre_eval),
        "rerank_train": root / "wordnet" / "train.jsonl",
        "rerank_eval": root / "wordnet" / "eval.jsonl",
    }


@pytest.fixture(scope="module")
def pretrained(run_inputs, tmp_path_factory):
    """A tiny BERT briefly pretrained on Shakespeare through the CLI."""
    root = tmp_path_factory.mktemp("pretrain")
    cfg = write_config(root / "pre.yaml", run_inputs, train={"steps": 40, "eval_every": 0,
                       "checkpoint_every": 40, "log_every": 20})  # fmt: skip
    run_cli("train", "--config", cfg, "--workdir", root / "run", check=True)
    return root / "run"


def _finetune_config(path, run_inputs, pretrained, **finetune_fields):
    write_config(
        path,
        run_inputs,
        model={"init_from": None if pretrained is None else str(pretrained)},
        train={"steps": 100, "global_batch_size": 16, "eval_every": 0, "log_every": 20,
               "checkpoint_every": 100, "seed": 0},
        # eps 1e-8: the fresh head makes encoder gradients ~1e-8, which eps 1e-6 would mute.
        optim={"learning_rate": 3e-3, "warmup_steps": 10, "eps": 1e-8},
        finetune=finetune_fields,
    )  # fmt: skip
    return config_lib.load(path)


# ----------------------------------------------------------------------------- JSONL errors


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"query": "q", "negatives": ["n"]}, "missing field 'positive'"),
        ({"query": "q", "positive": "p", "negatives": []}, "'negatives' is empty"),
        ({"positive": "p", "negatives": ["n"]}, "missing field 'query'"),
        ({"query": "q", "passage": "p", "label": "yes"}, "'label' must be 0 or 1"),
    ],
)
def test_bad_rerank_jsonl_names_the_line(tmp_path, line, message):
    good = {"query": "a", "positive": "b", "negatives": ["c"]}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(UserError, match=rf"bad\.jsonl:2: {re.escape(message)}"):
        finetune_data.read_rerank(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"text": "t"}, "missing field 'label'"),
        ({"text": "t", "label": "1"}, "'label' must be an integer class id, got a string"),
        ({"text": "t", "label": 1.0}, "'label' must be an integer class id, got a number"),
        ({"text": "t", "label": 5}, "label 5 is outside 0..1"),
        ({"text_a": "t", "label": 0}, "missing field 'text_b'"),
    ],
)
def test_bad_classify_jsonl_names_the_line(tmp_path, line, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok", "label": 0}, line])
    with pytest.raises(UserError, match=rf"bad\.jsonl:2: {re.escape(message)}"):
        finetune_data.read_classify(path, num_labels=2)


def test_bad_jsonl_exits_2_with_one_line(tmp_path, run_inputs):
    bad = _write_jsonl(tmp_path / "train.jsonl", [{"query": "q", "positive": "p", "negatives": []}])
    fields = {"task": "rerank", "loss": "listwise", "train_file": str(bad)}
    cfg = write_config(tmp_path / "ft.yaml", run_inputs, finetune=fields)
    result = run_cli("finetune", "--config", cfg, "--workdir", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"error: {bad}:1: 'negatives' is empty; give at least one negative passage"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- metrics, encoding


def test_ranking_metrics_by_hand():
    # Relevant at rank 2 and in a tie for ranks 3-4 (expected relevance 1/2 at each).
    scores = np.asarray([0.9, 0.5, 0.7, 0.1, 0.5])
    relevant = np.asarray([0, 0, 1, 0, 1])
    metrics = query_metrics(scores, relevant)
    ideal = 1 + 1 / np.log2(3)
    assert metrics["mrr@10"] == pytest.approx(0.5)
    expected_dcg = 1 / np.log2(3) + 0.5 / np.log2(4) + 0.5 / np.log2(5)
    assert metrics["ndcg@10"] == pytest.approx(expected_dcg / ideal)
    assert metrics["recall@1"] == 0.0 and metrics["recall@10"] == 1.0
    # Constant scores earn the random-ranking expectation, whatever the listing order.
    for flat_relevant in ([1, 0, 0, 0], [0, 0, 0, 1]):
        flat = query_metrics(np.zeros(4), np.asarray(flat_relevant))
        assert flat["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
        assert flat["recall@1"] == pytest.approx(0.25)
    # Two relevant among four tied: first relevant at offset 0, 1, 2 w.p. 3/6, 2/6, 1/6.
    pair = query_metrics(np.zeros(4), np.asarray([0, 1, 1, 0]))
    assert pair["mrr@10"] == pytest.approx(3 / 6 + 2 / 6 / 2 + 1 / 6 / 3)
    assert query_metrics(np.zeros(16), np.eye(16)[3], cutoff=10)["recall@10"] == pytest.approx(
        10 / 16
    )
    # No relevant candidate (first-stage retrieval missed the answer): 0 for any ranker.
    assert set(query_metrics(np.arange(5.0), np.zeros(5)).values()) == {0.0}
    cls = classification_metrics(np.asarray([0, 0, 1, 2]), np.asarray([0, 1, 1, 2]))
    assert cls["accuracy"] == 0.75
    assert cls["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


@pytest.fixture(scope="module")
def reranker(datasets, run_inputs, tmp_path_factory):
    """A reranker fine-tuned through the CLI from a briefly pretrained tiny encoder.

    Returns ``(workdir, summary)``: held-out metrics before (``initial/``) and after
    (``eval/``) fine-tuning, and BM25's on the same candidates (``bm25/``).

    Width 128 with 4 heads: at width 32 the encoder never learns to match the query's
    word inside a passage within a CPU test's budget (measured: no gain in 1,500 steps).
    """
    root = tmp_path_factory.mktemp("rerank")
    shape = {"hidden_size": 128, "num_heads": 4, "intermediate_size": 256}
    pre = write_config(root / "pre.yaml", run_inputs, model=shape,
                       train={"steps": 10, "eval_every": 0, "checkpoint_every": 10})  # fmt: skip
    run_cli("train", "--config", pre, "--workdir", root / "pre", check=True)
    cfg = write_config(
        root / "ft.yaml", run_inputs,
        model={**shape, "init_from": str(root / "pre")},
        train={"steps": 600, "global_batch_size": 16, "eval_every": 0, "log_every": 100,
               "checkpoint_every": 600, "seed": 0},
        optim={"learning_rate": 1e-3, "warmup_steps": 10, "eps": 1e-8},
        finetune={"task": "rerank", "loss": "listwise", "negatives_per_query": 3,
                  "max_query_tokens": 16, "train_file": str(datasets["rerank_train"]),
                  "eval_file": str(datasets["rerank_eval"])},
    )  # fmt: skip
    result = run_cli("finetune", "--config", cfg, "--workdir", root / "run", check=True,
                     timeout=900)  # fmt: skip
    records = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    initial = next(r for r in records if r["step"] == 0 and "eval/mrr@10" in r)
    final = [r for r in records if r["step"] == 600 and "eval/mrr@10" in r][-1]
    summary = {**{k.replace("eval/", "initial/"): v for k, v in initial.items()}, **final}
    summary["log"] = result.stderr
    return root / "run", summary


def test_reranker_beats_its_initialisation(reranker):
    _, summary = reranker
    print(
        f"\nheld-out WordNet queries (300, 8 candidates each), MRR@10: fine-tuned "
        f"{summary['eval/mrr@10']:.4f}, initialisation {summary['initial/mrr@10']:.4f}, "
        f"BM25 {summary['bm25/mrr@10']:.4f}; NDCG@10 {summary['eval/ndcg@10']:.4f} / "
        f"{summary['initial/ndcg@10']:.4f} / {summary['bm25/ndcg@10']:.4f}"
    )
    assert summary["eval/ndcg@10"] > summary["initial/ndcg@10"] + 0.03
    assert summary["eval/mrr@10"] > summary["initial/mrr@10"] + 0.03
    # The final eval line shows the model at initialisation and BM25 beside the model.
    (line,) = [x for x in summary["log"].splitlines() if x.startswith("eval step 600:")]
    assert f"mrr@10 {summary['eval/mrr@10']:.4f}" in line.split(" | ")[0]
    assert f"| at initialisation: mrr@10 {summary['initial/mrr@10']:.4f}" in line
    assert f"| BM25: mrr@10 {summary['bm25/mrr@10']:.4f}" in line


def test_export_loads_in_sentence_transformers_and_matches_score(reranker, tmp_path, monkeypatch):
    sentence_transformers = require("sentence_transformers")
    workdir, _ = reranker
    out = tmp_path / "hf"
    run_cli("export", "--workdir", workdir, "--out", out, check=True)
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"
    ]
    query = "What is the question?"
    candidates = ["To be, or not to be, that is the question:", "Who's there?",
                  "Now is the winter of our discontent", "A horse! a horse!"]  # fmt: skip
    path = _write_jsonl(tmp_path / "candidates.jsonl", [{"text": c} for c in candidates])
    result = run_cli("score", "--model", workdir, "--query", query, "--candidates", path,
                     check=True)  # fmt: skip
    ours = {}
    for line in result.stdout.strip().splitlines():
        _, score, text = line.split("\t", 2)
        ours[text] = float(score)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = sentence_transformers.CrossEncoder(str(out), device="cpu")
    theirs = model.predict([(query, c) for c in candidates], convert_to_numpy=True)
    delta = max(abs(float(t) - ours[c]) for t, c in zip(theirs, candidates, strict=True))
    print(f"\nCrossEncoder vs mlm-jax score: max |Δ| = {delta:.2g}")
    assert delta <= 1e-4


def test_classifier_beats_chance_on_held_out_genres(datasets, run_inputs, pretrained, tmp_path):
    """Shakespeare speech vs Python docstring, from the briefly pretrained encoder."""
    from mlm_jax.training import finetune

    config = _finetune_config(tmp_path / "cls.yaml", run_inputs, pretrained, task="classify",
                              loss="cross_entropy", num_labels=2,
                              train_file=str(datasets["genre_train"]),
                              eval_file=str(datasets["genre_eval"]))  # fmt: skip
    summary = finetune.run(config, str(tmp_path / "run"))
    print(
        f"\nheld-out accuracy {summary['eval/accuracy']:.3f} (initialisation "
        f"{summary['initial/accuracy']:.3f}, chance 0.5), macro-F1 {summary['eval/macro_f1']:.3f}"
    )
    assert summary["eval/accuracy"] >= 0.75


def test_score_many_queries_matches_one_at_a_time(reranker, tmp_path):
    workdir, _ = reranker
    candidates = ["O, that this too too solid flesh would melt", "A horse! a horse!",
                  "Friends, Romans, countrymen, lend me your ears"]  # fmt: skip
    single = _write_jsonl(tmp_path / "c.jsonl", [{"text": c} for c in candidates])
    batch = _write_jsonl(tmp_path / "q.jsonl", [
        {"query": q, "candidates": candidates} for q in ("Hamlet", "Brutus")])  # fmt: skip
    many = run_cli("score", "--model", workdir, "--queries", batch, "--top-k", 3, check=True)
    results = [json.loads(line) for line in many.stdout.strip().splitlines()]
    assert [r["query"] for r in results] == ["Hamlet", "Brutus"]
    for result in results:
        one = run_cli("score", "--model", workdir, "--query", result["query"],
                      "--candidates", single, check=True)  # fmt: skip
        rows = [line.split("\t", 2) for line in one.stdout.strip().splitlines()]
        assert [text for _, _, text in rows] == [r["text"] for r in result["results"]]
        for (_, score, _), item in zip(rows, result["results"], strict=True):
            assert float(score) == pytest.approx(item["score"], abs=1e-5)


def _pair_records(count: int = 160) -> list[dict]:
    """Sentence pairs: two passages of one genre (label 1) or of both (label 0)."""
    train, _ = _genre_records()
    by_label = {0: [r["text"] for r in train if r["label"] == 0],
                1: [r["text"] for r in train if r["label"] == 1]}  # fmt: skip
    rng = random.Random(5)
    records = []
    for i in range(count):
        first = rng.choice(by_label[i % 2])
        same = rng.random() < 0.5
        second = rng.choice(by_label[i % 2 if same else 1 - i % 2])
        records.append({"text_a": first[:150], "text_b": second[:150], "label": int(same)})
    return records


def _losses_and_weights(workdir):
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}

    from mlm_jax.state import restore

    _, _, params = restore.restore_params(str(workdir))
    return losses, {str(k): np.asarray(v) for k, v in nnx.to_flat_state(params)}


def test_paired_bootstrap_separates_a_steady_gap_from_noise():
    rng = np.random.default_rng(1)
    theirs = rng.uniform(size=300)
    assert paired_difference(theirs, theirs) == (0.0, 0.0, 0.0)
    # A gap every query shares is certain, however spread out the queries are.
    difference, low, high = paired_difference(theirs + 0.01, theirs)
    assert difference == pytest.approx(0.01) and low == pytest.approx(0.01)
    assert high == pytest.approx(0.01)
    # Per-query noise of spread 0.1 around a 0.005 gap: the interval is about
    # +-1.96 * 0.1 / sqrt(300) = +-0.011 wide and holds the gap (and 0).
    ours = theirs + 0.005 + rng.normal(0.0, 0.1, size=300)
    difference, low, high = paired_difference(ours, theirs)
    assert low < 0.005 < high and low < 0.0 < high
    assert 0.018 < high - low < 0.027


def test_sentence_pair_classifier_resumes_bit_identically_and_exports(
    run_inputs, pretrained, tmp_path
):
    """{"text_a", "text_b", "label"} end to end: fine-tuned 20 steps straight, and 10 + 10
    with a resume between, gives the same losses and weights bit for bit (dropout on, so
    the keys resume too); the export's pair logits match transformers'."""
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", _pair_records())
    cfg_path = tmp_path / "ft.yaml"
    _finetune_config(cfg_path, run_inputs, pretrained, task="classify", loss="cross_entropy",
                     num_labels=2, train_file=str(pairs))  # fmt: skip
    every = (
        "--set",
        "train.checkpoint_every=10",
        "--set",
        "train.log_every=1",
        "--set",
        "model.dropout_rate=0.1",
        "--set",
        "model.attention_dropout_rate=0.1",
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli("finetune", "--config", cfg_path, "--workdir", straight, "--set", "train.steps=20",
            *every, check=True)  # fmt: skip
    run_cli("finetune", "--config", cfg_path, "--workdir", resumed, "--set", "train.steps=10",
            *every, check=True)  # fmt: skip
    second = run_cli("finetune", "--config", cfg_path, "--workdir", resumed, "--set",
                     "train.steps=20", *every, check=True)  # fmt: skip
    assert "resumed from checkpoint step 10" in second.stderr
    (losses, weights), (again, weights_again) = map(_losses_and_weights, (straight, resumed))
    assert sorted(losses) == list(range(1, 21)) and losses == again
    for name in weights:
        np.testing.assert_array_equal(weights_again[name], weights[name], err_msg=name)
    export = run_cli("export", "--workdir", resumed, "--out", tmp_path / "out", check=True)
    assert "export verified" in export.stdout + export.stderr


def test_losses_by_hand():

    logits = np.array([[2.0], [0.5], [-1.0], [0.0], [1.5], [3.0]], np.float32)  # 2 queries x 3
    batch = {"weights": np.array([1.0, 0.0], np.float32)}  # the second query is padding
    scores = logits[:, 0].reshape(2, 3)
    listwise = np.log(np.exp(scores[0]).sum()) - scores[0, 0]
    sigmoid = 1 / (1 + np.exp(-scores[0]))
    targets = np.array([1.0, 0.0, 0.0])
    pointwise = -(targets * np.log(sigmoid) + (1 - targets) * np.log(1 - sigmoid)).mean()
    for loss_fn, expected in ((objectives.listwise_sums, listwise),
                              (objectives.pointwise_sums, pointwise)):  # fmt: skip
        loss_sum, correct, weight = (float(x) for x in loss_fn(logits, batch))
        assert loss_sum == pytest.approx(expected, rel=1e-5)
        assert (correct, weight) == (1.0, 1.0)
    class_logits = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
    labels = {"labels": np.array([1, 0]), "weights": np.array([1.0, 1.0], np.float32)}
    sums = objectives.cross_entropy_sums(class_logits, labels)
    loss_sum, correct, weight = (float(x) for x in sums)
    expected = sum(
        np.log(np.exp(row).sum()) - row[y] for row, y in zip(class_logits, [1, 0], strict=True)
    )
    assert loss_sum == pytest.approx(expected, rel=1e-5) and (correct, weight) == (1.0, 2.0)


def test_distillation_targets_and_loss_by_hand(tmp_path, run_inputs):
    """Soft targets mix the label 1 : weight with softmax(scale * teacher); the loss is their
    cross-entropy with the model's softmax; training lines without teacher scores are named."""
    from mlm_jax.data import tokenizer as tokenizer_lib

    # Both negatives share a teacher score, so the targets do not depend on their drawn order.
    path = _write_jsonl(tmp_path / "train.jsonl", [
        {"query": "whale", "positive": "a large sea mammal", "negatives": ["a bird", "a tree"],
         "teacher": [0.9, 0.2, 0.2]},
        {"query": "owl", "passage": "a night bird", "label": 1, "teacher": 0.8},
        {"query": "owl", "passage": "a fish", "label": 0, "teacher": 0.3},
    ])  # fmt: skip
    queries = finetune_data.read_rerank(path)
    finetune_data.check_teacher_scores(queries, str(path))
    assert queries[1].teacher == {"a night bird": 0.8, "a fish": 0.3}
    encoder = finetune_data.PairEncoder(tokenizer_lib.load(run_inputs["tokenizer"]), 16, 4)
    batch = finetune_data.rerank_batch(queries[:1], encoder, 0, 1, 2, 0, (10.0, 3.0))
    soft = np.exp(10.0 * np.asarray([0.9, 0.2, 0.2]))
    expected = (np.asarray([1.0, 0.0, 0.0]) + 3.0 * soft / soft.sum()) / 4.0
    np.testing.assert_allclose(batch["targets"][0], expected, rtol=1e-6)
    logits = np.asarray([[2.0], [0.5], [-1.0]], np.float32)
    loss_sum, correct, weight = (float(x) for x in objectives.distill_sums(logits, batch))
    log_softmax = logits[:, 0] - np.log(np.exp(logits[:, 0]).sum())
    assert loss_sum == pytest.approx(-(expected * log_softmax).sum(), rel=1e-5)
    assert (correct, weight) == (1.0, 1.0)
    bare = _write_jsonl(tmp_path / "bare.jsonl",
                        [{"query": "q", "positive": "p", "negatives": ["n"]}])  # fmt: skip
    with pytest.raises(UserError, match=r"bare\.jsonl:1: query 'q' lacks 'teacher' scores"):
        finetune_data.check_teacher_scores(finetune_data.read_rerank(bare), str(bare))
    one_score = {"query": "q", "positive": "p", "negatives": ["n"], "teacher": [1.0]}
    wrong = _write_jsonl(tmp_path / "wrong.jsonl", [one_score])
    with pytest.raises(UserError, match=r"wrong\.jsonl:1: 'teacher' must hold 2 number"):
        finetune_data.read_rerank(wrong)


def test_modern_pointwise_reranker_exports_with_parity(datasets, run_inputs, tmp_path):
    """Family modern, pointwise loss, from scratch: the export's logits in transformers'
    ModernBertForSequenceClassification match ours (the export verifies itself)."""
    cfg = write_config(
        tmp_path / "ft.yaml", run_inputs,
        model={"family": "modern", "layer_norm_eps": 1e-5},
        train={"steps": 4, "global_batch_size": 16, "eval_every": 0, "checkpoint_every": 4},
        finetune={"task": "rerank", "loss": "pointwise", "negatives_per_query": 3,
                  "train_file": str(datasets["rerank_train"])},
    )  # fmt: skip
    run_cli("finetune", "--config", cfg, "--workdir", tmp_path / "run", check=True)
    result = run_cli("export", "--workdir", tmp_path / "run", "--out", tmp_path / "hf", check=True)
    assert result.stdout.strip().splitlines()[-1].startswith("export verified: max")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["ModernBertForSequenceClassification"]


def test_init_from_an_export_equals_init_from_its_run(datasets, run_inputs, pretrained, tmp_path):
    """The encoder a fine-tune starts from is the same whether it comes from the pretraining
    run, its Hugging Face export, or ``hf:`` + that export; the CLI runs a step from the last
    (fine-tuning from a run is the reranker fixture's own path)."""
    import jax

    from mlm_jax.model import sharding

    run_cli("export", "--workdir", pretrained, "--out", tmp_path / "hf", check=True)
    encoders = {}
    for name, source in (("run", pretrained), ("export", tmp_path / "hf"),
                         ("hf", f"hf:{tmp_path / 'hf'}"), ("scratch", None)):  # fmt: skip
        cfg = tmp_path / f"{name}.yaml"
        config = _finetune_config(cfg, run_inputs, source, task="classify",
                                  loss="cross_entropy", num_labels=2,
                                  train_file=str(datasets["genre_train"]))  # fmt: skip
        mesh = sharding.make_mesh(config)
        _, _, shardings = train_state.abstract_train_state(config, mesh)
        params = runs.fresh_state(config, mesh, shardings).params["encoder"]
        encoders[name] = [np.asarray(x) for x in jax.tree.leaves(params)]
        if name == "hf":
            run_cli("finetune", "--config", cfg, "--workdir", tmp_path / f"ft-{name}",
                    "--set", "train.steps=1", check=True)  # fmt: skip

    def largest_difference(a, b):
        return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))

    assert largest_difference(encoders["run"], encoders["export"]) <= 1e-6
    assert largest_difference(encoders["run"], encoders["hf"]) <= 1e-6
    assert largest_difference(encoders["run"], encoders["scratch"]) > 1e-2
