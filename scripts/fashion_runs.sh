#!/bin/bash
# Train every configuration whose log the README and the benchmarks page quote, on Fashion-MNIST, and write
# docs/runs/: each run's printed log (.txt), its --metrics rows (.jsonl) and, for the default MLP and the CNN,
# its --plot curves (.png). About 15 minutes on a 2-core machine; run it on an otherwise idle machine, since the
# logs' seconds per epoch are quoted too.
#
#   bash scripts/fashion_runs.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-/usr/share/datasets/fashion-mnist}
OUT=${2:-docs/runs}
mkdir -p "$OUT"
run() {  # NAME FLAGS...: one training run, its log and metrics (and curves when --plot is among the flags)
    local name=$1; shift
    python -m xpnn.train --dataset fashion-mnist --data-dir "$DATA" --metrics "$OUT/$name.jsonl" "$@" \
        | tee "$OUT/$name.txt"
}
run fashion-mnist-default --plot "$OUT/fashion-mnist-curves.png"
run fashion-mnist-sgd --optimizer sgd --lr 0.01 --batch-size 128 --dropout 0 --schedule constant --init he --epochs 15
run fashion-mnist-fullbatch --full-batch --optimizer adam --lr 0.003 --dropout 0 --epochs 100 --quiet
run fashion-mnist-cnn --model cnn --plot "$OUT/fashion-mnist-cnn-curves.png"
run fashion-mnist-cnn-workers1 --model cnn --workers 1
