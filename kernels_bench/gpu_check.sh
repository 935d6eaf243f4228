#!/usr/bin/env bash
# The GPU check: eight stages in priority order on one CUDA GPU, each under its own time budget, each
# writing OUT_DIR/<stage>.json as soon as it ends (a stage stopped by its budget leaves a record saying
# timeout), and OUT_DIR/summary.json listing every stage (name, status ok/failed/skipped/timeout/not_run,
# seconds, key figures), rewritten after each stage. Whole check <= 530 s on one H200, cold compiles included.
#
# Usage: bash kernels_bench/gpu_check.sh [--dry-run] OUT_DIR
#   --dry-run: every stage at smoke size on the CPU (what needs CUDA is recorded as skipped with the reason),
#              in under 2 minutes, writing the same summary.json: proof that the script works before a GPU exists.
set -uo pipefail

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
    shift
fi
if [ $# -ne 1 ]; then
    echo "usage: bash kernels_bench/gpu_check.sh [--dry-run] OUT_DIR" >&2
    exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
TOTAL_S=${TOTAL_S:-530}

if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    SMOKE=(--smoke)
    STEP_ARGS=(--compile-models "")  # CPU compilation takes minutes: the compiled variants are recorded as skipped
    LOADER_ARGS=(--batch-size 16 --image-size 32)
else
    DEVICE=cuda
    SMOKE=()
    STEP_ARGS=()
    LOADER_ARGS=()
fi

{
    date -Is
    echo "dry run: $DRY_RUN; nproc $(nproc); $(uptime)"
    git rev-parse HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
} > "$OUT/machine.txt"

STAGES="pytest_gpu sync_audit dali_lifetime loader e2e step t2t_attention forward_parity"
declare -A BUDGET=([pytest_gpu]=45 [sync_audit]=45 [dali_lifetime]=25 [loader]=50 [e2e]=140 [step]=150
                   [t2t_attention]=20 [forward_parity]=45)
# shellcheck disable=SC2086  # the stage list is words on purpose
python3 -m kernels_bench.gpu_stages.summary start "$OUT" "$DEVICE" "$DRY_RUN" $STAGES || exit 2

set_command() {  # sets the array `command` to one stage's command line
    local suite_out=(--device "$DEVICE" --json "$OUT/$1.json")
    case $1 in
        pytest_gpu) command=(python3 -m pytest -m gpu tests -q -p no:cacheprovider "--junitxml=$OUT/pytest_gpu.xml") ;;
        sync_audit | dali_lifetime | t2t_attention)
            command=(python3 -m kernels_bench.gpu_stages."$1" "${suite_out[@]}" "${SMOKE[@]}") ;;
        loader) command=(python3 -m kernels_bench loader "${suite_out[@]}" --md "$OUT/loader.md" "${SMOKE[@]}"
                         "${LOADER_ARGS[@]}") ;;
        e2e) command=(python3 -m kernels_bench e2e "${suite_out[@]}" --md "$OUT/e2e.md" "${SMOKE[@]}") ;;
        step) command=(python3 -m kernels_bench step "${suite_out[@]}" --md "$OUT/step.md" "${SMOKE[@]}"
                       --models resnet50,resnext50_32x4d --variants study,amp,fast "${STEP_ARGS[@]}") ;;
        forward_parity) command=(python3 -m kernels_bench parity "${suite_out[@]}" --md "$OUT/forward_parity.md"
                                 "${SMOKE[@]}" --forward-only --families vgg,resnext,t2t) ;;
    esac
}

deadline=$(( $(date +%s) + TOTAL_S ))
for stage in $STAGES; do
    left=$(( deadline - $(date +%s) ))
    budget=${BUDGET[$stage]}
    [ "$left" -lt "$budget" ] && budget=$left
    if [ "$budget" -le 5 ]; then
        python3 -m kernels_bench.gpu_stages.summary "$OUT" "$stage" 124 0 0 "not started: the check's ${TOTAL_S} s are spent"
        continue
    fi
    set_command "$stage"
    started=$(date +%s.%N)
    timeout --signal=TERM --kill-after=5 "$budget" "${command[@]}" > "$OUT/$stage.log" 2>&1
    status=$?
    seconds=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$started" "$(date +%s.%N)")
    python3 -m kernels_bench.gpu_stages.summary "$OUT" "$stage" "$status" "$seconds" "$budget"
done

python3 - "$OUT/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"summary: {summary['counts']} in {summary['total_seconds']} s -> {sys.argv[1]}")
PY
python3 -c "import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))['all_ok'] else 1)" "$OUT/summary.json"
