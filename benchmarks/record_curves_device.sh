#!/usr/bin/env bash
# benchmarks/record_curves.py on the lent GPU machine (one H100/H200, 16 CPUs, torch, no network):
#
#     WORKERS=8 TIME_BUDGET=420 bash benchmarks/record_curves_device.sh      # device tool: timeout_s 600
#     PRESET=digits_schedules WORKERS=14 TIME_BUDGET=420 bash benchmarks/record_curves_device.sh
#
# Records the PRESET table (default digits_wide; CONFIGS configs x seeds 0-4 x 20 epochs) into $OUT, all workers
# sharing the GPU. It starts from the table committed in benchmarks/data/ when there is one, so a
# second call carries on where the first stopped (copy $OUT's table back into benchmarks/data/ and
# commit it in between). A config is started only while it should end within TIME_BUDGET; running
# ones finish, so the command is given SLACK_S more before `timeout` ends it (a killed run keeps
# every config it finished). Writes under $OUT: curves_$PRESET.jsonl (.jsonl.gz instead when over
# 2 MB), record_curves.log, device.txt. digits_schedules varies only what PBT changes (its configs
# share the model), so that search_strategies.py can replay PBT's explore steps.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD  # no editable install there: iic and search come from the repository root
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/record_curves}
WORKERS=${WORKERS:-8}
TIME_BUDGET=${TIME_BUDGET:-420}
SLACK_S=${SLACK_S:-120}
CONFIGS=${CONFIGS:-400}
PRESET=${PRESET:-digits_wide}
TABLE=curves_$PRESET.jsonl
mkdir -p "$OUT"

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi: no GPU here"; } | tee "$OUT/device.txt"
python3 -c "import torch, torchvision, PIL, numpy, scipy, sklearn, yaml; print('python', __import__('platform').python_version(), 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    | tee -a "$OUT/device.txt" || exit 1

if [[ -f benchmarks/data/$TABLE ]]; then
    cp "benchmarks/data/$TABLE" "$OUT/$TABLE"
elif [[ -f benchmarks/data/$TABLE.gz ]]; then
    gunzip -c "benchmarks/data/$TABLE.gz" > "$OUT/$TABLE"
fi

timeout $(( TIME_BUDGET + SLACK_S )) python3 benchmarks/record_curves.py --preset "$PRESET" --workers "$WORKERS" --time-budget "$TIME_BUDGET" \
    --configs "$CONFIGS" --out "$OUT/$TABLE" ${RECORD_ARGS:-} 2>&1 | tee "$OUT/record_curves.log"
echo "record_curves exit status ${PIPESTATUS[0]} (124: stopped by timeout; finished configs are kept)" | tee -a "$OUT/record_curves.log"

if (( $(stat -c %s "$OUT/$TABLE") > 2000000 )); then
    gzip -f "$OUT/$TABLE"  # only the .gz comes back; the replay reads it, and this script unpacks it to carry on
fi
nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null
ls -la "$OUT"
