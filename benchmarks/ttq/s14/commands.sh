# Session 14: the two 4-minute arms (issue 14), two at a time on the two vCPUs. /tmp/s14/score.py is
# the scorer described in scores_16384_seed777.txt (score(flow, prior, action, 16384, 777, symmetry=S)).
cd /work/main
B="env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_time_to_quality.py run --out benchmarks/ttq/s14 --threads 1 --n-score 8192 --save-model --estimator reinforce"
D=benchmarks/ttq/s14
date -u
( $B --name L4-re-8x16-hol-cs-90 --L 4 --batch-size 128 --n-layers 8 --hidden 16 --holonomy --charge-symmetric --lr 2e-3 --schedule cosine --budget 90 --score-every 90 && \
  $B --name L8-re-8x16-from-L4-90-cs-150-b128-lr3e-3 --L 8 --batch-size 128 --n-layers 8 --hidden 16 --holonomy --charge-symmetric --lr 3e-3 --schedule cosine --budget 150 --score-every 150 --init-from $D/L4-re-8x16-hol-cs-90.pt ) > /tmp/s14/ttq_a.log 2>&1 &
( $B --name L4-re-16x16-hol-cs-90-lr4e-3 --L 4 --batch-size 128 --n-layers 16 --hidden 16 --holonomy --charge-symmetric --lr 4e-3 --schedule cosine --budget 90 --score-every 90 && \
  $B --name L8-re-from-L4-90-lr4e-3-cs-150-b128-lr3e-3 --L 8 --batch-size 128 --n-layers 16 --hidden 16 --holonomy --charge-symmetric --lr 3e-3 --schedule cosine --budget 150 --score-every 150 --init-from $D/L4-re-16x16-hol-cs-90-lr4e-3.pt ) > /tmp/s14/ttq_b.log 2>&1 &
wait
date -u
sed -i 's#/tmp/s13/score.json#/tmp/s14/score.json#' /tmp/s14/score.py
OMP_NUM_THREADS=1 .venv/bin/python /tmp/s14/score.py $D/L8-re-8x16-from-L4-90-cs-150-b128-lr3e-3.pt:P > /tmp/s14/score_a.txt 2>&1 &
OMP_NUM_THREADS=1 .venv/bin/python /tmp/s14/score.py $D/L8-re-from-L4-90-lr4e-3-cs-150-b128-lr3e-3.pt:P > /tmp/s14/score_b.txt 2>&1 &
wait
date -u
echo ALLDONE
