#!/usr/bin/env bash
# The nccl path of vlmoe.distributed on one GPU (world size 1), as torchrun starts it.
# Run from the repository root on a CUDA machine: bash benchmarks/gpu/nccl_single_gpu.sh
# Takes about a minute; prints PASS/FAIL lines and an all-to-all vs local timing table.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
exec timeout 480 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 \
  benchmarks/gpu/nccl_single_gpu.py
