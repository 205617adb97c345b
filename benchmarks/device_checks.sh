#!/usr/bin/env bash
# Every check that needs a GPU, in one call of the lent GPU machine (one H100/H200, 16 CPUs):
#
#     bash benchmarks/device_checks.sh        # device tool: carry [".whl"], timeout_s 600
#
# 1. the CUDA tests (tests/iic/test_train.py and test_supervised.py -k cuda: AMP, resume, the speed settings on the GPU);
# 2. benchmarks/step_profile.py: S seeds stacked vs in turn, bf16 (issue 8's goal: S=4 <= 1.3x S=1);
# 3. benchmarks/default_sweep.py: candidate digits defaults on tuning seeds 100-109, fp32, 9 at once
#    (each candidate's ten seeds take ~105 s on an H200 with 9 at once: SWEEP_S=250 runs all 18);
# 4. benchmarks/gpu_packing_device.sh base: N trials per GPU (issue 13), bounded by PACKING_S.
# Each step has its own time limit and writes its log (and JSON) under $OUT as it goes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The scripts under benchmarks/ import iic from the repository root (no editable install there).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"

timeout 180 python3 -m pytest -q -p no:cacheprovider tests/iic/test_train.py tests/iic/test_supervised.py -k cuda -rA 2>&1 | tail -15 | tee "$OUT/cuda_tests.log"

timeout 70 python3 benchmarks/step_profile.py --only default --seeds 1 2 4 8 16 --steps 30 2>&1 | tee "$OUT/step_profile.log"
timeout 45 python3 benchmarks/step_profile.py --only resnet18 --seeds 1 2 4 --steps 15 2>&1 | tee -a "$OUT/step_profile.log"

SEEDS="100 101 102 103 104 105 106 107 108 109"
timeout ${SWEEP_S:-150} python3 benchmarks/default_sweep.py --jobs 9 --seeds $SEEDS --set amp=false --report-epochs 20 30 \
    --out "$OUT/sweep.json" \
    --candidate base --candidate oc50:overcluster_k=50 --candidate oc50_sub8:overcluster_k=50,num_subheads=8 \
    --candidate sub10:num_subheads=10 --candidate bs32:batch_size=32 --candidate bs32_lr2e-3:batch_size=32,lr=0.002 \
    --candidate lamb1.5:lamb=1.5 --candidate lamb1.15:lamb=1.15 --candidate rep6:repeats=6 \
    --candidate rot25:rotation_degrees=25 --candidate crop0.7:crop_min_scale=0.7 --candidate width32:backbone_width=32 \
    --candidate both_views:augment_both_views=true --candidate lr2e-3:lr=0.002 --candidate lr5e-3:lr=0.005 \
    --candidate oc50_bs32:overcluster_k=50,batch_size=32 --candidate main2:main_passes=2 --candidate size24:input_size=24 \
    2>&1 | tee "$OUT/sweep.log"

TOTAL_S=${PACKING_S:-180} OUT="$OUT" bash benchmarks/gpu_packing_device.sh base 2>&1 | tail -40
ls -la "$OUT"
