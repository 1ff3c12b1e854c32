#!/usr/bin/env bash
# The GPU benchmarks (`make bench-gpu`): on one CUDA device, PerA vs full-view DINO and SoftCon
# (masked and full trainable branch) full training steps in bf16 -- images/s, peak memory, FLOPs
# per step, MFU -- and the training loader (decode floor ratio) with one DataLoader worker per
# core of the host. Writes OUT/results.json and OUT/results.md (default build/bench-gpu).
#
#   train/bench_gpu.sh [OUT]
#   PERA_BATCH=128 SOFTCON_BATCH=256 SOFTCON_MODELS=vit_small_patch14_dinov2 train/bench_gpu.sh
#
# Without an installed eoforge (a bare GPU host), the checkout is imported as the package
# `eoforge` through a symbolic link; its dependencies must be importable.
set -euo pipefail
out=${1:-build/bench-gpu}
python=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
if ! "$python" -c "import eoforge.train" 2>/dev/null; then
  link=$(mktemp -d)
  ln -s "$repo" "$link/eoforge"
  export PYTHONPATH="$link${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
workers=${LOADER_WORKERS:-$(nproc)}
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)"
"$python" -m eoforge.train.bench_softcon --gpu-only --gpu-batch "${SOFTCON_BATCH:-256}" \
  --gpu-models "${SOFTCON_MODELS:-vit_small_patch14_dinov2,vit_base_patch14_dinov2,resnet50}" --out "$out"
"$python" -m eoforge.train.bench_pera --gpu-only --gpu-batch "${PERA_BATCH:-128}" --out "$out"
"$python" -m eoforge.train.data.bench --out "$out" --no-torchgeo --workers "$workers" \
  --samples "${LOADER_SAMPLES:-4096}" --section train-loader-gpu-host
echo "bench-gpu: results in $out/results.md"
