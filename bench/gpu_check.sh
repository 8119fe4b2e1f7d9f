#!/usr/bin/env bash
# The GPU path in under 5 minutes on one GPU (bf16 GRPO and AttnRL fits with both callbacks,
# DDP on 2 GPUs when visible; prints step time and peak memory). See bench/gpu_check.py.
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec python bench/gpu_check.py "$@"
