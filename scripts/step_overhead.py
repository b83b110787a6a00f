"""The fixed cost of a training step: its parts on a 4-4-4-2 MLP at batch 4, where the arithmetic is nothing.

    python scripts/step_overhead.py [--repeats 20000]

What a step costs besides its arithmetic is the same at any size: the Python of the layers, the loss, the
optimizer and the loop, and the call overhead of every array operation. On the MLP at batch 128 it is a
tenth of the step. Prints the microseconds per call of each part (median of 5 runs of ``--repeats``
calls): the forward pass, the loss, the loss with its backward, forward + loss + backward, the accuracy
count, the whole ``train_step``, the optimizer's step and its layout check, the batch gather, and a whole
step of ``Trainer.train_epoch`` (an epoch of 500 batches, divided).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from cli_epoch import positive

import xpnn
from xpnn.nn import metrics
from xpnn.runtime.parallel import train_step


def per_call(function: Callable[[], object], repeats: int) -> float:
    """Median over 5 runs of the microseconds per call of ``function``."""
    function()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        runs.append((time.perf_counter() - start) / repeats * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive, default=20000, help="calls per run (default: 20000)")
    repeats = parser.parse_args().repeats
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 4)).astype(np.float32)
    y = rng.integers(0, 2, 2000)
    model = xpnn.mlp([4, 4, 4, 2], backend="cpu", seed=0)
    model.check_values = False
    optimizer = xpnn.optim.SGD(model, lr=0.01)
    trainer = xpnn.Trainer(model, optimizer, batch_size=4, seed=0, workers=1)
    data = trainer.device_data(x, y)
    part = data.rows(0, 4)
    logits = model.predict(part.x, train=True)
    order = np.arange(4)

    def loss_and_backward() -> None:
        model.loss_fn(logits, part.targets)
        model.loss_fn.backward()

    def forward_loss_backward() -> None:
        model.loss_fn(model.predict(part.x, train=True), part.targets)
        model.backward()

    parts = {
        "forward (predict, train=True)": lambda: model.predict(part.x, train=True),
        "loss forward": lambda: model.loss_fn(logits, part.targets),
        "loss forward + backward": loss_and_backward,
        "forward + loss + backward": forward_loss_backward,
        "accuracy count": lambda: metrics.count_correct(model.loss_fn, logits, part.labels),
        "train_step": lambda: train_step(model, part.x, part.targets, part.labels, 0),
        "optimizer step": optimizer.step,
        "  of which the layout check": optimizer.layout,
        "batch gather": lambda: data.take(order),
    }
    print(f"4-4-4-2 MLP, batch 4, SGD, NumPy {np.__version__}: microseconds per call (median of 5 x {repeats})")
    for name, function in parts.items():
        print(f"  {name:32s} {per_call(function, repeats):7.2f}")
    epoch = iter(range(10**9))
    steps = -(-x.shape[0] // 4)
    whole = per_call(lambda: trainer.train_epoch(data, next(epoch)), max(1, repeats // steps)) / steps
    print(f"  {'whole step of train_epoch':32s} {whole:7.2f}")


if __name__ == "__main__":
    main()
