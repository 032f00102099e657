"""Scoring with a fine-tuned reranker: ``mlm-jax score`` and the scorer ``search`` uses."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from mlm_jax.data import finetune_data as data_lib
from mlm_jax.errors import UserError
from mlm_jax.inference import loading, passage_windows
from mlm_jax.model import sharding
from mlm_jax.model.cross_encoder import num_outputs
from mlm_jax.model.pair_scorer import Scorer


def load_reranker(
    path: str, chunk_rows: int = 32, seq_len: int | None = None, windows: str | None = None,
    dtype: str | None = None,
):  # fmt: skip
    """``score(pairs) -> [N] logits`` of the reranker at ``path``; refuses other models.

    Rows are ``seq_len`` long (default: the run's ``finetune.score_seq_len``, else the
    rows it trained on); a passage longer than a row's room is scored as ``windows`` says
    (default: the run's ``finetune.score_windows``; see :mod:`passage_windows`). Products
    take ``dtype`` (default: the run's ``model.dtype``, the precision it was trained and
    evaluated in, which for a bf16 run is about twice as fast wherever bf16 has hardware;
    ``"float32"`` reproduces ``transformers`` to rounding).
    """
    check_reranker_path(path)
    model = loading.load(path, dtype)
    config = model.config
    if not model.fine_tuned:
        raise UserError(f"{path} is a pretrained model; score needs a fine-tuned reranker")
    if num_outputs(config) != 1:
        raise UserError(f"{path} is a {config.finetune.num_labels}-class classifier; score ranks "
                        "with a reranker (finetune.task: rerank)")  # fmt: skip
    config.data.seq_len = _row_length(path, config, seq_len)
    windows = windows or config.finetune.score_windows
    if windows not in passage_windows.MODES:
        raise UserError(f"--windows {windows!r}: pick one of {', '.join(passage_windows.MODES)}")
    mesh = sharding.make_mesh(config)
    param_shardings = jax.tree.map(lambda x: x.sharding, model.params)
    scorer = Scorer(config, mesh, model.graphdef, param_shardings, model.tokenizer, chunk_rows)
    score_rows = lambda pairs: scorer(model.params, pairs)[:, 0]  # noqa: E731
    if windows == "firstp":
        return score_rows
    return lambda pairs: passage_windows.best_window_scores(scorer.encoder, score_rows, pairs)


def check_reranker_path(path: str) -> None:
    """Refuse, from its files alone, a directory that is neither a fine-tuned export nor a
    run: a caller can then stop a bad path before any scoring, by the scorer's own rule."""
    directory = Path(path)
    if not any((directory / name).is_file() for name in ("mlm_jax.json", "config.yaml")):
        raise UserError(
            f"{path!r} is neither a fine-tuned export (mlm_jax.json) nor a run (config.yaml)"
        )


def _row_length(path: str, config, seq_len: int | None) -> int:
    """The scoring row length: ``--seq-len``, else the run's recorded one, else training's."""
    length = seq_len or config.finetune.score_seq_len or config.data.seq_len
    limit = config.model.max_position_embeddings
    if not 8 <= length <= limit:
        raise UserError(
            f"--seq-len {length} does not fit {path}: its rows can be 8 to {limit} tokens "
            "(model.max_position_embeddings)"
        )
    return length


def score_pairs(
    path: str, pairs: list[tuple[str, str]], chunk_rows: int = 32, seq_len=None, windows=None,
    dtype=None,
) -> np.ndarray:  # fmt: skip
    """Relevance scores (logits) of ``(query, passage)`` pairs under the model at ``path``."""
    return load_reranker(path, chunk_rows, seq_len, windows, dtype)(pairs)


def print_scores(
    model: str, query=None, candidates=None, queries=None, top_k: int = 10, seq_len=None,
    windows=None, dtype=None,
):  # fmt: skip
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
    scores = score_pairs(model, pairs, seq_len=seq_len, windows=windows, dtype=dtype)
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
