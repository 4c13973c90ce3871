#!/usr/bin/env bash
# The CUDA checks of issues 9, 14 and 15, prepared for a session that is lent a GPU (the
# `device` tool). One run, about 7-8 minutes on an H200; it leaves four files in $OUT: the log,
# a summary (JSON), every record (tar.gz: measurements, the data-parallel check, the end-to-end
# run's outputs, the time-to-quality run) and the time-to-quality run's scores (CSV), within
# the tool's 8-file limit.
#
#   run(command="bash benchmarks/device_check.sh", timeout_s=560)
#
# Steps, most valuable first; each step's failure is logged and the next one still runs, and a
# step starts only while the run's own budget (BUDGET seconds, default 470) has room for it:
#   1. the CUDA tests: the GPU linear-algebra test, symmetrised proposals on CUDA against the
#      CPU, and the estimator/measure/flow tests with CUDA visible (pytest is on the device
#      image; pyerrors and snakemake are not, so tests that need them are left out);
#   2. `gaugeflow measure timing` at L = 16, batch 64, the paper's flow (48 x 64), scatter
#      assembly, for r.t. and REINFORCE, without and with amp (fp16 + GradScaler): CUDA-event
#      times of a gradient step -> the amp speed-up (paper: 15-20%) and RE vs r.t.;
#   3. end to end through the command line on CUDA (issue 14): `gaugeflow train` (L = 8,
#      REINFORCE, the default run's 16 x 16 flow with holonomy layers), then `sample` and `nis`
#      with P+C-symmetrised proposals on CUDA, and `acceptance` of the CUDA-trained model on
#      the CPU;
#   4. time to quality on CUDA (issue 14): bench_time_to_quality, L = 8 REINFORCE from scratch,
#      batch 1024, cosine schedule over TTQ_BUDGET (90) training seconds, scored on 8192 fresh
#      samples (P+C) every half budget;
#   5. `gaugeflow measure memory` for the four runs of step 2: M1 (saved tensors) and M2
#      (torch.cuda.max_memory_allocated, absolute, as in the paper's Table 5);
#   6. the data-parallel step (issue 15) in a 1-rank group, nccl on CUDA, against the plain step;
#   7. the timing of step 2 with the `loop` assembly for r.t. (the paper's Table 1 row);
#   8. (only when asked for, see ONLY) the timing of step 2 at the paper's Table 2 batch
#      (PAPER_BATCH, 768) for r.t. and REINFORCE: the paper's A100 took 3.85 and 1.57 s.
#
# ONLY="tests timing e2e ttq memory ddp loop paper" (default: all but paper) picks steps by
# name. A machine without pyerrors/arviz-stats can take them as wheels: WHEELS=DIR installs
# DIR/*.whl into a scratch folder first (the device tool's README says how to fetch them).
#
# The device machine has torch (CUDA build) but not this package installed: it runs from
# the working tree with PYTHONPATH=src. Knobs: DEVICE (cuda), L (16), BATCH (64), STEPS (20),
# BUDGET (470), TTQ_BUDGET (90), SMOKE=1 (tiny sizes, any device: to check this script on a CPU
# before spending GPU time).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-results/device_check}
mkdir -p "$OUT" || exit 1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
L=${L:-16}
BATCH=${BATCH:-64}
STEPS=${STEPS:-20}
BUDGET=${BUDGET:-470}
TTQ_BUDGET=${TTQ_BUDGET:-90}
ONLY=" ${ONLY:-tests timing e2e ttq memory ddp loop} "
PAPER_BATCH=${PAPER_BATCH:-768}
ARCH=(--n-layers 48 --hidden 64)
TESTS=(tests/test_linalg.py tests/test_symmetry.py tests/test_estimators.py tests/test_measure.py tests/test_replay.py tests/test_convfloor.py
       tests/test_flow.py tests/test_holonomy.py tests/test_training.py)
