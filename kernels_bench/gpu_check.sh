#!/usr/bin/env bash
# The GPU check for the GPU machine this project can use (one H200; Python 3.12 with its own torch, triton, timm,
# pytest-xdist; no DALI, no package registry; <= 64 MiB carried and <= 8 files back per call; 15 minutes in all).
# Nothing is installed from a registry: the working tree runs from PYTHONPATH with the machine's own packages, and
# DALI comes as wheel parts carried one per call (kernels_bench/dali_wheel.py), installed under /tmp once all are there.
#
# Usage: bash kernels_bench/gpu_check.sh [--dry-run] [--call 1|2|3|4|all] [--only STAGE,...] OUT_DIR
#   --call N   the stages of call N of the plan (kernels_bench/RESULTS.md, "GPU plan"); default: all of them
#   --only S   of those, these stages alone (a retry: `--call 4 --only loader,e2e` with TOTAL_S=110)
#   --dry-run  every stage at smoke size on this CPU (what needs CUDA is skipped and says so): proof the script works
#
# Results survive a budget or a kill: each stage runs under `timeout --signal=INT` (Python says where it was), each
# finished case is appended to OUT_DIR/cases.jsonl at once, OUT_DIR/summary.json is rewritten after every stage and
# OUT_DIR/check.log gets every line as it is printed; at the end the stages' full records (JSON, markdown, logs,
# junit) are packed into OUT_DIR/results-call<N>.tar.gz. Four files in all (the machine returns at most 8).
# Exit status 0 only when every stage of the call is ok (summary.json's all_ok); a skipped stage fails a GPU run.
set -uo pipefail

DRY_RUN=0
CALL=all
ONLY=
while [ $# -gt 1 ]; do
    case $1 in
        --dry-run) DRY_RUN=1; shift ;;
        --call) CALL=${2:-}; shift 2 ;;
        --only) ONLY=${2:-}; shift 2 ;;
        *) break ;;
    esac
