"""Seconds per training epoch of 784-256-128-10 on MNIST-shaped data, every implementation side by side.

    python -m pytest bench --benchmark-only --benchmark-json=bench/results/latest.json
    python scripts/bench_table.py bench/results/latest.json

Rows for a missing library or GPU skip. XPNN_BENCH_ROUNDS lowers the number of timed rounds (CI).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from implementations import epoch_flops, interleaved, make_epoch, rounds

FULL = 60_000
# Implementations compared with each other run interleaved (see neighbours()): one group per device.
GROUPS = [
    [("xpnn", "numpy"), ("xpnn-1worker", "numpy"), ("numpy-by-hand", "numpy"), ("matmul-bound", "numpy"),
     ("xpnn", "torch-cpu"), ("pytorch", "torch-cpu"), ("matmul-bound", "torch-cpu")],
    [("xpnn", "cupy"), ("matmul-bound", "cupy"),
     ("xpnn", "torch-cuda"), ("xpnn-eager", "torch-cuda"), ("pytorch", "torch-cuda"),
     ("pytorch-compiled", "torch-cuda"), ("matmul-bound", "torch-cuda")],
]
CASES = [(i, b, batch) for group in GROUPS for batch in (128, FULL) for i, b in group]
GPU = {"cupy", "torch-cuda"}


def peak_memory(implementation: str, backend: str, batch: int) -> float | None:
    """Peak MB of one epoch in a fresh process (bench/memory.py); None if it could not be measured."""
    script = Path(__file__).with_name("memory.py")
    result = subprocess.run([sys.executable, str(script), implementation, backend, str(batch)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


_EPOCHS: dict[tuple[str, str, int], object] = {}


def epoch_for(implementation, backend, batch, data):
    """Build each implementation once per session (LookupError when its library or device is missing)."""
    key = (implementation, backend, batch)
    if key not in _EPOCHS:
        try:
            _EPOCHS[key] = make_epoch(implementation, backend, data[0], data[1], batch)
        except LookupError as error:
            _EPOCHS[key] = error
    if isinstance(_EPOCHS[key], LookupError):
        raise _EPOCHS[key]
    return _EPOCHS[key]


def neighbours(implementation, backend, batch, data):
    """An untimed epoch of every other implementation on the same device and batch, run before each
    timed round: the rounds of all of them interleave, so slow spells of a shared machine fall on all
    of them alike instead of on whichever test happened to run then."""
    group = next(g for g in GROUPS if (implementation, backend) in g)
    others = []
    for other in group:
        if other != (implementation, backend):
            with contextlib.suppress(LookupError):
                others.append(epoch_for(*other, batch, data))

    return interleaved(others)


@pytest.mark.parametrize(("implementation", "backend", "batch"), CASES,
                         ids=[f"{i}-{b}-{'full' if n == FULL else n}" for i, b, n in CASES])
def test_epoch(benchmark, mnist_shaped, implementation, backend, batch):
    x, _, source = mnist_shaped
    try:
        epoch = epoch_for(implementation, backend, batch, mnist_shaped)
    except LookupError as error:
        pytest.skip(str(error))
    benchmark.group = f"batch {batch}"
    benchmark.extra_info.update(
        implementation=implementation, backend=backend, batch=batch, samples=x.shape[0], data=source,
        flops=epoch_flops(x.shape[0], batch), device="gpu" if backend in GPU else "cpu",
    )
    if batch == FULL and implementation != "matmul-bound":
        benchmark.extra_info["peak_mb"] = peak_memory(implementation, backend, batch)
    benchmark.pedantic(epoch.run, setup=neighbours(implementation, backend, batch, mnist_shaped),
                       rounds=rounds(5 if backend not in GPU else 10), warmup_rounds=1)


def test_array_api_strict_small_slice(benchmark, mnist_shaped):
    """array-api-strict is a checker, not a backend to race: a 2,048-sample slice only."""
    x, y, source = mnist_shaped
    try:
        epoch = make_epoch("xpnn", "array-api-strict", x[:2048], y[:2048], 128)
    except LookupError as error:
        pytest.skip(str(error))
    benchmark.group = "array-api-strict (2,048 samples)"
    benchmark.extra_info.update(implementation="xpnn", backend="array-api-strict", batch=128, samples=2048,
                                data=source, flops=epoch_flops(2048, 128), device="cpu")
    benchmark.pedantic(epoch.run, rounds=rounds(3), warmup_rounds=1)


def test_import_time(benchmark):
    """`import xpnn` in a fresh interpreter: well under a quarter of a second, and no cupy or torch.

    The benchmark times the whole subprocess; ``import_seconds`` records the import alone, measured
    inside each interpreter (median over the rounds).
    """
    code = ("import sys, time; t = time.perf_counter(); import xpnn; "
            "print(time.perf_counter() - t, 'cupy' in sys.modules or 'torch' in sys.modules)")
    inside = []

    def run():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        seconds, heavy = out.split()
        assert heavy == "False", "import xpnn pulled in cupy or torch"
        inside.append(float(seconds))

    benchmark.group = "import"
    benchmark.extra_info.update(implementation="import xpnn", backend="-", batch=0, samples=0, device="cpu")
    benchmark.pedantic(run, rounds=rounds(5), warmup_rounds=1)
    benchmark.extra_info["import_seconds"] = statistics.median(inside)