E2E=(--L 8 --estimator reinforce --n-layers 16 --hidden 16 --holonomy --batch-size 256 --steps 40)
E2E_N=4096
TTQ=(--L 8 --batch-size 1024 --n-layers 16 --hidden 16 --holonomy --n-score 8192)
if [ "${SMOKE:-0}" = 1 ]; then
  L=4 BATCH=4 STEPS=1 ARCH=(--n-layers 2 --hidden 4) TESTS=(tests/test_linalg.py)
  E2E=(--L 4 --estimator reinforce --n-layers 8 --hidden 4 --batch-size 8 --steps 4) E2E_N=64
  TTQ=(--L 4 --batch-size 16 --n-layers 8 --hidden 4 --n-score 256) TTQ_BUDGET=4
  PAPER_BATCH=8
fi
if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/device_check_site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/device_check_site"
fi
LOG="$OUT/device_check.log"
WORK="$OUT/records"  # everything here travels back as one archive
mkdir -p "$WORK" || exit 1
START=$SECONDS
say() { echo "== $(date -u +%H:%M:%S) +$((SECONDS - START))s $*" | tee -a "$LOG"; }
# room NEED CAP: true (and the step's timeout, at most CAP, in $T) if NEED seconds are left
T=0
want() { [[ "$ONLY" == *" $1 "* ]]; }
room() {
  local rest=$((BUDGET - (SECONDS - START)))
  if [ "$rest" -lt "$1" ]; then
    say "   skipped: $rest s left of the budget, $1 s needed"
    return 1
  fi
  T=$((rest < $2 ? rest : $2))
}

say "device check: DEVICE=$DEVICE L=$L BATCH=$BATCH STEPS=$STEPS ${ARCH[*]} BUDGET=$BUDGET"
$PY - >>"$LOG" 2>&1 <<'PYEOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$LOG" 2>&1 || true

if want tests && say "1. tests (${TESTS[*]})" && room 60 200; then
  timeout "$T" $PY -m pytest -q -p no:cacheprovider -rs "${TESTS[@]}" >>"$LOG" 2>&1
  say "   pytest exit $?"
fi

measure() {  # kind estimator assembly amp(0|1)
  local kind=$1 est=$2 asm=$3 amp=$4 tag
  tag="$kind-L$L-b$BATCH-$est-$asm$([ "$amp" = 1 ] && echo -amp)"
  local extra=()
  [ "$amp" = 1 ] && extra+=(--amp)
  [ "$kind" = timing ] && extra+=(--steps "$STEPS" --warmup 3)
  room 30 120 || return 0
  timeout "$T" $PY -m gaugeflow measure "$kind" --L "$L" --batch-size "$BATCH" \
    --estimator "$est" --assembly "$asm" "${ARCH[@]}" --device "$DEVICE" "${extra[@]}" \
    --out "$WORK/$tag.json" >>"$LOG" 2>&1
  say "   $tag: exit $?"
}

if want timing; then
  say "2. timing"
  for est in rt reinforce; do for amp in 0 1; do measure timing "$est" scatter "$amp"; done; done
fi

want e2e && say "3. end to end on $DEVICE: train, then sample and nis with P+C, acceptance on the CPU"
E="$WORK/e2e"
mkdir -p "$E"
if want e2e && room 60 100; then
  timeout "$T" $PY -m gaugeflow train "${E2E[@]}" --device "$DEVICE" --out "$E/train" \
    --checkpoint-every 20 --no-progress >>"$LOG" 2>&1
  say "   train: exit $?"
fi
if want e2e && room 30 60; then
  timeout "$T" $PY -m gaugeflow sample --model "$E/train/model.pt" --n "$E2E_N" --seed 3 \
    --device "$DEVICE" --symmetrize P+C --out "$E/chain.npz" --no-progress >>"$LOG" 2>&1
  say "   sample --symmetrize P+C: exit $?"
fi
if want e2e && room 30 60; then
  timeout "$T" $PY -m gaugeflow nis --model "$E/train/model.pt" --n "$E2E_N" --seed 4 \
    --device "$DEVICE" --symmetrize P+C --out "$E/nis.json" --no-progress >>"$LOG" 2>&1
  say "   nis --symmetrize P+C: exit $?"
