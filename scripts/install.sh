#!/usr/bin/env bash
# Creates .venv and installs flamingo_jax into it (editable), with the exact package set the tests ran on
# (constraints.txt; pyproject.toml holds the compatible ranges). `bash scripts/install.sh test` adds the test
# extra and OpenFlamingo for the parity tests (its package metadata pulls torchvision, which has no CPU
# build: install it without dependencies; the tests load its model files by path) and pycocoevalcap, the COCO
# caption toolkit that tests/test_eval_metrics.py checks CIDEr against live (its PTB tokenizer needs java:
# .ci/run installs it when absent).
# GPU / TPU: after this script, `.venv/bin/pip install -c constraints.txt -e '.[cuda12]'` (or '.[tpu]').
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
if [ "${1:-}" = "test" ]; then
  .venv/bin/pip install -q -c constraints.txt -e '.[test]'
  .venv/bin/pip install -q -c constraints.txt --no-deps open-flamingo==2.0.1 open_clip_torch==2.24.0
  .venv/bin/pip install -q -c constraints.txt pycocoevalcap==1.2 pycocotools==2.0.11
else
  .venv/bin/pip install -q -c constraints.txt -e .
fi
