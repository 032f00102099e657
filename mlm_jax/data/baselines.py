"""Context-free baselines beside every MLM score: what a model earns without reading context.

- ``baseline/unigram_loss``: the cross-entropy of the masked tokens under the training
  split's token distribution with add-one smoothing, ``p(t) = (c(t) + 1) / (N + V)``
  (``c`` the count of token ``t`` in the training split, ``N`` their total, ``V`` the
  tokenizer's vocabulary). A model whose eval loss is not below it ignores context.
- ``baseline/majority_accuracy``: the share of masked tokens equal to the training split's
  most frequent token, the accuracy of always answering it.

Both are measured on exactly the tokens the MLM evaluation scores: the labels at the
masked positions of the same validation batches (``mlm_labels`` where ``mlm_weights`` is
1), so loss and accuracy compare like with like. Masking picks positions uniformly among
the document tokens, so these equal, up to sampling, the same figures over the whole
validation split.

Counting the training split is one tokenizer pass over it; the counts are cached beside
the dataset in ``baselines/``, one JSON file per (dataset, tokenizer) pair named by both
fingerprints, so later runs and ``mlm-jax eval`` read them back. A split larger than
``MAX_DOCUMENTS`` is counted on that many documents evenly spaced through it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from mlm_jax import manifest
from mlm_jax.data import corpus

MAX_DOCUMENTS = 200_000
CACHE_DIR = "baselines"
_ENCODE_CHUNK = 512


class UnigramBaseline:
    """The smoothed unigram model of a training split and the scores it earns on labels."""

    def __init__(self, counts: np.ndarray):
        counts = np.asarray(counts, np.float64)
        self.log_probs = np.log(counts + 1.0) - math.log(counts.sum() + len(counts))
        self.majority_id = int(np.argmax(counts))

    def sums(self, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``[loss_sum, correct_sum, weight_sum]`` over the weighted labels."""
        labels = np.asarray(labels, np.int64)
        weights = np.asarray(weights, np.float64)
        return np.asarray([
            float(np.sum(-self.log_probs[labels] * weights)),
            float(np.sum((labels == self.majority_id) * weights)),
            float(np.sum(weights)),
        ])  # fmt: skip

    def metrics(self, sums: np.ndarray) -> dict[str, float]:
        loss_sum, correct, weight = (float(x) for x in sums)
        weight = max(weight, 1.0)
        return {
            "baseline/unigram_loss": loss_sum / weight,
            "baseline/majority_accuracy": correct / weight,
        }


def _cache_root(config) -> Path:
    """Beside the dataset: its prepared directory, or the TFDS ``data_dir``."""
    return Path(config.data.data_dir or config.data.source) / CACHE_DIR


def _dataset_key(config) -> str:
    """The dataset's fingerprint, narrowed to the split counted (the split depends on it)."""
    meta_path = Path(config.data.source) / corpus.META_FILE
    split_rule = None
    if not config.data.data_dir and meta_path.is_file():
        split_rule = json.loads(meta_path.read_text(encoding="utf-8")).get("valid_fraction")
    parts = [manifest.dataset_fingerprint(config), split_rule, config.data.train_split,
             config.data.text_feature]  # fmt: skip
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cache_path(config, tokenizer) -> Path:
    name = f"unigram-{_dataset_key(config)[:16]}-{tokenizer.fingerprint[:16]}.json"
    return _cache_root(config) / name


def count_tokens(texts, tokenizer) -> np.ndarray:
    """Token counts ``[V]`` of ``texts`` (any sequence of strings)."""
    counts = np.zeros(tokenizer.vocab_size, np.int64)
    for start in range(0, len(texts), _ENCODE_CHUNK):
        chunk = [texts[i] for i in range(start, min(start + _ENCODE_CHUNK, len(texts)))]
        for ids in tokenizer.encode_batch(chunk):
            counts += np.bincount(ids, minlength=tokenizer.vocab_size)[: tokenizer.vocab_size]
    return counts


class _Spaced:
    """``count`` records evenly spaced through ``records``, as a sequence."""

    def __init__(self, records, count: int):
        self.records, self.count = records, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> str:
        return self.records[i * len(self.records) // self.count]


def train_counts(config, tokenizer) -> np.ndarray:
    """The training split's token counts, read from the cache or counted and cached."""
    path = cache_path(config, tokenizer)
    if path.is_file():
        return np.asarray(json.loads(path.read_text())["counts"], np.int64)
    records = corpus.open_config_split(config, config.data.train_split)
    sample = _Spaced(records, min(len(records), MAX_DOCUMENTS))
    counts = count_tokens(sample, tokenizer)
    _write_cache(path, {
        "dataset_key": _dataset_key(config),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "split": config.data.train_split,
        "documents": len(records),
        "documents_counted": len(sample),
        "tokens": int(counts.sum()),
        "counts": counts.tolist(),
    })  # fmt: skip
    return counts


def _write_cache(path: Path, record: dict) -> None:
    """Atomic (rename into place), and best effort: a read-only dataset just is not cached."""
    try:
        path.parent.mkdir(exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(handle, "w") as out:
            json.dump(record, out)
        os.replace(temporary, path)
    except OSError:
        pass


def eval_baseline(config, tokenizer, batches: list[dict], combine=None) -> dict[str, float]:
    """The baselines on the masked labels of ``batches`` (this process's eval batches);
    ``combine`` sums the ``[3]`` sums over processes (the caller's collective)."""
    baseline = UnigramBaseline(train_counts(config, tokenizer))
    sums = np.zeros(3)
    for batch in batches:
        sums += baseline.sums(batch["mlm_labels"], batch["mlm_weights"])
    return baseline.metrics(combine(sums) if combine is not None else sums)