fi
if want e2e && room 30 60; then
  timeout "$T" $PY -m gaugeflow acceptance --model "$E/train/model.pt" --n 512 --seed 5 \
    --device cpu --out "$E/acceptance-cpu.json" --no-progress >>"$LOG" 2>&1
  say "   acceptance on the CPU: exit $?"
fi
rm -rf "$E/train/checkpoints" "$E/train/snapshots" "$E/chain.npz"

want ttq && say "4. time to quality on $DEVICE (L = 8 RE, $TTQ_BUDGET s, cosine, P+C scores)"
if want ttq && room $((TTQ_BUDGET + 40)) $((TTQ_BUDGET + 90)); then
  timeout "$T" $PY benchmarks/bench_time_to_quality.py run --name ttq-cuda --out "$WORK" \
    "${TTQ[@]}" --estimator reinforce --lr 2e-3 --schedule cosine --budget "$TTQ_BUDGET" \
    --score-every $((TTQ_BUDGET / 2)) --symmetrize P+C --device "$DEVICE" >>"$LOG" 2>&1
  say "   bench_time_to_quality: exit $?"
  cp "$WORK/ttq-cuda.csv" "$OUT/" 2>/dev/null
fi

if want memory; then
  say "5. memory"
  for est in rt reinforce; do for amp in 0 1; do measure memory "$est" scatter "$amp"; done; done
fi

want ddp && say "6. data-parallel step in a 1-rank group (nccl on CUDA) against the plain step"
DDP_ARGS=(--L "$L" --batch-size "$BATCH")
[ "${SMOKE:-0}" = 1 ] && DDP_ARGS+=(--layers 8 --hidden 4 --steps 1 --warmup 0)
if want ddp && room 30 100; then
  timeout "$T" $PY benchmarks/bench_ddp.py --world-of-one "$DEVICE" "${DDP_ARGS[@]}" \
    --out "$WORK/ddp-world-of-one.json" >>"$LOG" 2>&1
  say "   bench_ddp --world-of-one: exit $?"
fi

if want loop; then
  say "7. r.t. with the loop assembly"
  measure timing rt loop 0
fi
if want paper; then
  say "8. timing at the paper's Table 2 batch, $PAPER_BATCH"
  for est in reinforce rt; do BATCH=$PAPER_BATCH STEPS=5 measure timing "$est" scatter 0; done
fi

say "summary"
$PY - "$WORK" "$OUT" >>"$LOG" 2>&1 <<'PYEOF'
import json, pathlib, sys
work, out = map(pathlib.Path, sys.argv[1:])
rows = []
for p in sorted(work.glob("*-L*.json")):
    r = json.loads(p.read_text())
    keep = {k: r.get(k) for k in ("status", "device_name", "step_seconds", "loss_seconds",
                                   "backward_seconds", "saved_tensors",
                                   "saved_bytes", "peak_bytes", "peak_kind", "clock", "device")}
    rows.append({"run": p.stem, **keep})
    print(p.stem, json.dumps(keep))
for name in ("e2e/nis.json", "e2e/acceptance-cpu.json", "e2e/train/summary.json",
             "ttq-cuda.json", "ddp-world-of-one.json"):
    p = work / name
    if p.exists():
        r = json.loads(p.read_text())
        keep = {k: r.get(k) for k in ("ess", "pareto_k", "acceptance", "free_energy", "status",
                                       "steps", "train_seconds", "median_step_seconds",
                                       "device_name", "final", "symmetry")}
        rows.append({"run": name, **{k: v for k, v in keep.items() if v is not None}})
        print(name, json.dumps(rows[-1]))
(out / "device_check_summary.json").write_text(json.dumps(rows, indent=1))
PYEOF
# the device tool returns at most 8 files: the records travel as one archive
(cd "$OUT" && tar -czf device_check_records.tar.gz records && rm -rf records)
ls "$OUT"
tail -n 14 "$LOG"
