"""Where an MLP training step at batch 128 spends its time, by phase: microseconds per step.

    python scripts/mlp_phases.py [--epochs 5] [--wall] [--optimizer adam]

Trains 784-256-128-10 with SGD (or ``--optimizer``, at its usual learning rate) on Fashion-MNIST (random data
of the same shape where it is not installed) with one worker and BLAS held to one thread, so that thread time
counts all of a step's work; times the forward pass, the loss, the backward pass (in which SGD moves the large
weights, see ``SGD.backward_step``), the backward pass with the rest of the update, the optimizer's step where
it runs one (every optimizer but SGD), the batch gather and the accuracy count, and prints each one's median
over the epochs after an untimed first one. Freed memory stays in the process (``retain_freed_memory``), as on
the command line. ``--wall`` times the same phases by the clock with BLAS on its default threads instead, as
the command line trains: a phase that waits for the other core, or reads what the other core wrote, then shows
it.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from cli_epoch import positive
from implementations import load_data
from threadpoolctl import threadpool_limits

import xpnn
from xpnn.runtime import parallel
from xpnn.runtime.heap import retain_freed_memory
from xpnn.training.trainer import DeviceData

SPENT: dict[str, int] = defaultdict(int)
LEARNING_RATES = {"sgd": 0.01, "momentum": 0.01, "adam": 0.001}
CLOCK = time.thread_time_ns


def timed(name: str, function: Any) -> Any:
    """``function``, adding its time by CLOCK (ns) to SPENT[name] at each call."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = CLOCK()
        try:
            return function(*args, **kwargs)
        finally:
            SPENT[name] += CLOCK() - start
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive, default=5, help="timed epochs (default: 5)")
    parser.add_argument("--wall", action="store_true", help="clock time, BLAS on its default threads")
    parser.add_argument("--optimizer", choices=sorted(LEARNING_RATES), default="sgd",
                        help="update rule, at lr 0.01 (adam: 0.001) (default: sgd)")
    args = parser.parse_args()
    global CLOCK
    epochs, CLOCK = args.epochs, time.perf_counter_ns if args.wall else time.thread_time_ns
    retain_freed_memory()
    x, y, source = load_data()
    model = xpnn.mlp([784, 256, 128, 10], backend="cpu", seed=0)
    model.check_values = False
    optimizer = xpnn.optim.get_optimizer(args.optimizer, model, lr=LEARNING_RATES[args.optimizer])
    trainer = xpnn.Trainer(model, optimizer, batch_size=128, seed=0, workers=1)
    data = trainer.device_data(x, y)
    model.predict = timed("forward", model.predict)
    model.backward = timed("backward", model.backward)
    model.loss_fn.forward = timed("loss", model.loss_fn.forward)
    optimizer.backward_step = timed("backward + update", optimizer.backward_step)
    optimizer.step = timed("optimizer step", optimizer.step)
    parallel.metrics.count_correct = timed("accuracy count", parallel.metrics.count_correct)
    DeviceData.take = timed("batch gather", DeviceData.take)
    steps = -(-x.shape[0] // 128)
    per_step: dict[str, list[float]] = defaultdict(list)
    with threadpool_limits(None if args.wall else 1):
        for epoch in range(epochs + 1):
            SPENT.clear()
            start = CLOCK()
            trainer.train_epoch(data, epoch)
            SPENT["whole step"] = CLOCK() - start
            if epoch:
                for name, ns in SPENT.items():
                    per_step[name].append(ns / steps / 1e3)
    how = "clock time, BLAS on its default threads" if args.wall else "thread time, one BLAS thread"
    print(f"MLP 784-256-128-10, batch 128, {args.optimizer}, one worker, {how}, {source}; median of {epochs} epochs")
    for name, values in sorted(per_step.items(), key=lambda item: -statistics.median(item[1])):
        print(f"  {name:17s} {statistics.median(values):8.1f} us per step")


if __name__ == "__main__":
    main()
