#!/usr/bin/env bash
# GPU check (under 5 minutes): BERTRecommender's training step in bf16 mixed precision with
# XLA, examples/s and MFU against the GPU's measured bf16 matmul peak (benchmarks/gpu_check.py).
#
#   bash benchmarks/device_check.sh [OUT_DIR]
#
# Uses the TensorFlow backend where TensorFlow is installed (pip install -e . plus
# tensorflow[and-cuda]==2.21.0 on a GPU machine), else JAX if that is what the machine has
# (keras and keras-hub must be importable). Extra arguments go through GPU_CHECK_ARGS, e.g.
# GPU_CHECK_ARGS="--batch_size 128 --sizes minilm".
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-runs/device_check}"
PYTHON="${PYTHON:-python3}"
if [ -z "${KERAS_BACKEND:-}" ]; then
  if "$PYTHON" -c "import tensorflow" 2>/dev/null; then
    export KERAS_BACKEND=tensorflow
  elif "$PYTHON" -c "import jax" 2>/dev/null; then
    export KERAS_BACKEND=jax
  else
    echo "error: neither tensorflow nor jax is importable by $PYTHON" >&2
    exit 2
  fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || echo "warning: nvidia-smi not found; is there a GPU?" >&2
export PYTHONUNBUFFERED=1
# shellcheck disable=SC2086
"$PYTHON" -m benchmarks.gpu_check --sizes small,minilm --precision mixed_bfloat16 \
  --batch_size 256 --steps 20 --windows 3 --out "$OUT_DIR" ${GPU_CHECK_ARGS:-}
