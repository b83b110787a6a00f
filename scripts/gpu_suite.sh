#!/usr/bin/env bash
# The GPU checks in one command, for a machine with an NVIDIA GPU, CuPy and (optionally) torch:
#   1. the whole test suite, which then also runs on CuPy and torch-CUDA;
#   2. the default training command on Fashion-MNIST on the GPU and on the CPU, same seed;
#   3. the capture and fused-kernel tests, the CLI epoch against PyTorch (bench/cli_epoch.py);
#   4. the full benchmarks (with torch.compile reduce-overhead and capture-off rows), with the Markdown table.
# Usage: bash scripts/gpu_suite.sh [RESULTS_DIR]   (default: bench/results/gpu)
set -uo pipefail
out=${1:-bench/results/gpu}
mkdir -p "$out"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1 || true

python -m pytest tests -q -p no:cacheprovider -rs 2>&1 | tee "$out/tests.txt" || status=1

for device in gpu cpu; do
  python -m xpnn.train --device "$device" --dataset fashion-mnist --epochs "${XPNN_GPU_EPOCHS:-20}" \
    --metrics "$out/train-$device.jsonl" 2>&1 | tee "$out/train-$device.txt" || status=1
done

# issue 10: the capture and fused paths must run here, not skip
python -m pytest tests/test_graphs.py tests/test_fused.py -q -p no:cacheprovider -rs 2>&1 | tee "$out/tests-fast.txt" \
  || status=1
for pair in "torch:cuda cuda" "cpu cpu"; do
  set -- $pair
  python bench/cli_epoch.py --device "$1" --torch-device "$2" --rounds 5 --json "$out/cli-${1/:/-}.json" 2>&1 \
    | tee -a "$out/cli.txt" || status=1
done

python -m pytest bench --benchmark-only -q -p no:cacheprovider --benchmark-json="$out/bench.json" 2>&1 \
  | tail -n 5 || status=1
python scripts/bench_table.py "$out/bench.json" --out "$out/table.md" || status=1
exit $status
