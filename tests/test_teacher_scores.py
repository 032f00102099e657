"""``scripts/teacher_scores.py --bm25-weight``: BM25 mixed into the bi-encoder's teacher."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SCRIPTS, load_script


@pytest.fixture(scope="module")
def teacher_scores():
    return load_script("teacher_scores")


def test_bm25_moves_each_cosine_by_its_z_score_times_the_cosines_spread(teacher_scores):
    cosines, bm25 = [0.6, 0.5, 0.4, 0.5], [2.0, 6.0, 4.0, 4.0]
    # By hand: cosine spread sqrt(0.02 / 4) = 0.0707107; BM25 mean 4, spread sqrt(2).
    spread, z = 0.0707107, np.array([-2.0, 2.0, 0.0, 0.0]) / np.sqrt(2.0)
    fused = teacher_scores._with_bm25(cosines, bm25, 0.5)
    np.testing.assert_allclose(fused, np.array(cosines) + 0.5 * spread * z, atol=1e-6)
    light = teacher_scores._with_bm25(cosines, bm25, 0.25)
    assert np.argmax(light) == 0  # a light weight keeps the bi-encoder's first choice
    assert np.argmax(teacher_scores._with_bm25(cosines, bm25, 4.0)) == 1  # a heavy one, BM25's


def test_bm25_without_contrast_or_a_lone_passage_leaves_the_cosines(teacher_scores):
    np.testing.assert_allclose(teacher_scores._with_bm25([0.3, 0.2], [5.0, 5.0], 1.0),
                               [0.3, 0.2], atol=1e-6)  # fmt: skip
    assert teacher_scores._with_bm25([0.3], [5.0], 1.0) == [0.3]


def test_a_one_passage_line_needs_no_bm25_score(teacher_scores):
    line = {"query": "dog", "passage": "a domestic canine", "label": 1}
    assert teacher_scores._teacher(line, [0.7], 0.5) == [0.7]
    ranked = {"query": "dog", "positive": "a canine", "negatives": ["a cat"], "bm25": [3.0, 1.0]}
    assert teacher_scores._teacher(ranked, [0.6, 0.4], 0.5) == pytest.approx([0.65, 0.35])
    assert teacher_scores._teacher(ranked, [0.6, 0.4], 0.0) == [0.6, 0.4]


def test_a_training_file_without_bm25_scores_is_one_line_and_exit_2(tmp_path):
    train = tmp_path / "train.jsonl"
    line = {"query": "dog", "positive": "a domestic canine", "negatives": ["a feline"]}
    train.write_text(json.dumps(line) + "\n")
    result = subprocess.run(
        [sys.executable, SCRIPTS / "teacher_scores.py", "--bi-encoder", tmp_path / "none",
         "--train", train, "--out", tmp_path / "out.jsonl", "--bm25-weight", "0.5"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{train}:1: no 'bm25' score per passage, which --bm25-weight needs; rebuild the set "
        "with `mlm-jax data relevance --pairs` or drop --bm25-weight"
    ]
    assert not (tmp_path / "out.jsonl").exists()
