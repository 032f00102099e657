#!/usr/bin/env bash
# Our train step beside transformers' PyTorch BERT, one run, same shapes, batches and dropout.
#
#   bash scripts/bench_vs_torch.sh [SHAPE ...] >> results.jsonl    (needs the hf extra)
#
# SHAPE is tiny, mini, small or base (default: all four). Each shape runs in fp32 and bf16,
# ours (scripts/bench_train.py) then the peer (scripts/bench_peer_torch.py), one JSON line
# each: seq 128, vocabulary 30,522, dropout 0.1 on hidden states and attention
# probabilities, 15% of positions predicted, batch 32 (8 at base). docs/benchmarks.md
# holds the table these lines made.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A SHAPES=(
  [tiny]="model.num_layers=2 model.hidden_size=128 model.num_heads=2 model.intermediate_size=512 train.global_batch_size=32"
  [mini]="model.num_layers=4 model.hidden_size=256 model.num_heads=4 model.intermediate_size=1024 train.global_batch_size=32"
  [small]="model.num_layers=4 model.hidden_size=512 model.num_heads=8 model.intermediate_size=2048 train.global_batch_size=32"
  [base]="model.num_layers=12 model.hidden_size=768 model.num_heads=12 model.intermediate_size=3072 train.global_batch_size=8"
)
COMMON="model.family=bert model.vocab_size=30522 data.seq_len=128 model.max_position_embeddings=512
  data.mask_rate=0.15 model.dropout_rate=0.1 model.attention_dropout_rate=0.1"

shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(tiny mini small base)
for shape in "${shapes[@]}"; do
  for dtype in float32 bfloat16; do
    sets=()
    for kv in $COMMON ${SHAPES[$shape]} model.dtype=$dtype; do sets+=(--set "$kv"); done
    for script in bench_train bench_peer_torch; do
      python "scripts/$script.py" --config configs/tiny.yaml "${sets[@]}" \
        | sed "s/^{/{\"shape\": \"$shape\", /"
    done
  done
done