done
USAGE="usage: bash kernels_bench/gpu_check.sh [--dry-run] [--call 1|2|3|4|all] [--only STAGE,...] OUT_DIR"
if [ $# -ne 1 ] || [[ ! $CALL =~ ^(1|2|3|4|all)$ ]]; then
    echo "$USAGE" >&2
    exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
cd "$REPO" || exit 2

# The plan: stages by call, in order of value within each call; the DALI stages wait for call 4, when the last
# part has arrived. Budgets in seconds (a stage gets its budget or what is left of the call's, whichever is less).
declare -A PLAN=(
    [1]="dali_parts preflight step_resnet50 t2t_attention"
    [2]="dali_parts preflight step_resnext50 forward_parity"
    [3]="dali_parts preflight pytest ddp_buckets"
    [4]="dali_parts preflight loader e2e sync_audit dali_reuse"
)
declare -A CALL_S=([1]=150 [2]=120 [3]=120 [4]=180 [all]=900)
declare -A BUDGET=([dali_parts]=35 [preflight]=15 [step_resnet50]=110 [t2t_attention]=20 [step_resnext50]=80
                   [forward_parity]=20 [pytest]=75 [ddp_buckets]=25 [loader]=30 [e2e]=75 [sync_audit]=20 [dali_reuse]=10)
if [ "$CALL" = all ]; then
    STAGES="${PLAN[1]} ${PLAN[2]#dali_parts preflight } ${PLAN[3]#dali_parts preflight } ${PLAN[4]#dali_parts preflight }"
else
    STAGES=${PLAN[$CALL]}
fi
if [ -n "$ONLY" ]; then
    for stage in ${ONLY//,/ }; do
        if [[ " $STAGES " != *" $stage "* ]]; then
            echo "gpu_check: --only $stage: not a stage of call $CALL ($STAGES); $USAGE" >&2
            exit 2
        fi
    done
    STAGES=${ONLY//,/ }
fi
TOTAL_S=${TOTAL_S:-${CALL_S[$CALL]}}

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PIP_NO_INDEX=1  # no registry there: an install that reaches for one fails at once instead of hanging
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export KERNELS_BENCH_CASES="$OUT/cases.jsonl"
DALI_IMPORT_NAME=${DALI_IMPORT_NAME:-nvidia.dali}
if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_dry.XXXXXX")
    DALI_STORE=${DALI_STORE:-$WORK/dali}
    DALI_CARRIED=${DALI_CARRIED:-$WORK/no_parts_carried}  # a dry run uses this machine's DALI unless parts are named
    export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor}
    SMOKE=(--smoke)
else
    DEVICE=cuda
    WORK=/tmp/gpu_check/call$CALL
    [ -d "$WORK" ] && mv "$WORK" "$WORK.before.$(date +%s)"  # a retry of the same call keeps the first try apart
    DALI_STORE=${DALI_STORE:-/tmp/fasttrain_dali}
    DALI_CARRIED=${DALI_CARRIED:-$REPO/.dali_wheel}
    # kept on the machine between calls: a graph compiled in call 1 is warm in call 4
    export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/fasttrain_inductor}
    SMOKE=()
fi
mkdir -p "$WORK" "$TORCHINDUCTOR_CACHE_DIR" || exit 2
# the DALI stages must run with DALI on a GPU: a missing DALI fails them instead of skipping its backend
NEEDS_DALI=0
if [ "$DRY_RUN" = 0 ] && [[ " $STAGES " == *" loader "* ]]; then
    NEEDS_DALI=1
fi
REQUIRE_DALI=()
[ "$NEEDS_DALI" = 1 ] && REQUIRE_DALI=(--require-dali)

use_dali_if_installed() {
    if [ -f "$DALI_STORE/site/.installed.json" ] && [[ ":$PYTHONPATH:" != *":$DALI_STORE/site:"* ]]; then
        export PYTHONPATH="$DALI_STORE/site:$PYTHONPATH"
    fi
}
use_dali_if_installed

log() { echo "$*" | tee -a "$OUT/check.log"; }

pack() {
    tar -czf "$OUT/results-call$CALL.tar.gz.partial" -C "$WORK" . && mv "$OUT/results-call$CALL.tar.gz.partial" "$OUT/results-call$CALL.tar.gz"
    [ "$DRY_RUN" = 1 ] && rm -rf "$WORK"
}

log "gpu_check: call $CALL, dry run $DRY_RUN, $(date -Is), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
log "stages: $STAGES (this call's budget ${TOTAL_S} s); inductor cache $TORCHINDUCTOR_CACHE_DIR; work $WORK"
start_args=(--device "$DEVICE" --call "$CALL")
[ "$DRY_RUN" = 1 ] && start_args+=(--dry-run)
[ "$NEEDS_DALI" = 1 ] && start_args+=(--dali-required)
# shellcheck disable=SC2086  # the stage list is words on purpose
python3 -m kernels_bench.check_summary start "$OUT" "$WORK" "${start_args[@]}" $STAGES || exit 2

set_command() {  # sets the array `command` to one stage's command line
    local json=(--device "$DEVICE" --json "$WORK/$1.json")
    local md=(--md "$WORK/$1.md")
    case $1 in
        preflight) command=(python3 -m kernels_bench preflight "${json[@]}" "${REQUIRE_DALI[@]}") ;;
        dali_parts)
            command=(python3 -m kernels_bench.dali_wheel install --carried "$DALI_CARRIED" --store "$DALI_STORE"
                     --import-name "$DALI_IMPORT_NAME" --json "$WORK/dali_parts.json")
            [ "$NEEDS_DALI" = 1 ] && command+=(--require) ;;
        step_resnet50 | step_resnext50)
            local model=resnet50
            [ "$1" = step_resnext50 ] && model=resnext50_32x4d
            command=(python3 -m kernels_bench step "${json[@]}" "${md[@]}" "${SMOKE[@]}" --models "$model"
                     --variants study,amp,fast)
            [ "$1" = step_resnet50 ] && command+=(--warm-compile)
            # CPU compilation takes minutes per graph: a dry run records the compiled variant as skipped
            [ "$DRY_RUN" = 1 ] && command+=(--compile-models "") ;;
        t2t_attention) command=(python3 -m kernels_bench t2t_attention "${json[@]}" "${SMOKE[@]}") ;;
        forward_parity)
            command=(python3 -m kernels_bench parity "${json[@]}" "${md[@]}" "${SMOKE[@]}" --forward-only
                     --families vgg,resnext,t2t --compile off) ;;
        pytest)
            # the tests' own benchmark runs must not append to this check's cases.jsonl
            if [ "$DRY_RUN" = 1 ]; then  # the default suite holds this rehearsal: the dry run runs the gpu tests only
                command=(env -u KERNELS_BENCH_CASES python3 -m pytest -q -p no:cacheprovider -m gpu
                         "--junitxml=$WORK/pytest.xml" tests)
            else
                command=(env -u KERNELS_BENCH_CASES python3 -m pytest -q -p no:cacheprovider -n 8 --timeout 120
                         "--junitxml=$WORK/pytest.xml" tests)
            fi ;;
        ddp_buckets) command=(python3 -m kernels_bench ddp_buckets "${json[@]}" "${SMOKE[@]}") ;;
        loader)
            command=(python3 -m kernels_bench loader "${json[@]}" "${md[@]}" "${SMOKE[@]}" "${REQUIRE_DALI[@]}"
                     --backends plain_dataloader,reference,torch,torch_nonresident,dali)
            [ "$DRY_RUN" = 1 ] && command+=(--batch-size 16 --image-size 32) ;;
        sync_audit) command=(python3 -m kernels_bench sync_audit "${json[@]}" "${SMOKE[@]}" "${REQUIRE_DALI[@]}") ;;
        dali_reuse) command=(python3 -m kernels_bench dali_reuse "${json[@]}" "${SMOKE[@]}" "${REQUIRE_DALI[@]}") ;;
        e2e) command=(python3 -m kernels_bench e2e "${json[@]}" "${md[@]}" "${SMOKE[@]}" "${REQUIRE_DALI[@]}"
                      --fast-backends torch,dali) ;;
    esac
}

