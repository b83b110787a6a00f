"""Seconds per CNN training epoch (the two-conv network of xpnn.cnn()) at batch 128, side by side.

    python -m pytest bench/test_cnn.py --benchmark-only --benchmark-json=bench/results/cnn.json
    python bench/test_cnn.py bench/results/cnn.json          # the table, with ratios of minimums

One "epoch" here is the first SUBSET images (40 batches of 128), so that the bench stays short in CI
(XPNN_BENCH_ROUNDS=2); seconds scale linearly to the 60,000-image epoch (multiply by 60,000 / SUBSET).
Implementations on one device run interleaved, as in bench/test_epoch.py. Rows for a missing library or
GPU skip.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from implementations import cnn_epoch_flops, interleaved, load_data, make_cnn_epoch, rounds

BATCH = 128
SUBSET = 40 * BATCH
FULL = 60_000
GROUPS = [
    [("xpnn", "numpy"), ("xpnn-1worker", "numpy"), ("matmul-bound", "numpy"), ("xpnn", "torch-cpu"),
     ("pytorch", "torch-cpu"), ("matmul-bound", "torch-cpu")],
    [("xpnn", "cupy"), ("matmul-bound", "cupy"), ("xpnn", "torch-cuda"), ("pytorch", "torch-cuda"),
     ("matmul-bound", "torch-cuda")],
]
CASES = [case for group in GROUPS for case in group]
GPU = {"cupy", "torch-cuda"}


@pytest.fixture(scope="module")
def cnn_data():
    """(x, y, source): the first SUBSET MNIST-shaped rows (reshaped to images by each implementation)."""
    return load_data(SUBSET)


def peak_memory(implementation: str, backend: str) -> float | None:
    """Peak MB of one epoch in a fresh process (bench/cnn_memory.py); None if it could not be measured."""
    script = Path(__file__).with_name("cnn_memory.py")
    result = subprocess.run([sys.executable, str(script), implementation, backend, str(BATCH), str(SUBSET)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


_EPOCHS: dict[tuple[str, str], object] = {}


def epoch_for(implementation, backend, data):
    """Build each implementation once per session (LookupError when its library or device is missing)."""
    key = (implementation, backend)
    if key not in _EPOCHS:
        try:
            _EPOCHS[key] = make_cnn_epoch(implementation, backend, data[0], data[1], BATCH)
        except LookupError as error:
            _EPOCHS[key] = error
    if isinstance(_EPOCHS[key], LookupError):
        raise _EPOCHS[key]
    return _EPOCHS[key]


def neighbours(implementation, backend, data):
    """Before each timed round, an untimed epoch of every other implementation on the same device."""
    group = next(g for g in GROUPS if (implementation, backend) in g)
    others = []
    for other in group:
        if other != (implementation, backend):
            with contextlib.suppress(LookupError):
                others.append(epoch_for(*other, data))

    return interleaved(others)


@pytest.mark.parametrize(("implementation", "backend"), CASES, ids=[f"{i}-{b}" for i, b in CASES])
def test_cnn_epoch(benchmark, cnn_data, implementation, backend):
    x, _, source = cnn_data
    try:
        epoch = epoch_for(implementation, backend, cnn_data)
    except LookupError as error:
        pytest.skip(str(error))
    benchmark.group = f"cnn batch {BATCH} ({SUBSET:,} images)"
    benchmark.extra_info.update(
        model="cnn", implementation=implementation, backend=backend, batch=BATCH, samples=x.shape[0], data=source,
        flops=cnn_epoch_flops(x.shape[0], BATCH), device="gpu" if backend in GPU else "cpu",
    )
    if implementation != "matmul-bound":
        benchmark.extra_info["peak_mb"] = peak_memory(implementation, backend)
    benchmark.pedantic(epoch.run, setup=neighbours(implementation, backend, cnn_data),
                       rounds=rounds(5 if backend not in GPU else 10), warmup_rounds=1)


def table(report: dict) -> str:
    """Markdown rows for the CNN benchmarks of a pytest-benchmark JSON report, ranked by minimums."""
    rows = [{**b["extra_info"], "min": b["stats"]["min"], "median": b["stats"]["median"]}
            for b in report["benchmarks"] if b.get("extra_info", {}).get("model") == "cnn"]

    def best(implementation: str, device: str) -> float | None:
        found = [r["min"] for r in rows if r["implementation"] == implementation and r["device"] == device]
        return min(found) if found else None

    def ratio(value: float, reference: float | None) -> str:
        return f"{value / reference:.2f}×" if reference else "–"

    lines = [f"CNN, batch {BATCH}, first {rows[0]['samples'] if rows else SUBSET:,} images per timed epoch; "
             f"s/60k scales the minimum to the full 60,000-image epoch.", "",
             "| implementation | backend | s min | median | s/60k | GFLOP/s | vs PyTorch | vs bound | peak memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    order = {"xpnn": 0, "xpnn-1worker": 1, "pytorch": 2, "matmul-bound": 3}
    for r in sorted(rows, key=lambda r: (r["device"], order[r["implementation"]], r["backend"])):
        memory = r.get("peak_mb")
        lines.append(
            f"| {r['implementation']} | {r['backend']} | {r['min']:.3f} | {r['median']:.3f} | "
            f"{r['min'] * FULL / r['samples']:.1f} | {r['flops'] / r['min'] / 1e9:.0f} | "
            f"{ratio(r['min'], best('pytorch', r['device']))} | {ratio(r['min'], best('matmul-bound', r['device']))} | "
            + (f"{memory:,.0f} MB" if memory is not None else "–") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads(Path(sys.argv[1]).read_text())))
