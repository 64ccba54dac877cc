#!/usr/bin/env bash
# One-call GPU check (<= 8 minutes on one H100/H200); every check prints one JSON line.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine: cuda when available
#   bash benchmarks/gpu_check.sh --smoke          # any machine: tiny sizes, every code path
#
# Lines, in order: matmul_peak (measured bf16 peak), pretrain_step of the paper preset (224-px
# input, 448-px SR target, 256 text tokens) at the largest batch that fits up to 256, bf16
# eager; the same for the release preset; finetune_step (classification); pretrain_smoke
# (`ecamp pretrain` 20 steps with a resume at 10, checked against a straight run);
# matmul_peak again and the paper preset torch.compile'd (last: its compile time is the
# least predictable).  Each part has its own time limit, so a hang costs only that part.
# Environment: PYTHON (default: python3), DEVICE (default: cuda if available, else cpu),
# OUT (default: runs/gpu_check; JSON lines also go to $OUT/gpu_check.jsonl).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SMOKE=""
SCALE=1  # the CPU smoke run gets longer limits (a shared CPU compiles slowly)
if [ "${1:-}" = "--smoke" ]; then SMOKE="--smoke"; SCALE=5; fi
if [ -z "${DEVICE:-}" ]; then
  DEVICE=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi
OUT=${OUT:-runs/gpu_check}
rm -rf "$OUT/smoke"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.jsonl"
: > "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

part() {  # part SECONDS ARGS...: one gpu_check.py part under a time limit
  local limit=$(( $1 * SCALE ))
  shift
  timeout --kill-after=10 "$limit" "$PY" benchmarks/gpu_check.py "$@" --device "$DEVICE" $SMOKE \
    2>>"$OUT/stderr.txt" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "{\"check\": \"$1\", \"error\": \"timed out after ${limit} s\"}" | tee -a "$LOG"
  fi
}

start=$(date +%s)
part 200 steps
part 120 smoke --output "$OUT/smoke"
# the compiled step gets what is left of 470 s (at least 60 s): its compile time varies most
left=$(( 470 - ($(date +%s) - start) ))
part $(( left > 60 ? left : 60 )) compiled
echo "{\"check\": \"gpu_check\", \"device\": \"$DEVICE\", \"wall_s\": $(( $(date +%s) - start )), \"jsonl\": \"$LOG\"}"