deadline=$(( $(date +%s) + TOTAL_S ))
for stage in $STAGES; do
    left=$(( deadline - $(date +%s) ))
    budget=${BUDGET[$stage]}
    [ "$left" -lt "$budget" ] && budget=$left
    if [ "$budget" -le 5 ]; then
        python3 -m kernels_bench.check_summary record "$OUT" "$WORK" "$stage" 124 0 0 "not started: the call's ${TOTAL_S} s are spent" \
            | tee -a "$OUT/check.log"
        continue
    fi
    set_command "$stage"
    log "== $stage (budget ${budget} s): ${command[*]}"
    started=$(date +%s.%N)
    timeout --signal=INT --kill-after=15 "$budget" "${command[@]}" 2>&1 | tee "$WORK/$stage.log" >> "$OUT/check.log"
    status=${PIPESTATUS[0]}
    seconds=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$started" "$(date +%s.%N)")
    python3 -m kernels_bench.check_summary record "$OUT" "$WORK" "$stage" "$status" "$seconds" "$budget" | tee -a "$OUT/check.log"
    [ "$stage" = dali_parts ] && use_dali_if_installed
done

pack
python3 - "$OUT/summary.json" <<'PY' | tee -a "$OUT/check.log"
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"summary: {summary['counts']} in {summary['total_seconds']} s; all_ok {summary['all_ok']}"
      + (f"; problems: {'; '.join(summary['problems'])}" if summary["problems"] else "") + f" -> {sys.argv[1]}")
PY
python3 -c "import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))['all_ok'] else 1)" "$OUT/summary.json"
