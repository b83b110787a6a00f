#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU, CuPy and torch. Stages (all when none is named):
#   tests      the whole test suite, which then also runs on CuPy and torch-CUDA (in parallel with pytest-xdist
#              where it is installed), and the capture and fused-kernel tests on their own (they must not skip);
#   capture    one epoch of the CLI's default MLP and CNN with --cuda-graphs on, on CuPy and torch-CUDA: each must
#              capture (exit 0; exit 2 names why it cannot);
#   defaults   the CLI's default networks (MLP with dropout 0.1, CNN with dropout 0.5) at batch 128, captured and
#              eager, on CuPy and torch-CUDA, against PyTorch eager (data on the GPU) and torch.compile
#              (reduce-overhead): bench/defaults_gpu.py, defaults.json and defaults.md (XPNN_DEFAULTS_ROUNDS);
#   tta        time to accuracy: the CNN command on CuPy, wall time from process start to exit, and its accuracy;
#   train      the default MLP command on Fashion-MNIST on the GPU and on the CPU (same seed), and the CNN
#              (--model cnn) on CuPy and on torch-CUDA;
#   bench-gpu  the GPU rows of bench/test_epoch.py and bench/test_cnn.py (torch.compile and capture-off rows
#              included), bench-gpu.json and its table;
#   bench-cpu  the CPU rows of the same benchmarks on this host, bench-cpu.json and its table (XPNN_BENCH_CPU_K,
#              a pytest -k expression, picks fewer rows);
#   cli        an epoch with its evaluation through the CLI against PyTorch (bench/cli_epoch.py), on CUDA;
#   profile    cProfile of the launch-bound epochs (scripts/step_profile.py), for the next optimisation.
# Usage: bash scripts/gpu_suite.sh RESULTS_DIR [STAGE ...]      (XPNN_BENCH_ROUNDS lowers the timed rounds)
set -uo pipefail
out=${1:-bench/results/gpu}
shift || true
stages=${*:-tests capture defaults tta train bench-gpu bench-cpu cli profile}
mkdir -p "$out"
status=0
has() { [[ " $stages " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1 || true

if has tests; then
  parallel=$(python -c "import xdist" 2>/dev/null && echo "-n 16")
  python -m pytest tests -q -p no:cacheprovider -rs --durations=15 $parallel 2>&1 | tee "$out/tests.txt" | tail -n 3 || status=1
  python -m pytest tests/test_graphs.py tests/test_fused.py tests/test_dropout_masks.py -q -p no:cacheprovider -rs \
    2>&1 | tee "$out/tests-fast.txt" | tail -n 3 || status=1
fi

if has capture; then
  for device in gpu torch:cuda; do
    for model in mlp cnn; do
      name=capture-$model-${device/:/-}
      python -m xpnn.train --model "$model" --device "$device" --dataset fashion-mnist --epochs 1 --cuda-graphs on \
        > "$out/$name.txt" 2>&1 || { rc=$?; status=1; echo "$name: FAILED (exit $rc)"; }
      echo "$name: $(tail -n 1 "$out/$name.txt")"
    done
  done
fi

if has defaults; then
  python bench/defaults_gpu.py --rounds "${XPNN_DEFAULTS_ROUNDS:-5}" --json "$out/defaults.json" \
    --md "$out/defaults.md" > "$out/defaults.txt" 2>&1 || status=1
  cat "$out/defaults.md" 2>/dev/null || tail -n 20 "$out/defaults.txt"
fi

if has tta; then
  start=$(date +%s.%N)
  python -m xpnn.train --dataset fashion-mnist --model cnn --device gpu --metrics "$out/tta-cnn-gpu.jsonl" \
    > "$out/tta-cnn-gpu.txt" 2>&1 || status=1
  end=$(date +%s.%N)
  echo "time to accuracy (CNN, CuPy): $(python -c "print(f'{$end - $start:.1f}')") s wall from start to exit" \
    | tee "$out/tta.txt"
  tail -n 2 "$out/tta-cnn-gpu.txt" | tee -a "$out/tta.txt"
fi

if has train; then
  for device in gpu cpu; do
    python -m xpnn.train --device "$device" --dataset fashion-mnist --epochs "${XPNN_GPU_EPOCHS:-20}" \
      --metrics "$out/train-$device.jsonl" > "$out/train-$device.txt" 2>&1 || status=1
    tail -n 2 "$out/train-$device.txt"
  done
  for device in gpu torch:cuda; do
    name=cnn-${device/:/-}
    python -m xpnn.train --model cnn --device "$device" --dataset fashion-mnist \
      --metrics "$out/train-$name.jsonl" > "$out/train-$name.txt" 2>&1 || status=1
    tail -n 2 "$out/train-$name.txt"
  done
fi

bench() {  # bench NAME PYTEST_K
  python -m pytest bench/test_epoch.py bench/test_cnn.py --benchmark-only -q -p no:cacheprovider -k "$2" \
    --benchmark-json="$out/$1.json" > "$out/$1.txt" 2>&1 || status=1
  tail -n 2 "$out/$1.txt"
  python scripts/bench_table.py "$out/$1.json" --out "$out/$1.md" || status=1
  cat "$out/$1.md"
}
has bench-gpu && bench bench-gpu "cupy or cuda"
has bench-cpu && bench bench-cpu "${XPNN_BENCH_CPU_K:-(numpy or torch-cpu) and not strict and not import}"

if has cli; then
  for pair in "torch:cuda cuda" "gpu cuda"; do
    set -- $pair
    python bench/cli_epoch.py --device "$1" --torch-device "$2" --rounds 3 --json "$out/cli-${1/:/-}.json" 2>&1 \
      | tee -a "$out/cli.txt" | tail -n 4 || status=1
  done
fi

if has profile; then
  for case in "cupy mlp xpnn" "torch-cuda mlp xpnn-eager" "cupy cnn xpnn" "torch-cuda cnn xpnn"; do
    set -- $case
    python scripts/step_profile.py --backend "$1" --model "$2" --implementation "$3" --top 30 \
      > "$out/profile-$1-$2.txt" 2>&1 || status=1
    head -n 1 "$out/profile-$1-$2.txt"
  done
fi
exit $status
