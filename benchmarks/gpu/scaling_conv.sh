#!/usr/bin/env bash
# The scaling study, larger, on one GPU (issue 17): conv-stem models twice as wide with
# 4x4-pixel patches (64 image tokens), 2000 steps, dense vs its 4x-wide and 1/4-wide (dense-narrow) capacity
# controls vs E=4/8/16 top-2, seeds 0 and 1, on scene VQA (12 runs).
#
# Prepared for the lead engineer to run once on the H200 (not run by its author). Stops itself
# after 9.5 minutes; the study is resumable, so running this script again continues where it
# stopped (finished runs are skipped) and rewrites the report. Results:
# benchmarks/results/scaling_gpu_conv.{json,md} and plots.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 570 "$PY" benchmarks/scaling.py \
    --tasks vqa \
    --variants dense dense-narrow dense-wide e4k2 e8k2 e16k2 \
    --seeds 0 1 \
    --no-ablations \
    --threads 4 \
    --steps 2000 \
    --size conv_stem=32 --size patch_size=4 --size dim=128 --size hidden_dim=512 \
    --out benchmarks/results/scaling_gpu_conv.json || echo "stopped (time limit or error): rerun to resume"
"$PY" benchmarks/scaling.py --report-only --tasks vqa \
    --size conv_stem=32 --size patch_size=4 --size dim=128 --size hidden_dim=512 \
    --out benchmarks/results/scaling_gpu_conv.json
