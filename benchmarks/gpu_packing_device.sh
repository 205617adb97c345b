#!/usr/bin/env bash
# benchmarks/gpu_packing.py on the lent GPU machine (one H100 or H200, 16 CPUs, no network).
#
#     bash benchmarks/gpu_packing_device.sh            # base: 3 workloads x N = 1 2 4 8 16, bf16 (~5 min)
#     bash benchmarks/gpu_packing_device.sh compare    # digits and resnet18-32px at N = 1 16: bf16, bf16 + MPS, fp32 (~4.5 min)
#     TOTAL_S=560 bash benchmarks/gpu_packing_device.sh speedups
#         # issue 13's candidates, each against the plain bf16 rows of the same call: digits at N = 1 16
#         # and resnet18-64px at N = 1 8, plain / channels_last / CUDA graphs (compile_mode=reduce-overhead) / MPS,
#         # after the CUDA tests of those settings (tests/iic/test_train.py -k cuda_speed)
#     SPEEDUP_WORKLOADS="resnet18-64px 1 8;digits 1 16" SPEEDUP_VARIANTS="plain cuda_graphs mps" TOTAL_S=560 \
#         bash benchmarks/gpu_packing_device.sh speedups     # which workloads ("NAME N...", ';'-separated) and variants
#     SPEEDUP_TESTS=0 SPEEDUP_WORKLOADS="resnet18-64px 4" SPEEDUP_VARIANTS="plain channels_last mps mps_channels_last plain" \
#         TOTAL_S=400 bash benchmarks/gpu_packing_device.sh speedups
#         # the presets' packing (4 a GPU) without the CUDA tests; a variant named twice runs twice (its
#         # second window says how far one window can be trusted)
#
# Needs .whl/ (made here by `bash benchmarks/gpu_packing_wheels.sh`; the device call carries it):
# the machine has torch and Ray's small dependencies but not Ray, jsonschema or pydantic. Installs
# nothing else. Writes gpu_packing_<run>.json and .log under $OUT (at most 16 files).
# TOTAL_S (default 290) bounds each phase: a run that would pass it skips its remaining settings
# (listed in its JSON) rather than overrun. GPU_PACKING_ARGS is appended to every invocation (on a
# CPU machine, GPU_PACKING_ARGS="--smoke --workloads digits" checks this script end to end).
set -uo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-base}
OUT=${OUT:-/tmp/gpu_packing_out}
TOTAL_S=${TOTAL_S:-290}
STARTED=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if ! python3 -c "import ray" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu --format=csv || echo "no nvidia-smi: no GPU here"
python3 -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available())" || exit 1

seconds_left() { echo $(( TOTAL_S - ($(date +%s) - STARTED) )); }

# run NAME ARGS...: one benchmark invocation with what is left of TOTAL_S (skipped under 45 s).
run() {
    local name=$1 left
    shift
    left=$(seconds_left)
    if (( left < 45 )); then
        echo "skip $name: only ${left} s of TOTAL_S=${TOTAL_S} left"
        return
    fi
    timeout $(( left + 60 )) python3 benchmarks/gpu_packing.py --time-budget $(( left - 5 )) \
        --out "$OUT/gpu_packing_$name.json" "$@" ${GPU_PACKING_ARGS:-} 2>&1 | tee "$OUT/gpu_packing_$name.log"
}

case "$PHASE" in
    base)
        run base --seconds-per-setting 6
        ;;
    compare)
        # Each variant's speed-up is over its own N = 1; the bf16 rows are the baseline of this call.
        run bf16 --workloads digits resnet18-32px --trials-per-gpu 1 16 --seconds-per-setting 6
        run mps --mps --workloads digits resnet18-32px --trials-per-gpu 1 16 --seconds-per-setting 6
        run fp32 --no-amp --workloads digits resnet18-32px --trials-per-gpu 1 16 --seconds-per-setting 6
        ;;
    speedups)
        # The settings train as the default does on CUDA (CUDA graphs and NHWC kernels exist only there).
        if [[ ${SPEEDUP_TESTS:-1} != 0 ]]; then
            PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} timeout 150 python3 -m pytest -q -p no:cacheprovider \
                tests/iic/test_train.py -k cuda_speed -rA 2>&1 | tail -8 | tee "$OUT/cuda_speed_tests.log"
        fi
        # Plain first: a later variant that runs out of TOTAL_S still has its baseline in this call.
        # Compiling happens in each trial's warm-up epoch, hence the longer warm-up timeout.
        IFS=';' read -ra workloads <<< "${SPEEDUP_WORKLOADS:-digits 1 16;resnet18-64px 1 8}"
        for workload in "${workloads[@]}"; do
            set -- $workload
            name=$1
            shift
            declare -A times=()
            for variant in ${SPEEDUP_VARIANTS:-plain channels_last cuda_graphs mps}; do
                times[$variant]=$(( ${times[$variant]:-0} + 1 ))
                label=${variant}_$name$( (( times[$variant] > 1 )) && echo "_${times[$variant]}" )
                case $variant in
                    plain) run "$label" --workloads "$name" --trials-per-gpu "$@" ;;
                    channels_last) run "$label" --workloads "$name" --trials-per-gpu "$@" --set channels_last=true ;;
                    cuda_graphs) run "$label" --workloads "$name" --trials-per-gpu "$@" --set compile_mode=reduce-overhead --warmup-timeout 240 ;;
                    mps) run "$label" --mps --workloads "$name" --trials-per-gpu "$@" ;;
                    mps_channels_last) run "$label" --mps --workloads "$name" --trials-per-gpu "$@" --set channels_last=true ;;
                    *) echo "unknown variant $variant (plain channels_last cuda_graphs mps mps_channels_last)" >&2; exit 2 ;;
                esac
            done
            unset times
        done
        ;;
    *)
        echo "usage: $0 [base|compare|speedups]" >&2
        exit 2
        ;;
esac
echo "phase $PHASE took $(( $(date +%s) - STARTED )) s"
