#!/usr/bin/env bash
# Every GPU measurement in one go (about 5 minutes on an H100): the T4 question answered by the
# real trainer under a 15 GiB cap, then sampling overhead and training steps at 512 px in fp16.
#   bash benchmarks/gpu_suite.sh [copy-results-to-folder]
# Results: benchmarks/results/t4-cap-<card>.json, benchmarks/results/<card>.json, benchmarks/RESULTS.md.
set -u
cd "$(dirname "$0")/.."
out=${1:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
copy() { [ -n "$out" ] && cp "$@" "$out/" 2>/dev/null; true; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee ${out:+"$out/gpu-card.txt"}
timeout 280 "$PY" benchmarks/t4_cap.py --timeout 120 2>&1 | tee ${out:+"$out/t4_cap.log"}
copy benchmarks/results/t4-cap-*.json
timeout 250 "$PY" benchmarks/run.py --device cuda --dtype fp16 --resolution 512 --repeats 5 \
    --train-repeats 1 --train-steps 5 --train-timeout 60 2>&1 | tee ${out:+"$out/run.log"}
copy benchmarks/results/nvidia-*.json benchmarks/RESULTS.md
