#!/usr/bin/env bash
# The first minutes on a GPU machine: check that ovprof measures what it says before measuring anything else.
#
#   bench/gpu-check.sh                       # run; results under reports/gpu/<date>/ (commit them)
#   bench/gpu-check.sh --out DIR             # elsewhere
#   bench/gpu-check.sh --dry-run             # validate every command without running it (CI does, on a CPU)
#   bench/gpu-check.sh --only fused-ce,report  # these checks alone (names below), e.g. to rerun one
#
# Stage 1 (issue 18, item 9; about 5 minutes on an H100/H200):
#   env         ovprof env --json: the environment block every record carries
#   nvml        torch's device UUID = NVML's, and NVML lists this process after an allocation
#   pytest-gpu  pytest -m gpu: the Triton kernels compiled on the GPU against eager (fp32, bf16, fp16)
#   healthy     bf16 vit-debug at ZeRO 0 (eager loss) and ZeRO 3 (loss_impl=triton): bench/gpu-check.toml
#   forced-oom  the same model at batch 256 under --memory-budget 1 (GiB): must be an `oom` record
#   near-limit  no budget, batch ~25% over the estimate's max batch for the device: must be `oom` too
#   verify      status ok, mfu set, a reason on every null, reserved at the reset vs the record, step time with
#               and without the NVML sampler, tracked optimizer-phase bytes vs the estimate, both OOMs (see
#               bench/gpu_check.py)
# Stage 2 (issue 16, item 5; about 4 minutes more), the study's records in DIR/study.jsonl:
#   families    OpenVision vs caption-only at vit-b16@224, batch 64, bf16, ZeRO 0: bench/gpu-families.toml
#   fused-ce    the caption loss at vit-b16: eager, compiled, chunked, triton: bench/gpu-fused-ce.toml
#   paper-l14   sweeps/paper-vit-l14-224.toml cut down: batches 64, 256 and a coarse max-batch search, ZeRO 0:
#               bench/gpu-paper-l14.toml
#   report      ovprof report over stage 2's records: DIR/report/ (savings beside the paper's, plots)
# A failed check is counted and the script goes on; it exits 1 if any failed. Each command's output is in
# DIR/<check>.log, stage 1's records in DIR/runs.jsonl, the verdict in DIR/verdict.json.
# Python: $PYTHON (default: python), with ovprof importable (pip install -e . or PYTHONPATH=.).

set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }

