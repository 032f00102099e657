"""Relevance sets from any ``{"query", "passage"}`` pairs: ``mlm-jax data relevance --pairs``.

The passage collection is every distinct passage of the file; a query's relevant
passages are those it is paired with (a query may occur on several lines). The queries
are split once, at random by ``seed``, into a training side and a held-out side, so a
held-out query never occurs in training.

- Training (``train.jsonl``): each query with its first passage as ``positive`` and its
  ``negatives`` hardest BM25 passages of the whole collection, leaving out the query's
  own passages and any passage relevant to a held-out query (training must not call a
  passage irrelevant that evaluation counts as the answer). Further relevant passages of
  the same query follow as ``{"query", "passage", "label": 1}`` lines. Every line carries
  the BM25 score of its passages (``"bm25"``, positive first), for a teacher to use.
- Development (``dev.jsonl``, with ``--dev-queries N``): N more queries kept out of
  training, as candidate lists like the held-out ones; what ``mlm-jax fuse`` fits its
  BM25 weight on, so the held-out queries stay unseen by every choice made.
- Held-out (``eval.jsonl``): each query's BM25 top-``candidates`` over the collection, in
  BM25 order, one ``{"query", "passage", "label", "bm25"}`` line per candidate. This is
  the real re-ranking setting: when BM25 missed a query's answer, no candidate is
  relevant and the query scores 0 for every re-ranker, which caps what any of them can
  reach at BM25's recall (written to ``meta.json``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from mlm_jax import artifacts
from mlm_jax.data.bm25_index import Bm25Index, tokenize
from mlm_jax.errors import UserError

_EXPECTED = 'one {"query": "...", "passage": "..."} object per line'


@dataclass
class Pairs:
    """The queries in order of first appearance, and the passage collection."""

    queries: list[str] = field(default_factory=list)
    passages: list[str] = field(default_factory=list)
    relevant: dict[str, list[int]] = field(default_factory=dict)  # query -> passage indices


def read_pairs(path: str | Path) -> Pairs:
    """Read a pairs file; any bad line is a UserError naming ``file:line`` and the fix."""
    pairs, passage_ids = Pairs(), {}
    lines = artifacts.read_jsonl(
        path, option="--pairs", missing=f"pass a JSONL file with {_EXPECTED}", expected=_EXPECTED
    )
    for where, record in lines:
        query, passage = _pair(record, where)
        index = passage_ids.setdefault(passage, len(passage_ids))
        if index == len(pairs.passages):
            pairs.passages.append(passage)
        if query not in pairs.relevant:
            pairs.queries.append(query)
            pairs.relevant[query] = []
        if index not in pairs.relevant[query]:
            pairs.relevant[query].append(index)
    if not pairs.queries:
        raise UserError(f"{path}: no pairs; write {_EXPECTED}")
    return pairs


def _pair(record, where: str) -> tuple[str, str]:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object; write {_EXPECTED}")
    texts = []
    for key in ("query", "passage"):
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            problem = "is missing" if key not in record else "must be a non-empty string"
            raise UserError(f"{where}: field {key!r} {problem}; write {_EXPECTED}")
        texts.append(value.strip())
    return texts[0], texts[1]


def split_queries(
    queries: list[str],
    eval_queries: int,
    train_queries: int | None,
    seed: int,
    dev_queries: int = 0,
) -> tuple[list[str], list[str], list[str]]:
    """``(train, dev, held_out)`` query lists, disjoint, each in file order. The held-out
    queries are drawn first, so adding a dev split leaves them as they were."""
    if eval_queries + dev_queries >= len(queries):
        raise UserError(
            f"--eval-queries {eval_queries} (with --dev-queries {dev_queries}) leaves no training "
            f"query: the pairs file has {len(queries)} distinct queries; lower them"
        )
    rng = random.Random(seed)
    held = set(rng.sample(queries, eval_queries))
    train = [q for q in queries if q not in held]
    dev = set(random.Random(f"dev-{seed}").sample(train, dev_queries))
    train = [q for q in train if q not in dev]
    if train_queries is not None and train_queries < len(train):
        kept = set(rng.sample(train, train_queries))
        train = [q for q in train if q in kept]
    return train, [q for q in queries if q in dev], [q for q in queries if q in held]


def _training_records(pairs: Pairs, index: Bm25Index, train: list[str], held: list[str],
                      negatives: int) -> list[dict]:  # fmt: skip
    """A line per training query: its first positive, BM25's hardest negatives, and the BM25
    score of each (``mlm-jax data teacher --bm25-weight`` mixes them into a teacher)."""
    excluded = {i for q in held for i in pairs.relevant[q]}  # held: every query not trained on
    records = []
    for query, words in zip(train, tokenize(train), strict=True):
        own = pairs.relevant[query]
        ranked, every = index.ranked(words, negatives + len(excluded) + len(own))
        mined = [i for i in ranked.tolist() if i not in excluded and i not in own][:negatives]
        if not mined:
            raise UserError(
                f"the collection has no passage left to serve as a negative for {query!r}; "
                "add pairs so there are more distinct passages"
            )
        records.append({"query": query, "positive": pairs.passages[own[0]],
                        "negatives": [pairs.passages[i] for i in mined],
                        "bm25": [_score(every[i]) for i in [own[0], *mined]]})  # fmt: skip
        records += [{"query": query, "passage": pairs.passages[i], "label": 1,
                     "bm25": _score(every[i])} for i in own[1:]]  # fmt: skip
    return records


def _score(value) -> float:
    return round(float(value), 6)


def _held_out_records(pairs: Pairs, index: Bm25Index, held: list[str], candidates: int):
    """Candidate lines of the held-out queries, and the share whose answer BM25 retrieved."""
    ranked, scores = index.top_k(held, candidates)
    records, found = [], 0
    for query, row, row_scores in zip(held, ranked, scores, strict=True):
        relevant = set(pairs.relevant[query])
        found += any(i in relevant for i in row.tolist())
        records += [
            {"query": query, "passage": pairs.passages[i], "label": int(i in relevant),
             "bm25": _score(score)}
            for i, score in zip(row.tolist(), row_scores.tolist(), strict=True)
        ]  # fmt: skip
    return records, found / len(held)


def build(
    pairs_file: str,
    out: str,
    eval_queries: int = 300,
    train_queries: int | None = None,
    dev_queries: int = 0,
    negatives: int = 7,
    candidates: int = 20,
    seed: int = 0,
    force: bool = False,
) -> dict:
    """Write ``train.jsonl``, ``eval.jsonl`` and ``meta.json`` under ``out``; return the meta."""
    if dev_queries < 0:
        raise UserError(f"--dev-queries must be at least 0, got {dev_queries}")
    counts = {"--eval-queries": eval_queries, "--negatives": negatives,
              "--candidates": candidates, "--train-queries": train_queries or 1}  # fmt: skip
    for name, value in counts.items():
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if Path(out).exists() and not force:
        raise UserError(f"{out} already exists; pass --force to replace it or choose another --out")
    pairs = read_pairs(pairs_file)
    train, dev, held = split_queries(pairs.queries, eval_queries, train_queries, seed, dev_queries)
    index = Bm25Index.build(pairs.passages)
    train_rows = _training_records(pairs, index, train, dev + held, negatives)
    eval_rows, recall = _held_out_records(pairs, index, held, candidates)
    splits = {"train": train_rows, "eval": eval_rows}
    if dev:
        splits["dev"] = _held_out_records(pairs, index, dev, candidates)[0]
    meta = {
        "source": "pairs",
        "pairs_file": str(pairs_file),
        "fingerprint": hashlib.sha256(Path(pairs_file).read_bytes()).hexdigest(),
        "seed": seed,
        "negatives": negatives,
        "candidates": candidates,
        "passages": len(pairs.passages),
        "queries": {"train": len(train), "dev": len(dev), "eval": len(held)},
        f"bm25_recall@{candidates}": round(recall, 6),
    }
    artifacts.write_jsonl_directory(out, splits, meta)
    dev_part = f"{len(dev)} dev queries, " if dev else ""
    print(
        f"relevance set {out}: {len(train)} train queries with {negatives} BM25 negatives, "
        f"{dev_part}{len(held)} held-out queries with BM25's top {candidates} of "
        f"{len(pairs.passages)} passages (answer retrieved for {100 * recall:.1f}%)"
    )
    return meta
