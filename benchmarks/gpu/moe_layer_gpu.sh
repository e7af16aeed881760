#!/usr/bin/env bash
# The MoE layer on one CUDA GPU, for the lead to run on an H200 (under 5 minutes):
#   1. the CUDA correctness tests (pytest -m gpu tests/moe/test_gpu.py),
#   2. grouped experts vs a dense bf16 GEMM of equal FLOPs at T >= 4096
#      (benchmarks/gpu/moe_layer_gpu.py; target: experts >= 0.70 of the dense rate).
# Usage, from the repository root: bash benchmarks/gpu/moe_layer_gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 150 "$PY" -m pytest -m gpu tests/moe/test_gpu.py -q -p no:cacheprovider 2>&1 \
  | tee "$OUT/moe_layer_gpu_tests.txt"
timeout 150 "$PY" benchmarks/gpu/moe_layer_gpu.py --json "$OUT/moe_layer_gpu.json" 2>&1 \
  | tee "$OUT/moe_layer_gpu.txt"
