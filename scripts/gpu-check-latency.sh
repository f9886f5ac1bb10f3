#!/usr/bin/env bash
# The GPU check of latency on a GPU (issue 16), sized for one device lease (about 10 min on 16 cores):
#   the `gpu` tests of kernels and latency (CUDA tuning, local-gpu measured, TVM CUDA library on the GPU), then
#   the user's path on the built-in `local-gpu` device: tune the quickstart space's CUDA kernels, collect 100
#   subnets, train the predictors (held-out accuracy), and time tuned TVM against PyTorch eager side by side.
# Run it on the device machine from the repository root with the package importable there (see gpu-check.sh);
# results land in $OUT (bench JSON, logs). TRIALS and SUBNETS size it.
set -euo pipefail
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
py="${PYTHON:-python}"
hwnas=("$py" -m hwnas.cli)
export HWNAS_HOME="${HWNAS_HOME:-/tmp/hwnas-gpu-home}"
trials="${TRIALS:-300}" subnets="${SUBNETS:-100}"
"$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name())"
"$py" -m pytest -q -s -m gpu tests/latency tests/kernels 2>&1 | tee "$out/gpu-latency-tests.log"
"${hwnas[@]}" devices show local-gpu > "$out/local-gpu.json"
time "${hwnas[@]}" kernels tune --device local-gpu --space quickstart --trials "$trials" 2>&1 | tee "$out/tune.log"
time "${hwnas[@]}" latency collect --device local-gpu --space quickstart -n "$subnets" --workers 8 2>&1 \
    | tee "$out/collect.log"
"${hwnas[@]}" latency train --device local-gpu --space quickstart 2>&1 | tee "$out/train.log"
"$py" bench/latency.py gpu-tuned --tuning-dir "$HWNAS_HOME/tuning/local-gpu/quickstart" \
    --out "$out/latency-gpu-tuned.json"
