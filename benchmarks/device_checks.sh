#!/bin/bash
# The GPU checks in one call on a lent device machine (prepared here by benchmarks/device_kit.py):
#   run(command="bash benchmarks/device_checks.sh", carry=[".devkit"], timeout_s=480)
# Installs the carried wheels into /tmp/site, then runs benchmarks/device_checks.py (reproducibility of
# forces, Hessians and fine-tuning under deterministic_torch on CUDA) and benchmarks/hessian_routes.py
# (issue 3: the Hessian routes against matgl's calc_hessian). JSON results and logs go to $OUT.
set -o pipefail
OUT=${OUT:-benchmarks/results}
KIT=${KIT:-.devkit}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$KIT"/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
MODEL=$KIT/models/M3GNet-MP-2021.2.8-PES
nvidia-smi -L
python3 -c "import torch, matgl, phonopy, tdphonon.finetune.train; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'matgl', matgl.__version__)" || exit 4
python3 benchmarks/device_checks.py --device cuda --model "$MODEL" --dataset "$KIT/ft_dataset" \
    --out "$OUT/device_checks_cuda.json" 2>&1 | tee "$OUT/device_checks.log"
python3 benchmarks/hessian_routes.py --device cuda --model "$MODEL" --out "$OUT/hessian_routes_cuda.json" 2>&1 \
    | tee "$OUT/hessian_routes.log"
