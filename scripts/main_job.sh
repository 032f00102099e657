#!/usr/bin/env bash
# The main job on a fresh machine: tokenizer → dataset → short pretraining → export → fill-mask,
# all on the builtin Shakespeare corpus (no download). Outputs go under runs/.
# The recipe (configs/tiny.yaml, 2k vocabulary) and its measurements: docs/recipes.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mlm-jax tokenizer train --input builtin:shakespeare --vocab-size 2000 --out runs/tokenizer
mlm-jax data prepare --input builtin:shakespeare --out runs/data --valid-fraction 0.03
mlm-jax train --config configs/tiny.yaml --workdir runs/tiny
mlm-jax eval --workdir runs/tiny
mlm-jax export --workdir runs/tiny --out runs/tiny-export --force
mlm-jax predict --model runs/tiny-export "Good night, sweet [MASK]."
