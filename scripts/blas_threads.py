"""The MLP at batch 128 with one and with two BLAS threads, epoch by epoch in one process: seconds per epoch.

    python scripts/blas_threads.py [--epochs 3]

A shared virtual machine's two cores sometimes trade data slowly ("far" in bench/cli_epoch.py's probe,
printed before each epoch): then every two-thread step that passes arrays between the cores slows down,
and the MLP's eleven small products per step, each split between the two threads, suffer most, while one
thread keeps its speed. Alternating the two settings epoch by epoch in one process shows which one the
machine favours now (a change of state between processes would otherwise pass for a difference between
the settings). Also checks whether the two settings give the same weights after a few steps from the same
start: they do not (OpenBLAS blocks the products over 784 inputs differently on one thread and on two),
which is why xpnn does not switch between them on timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from cli_epoch import machine_probe, positive
from implementations import load_data

import xpnn
from xpnn.runtime.heap import retain_freed_memory


def trainer(x: np.ndarray, y: np.ndarray) -> tuple[xpnn.Trainer, object]:
    model = xpnn.mlp([784, 256, 128, 10], backend="cpu", seed=0)
    model.check_values = False
    trainer = xpnn.Trainer(model, xpnn.optim.SGD(model, lr=0.01), batch_size=128, seed=0, workers=1)
    return trainer, trainer.device_data(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive, default=3, help="timed epochs of each (default: 3)")
    epochs = parser.parse_args().epochs
    retain_freed_memory()  # as the command line does
    x, y, source = load_data()
    weights = []
    for threads in (1, 2):  # ten steps each from the same initial weights
        t, data = trainer(x[:1280], y[:1280])
        with threadpool_limits(threads):
            t.train_epoch(data, 0)
        weights.append(np.concatenate([np.ravel(p) for p in t.model.named_parameters().values()]))
    same = np.array_equal(weights[0], weights[1])
    print(f"MLP 784-256-128-10, batch 128, SGD, one worker, {source}")
    print(f"  weights after 10 steps with one and with two BLAS threads: {'identical' if same else 'different'}")
    runs = {1: trainer(x, y), 2: trainer(x, y)}
    for threads, (t, data) in runs.items():
        with threadpool_limits(threads):
            t.train_epoch(data, 0)  # untimed
    for epoch in range(1, epochs + 1):
        state = machine_probe()["state"] or "unprobed"
        row = []
        for threads in ((1, 2) if epoch % 2 else (2, 1)):
            t, data = runs[threads]
            with threadpool_limits(threads):
                start = time.perf_counter()
                t.train_epoch(data, epoch)
                row.append((threads, time.perf_counter() - start))
        times = ", ".join(f"{n} thread{'s' * (n > 1)} {s:.3f} s" for n, s in sorted(row))
        print(f"  epoch {epoch} ({state}): {times}")


if __name__ == "__main__":
    main()
