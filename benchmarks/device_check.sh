#!/usr/bin/env bash
# GPU check on the project's own code (benchmarks/device_check.py): the demo two-tower and
# the pretrained MiniLM cross-encoder, built by train_lib, compiled by
# trainer/training/optimization.py and trained by Keras' fit under JAX in bf16, from arrays prepared
# beforehand where TensorFlow is installed:
#
#   .venv/bin/python -m benchmarks.device_check prepare --out device_check_data   # here
#   bash benchmarks/device_check.sh [OUT_DIR]                                     # on the GPU
#
# The GPU machine needs jax (with CUDA), keras, keras-hub, numpy and PyYAML; no TensorFlow,
# no network. device_check_data/ (about 46 MB: MiniLM's weights in float16) travels with
# the call. Reports examples/s, MFU (XLA's FLOP count over the measured bf16 matmul peak and
# over SPEC_TFLOPS, the chip's dense bf16 figure: 989 for an H100/H200) and the metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-runs/device_check}}"
DATA="${DATA:-device_check_data}"
PYTHON="${PYTHON:-python3}"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
# The checkout is not pip-installed there: bert_recommender.models (setup.py's package_dir
# name for models/) resolves through a link in a temporary folder.
NAMESPACE_DIR="$(mktemp -d)"
trap 'rm -rf "$NAMESPACE_DIR"' EXIT
mkdir "$NAMESPACE_DIR/bert_recommender"
ln -s "$PWD/models" "$NAMESPACE_DIR/bert_recommender/models"
ln -s "$PWD/explainability" "$NAMESPACE_DIR/bert_recommender/explainability"
export PYTHONPATH="$PWD:$NAMESPACE_DIR${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -d "$DATA" ]; then
  echo "error: $DATA not found; run 'python -m benchmarks.device_check prepare --out $DATA'" \
       "where TensorFlow is installed, and carry it" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || echo "warning: nvidia-smi not found; is there a GPU?" >&2
# shellcheck disable=SC2086
"$PYTHON" -m benchmarks.device_check run --data "$DATA" --out "$OUT_DIR" \
  --spec_tflops "${SPEC_TFLOPS:-989}" ${DEVICE_CHECK_ARGS:-}
