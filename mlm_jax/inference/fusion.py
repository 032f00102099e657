"""Fusing a reranker's scores with BM25's, and with a bi-encoder's: ``mlm-jax fuse`` fits
it, ``search`` applies it.

On a collection it was not trained on, a cross-encoder can order BM25's candidates worse
than BM25 did; BM25's term statistics belong to the collection, the model's judgement to
its training text. The zero-shot bi-encoder the reranker started from (``fuse
--bi-encoder``) knows what the reranker's fine-tuning may have pulled it away from. The
fused score of a query's candidates is

    (1 - w - v) * z(reranker) + w * z(bm25) + v * z(bi-encoder cosine)

where ``z`` is the z-score within that query's candidate list (the scores' scales then
drop out) and ``w``, ``v`` are two numbers per model, fitted by ``mlm-jax fuse`` on the dev
split of the model's training mixture (``dev.jsonl`` of ``mlm-jax data relevance
--dev-queries``): the pair with the best mean MRR@10 over the dev files, each file counting
once (``v`` is 0 without ``--bi-encoder``). They are stored beside the model as
``bm25_fusion.json``, with the bi-encoder's directory; ``mlm-jax export`` copies both (the
bi-encoder into the export's ``bi_encoder/``) and ``search`` uses them unless
``--no-fusion``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlm_jax import artifacts
from mlm_jax.data import bm25_index, finetune_data
from mlm_jax.data.ranking_metrics import mean_ranking_metrics
from mlm_jax.errors import UserError

FILE = "bm25_fusion.json"
EXPORTED_BI_ENCODER = "bi_encoder"  # the bi-encoder's folder inside an export
WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)  # steps of 0.05


@dataclass(frozen=True)
class Fusion:
    """The weights stored with a model; ``bi_encoder`` is a directory when ``bi_encoder_weight``
    is not 0."""

    bm25_weight: float
    bi_encoder_weight: float = 0.0
    bi_encoder: Path | None = None


def _z(scores) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    return (scores - scores.mean()) / (scores.std() + 1e-9)


def fused(reranker, bm25, weight: float, cosines=None, bi_encoder_weight: float = 0.0):
    """One query's fused candidate scores (both weights 0: the reranker's order)."""
    out = (1.0 - weight - bi_encoder_weight) * _z(reranker) + weight * _z(bm25)
    return out + bi_encoder_weight * _z(cosines) if bi_encoder_weight else out


def _damaged(path: Path, model, why: str) -> UserError:
    return UserError(f"{path}{why}; refit it: mlm-jax fuse --model {model} --dev ...")


def read(model: str | Path) -> Fusion | None:
    """The fusion stored with ``model``, or None when it has none."""
    path = Path(model) / FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        weight, bi_weight = record["bm25_weight"], record.get("bi_encoder_weight", 0.0)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _damaged(path, model, " is damaged") from None
    weights = (weight, bi_weight)
    if not all(isinstance(w, int | float) and 0 <= w <= 1 for w in weights) or sum(weights) > 1:
        raise _damaged(path, model, ": the weights must lie in [0, 1] and add up to at most 1")
    if not bi_weight:
        return Fusion(float(weight))
    if not isinstance(record.get("bi_encoder"), str):
        raise _damaged(path, model, " gives the bi-encoder a weight but names no bi_encoder")
    directory = Path(model) / record["bi_encoder"]  # an absolute path stays as it is
    if not (directory / "config.json").is_file():
        raise UserError(
            f"{path}: its bi-encoder {directory} is not there; reinstall it, refit with "
            "`mlm-jax fuse --bi-encoder DIR`, or search with --no-fusion"
        )
    return Fusion(float(weight), float(bi_weight), directory)


def bi_encoder_cosines(fusion: Fusion | None, pairs: list[tuple[str, str]]):
    """The bi-encoder's cosines of ``pairs`` when ``fusion`` weighs them, else None."""
    if fusion is None or not fusion.bi_encoder_weight:
        return None
    from mlm_jax.inference import embedding

    return embedding.cosines(embedding.load_bi_encoder(fusion.bi_encoder), pairs)


