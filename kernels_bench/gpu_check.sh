#!/usr/bin/env bash
# Every kernels_bench suite at full size on one CUDA GPU, offline, within a time budget (default 480 s);
# each suite writes OUT_DIR/<suite>.json and OUT_DIR/<suite>.md, so a suite cut off by the budget does
# not lose the others. Usage: kernels_bench/gpu_check.sh OUT_DIR
# Environment: DEVICE (default cuda; DEVICE=cpu EXTRA=--smoke checks the script on a machine without a GPU),
# BUDGET_S (default 480), EXTRA (more arguments for every suite).
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: kernels_bench/gpu_check.sh OUT_DIR" >&2
    exit 2
fi
OUT_DIR=$1
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-480}
EXTRA=${EXTRA:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

{
    date -Is
    echo "nproc $(nproc); $(uptime)"
    git rev-parse HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
} > "$OUT_DIR/machine.txt"

# Order: the figures the goals name first (step: MFU; e2e; parity), the cheap suites last.
# Compiling every model twice would not fit the budget: step compiles the two models the MFU goal names.
declare -A SUITE_ARGS=(
    [step]="--compile-models resnet50,resnext50_32x4d"
    [e2e]=""
    [parity]=""
    [kernels]=""
    [loader]=""
    [prepare]=""
)
ORDER="step e2e parity kernels loader prepare"
deadline=$(( $(date +%s) + BUDGET_S ))
failed=""
for suite in $ORDER; do
    left=$(( deadline - $(date +%s) ))
    if [ "$left" -le 10 ]; then
        echo "$suite: skipped, the ${BUDGET_S}s budget is spent" | tee -a "$OUT_DIR/summary.txt"
        failed="$failed $suite"
        continue
    fi
    device=$DEVICE
    [ "$suite" = prepare ] && device=cpu  # decoding runs on CPU cores only
    started=$(date +%s)
    # shellcheck disable=SC2086  # suite arguments are words on purpose
    timeout --signal=INT --kill-after=10 "$left" python -m kernels_bench "$suite" --device "$device" \
        --json "$OUT_DIR/$suite.json" --md "$OUT_DIR/$suite.md" ${SUITE_ARGS[$suite]} $EXTRA \
        > "$OUT_DIR/$suite.stdout.txt" 2> "$OUT_DIR/$suite.stderr.txt"
    status=$?
    echo "$suite: exit $status in $(( $(date +%s) - started ))s" | tee -a "$OUT_DIR/summary.txt"
    [ "$status" -eq 0 ] || failed="$failed $suite"
done

cat "$OUT_DIR"/{step,e2e,parity,kernels,loader,prepare}.md > "$OUT_DIR/all.md" 2>/dev/null
if [ -n "$failed" ]; then
    echo "failed or cut off:$failed (see $OUT_DIR/*.stderr.txt)" | tee -a "$OUT_DIR/summary.txt"
    exit 1
fi
echo "all suites done; results in $OUT_DIR" | tee -a "$OUT_DIR/summary.txt"