DRY=0
OUT=""
ONLY=""
ALL_CHECKS=(env nvml pytest-gpu healthy forced-oom near-limit verify families fused-ce paper-l14 report)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) [[ $# -ge 2 ]] || { echo "--out needs a directory" >&2; exit 2; }; OUT="$2"; shift ;;
        --out=*) OUT="${1#--out=}" ;;
        --only) [[ $# -ge 2 ]] || { echo "--only needs check names, comma-separated" >&2; exit 2; }; ONLY="$2"; shift ;;
        --only=*) ONLY="${1#--only=}" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -n "$ONLY" ]]; then
    for name in ${ONLY//,/ }; do
        [[ " ${ALL_CHECKS[*]} " == *" $name "* ]] || { echo "--only: unknown check '$name' (one of: ${ALL_CHECKS[*]})" >&2; exit 2; }
    done
fi
OUT="${OUT:-reports/gpu/$(date +%Y-%m-%d)}"
PY="${PYTHON:-python}"
OVPROF=("$PY" -m ovprof.cli)
STORE="$OUT/runs.jsonl"
TIMEOUT=300
FAILED=0
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

# check NAME -- CMD... [--validate VCMD...]: run CMD (output in $OUT/NAME.log); in a dry run run VCMD instead,
# which checks CMD's arguments without running it.
check() {
    local name="$1"; shift
    [[ "$1" == "--" ]] && shift
    if [[ -n "$ONLY" && ",$ONLY," != *",$name,"* ]]; then return; fi
    local cmd=() vcmd=()
    while [[ $# -gt 0 && "$1" != "--validate" ]]; do cmd+=("$1"); shift; done
    [[ $# -gt 0 ]] && { shift; vcmd=("$@"); }
    echo "== $name: ${cmd[*]}"
    if (( DRY )); then
        if (( ${#vcmd[@]} == 0 )); then echo "   no validator for $name" >&2; FAILED=$((FAILED + 1)); return; fi
        if "${vcmd[@]}" > "$SCRATCH/$name.log" 2>&1; then
            echo "   valid (checked by: ${vcmd[*]})"
        else
            echo "   INVALID (${vcmd[*]}):"; tail -n 20 "$SCRATCH/$name.log" | sed 's/^/     /'
            FAILED=$((FAILED + 1))
        fi
        return
    fi
    local t0=$SECONDS
    if "${cmd[@]}" > "$OUT/$name.log" 2>&1; then
        echo "   ok ($((SECONDS - t0)) s)"
    else
        local rc=$?
        echo "   FAILED (exit $rc, $((SECONDS - t0)) s): $OUT/$name.log"; tail -n 5 "$OUT/$name.log" | sed 's/^/     /'
        FAILED=$((FAILED + 1))
    fi
}

if (( DRY )); then
    echo "dry run: nothing runs, each command is validated; output would go to $OUT"
    # The near-limit batch for an 80 GiB device stands in for the real one (computed from the GPU's memory).
    NEAR=$("$PY" bench/gpu_check.py near-limit-batch bench/gpu-check-oom.toml --device-gib 80) || {
        echo "near-limit-batch failed" >&2; exit 1; }
else
    mkdir -p "$OUT"
    NEAR=$("$PY" bench/gpu_check.py near-limit-batch bench/gpu-check-oom.toml) || {
        echo "near-limit-batch failed (no CUDA device?)" >&2; exit 1; }
fi
echo "near-limit batch: $NEAR"

# with_help CMD...: CMD's options all exist (the CLI parses them, then prints its help instead of running)
with_help() { "$@" --help > /dev/null; }
# valid_sweep ARGS...: `sweep run ARGS` parses, and every point it would run is a valid config (`sweep plan`)
valid_sweep() {
    local all=("$@") plan=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --rerun) ;;
            --timeout) shift ;;
            *) plan+=("$1") ;;
        esac
        shift
    done
    with_help "${OVPROF[@]}" sweep run "${all[@]}" && "${OVPROF[@]}" sweep plan "${plan[@]}"
}
RUN=(--store "$STORE" --rerun --timeout "$TIMEOUT")
STUDY=(--store "$OUT/study.jsonl" --rerun --timeout "$TIMEOUT")
HEALTHY=(bench/gpu-check.toml "${RUN[@]}")
FORCED=(bench/gpu-check-oom.toml --memory-budget 1 "${RUN[@]}")
NEAR_LIMIT=(bench/gpu-check-oom.toml --set "batch=$NEAR" "${RUN[@]}")

check env -- "${OVPROF[@]}" env --json \
    --validate with_help "${OVPROF[@]}" env --json
check nvml -- "$PY" bench/gpu_check.py nvml --out "$OUT/nvml.json" \
    --validate with_help "$PY" bench/gpu_check.py nvml --out "$OUT/nvml.json"
check pytest-gpu -- "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider tests \
    --validate "$PY" -m pytest -q -m gpu -p no:cacheprovider --collect-only tests
check healthy -- "${OVPROF[@]}" sweep run "${HEALTHY[@]}" --validate valid_sweep "${HEALTHY[@]}"
check forced-oom -- "${OVPROF[@]}" sweep run "${FORCED[@]}" --validate valid_sweep "${FORCED[@]}"
check near-limit -- "${OVPROF[@]}" sweep run "${NEAR_LIMIT[@]}" --validate valid_sweep "${NEAR_LIMIT[@]}"
check verify -- "$PY" bench/gpu_check.py verify "$STORE" --out "$OUT/verdict.json" \
    --validate with_help "$PY" bench/gpu_check.py verify "$STORE" --out "$OUT/verdict.json"

# Stage 2: the study (after the verdict, so stage 1's checks are in even if time runs out here)
check families -- "${OVPROF[@]}" sweep run bench/gpu-families.toml "${STUDY[@]}" \
    --validate valid_sweep bench/gpu-families.toml "${STUDY[@]}"
check fused-ce -- "${OVPROF[@]}" sweep run bench/gpu-fused-ce.toml "${STUDY[@]}" \
    --validate valid_sweep bench/gpu-fused-ce.toml "${STUDY[@]}"
check paper-l14 -- "${OVPROF[@]}" sweep run bench/gpu-paper-l14.toml "${STUDY[@]}" \
    --validate valid_sweep bench/gpu-paper-l14.toml "${STUDY[@]}"
check report -- "${OVPROF[@]}" report "$OUT/study.jsonl" --out "$OUT/report" \
    --validate with_help "${OVPROF[@]}" report "$OUT/study.jsonl" --out "$OUT/report"

if (( DRY )); then
    echo "dry run: $FAILED invalid"
else
    echo "checks failed: $FAILED; results in $OUT (verify.log has the verdict)"
fi
(( FAILED == 0 ))
