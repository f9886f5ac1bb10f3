#!/usr/bin/env bash
# The GPU check of training and scoring (issue 15), sized for one device lease (about 6 min):
#   the `gpu` tests (CUDA training in fp32/bf16/fp16 against the CPU, GPU scoring within 2%), then
#   bench/training.py --gpu (WMT14 En-De SuperTransformer tokens/s in fp32 and bf16 on CUDA).
# Run it on the device machine from the repository root, with the package importable there (the machine
# reaches no package index: carry a virtual environment built for its Python and CUDA, or run it where
# `pip install -e '.[test]'` works); results land in $OUT (bench JSON, test log).
set -euo pipefail
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
py="${PYTHON:-python}"
"$py" -c "import torch, hwnas; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name())"
"$py" -m pytest -q -m gpu tests/supernet/test_gpu.py 2>&1 | tee "$out/gpu-tests.log"
"$py" bench/training.py --gpu --steps 20 --precision-steps 4 --wmt-steps 4 --work /tmp/hwnas-gpu-bench
cp bench/results/training-gpu.json "$out/"
