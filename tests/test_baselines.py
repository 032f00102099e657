"""Context-free MLM baselines: by hand on a few counts, then through `train`, `eval` and
`report` on real Shakespeare, against a plain-Python recount of the training split."""

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_config

from mlm_jax import config as config_lib
from mlm_jax.data import baselines, corpus, pipeline
from mlm_jax.data import tokenizer as tokenizer_lib


def test_unigram_baseline_by_hand():
    # Vocabulary of 8; training counts: token 5 three times, token 6 once (N = 4).
    baseline = baselines.UnigramBaseline(np.asarray([0, 0, 0, 0, 0, 3, 1, 0]))
    # Labels 5, 6, 7 are scored; the fourth slot is padding (weight 0).
    sums = baseline.sums(np.asarray([[5, 6], [7, 5]]), np.asarray([[1.0, 1.0], [1.0, 0.0]]))
    metrics = baseline.metrics(sums)
    # Add-one smoothing: p(t) = (c(t) + 1) / (4 + 8).
    expected = -(math.log(4 / 12) + math.log(2 / 12) + math.log(1 / 12)) / 3
    assert metrics["baseline/unigram_loss"] == pytest.approx(expected, rel=1e-12)
    assert metrics["baseline/majority_accuracy"] == pytest.approx(1 / 3)


def _hand_baseline(config, eval_batches: int) -> tuple[float, float, Counter]:
    """Recount the training split token by token and score the eval batches' masked labels."""
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    records = corpus.open_split(config.data.source, "train")
    counts = Counter()
    for i in range(len(records)):
        counts.update(tokenizer.encode(records[i]).tolist())
    total, vocab = sum(counts.values()), tokenizer.vocab_size
    majority = max(counts, key=lambda t: (counts[t], -t))
    loss = correct = weight = 0.0
    for batch in pipeline.make_eval_batches(config, eval_batches, 0, 1):
        for label, w in zip(batch["mlm_labels"].ravel(), batch["mlm_weights"].ravel(), strict=True):
            if w:
                loss -= math.log((counts[int(label)] + 1) / (total + vocab))
                correct += int(label) == majority
                weight += 1
    return loss / weight, correct / weight, counts


@pytest.fixture(scope="module")
def trained(run_inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    cfg = write_config(root / "run.yaml", run_inputs, train={"steps": 10, "eval_every": 5,
                       "eval_batches": 2, "checkpoint_every": 10})  # fmt: skip
    result = run_cli("train", "--config", cfg, "--workdir", root / "run", check=True)
    return root, cfg, result


def test_train_logs_baselines_equal_to_a_hand_count(trained):
    root, cfg, result = trained
    config = config_lib.load(cfg)
    loss, accuracy, counts = _hand_baseline(config, eval_batches=2)
    lines = [x for x in result.stderr.splitlines() if x.startswith("eval step")]
    assert len(lines) == 2
    assert all(f"context-free baseline: loss {loss:.4f} acc {accuracy:.3f}" in x for x in lines)
    records = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [5, 10]
    for record in evals:
        assert record["baseline/unigram_loss"] == pytest.approx(loss, rel=1e-9)
        assert record["baseline/majority_accuracy"] == pytest.approx(accuracy, rel=1e-9)
    # Cached beside the dataset, named by both fingerprints, holding the training counts.
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    (cache,) = (Path(config.data.source) / "baselines").glob("*")
    assert cache.name.endswith(f"-{tokenizer.fingerprint[:16]}.json")
    cached = json.loads(cache.read_text())["counts"]
    assert {t: c for t, c in enumerate(cached) if c} == dict(counts)


def test_eval_reports_the_same_baselines_from_the_cache(trained):
    root, cfg, _ = trained
    config = config_lib.load(cfg)
    cache = baselines.cache_path(config, tokenizer_lib.load(config.data.tokenizer))
    written = cache.stat().st_mtime_ns
    result = run_cli("eval", "--workdir", root / "run", check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    loss, accuracy, _ = _hand_baseline(config, eval_batches=2)
    assert report["baseline/unigram_loss"] == pytest.approx(loss, abs=1e-6)
    assert report["baseline/majority_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert cache.stat().st_mtime_ns == written  # read back, not recounted


def test_report_draws_the_baselines_as_horizontal_lines(trained):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlm_jax.training import report
    from mlm_jax.training.metrics import read_metrics

    root, _, _ = trained
    run_cli("report", "--workdir", root / "run", check=True)
    assert (root / "run" / "report.png").stat().st_size > 10_000
    records = read_metrics(root / "run")
    for name in ("baseline/unigram_loss", "baseline/majority_accuracy"):
        figure, axis = plt.subplots()
        report._draw_baseline(axis, records, name)
        (line,) = axis.lines
        value = [r[name] for r in records if name in r][-1]
        assert list(line.get_ydata()) == [value, value] and name in line.get_label()
        plt.close(figure)
