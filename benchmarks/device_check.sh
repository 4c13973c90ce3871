#!/usr/bin/env bash
# The CUDA checks of issue 9, prepared for a session that is lent a GPU (the `device` tool).
# One run, about 5-8 minutes on an H200; it leaves four files in $OUT: the log, a summary
# (JSON), the full measurement records (tar.gz) and the data-parallel check (JSON), within the
# tool's 8-file limit.
#
#   run(command="bash benchmarks/device_check.sh", timeout_s=540)
#
# What it does, in order (each step's failure is logged and the next one still runs):
#   1. the CUDA tests: the GPU linear-algebra test and the estimator/training/measure tests
#      with CUDA visible (pytest is on the device image; pyerrors and snakemake are not, so
#      tests that need them are left out);
#   2. `gaugeflow measure timing` at L = 16, batch 64, the paper's flow (48 x 64), scatter
#      assembly, for r.t. and REINFORCE, without and with amp (fp16 + GradScaler): CUDA-event
#      times of a gradient step -> the amp speed-up (paper: 15-20%) and RE vs r.t.;
#   3. `gaugeflow measure memory` for the same four: M1 (saved tensors) and M2
#      (torch.cuda.max_memory_allocated, absolute, as in the paper's Table 5);
#   4. the same timing with the `loop` assembly for r.t. at L = 16 (the paper's Table 1 row);
#   5. the data-parallel step (issue 15) in a 1-rank group, nccl on CUDA, against the plain step.
#
# The device machine has torch (CUDA build) but not this package installed: it runs from
# the working tree with PYTHONPATH=src. Knobs: DEVICE (cuda), L (16), BATCH (64), STEPS (20),
# SMOKE=1 (tiny sizes, any device: to check this script on a CPU before spending GPU time).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/device_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
L=${L:-16}
BATCH=${BATCH:-64}
STEPS=${STEPS:-20}
ARCH=(--n-layers 48 --hidden 64)
TESTS=(tests/test_linalg.py tests/test_estimators.py tests/test_measure.py tests/test_flow.py)
if [ "${SMOKE:-0}" = 1 ]; then
  L=4 BATCH=4 STEPS=1 ARCH=(--n-layers 2 --hidden 4) TESTS=(tests/test_linalg.py)
fi
LOG="$OUT/device_check.log"
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }

say "device check: DEVICE=$DEVICE L=$L BATCH=$BATCH STEPS=$STEPS ${ARCH[*]}"
$PY - >>"$LOG" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$LOG" 2>&1 || true

say "1. tests (${TESTS[*]})"
timeout 240 $PY -m pytest -q -x -p no:cacheprovider "${TESTS[@]}" >>"$LOG" 2>&1
say "   pytest exit $?"

measure() {  # kind estimator assembly amp(0|1)
  local kind=$1 est=$2 asm=$3 amp=$4 tag
  tag="$kind-L$L-b$BATCH-$est-$asm$([ "$amp" = 1 ] && echo -amp)"
  local extra=()
  [ "$amp" = 1 ] && extra+=(--amp)
  [ "$kind" = timing ] && extra+=(--steps "$STEPS" --warmup 3)
  timeout 150 $PY -m gaugeflow measure "$kind" --L "$L" --batch-size "$BATCH" --estimator "$est" \
    --assembly "$asm" "${ARCH[@]}" --device "$DEVICE" "${extra[@]}" --out "$OUT/$tag.json" \
    >>"$LOG" 2>&1
  say "   $tag: exit $?"
}

say "2. timing"
for est in rt reinforce; do for amp in 0 1; do measure timing "$est" scatter "$amp"; done; done
say "3. memory"
for est in rt reinforce; do for amp in 0 1; do measure memory "$est" scatter "$amp"; done; done
say "4. r.t. with the loop assembly"
measure timing rt loop 0

say "5. data-parallel step in a 1-rank group (nccl on CUDA) against the plain step (issue 15)"
DDP_ARGS=(--L "$L" --batch-size "$BATCH")
[ "${SMOKE:-0}" = 1 ] && DDP_ARGS+=(--layers 8 --hidden 4 --steps 1 --warmup 0)
timeout 120 $PY benchmarks/bench_ddp.py --world-of-one "$DEVICE" "${DDP_ARGS[@]}" \
  --out "$OUT/ddp-world-of-one.json" >>"$LOG" 2>&1
say "   bench_ddp --world-of-one: exit $?"

say "summary"
$PY - "$OUT" >>"$LOG" 2>&1 <<'EOF'
import json, pathlib, sys
rows = []
for p in sorted(pathlib.Path(sys.argv[1]).glob("*-L*.json")):
    r = json.loads(p.read_text())
    keep = {k: r.get(k) for k in ("status", "device_name", "step_seconds", "loss_seconds",
                                   "backward_seconds", "saved_tensors",
                                   "saved_bytes", "peak_bytes", "peak_kind", "clock", "device")}
    rows.append({"run": p.stem, **keep})
    print(p.stem, json.dumps(keep))
(pathlib.Path(sys.argv[1]) / "device_check_summary.json").write_text(json.dumps(rows, indent=1))
EOF
# the device tool returns at most 8 files: the full records travel as one archive
(cd "$OUT" && tar -czf device_check_runs.tar.gz ./*-L*.json && rm -f ./*-L*.json)
ls "$OUT"
tail -n 12 "$LOG"
