"""BM25 over a passage collection with ``bm25s``, and the index cached on disk beside it.

Passages and queries go through one tokenization: bm25s' word pattern, lower case,
English stop words removed, no stemming. Rankings are deterministic: equal scores keep
collection order, so two runs (or a test querying bm25s directly) see the same lists.

The cache of a collection ``DIR/F.jsonl`` lives in ``DIR/F.jsonl.bm25/<fingerprint>/``,
where the fingerprint hashes the passages themselves: editing the collection changes the
key, so a stale index is never read, and the older index is removed when the new one is
written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from mlm_jax import artifacts
from mlm_jax.errors import UserError

_TOKENIZE = {"stopwords": "en", "show_progress": False}
_KEY_CHARS = 16


@functools.cache  # once per process: tokenize runs per query batch
def _bm25s():
    """The bm25s module, its logger held at warnings: bm25s sets it to DEBUG on import, so
    once anything gives the root logger a handler, its progress notes reach stderr."""
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def tokenize(texts: list[str]) -> list[list[str]]:
    """The words BM25 sees in each text."""
    return _bm25s().tokenize(texts, return_ids=False, **_TOKENIZE)


def fingerprint(passages: list[str]) -> str:
    """sha256 of the passages in order (their text, not the file they came from)."""
    digest = hashlib.sha256()
    for passage in passages:
        digest.update(json.dumps(passage, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


class Bm25Index:
    """A bm25s index over ``size`` passages, addressed by their position in the collection."""

    def __init__(self, retriever, size: int):
        self.retriever = retriever
        self.size = size

    @classmethod
    def build(cls, passages: list[str]) -> Bm25Index:
        bm25s = _bm25s()
        tokens = bm25s.tokenize(passages, **_TOKENIZE)
        if not tokens.vocab:
            raise UserError(
                f"none of the {len(passages)} passages has a word BM25 can index (2+ letters, "
                "not a stop word); give passages with real text"
            )
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(retriever, len(passages))

    @classmethod
    def load(cls, directory: Path) -> Bm25Index:
        retriever = _bm25s().BM25.load(str(directory), show_progress=False)
        size = json.loads((directory / "size.json").read_text())["passages"]
        return cls(retriever, size)

    def save(self, directory: Path) -> None:
        self.retriever.save(str(directory), show_progress=False)
        (directory / "size.json").write_text(json.dumps({"passages": self.size}) + "\n")

    def scores(self, query_words: list[str]) -> np.ndarray:
        """BM25 score of every passage ``[N]``; a query with no indexed word scores all 0."""
        if not query_words:  # bm25s cannot score an empty query
            return np.zeros(self.size, np.float32)
        return np.asarray(self.retriever.get_scores(query_words), np.float32)

    def top_k(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(passage indices, scores)``, each ``[Q, min(k, N)]``, best first."""
        k = min(k, self.size)
        indices = np.empty((len(queries), k), np.int64)
        scores = np.empty((len(queries), k), np.float32)
        for row, words in enumerate(tokenize(queries)):
            order, every = self.ranked(words, k)
            indices[row], scores[row] = order, every[order]
        return indices, scores

    def ranked(self, query_words: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(the best min(k, N) passage indices, best first; every passage's score [N])``."""
        every = self.scores(query_words)
        # Stable on the negated scores: equal scores stay in collection order.
        return np.argsort(-every, kind="stable")[: min(k, self.size)], every


def cache_dir(collection: str | Path) -> Path:
    """Where the indexes of ``collection`` are kept: ``F.jsonl`` → ``F.jsonl.bm25``."""
    path = Path(collection)
    return path.with_name(path.name + ".bm25")


def cached(collection: str | Path, passages: list[str]) -> Bm25Index:
    """The index of ``passages`` read from beside ``collection``, built and saved if missing.

    A collection in a directory we cannot write to is indexed in memory (with a warning).
    """
    root = cache_dir(collection)
    target = root / fingerprint(passages)[:_KEY_CHARS]
    if (target / "size.json").is_file():
        return Bm25Index.load(target)
    index = Bm25Index.build(passages)
    try:
        with artifacts.staged_directory(target) as staging:
            index.save(staging)
    except OSError as exc:
        print(f"warning: BM25 index not cached in {root} ({exc.strerror})", file=sys.stderr)
        return index
    for stale in root.iterdir():
        if stale.is_dir() and stale.name != target.name and not stale.name.startswith("."):
            shutil.rmtree(stale, ignore_errors=True)
    return index


def candidate_scores(queries) -> list[np.ndarray]:
    """BM25 of each ranking query's candidates, positives first (fine-tuning's baseline).

    Scores the queries carry (a first-stage retrieval over a whole collection) are used as
    they are; otherwise BM25 is computed over the union of all candidates.
    """
    if all(set(q.bm25) >= {*q.positives, *q.negatives} for q in queries):
        return [np.asarray([q.bm25[p] for p in q.positives + q.negatives]) for q in queries]
    passages = sorted({p for q in queries for p in q.positives + q.negatives})
    where = {p: i for i, p in enumerate(passages)}
    index = Bm25Index.build(passages)
    words = tokenize([q.query for q in queries])
    return [
        index.scores(query_words)[[where[p] for p in q.positives + q.negatives]]
        for q, query_words in zip(queries, words, strict=True)
    ]
