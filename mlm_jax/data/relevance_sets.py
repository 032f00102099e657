"""Relevance sets for rerankers built from real text on disk: ``mlm-jax data relevance``.

Source ``wordnet`` turns WordNet into a dictionary task. The query is a word; the one
relevant passage is that word's own entry, the negatives are entries of other words from
the same lexicographer file (other animals for an animal, other motion verbs for a motion
verb), which keeps them on topic. Only words with a single sense in all of WordNet become
queries, so exactly one candidate is relevant. What a passage holds is ``passage``:

- ``usage``: the entry's quoted usage examples ("the pilot reported two kills during the
  mission"), so the word appears in its relevant passage, often inflected. Only entries
  with examples are used. A tiny encoder learns this on a CPU in a minute.
- ``definition``: the whole gloss, definition first. Mostly a semantic match (the word
  itself is in only about one gloss in ten), which needs a far stronger encoder.

The synsets are split once into a train side and a held-out side before any query is
drawn, so no held-out gloss is seen in training, not even as a negative.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from pathlib import Path

from mlm_jax import artifacts
from mlm_jax.data import builtin_corpora, wordnet
from mlm_jax.errors import UserError

SOURCES = ("wordnet",)
PASSAGES = ("usage", "definition")
_MIN_GLOSS_CHARS = 20
_QUOTED = re.compile(r'"([^"]+)"')


def build(
    source: str,
    out: str,
    train_queries: int = 6000,
    eval_queries: int = 300,
    negatives: int = 7,
    seed: int = 0,
    passage: str = "usage",
    force: bool = False,
) -> dict:
    """Write ``train.jsonl``, ``eval.jsonl`` and ``meta.json`` under ``out``; return the meta."""
    _check_arguments(source, passage, out, train_queries, eval_queries, negatives, force)
    groups = _query_groups(passage)
    train_side, held_side = _split(
        groups, seed, eval_share=eval_queries / (train_queries + eval_queries)
    )
    rng = random.Random(seed)
    records = {
        "train": _records(train_side, train_queries, negatives, rng, "--train-queries"),
        "eval": _records(held_side, eval_queries, negatives, rng, "--eval-queries"),
    }
    meta = {
        "source": source,
        "passage": passage,
        "fingerprint": builtin_corpora.fingerprint(source),
        "seed": seed,
        "negatives": negatives,
        "queries": {split: len(rows) for split, rows in records.items()},
    }
    artifacts.write_jsonl_directory(out, records, meta)
    print(
        f"relevance set {out}: {meta['queries']['train']} train and {meta['queries']['eval']} "
        f"held-out queries, 1 relevant {passage} passage + {negatives} negatives each"
    )
    return meta


def _check_arguments(source, passage, out, train_queries, eval_queries, negatives, force):
    if source not in SOURCES:
        raise UserError(f"unknown relevance source {source!r}; choose one of {', '.join(SOURCES)}")
    if passage not in PASSAGES:
        raise UserError(f"unknown --passage {passage!r}; choose one of {', '.join(PASSAGES)}")
    for name, value in (("--train-queries", train_queries), ("--eval-queries", eval_queries),
                        ("--negatives", negatives)):  # fmt: skip
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if Path(out).exists() and not force:
        raise UserError(f"{out} already exists; pass --force to replace it or choose another --out")


def _query_groups(passage: str) -> dict[tuple[str, int], list[tuple[str, str]]]:
    """``(query word, passage)`` pairs grouped by lexicographer file, for single-sense words."""
    synsets = list(wordnet.synsets())
    # Senses are counted over all of WordNet, before any entry is filtered out.
    senses = Counter(lemma.lower() for s in synsets for lemma in set(s.lemmas))
    groups: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    for synset in synsets:
        text = _passage_text(synset.gloss, passage)
        words = [w for w in synset.lemmas if senses[w.lower()] == 1 and not _has_digit(w)]
        if words and len(text) >= _MIN_GLOSS_CHARS:
            groups[(synset.pos, synset.lex_file)].append((words[0], text))
    return groups


def _passage_text(gloss: str, passage: str) -> str:
    if passage == "definition":
        return gloss
    return "; ".join(example.strip() for example in _QUOTED.findall(gloss))


def _has_digit(word: str) -> bool:
    return any(c.isdigit() for c in word)


def _split(groups, seed: int, eval_share: float):
    """Split every group's synsets into a train side and a held-out side."""
    rng = random.Random(seed)
    train_side, held_side = {}, {}
    for key in sorted(groups):
        items = sorted(groups[key])
        rng.shuffle(items)
        cut = max(1, round(len(items) * eval_share))
        held_side[key], train_side[key] = items[:cut], items[cut:]
    return train_side, held_side


def _records(side, count: int, negatives: int, rng: random.Random, option: str) -> list[dict]:
    """``count`` queries drawn across groups by size, each with ``negatives`` same-group glosses."""
    eligible = [key for key in sorted(side) if len(side[key]) > negatives]
    pool = [(key, i) for key in eligible for i in range(len(side[key]))]
    if len(pool) < count:
        raise UserError(f"{option} {count} is more than the {len(pool)} words available; lower it")
    rows = []
    for key, index in rng.sample(pool, count):
        word, gloss = side[key][index]
        others = [i for i in rng.sample(range(len(side[key])), negatives + 1) if i != index]
        rows.append({
            "query": word,
            "positive": gloss,
            "negatives": [side[key][i][1] for i in others[:negatives]],
        })  # fmt: skip
    return rows
