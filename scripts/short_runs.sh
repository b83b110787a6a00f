#!/bin/bash
# Short training runs that touch most of the command line (MLP and CNN, workers, full batch, validation,
# weight decay, a schedule, --save and --resume), for checking that a change leaves every number as it was:
#
#   git worktree add /tmp/before <commit>
#   bash scripts/short_runs.sh /tmp/before /tmp/runs-before
#   bash scripts/short_runs.sh . /tmp/runs-after
#   python scripts/compare_runs.py /tmp/runs-before /tmp/runs-after     # exit 1 on any difference
#
# Run it where python is the environment xpnn is installed in (its dependencies). About 3 minutes on a
# 2-core machine. DATA_DIR (third argument) defaults to Debian's dataset-fashion-mnist.
set -euo pipefail
TREE=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd); DATA=${3:-/usr/share/datasets/fashion-mnist}
cd "$TREE"
export PYTHONPATH=$TREE
run() {  # NAME FLAGS...
    local name=$1; shift
    python -m xpnn.train --dataset fashion-mnist --data-dir "$DATA" --metrics "$OUT/$name.jsonl" "$@" \
        > "$OUT/$name.txt" 2>&1
}
run mlp --epochs 3 --seed 1 --save "$OUT/mlp.npz"
run cnn --model cnn --epochs 1 --seed 0 --save "$OUT/cnn.npz"
run full --full-batch --epochs 5 --optimizer sgd --lr 0.1
small=(--seed 3 --activation tanh --weight-decay 1e-4 --schedule step --optimizer momentum --lr 0.05 --val 5000
       --hidden 64,32)
run small --epochs 2 "${small[@]}" --save "$OUT/small.npz"
run small-resumed --epochs 4 "${small[@]}" --resume "$OUT/small.npz" --save "$OUT/small.npz"
run cnn-1worker --model cnn --epochs 1 --seed 2 --workers 1 --batch-size 256 --dropout 0.3
