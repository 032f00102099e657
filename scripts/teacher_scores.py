"""Add a bi-encoder's scores to a reranking training file, for ``finetune.loss: distill``.

Each ``{"query", "positive", "negatives"}`` line gains ``"teacher": [cos(q, positive),
cos(q, negative)...]`` and each ``{"query", "passage", "label"}`` line ``"teacher":
cos(q, passage)``: the cosine of the sentence-transformers embeddings, which is what the
bi-encoder ranks by. Distillation then pulls the cross-encoder towards the bi-encoder's
judgement of relevance, not only towards the labels (see docs/benchmarks.md, issue 15).

    python scripts/teacher_scores.py --bi-encoder runs/minilm \\
        --train runs/rel-pydocs/train.jsonl --out runs/rel-pydocs/train-teacher.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def _passages(record: dict) -> list[str]:
    if "passage" in record:
        return [record["passage"]]
    return [record["positive"], *record["negatives"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bi-encoder", required=True, help="a sentence-transformers directory")
    parser.add_argument("--train", required=True, help="training JSONL of a relevance set")
    parser.add_argument("--out", required=True, help="the same lines with teacher scores")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    records = [json.loads(x) for x in Path(args.train).read_text().splitlines() if x.strip()]
    model = SentenceTransformer(args.bi_encoder, device="cpu")
    texts = sorted({t for r in records for t in [r["query"], *_passages(r)]})
    vectors = dict(zip(texts, model.encode(texts, batch_size=64, normalize_embeddings=True),
                       strict=True))  # fmt: skip
    with Path(args.out).open("w", encoding="utf-8") as out:
        for record in records:
            scores = [round(float(vectors[record["query"]] @ vectors[p]), 6)
                      for p in _passages(record)]  # fmt: skip
            record["teacher"] = scores[0] if "passage" in record else scores
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(json.dumps({"out": args.out, "lines": len(records), "texts": len(texts)}))


if __name__ == "__main__":
    main()
