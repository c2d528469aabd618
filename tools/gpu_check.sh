#!/usr/bin/env bash
# One short prepared GPU run of medvol (issue #10 part 5); docs/performance.md "GPU check".
#
#   tools/gpu_check.sh --out DIR [--published PATH]... [--budget-s S]    on a CUDA machine
#   tools/gpu_check.sh --dry-run --out DIR [--published PATH]...          the same, CPU, tiny sizes
#   add --no-time-limits to run every part to its end (the test of the dry run: no clock in it)
#
# Prepare on a machine with nvcc first (tools/prepare_gpu_check.sh): it builds medvol/_C*.so and
# puts pytest into .gpu_deps/, both carried to the GPU machine. Nothing is compiled here: the
# build is checked against the GPU (part "build") and just-in-time compiling is switched off.
# Runs against the source tree (PYTHONPATH), needs only torch, triton, numpy and pyyaml.
#
# Every part runs under `timeout`, limited so that the whole run stays inside --budget-s
# (default 600 s, 1800 s for a dry run); a failing or timed-out part is recorded and the next one runs. Results go
# under DIR (a new timestamped subfolder if DIR already has files): status.tsv, summary.md,
# logs/, and one folder per part. summary.md is rewritten from status.tsv (by bash, no Python)
# after every part, so a run cut short still leaves one; the full report replaces it at the end.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARGS="$*"
DRY=0
OUT=""
BUDGET=
NOLIMIT=0
PUBLISHED=()
usage() { echo "usage: tools/gpu_check.sh [--dry-run] --out DIR [--published PATH]... [--budget-s SECONDS] [--no-time-limits]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) [ $# -ge 2 ] || usage; OUT="$2"; shift ;;
        --published) [ $# -ge 2 ] || usage; PUBLISHED+=("$2"); shift ;;
        --budget-s) [ $# -ge 2 ] || usage; BUDGET="$2"; shift ;;
        --no-time-limits) NOLIMIT=1 ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check: error: unknown argument $1" >&2; usage ;;
    esac
    shift
done
[ -n "$OUT" ] || { echo "gpu_check: error: --out DIR is required" >&2; exit 2; }
# A dry run checks the wiring, not the timings: on a loaded CPU its parts get 4x their GPU limits.
SCALE=$(( DRY == 1 ? 4 : 1 ))
[ -n "$BUDGET" ] || BUDGET=$(( DRY == 1 ? 1800 : 600 ))
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: error: --budget-s must be whole seconds" >&2; exit 2 ;; esac
for path in "${PUBLISHED[@]+"${PUBLISHED[@]}"}"; do
    [ -f "$path/train.py" ] || { echo "gpu_check: error: --published $path: no train.py there" >&2; exit 2; }
