#!/usr/bin/env bash
# Issue 4's inference benchmark on a GPU machine, every variant, one table each.
#
# Here, first: bash bench/gpu_wheels.sh
# Then with the device tool: run(command="bash bench/gpu_inference.sh",
#   carry=[".whl"], timeout_s=600); the JSON and the batched run's profile (all
#   threads: Python 3.12's cProfile) come back from $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
run() { python3 -m bench.inference_throughput --device cuda --studies 32 --slices 128 --matrix 256 --batch 8 "$@"; }
echo "== offload processes: the default for this machine's cores"
run --latency-runs 3 --json "$out/inference-gpu.json" --profile "$out/inference-gpu-profile.txt"
echo "== MEDAIFLOW_JOB_PROCESSES=0: one at a time with the CPU work in the worker's threads"
MEDAIFLOW_JOB_PROCESSES=0 run --latency-runs 0 --variants one-at-a-time --json "$out/inference-gpu-threads.json"