def _grid(with_bi_encoder: bool) -> list[tuple[float, float]]:
    """``(bm25, bi-encoder)`` weights to try, least bi-encoder then least BM25 first (the
    first of equally good pairs wins)."""
    others = WEIGHTS if with_bi_encoder else WEIGHTS[:1]
    return [(float(w), float(v)) for v in others for w in WEIGHTS if w + v <= 1.0 + 1e-9]


def _dev_lists(dev_files: list[str]):
    """Per dev file: its candidate lists, relevance labels, BM25 scores and pairs."""
    lists = []
    for path in dev_files:
        queries = finetune_data.read_rerank(path, evaluation=True)
        relevant = [np.asarray([1] * len(q.positives) + [0] * len(q.negatives)) for q in queries]
        pairs = [(q.query, p) for q in queries for p in q.positives + q.negatives]
        lists.append((path, relevant, bm25_index.candidate_scores(queries), pairs))
    return lists


def _per_query(flat, bm25) -> list[np.ndarray]:
    return np.split(np.asarray(flat), np.cumsum([len(b) for b in bm25])[:-1])


def fit(model: str, dev_files: list[str], bi_encoder: str | None = None, dtype=None) -> dict:
    """Fit the fusion weights of ``model`` on ``dev_files`` and write them beside the model
    (the reranker's products in ``dtype``, as :func:`scoring.load_reranker` takes it)."""
    from mlm_jax.inference import embedding, scoring

    if not dev_files:
        raise UserError("--dev needs at least one dev.jsonl (`data relevance --dev-queries N`)")
    score = scoring.load_reranker(model, chunk_rows=64, dtype=dtype)
    embed = None if bi_encoder is None else embedding.load_bi_encoder(bi_encoder)
    grid = _grid(embed is not None)
    table = {}  # file -> [MRR@10 at each pair of weights]
    for path, relevant, bm25, pairs in _dev_lists(dev_files):
        reranker = _per_query(score(pairs), bm25)
        cos = _per_query(embedding.cosines(embed, pairs), bm25) if embed else [None] * len(bm25)
        table[path] = [
            mean_ranking_metrics([fused(r, b, w, c, v) for r, b, c in
                                  zip(reranker, bm25, cos, strict=True)], relevant)["mrr@10"]
            for w, v in grid
        ]  # fmt: skip
    means = np.mean(list(table.values()), axis=0)
    best = int(np.argmax(means))
    without = int(np.argmax(means[: len(WEIGHTS)]))  # the pairs with v = 0 come first
    record = {"bm25_weight": grid[best][0]}
    if embed:
        record["bi_encoder_weight"] = grid[best][1]
        record["bi_encoder"] = str(Path(bi_encoder).resolve())
        record["dev_mrr@10_without_bi_encoder"] = round(float(means[without]), 4)
    record |= {
        "dev_mrr@10": round(float(means[best]), 4),
        "dev_mrr@10_reranker_alone": round(float(means[0]), 4),
        "dev_mrr@10_per_file": {p: round(v[best], 4) for p, v in table.items()},
    }
    artifacts.write_text_atomic(Path(model) / FILE, json.dumps(record, indent=2) + "\n")
    return record


def exported(workdir: str | Path) -> dict[str, bytes]:
    """The fusion file of a run, and its bi-encoder's files, as an export carries them:
    the bi-encoder copied into ``bi_encoder/`` and the record pointing there."""
    path = Path(workdir) / FILE
    fusion = read(workdir)
    if fusion is None:
        return {}
    if fusion.bi_encoder is None:
        return {FILE: path.read_bytes()}
    record = {**json.loads(path.read_text()), "bi_encoder": EXPORTED_BI_ENCODER}
    files = {
        f"{EXPORTED_BI_ENCODER}/{item.relative_to(fusion.bi_encoder).as_posix()}": item.read_bytes()
        for item in sorted(fusion.bi_encoder.rglob("*"))
        if item.is_file()
    }
    return {FILE: (json.dumps(record, indent=2) + "\n").encode(), **files}
