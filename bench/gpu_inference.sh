#!/usr/bin/env bash
# Issue 4's inference benchmark on a GPU machine, every variant, one table.
#
# Here, first: bash bench/gpu_wheels.sh
# Then with the device tool: run(command="bash bench/gpu_inference.sh",
#   carry=[".whl"], timeout_s=600); the JSON comes back from $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m bench.inference_throughput --device cuda --studies 32 --slices 128 --matrix 256 --batch 8 \
  --latency-runs 3 --json "${OUT:-/tmp}/inference-gpu.json"
