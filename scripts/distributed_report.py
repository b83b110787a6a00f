"""The data-parallel benchmark as tables: 1 process x 2 threads against 2 ranks x 1 thread, and on paper, the
time per step on N GPUs from the measured all-reduce and a ring all-reduce model.

    python scripts/distributed_report.py bench/results/cpu-2core/distributed.json [--step-ms 0.94] [--pcie-gbs 20]

A ring all-reduce of S bytes over N ranks moves 2(N-1)/N x S bytes through each link, so with the
all-reduce of 2 ranks measured at t2 (which moves S), N ranks take 2(N-1)/N x t2 on links of the same
speed. Host staging adds one copy each way over PCIe. The compute per step (--step-ms, default: the
H100's 0.94 ms per step of 784-256-128-10 at batch 128, bench/results/h100/table.md) stays the same per
GPU when each GPU keeps a batch of 128 (weak scaling), and barely falls when a global batch of 128 is
split (the GPU is launch-bound at these sizes): only weak scaling can pay. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODELS = {"MLP 784-256-128-10": 0.94e6, "CNN (~420k parameters)": 1.7e6}  # bytes of float32 gradients


def epochs(benchmarks: list[dict]) -> None:
    """Seconds per epoch of both layouts, their ratio and the all-reduce's share of the 2-rank epoch."""
    found = {(b["extra_info"]["processes"], b["extra_info"]["batch"]): b for b in benchmarks
             if b["name"].startswith("test_distributed_epoch")}
    print("| batch | 1 process x 2 threads (s/epoch, min / median) | 2 ranks x 1 thread (min / median) | "
          "ratio of medians | all-reduce share (2 ranks) |")
    print("|---|---:|---:|---:|---:|")
    for batch in sorted({batch for _, batch in found}):
        one, two = found.get((1, batch)), found.get((2, batch))
        if one is None or two is None:
            continue
        ratio = two["stats"]["median"] / one["stats"]["median"]
        print(f"| {'full' if batch == 60_000 else batch} | {one['stats']['min']:.3f} / {one['stats']['median']:.3f} | "
              f"{two['stats']['min']:.3f} / {two['stats']['median']:.3f} | {ratio:.2f}x | "
              f"{two['extra_info']['allreduce_share']:.1%} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="pytest-benchmark JSON with test_allreduce_alone")
    parser.add_argument("--step-ms", type=float, default=0.94, help="compute per step on one GPU (default: 0.94)")
    parser.add_argument("--pcie-gbs", type=float, default=20.0, help="host staging copy speed, GB/s (default: 20)")
    args = parser.parse_args()
    benchmarks = json.loads(Path(args.results).read_text())["benchmarks"]
    epochs(benchmarks)
    rows = [b for b in benchmarks if b["name"] == "test_allreduce_alone"]
    if not rows:
        raise SystemExit(f"{args.results} has no test_allreduce_alone result; run bench/test_distributed.py")
    info = rows[0]["extra_info"]
    t2_ms, measured_bytes = info["bare_allreduce_seconds"] * 1e3, info["bytes"]
    print(f"Measured: Allreduce of {measured_bytes / 1e6:.2f} MB on 2 ranks {t2_ms:.3f} ms; allreduce_gradients "
          f"(packing included) {info['per_call_seconds'] * 1e3:.3f} ms. Assumed: {args.step_ms} ms compute per "
          f"step, host staging at {args.pcie_gbs:g} GB/s each way.\n")
    header = "| GPUs | 2(N-1)/N |"
    for name in MODELS:
        header += f" {name}: all-reduce + staging (ms) |"
    header += " MLP step (ms) | MLP samples/s vs 1 GPU |"
    print(header)
    print("|" + "---:|" * (header.count("|") - 1))
    for n in (1, 2, 4, 8, 16, 32):
        factor = 2 * (n - 1) / n
        line = f"| {n} | {factor:.2f} |"
        costs = {}
        for name, size in MODELS.items():
            staging = 0.0 if n == 1 else 2 * size / (args.pcie_gbs * 1e9) * 1e3
            costs[name] = factor * t2_ms * size / measured_bytes + staging
            line += f" {costs[name]:.3f} |"
        step = args.step_ms + costs["MLP 784-256-128-10"]
        line += f" {step:.2f} | {n * args.step_ms / step:.2f}x |"
        print(line)


if __name__ == "__main__":
    main()