done
if [ ${#PUBLISHED[@]} -eq 0 ] && [ $DRY -eq 0 ]; then  # clones that prepare_gpu_check.sh carried
    for path in "$ROOT"/.gpu_deps/published/*; do [ -f "$path/train.py" ] && PUBLISHED+=("$path"); done
fi
if [ -e "$OUT" ] && [ ! -d "$OUT" ]; then echo "gpu_check: error: --out $OUT exists and is not a folder" >&2; exit 2; fi
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then  # never overwrite an earlier run
    OUT="$OUT/run-$(date -u +%Y%m%d-%H%M%S)"
    [ -e "$OUT" ] && OUT="$OUT-$$"
fi
mkdir -p "$OUT/logs" || exit 2
OUT="$(cd "$OUT" && pwd)"
for i in "${!PUBLISHED[@]}"; do PUBLISHED[$i]="$(cd "${PUBLISHED[$i]}" && pwd)"; done

PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$ROOT/.gpu_deps:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MEDVOL_NO_JIT=1 PYTHONDONTWRITEBYTECODE=1
cd "$ROOT" || exit 2

if [ $DRY -eq 1 ]; then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    DEV=cpu; W="--base-width 4"; IT="--iters 1 --warmup 0"
    P_MODELS=crfgan; P_SIZES=32; P_BATCHES=1; BIG=64; B_SIZE=32; B_BATCH=1
    CRF_BENCH="--sizes 32 --batch 1 --dtypes float32 --backends torch --reps 1"
    UP_BENCH="--sizes 128 --batch 1 --stages 64->128 --dtypes float32 --backends torch --reps 1"
    B_MODES=optimized; LANES=2
    VS="--size 32 --batch 1 --reps 1 --iters 1 --warmup 0 --mode reference"
    PY_TESTS="tests/ops"
    # The learning check: the same steps at 32^3 on 8 phantoms for 3 iterations (wiring only).
    L_SIZE=32; L_PHANTOMS=8; L_TRAIN="--iterations 3"; L_N=6
else
    DEV=cuda; W=""; IT="--iters 2 --warmup 1"
    P_MODELS="hagan crfgan"; P_SIZES=128,256; P_BATCHES=2,4,6; BIG=512; B_SIZE=256; B_BATCH=6
    B_MODES=reference,optimized; LANES=1
    CRF_BENCH="--sizes 128 256 --reps 5"
    UP_BENCH="--reps 5"
    VS="--size 256 --batch 2 --reps 1 --iters 2 --warmup 1"
    PY_TESTS="tests"
    # The learning check: configs/learn/crfgan_32.yaml's settings at 128^3, 75 s of training.
    L_SIZE=128; L_PHANTOMS=48; L_TRAIN="--train-seconds 75"; L_N=10
fi

START=$(date +%s)
RESERVE=10   # seconds kept for the final report (summary.md exists before it: quick_summary)
SUMMARY_LIMIT=120  # the final report's own limit; a cold Python start on a loaded host is slow
: > "$OUT/status.tsv"

# quick_summary: summary.md from status.tsv by bash alone (no Python start, nothing to time out),
# replaced atomically; called after every part, so whatever cuts the run short, one is there.
quick_summary() {
    local tmp="$OUT/.summary.md.tmp-$BASHPID"
    {
        printf '# GPU check%s: status of the parts\n\n' "$( [ $DRY -eq 1 ] && echo ' (dry run on the CPU)')"
        printf '| part | status | exit | seconds | limit s |\n|---|---|---|---|---|\n'
        while IFS=$'\t' read -r name st rc took limit _; do
            printf '| %s | %s | %s | %s | %s |\n' "$name" "$st" "$rc" "$took" "$limit"
        done < "$OUT/status.tsv"
        printf '\nWritten by tools/gpu_check.sh from status.tsv; the full report (tools/gpu_check_report.py summary)\n'
        printf 'replaces it when the run ends. Logs of every part: logs/<part>.log.\n'
    } > "$tmp" && mv -f "$tmp" "$OUT/summary.md"
}

# part NAME MAX_SECONDS [--stdout FILE] COMMAND...: run under timeout, log to logs/NAME.log
# (stdout to FILE instead when given, for the tools that print their table), record the status.
part() {
    local name="$1" max=$(( $2 * SCALE )) stdout=""; shift 2
    if [ "$1" = "--stdout" ]; then stdout="$2"; shift 2; fi
    local left=$(( START + BUDGET - RESERVE - $(date +%s) ))
    local limit=$(( max < left ? max : left ))
    local run=(timeout -k 5 "$limit")
    if [ $NOLIMIT -eq 1 ]; then
        limit=none; run=()
    elif [ "$limit" -lt 5 ]; then
        printf '%s\tskipped (no time left)\t\t0\t0\t%s\n' "$name" "$*" >> "$OUT/status.tsv"
        echo "[gpu_check] $name: skipped, no time left"
        quick_summary
        return
    fi
    echo "[gpu_check] $name (limit ${limit}s): $*"
    local t0=$(date +%s)
    if [ -n "$stdout" ]; then
        mkdir -p "$(dirname "$stdout")"
        ${run[@]+"${run[@]}"} "$@" > "$stdout" 2> "$OUT/logs/$name.log"
    else
        ${run[@]+"${run[@]}"} "$@" > "$OUT/logs/$name.log" 2>&1
    fi
    local rc=$?
    local took=$(( $(date +%s) - t0 )) status=ok
    case $rc in 0) ;; 124|137) status="timed out" ;; *) status="failed" ;; esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$took" "$limit" "$*" >> "$OUT/status.tsv"
    echo "[gpu_check] $name: $status (exit $rc, ${took}s)"
    quick_summary
}
quick_summary

"$PY" - "$OUT/meta.json" "$DRY" "$BUDGET" "$ARGS" <<'EOF'
import datetime, json, subprocess, sys, torch
out, dry, budget = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
json.dump({"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "dry_run": dry, "budget_s": budget, "device": device, "commit": commit or "unknown",
           "command": " ".join(["tools/gpu_check.sh"] + sys.argv[4:])}, open(out, "w"), indent=1)
EOF

part build 30 "$PY" tools/gpu_check_report.py build --out "$OUT/build" $( [ $DRY -eq 1 ] && echo --dry-run )

# The estimate runs on the host CPU beside the GPU parts (its own fresh processes).
EST_LIMIT=$(( BUDGET - RESERVE - 20 - ($(date +%s) - START) ))
( part estimate "$EST_LIMIT" "$PY" tools/gpu_check_report.py estimate --model "${P_MODELS// /,}" \
      --size "$P_SIZES" --batch "$P_BATCHES" --mode reference,optimized --device "$DEV" $W \
      --out "$OUT/estimate" ) &
EST_PID=$!
# The learning check's phantom cache is rendered on the host CPU meanwhile, too.
( part learn_data 150 "$PY" tools/gpu_learn_check.py --data-only --size "$L_SIZE" --phantoms "$L_PHANTOMS" \
      --out "$OUT/learn" ) &
LDATA_PID=$!

# Kernel-level parts and model-level parts. On the GPU they run one after the other (timings);
# in a dry run the two lanes run side by side (its numbers mean nothing, its minutes count).
kernel_lane() {
part pytest 75 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors \
    --junitxml "$OUT/pytest/junit.xml" $PY_TESTS
part bench_meanfield_crf 35 --stdout "$OUT/bench/meanfield_crf.md" "$PY" tools/bench_meanfield_crf.py \
    --device "$DEV" $CRF_BENCH --csv "$OUT/bench/meanfield_crf.csv"
part bench_upsample_conv 35 --stdout "$OUT/bench/upsample_conv.md" "$PY" tools/bench_upsample_conv.py \
    --device "$DEV" $UP_BENCH --csv "$OUT/bench/upsample_conv.csv"
if [ ${#PUBLISHED[@]} -gt 0 ]; then
    args=(); for path in "${PUBLISHED[@]}"; do args+=(--published "$path"); done
    part vs_published 60 "$PY" tools/bench_vs_published.py "${args[@]}" --device "$DEV" $VS $W \
        --out "$OUT/vs_published"
else
    printf 'vs_published\tskipped (no --published PATH)\t\t0\t0\t\n' >> "$OUT/status.tsv"
    quick_summary
fi
}
model_lane() {
for model in $P_MODELS; do
    part "profile_$model" 75 "$PY" -m medvol.cli profile --model "$model" --size "$P_SIZES" \
        --batch "$P_BATCHES" --mode reference,optimized $IT --device "$DEV" $W --out "$OUT/profile_$model"
done
part budget_12gib 40 "$PY" -m medvol.cli profile --model "${P_MODELS// /,}" --size "$B_SIZE" \
    --batch "$B_BATCH" --mode "$B_MODES" $IT --device "$DEV" $W --budget 12GiB --out "$OUT/budget_12gib"
part profile_512 35 "$PY" -m medvol.cli profile --model "${P_MODELS// /,}" --size "$BIG" --batch 1 \
    --mode optimized $IT --device "$DEV" $W --out "$OUT/profile_512"
}
if [ "$LANES" -eq 2 ]; then
    kernel_lane & LANE_PID=$!
    model_lane
    wait "$LANE_PID"
else
    model_lane
    kernel_lane
fi

# Last: train a learned-style config at L_SIZE on the cache, sample it, score it (tools/gpu_learn_check.py).
wait "$LDATA_PID"
part "learn$L_SIZE" 150 "$PY" tools/gpu_learn_check.py --size "$L_SIZE" --phantoms "$L_PHANTOMS" $L_TRAIN \
    --n "$L_N" --device "$DEV" --out "$OUT/learn"

wait "$EST_PID"
quick_summary  # every part has ended: a lane's slower rewrite cannot leave an older table behind
ELAPSED=$(( $(date +%s) - START ))
"$PY" - "$OUT/meta.json" "$ELAPSED" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1])); meta["elapsed_s"] = int(sys.argv[2]); json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
# Not held to the budget's reserve: summary.md already exists, this only makes it complete.
timeout -k 5 "$SUMMARY_LIMIT" "$PY" tools/gpu_check_report.py summary --out "$OUT" > "$OUT/logs/summary.log" 2>&1 \
    || echo "[gpu_check] full report failed (summary.md lists the parts only): see $OUT/logs/summary.log"
echo "[gpu_check] done in ${ELAPSED}s: $OUT/summary.md"
