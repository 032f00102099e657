"""Scoring with a fine-tuned reranker: ``mlm-jax score`` and the scorer ``search`` uses."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from mlm_jax.data import finetune_data as data_lib
from mlm_jax.errors import UserError
from mlm_jax.inference import loading
from mlm_jax.model import sharding
from mlm_jax.model.cross_encoder import num_outputs
from mlm_jax.model.pair_scorer import Scorer


def load_reranker(path: str, chunk_rows: int = 32, seq_len: int | None = None):
    """``score(pairs) -> [N] logits`` of the reranker at ``path``; refuses other models.

    ``seq_len`` cuts rows shorter than the training length: short pairs then cost less.
    """
    directory = Path(path)
    if not any((directory / name).is_file() for name in ("mlm_jax.json", "config.yaml")):
        raise UserError(
            f"{path!r} is neither a fine-tuned export (mlm_jax.json) nor a run (config.yaml)"
        )
    model = loading.load(path)
    config = model.config
    if not model.fine_tuned:
        raise UserError(f"{path} is a pretrained model; score needs a fine-tuned reranker")
    if num_outputs(config) != 1:
        raise UserError(f"{path} is a {config.finetune.num_labels}-class classifier; score ranks "
                        "with a reranker (finetune.task: rerank)")  # fmt: skip
    config.data.seq_len = seq_len or config.data.seq_len
    mesh = sharding.make_mesh(config)
    param_shardings = jax.tree.map(lambda x: x.sharding, model.params)
    scorer = Scorer(config, mesh, model.graphdef, param_shardings, model.tokenizer, chunk_rows)
    return lambda pairs: scorer(model.params, pairs)[:, 0]


def score_pairs(path: str, pairs: list[tuple[str, str]], chunk_rows: int = 32) -> np.ndarray:
    """Relevance scores (logits) of ``(query, passage)`` pairs under the model at ``path``."""
    return load_reranker(path, chunk_rows)(pairs)


def print_scores(model: str, query=None, candidates=None, queries=None, top_k: int = 10):
    """``mlm-jax score``: candidates sorted by score, for one query or a JSONL of queries.

    One query prints ``rank<TAB>score<TAB>text`` lines; ``--queries`` prints one JSON
    object per query: ``{"query", "results": [{"rank", "score", "text"}, ...]}``.
    """
    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    if (queries is None) == (query is None or candidates is None):
        raise UserError("pass --query with --candidates, or --queries F.jsonl (not both)")
    if queries is None:
        jobs = [(query, data_lib.read_candidates(candidates))]
    else:
        jobs = data_lib.read_scoring_queries(queries)
    pairs = [(q, text) for q, texts in jobs for text in texts]
    scores = score_pairs(model, pairs)
    results, start = [], 0
    for q, texts in jobs:
        mine = scores[start : start + len(texts)]
        start += len(texts)
        order = np.argsort(-mine, kind="stable")[:top_k]
        ranked = [
            {"rank": r + 1, "score": float(mine[i]), "text": texts[i]} for r, i in enumerate(order)
        ]
        results.append({"query": q, "results": ranked})
        if queries is None:
            for item in ranked:
                print(f"{item['rank']}\t{item['score']:.6f}\t{item['text']}")
        else:
            print(json.dumps(results[-1], ensure_ascii=False))
    return results
