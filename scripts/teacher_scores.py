"""Add a bi-encoder's scores to a reranking training file, for ``finetune.loss: distill``.

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

    python scripts/teacher_scores.py --bi-encoder runs/minilm \\
        --train runs/rel-pydocs/train.jsonl --out runs/rel-pydocs/train-teacher.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


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


def _check_bm25(records: list[dict], path: str) -> None:
    """Each line of several passages needs a BM25 score per passage; name the first without."""
    for number, record in enumerate(records, 1):
        scores = record.get("bm25")
        if "negatives" in record and not (
            isinstance(scores, list) and len(scores) == len(_passages(record))
        ):
            print(f"{path}:{number}: no 'bm25' score per passage, which --bm25-weight needs; "
                  "rebuild the set with `mlm-jax data relevance --pairs` or drop --bm25-weight",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bi-encoder", required=True, help="a sentence-transformers directory")
    parser.add_argument("--train", required=True, help="training JSONL of a relevance set")
    parser.add_argument("--out", required=True, help="the same lines with teacher scores")
    parser.add_argument("--bm25-weight", type=float, default=0.0,
                        help="mix in the lines' BM25 scores (0: the bi-encoder alone)")  # fmt: skip
    args = parser.parse_args()
    records = [json.loads(x) for x in Path(args.train).read_text().splitlines() if x.strip()]
    if args.bm25_weight:
        _check_bm25(records, args.train)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.bi_encoder, device="cpu")
    texts = sorted({t for r in records for t in [r["query"], *_passages(r)]})
    vectors = dict(zip(texts, model.encode(texts, batch_size=64, normalize_embeddings=True),
                       strict=True))  # fmt: skip
    with Path(args.out).open("w", encoding="utf-8") as out:
        for record in records:
            scores = [float(vectors[record["query"]] @ vectors[p]) for p in _passages(record)]
            scores = [round(x, 6) for x in _teacher(record, scores, args.bm25_weight)]
            record["teacher"] = scores[0] if "passage" in record else scores
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(json.dumps({"out": args.out, "lines": len(records), "texts": len(texts)}))


if __name__ == "__main__":
    main()
