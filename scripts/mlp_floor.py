"""The MLP's epoch at batch 128 in xpnn against the leanest NumPy loop for the same step, alternating in one process.

    python scripts/mlp_floor.py [--rounds 10]

"lean" is the fastest plain NumPy step found for 784-256-128-10 with SGD: everything a step can do in place
is done in place (ReLU, softmax, the scaled gradient), the batch is gathered as inputs and integer labels,
and the loss and the accuracy count are computed, as xpnn's step computes them. "lean, xpnn's arithmetic"
is the same loop doing its element-wise work the way xpnn's layers do (a new array for each ReLU output and
for its mask, the loss from one-hot targets, ``p -= lr * g`` leaving the gradient as it was). "xpnn" is
``Trainer.train_epoch`` with its default workers. The three run on Fashion-MNIST (random data of the same
shape where it is not installed) in turn, their order reversed every other round, each round after a probe
of the machine (bench/cli_epoch.py's: "near" when the two cores trade data quickly, "far" when slowly). The
medians are printed per state: the gap between "lean" and "lean, xpnn's arithmetic" is what the arithmetic
costs, the rest of the gap to "xpnn" is the layers, the loss, the optimizer and the loop in Python. xpnn's
SGD moves its two large weights inside their gradient products (``SGD.backward_step``), which plain NumPy
cannot: where the two cores trade data slowly, that puts xpnn below the "lean" loop.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from cli_epoch import machine_probe, positive
from implementations import LR, SIZES, load_data

import xpnn
from xpnn.runtime.heap import retain_freed_memory


def lean_epoch(x: np.ndarray, y: np.ndarray, xpnn_arithmetic: bool) -> Callable[[int], None]:
    """One epoch of the plain NumPy loop, seeded by the epoch number; ``xpnn_arithmetic`` as the docstring says."""
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal(shape) * np.sqrt(2 / shape[0])).astype(np.float32)
               for shape in itertools.pairwise(SIZES)]
    biases = [np.zeros(n, np.float32) for n in SIZES[1:]]
    params = [p for pair in zip(weights, biases, strict=True) for p in pair]
    lr, eye = np.float32(LR), np.eye(SIZES[-1], dtype=np.float32)
    one_hot = eye[y]
    ones = np.ones(128, np.float32)

    def relu(h: np.ndarray) -> np.ndarray:
        if xpnn_arithmetic:
            out = np.zeros(h.shape, h.dtype)
            return np.maximum(h, out, out=out)
        return np.maximum(h, 0, out=h)

    def relu_backward(d: np.ndarray, h: np.ndarray) -> np.ndarray:
        if xpnn_arithmetic:
            mask = (h > 0).astype(d.dtype)
            mask *= d
            return mask
        d *= h > 0
        return d

    def step(xb: np.ndarray, yb: np.ndarray, tb: np.ndarray) -> tuple[float, int]:
        n = xb.shape[0]
        h1 = xb @ weights[0]
        h1 += biases[0]
        h1 = relu(h1)
        h2 = h1 @ weights[1]
        h2 += biases[1]
        h2 = relu(h2)
        z = h2 @ weights[2]
        z += biases[2]
        hits = (z.argmax(axis=1) == yb).sum()
        if xpnn_arithmetic:
            shifted = z - z.max(axis=1, keepdims=True)
            e = np.exp(shifted)
            total = e.sum(axis=1, keepdims=True)
            loss = (tb * (np.log(total) - shifted)).sum() / n
            dz = (e / total - tb) * (1.0 / n)
        else:
            z -= z.max(axis=1, keepdims=True)
            picked = z[np.arange(n), yb]
            np.exp(z, out=z)
            total = z.sum(axis=1, keepdims=True)
            z /= total
            loss = (np.log(total[:, 0]) - picked).sum() / n
            z -= eye[yb]
            z *= np.float32(1 / n)
            dz = z
        d2 = relu_backward(dz @ weights[2].T, h2)
        d1 = relu_backward(d2 @ weights[1].T, h1)
        grads = (xb.T @ d1, ones[:n] @ d1, h1.T @ d2, ones[:n] @ d2, h2.T @ dz, ones[:n] @ dz)
        for p, g in zip(params, grads, strict=True):
            if xpnn_arithmetic:
                p -= lr * g
            else:
                g *= lr
                p -= g
        return loss, hits

    def epoch(index: int) -> None:
        order = np.random.default_rng([0, index]).permutation(x.shape[0])
        for start in range(0, x.shape[0], 128):
            rows = order[start:start + 128]
            step(x[rows], y[rows], one_hot[rows] if xpnn_arithmetic else None)

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive, default=10, help="rounds of one epoch each (default: 10)")
    rounds = parser.parse_args().rounds
    retain_freed_memory()  # as the command line does
    x, y, source = load_data()
    x, y = np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    model = xpnn.mlp(list(SIZES), backend="cpu", seed=0)
    model.check_values = False
    trainer = xpnn.Trainer(model, xpnn.optim.SGD(model, lr=LR), batch_size=128, seed=0)
    data = trainer.device_data(x, y)
    runs = {"lean": lean_epoch(x, y, False), "lean, xpnn's arithmetic": lean_epoch(x, y, True),
            "xpnn": lambda index: trainer.train_epoch(data, index)}
    for run in runs.values():  # untimed: every array made once
        run(0)
    seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
    for round_ in range(rounds):
        state = machine_probe()["state"] or "unprobed"
        cells = []
        for name in list(runs) if round_ % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            runs[name](round_ + 1)
            seconds[state, name].append(time.perf_counter() - start)
            cells.append(f"{name} {seconds[state, name][-1]:.3f}")
        print(f"round {round_ + 1} ({state}): " + ", ".join(cells) + " s", flush=True)
    print(f"MLP 784-256-128-10, batch 128, SGD, {source}: median seconds per epoch (training only), by state")
    for state in ("near", "far", "unprobed"):
        medians = {name: statistics.median(seconds[state, name]) for name in runs if seconds[state, name]}
        if medians:
            cells = ", ".join(f"{name} {value:.3f} ({value / medians['lean']:.2f}x lean)"
                              for name, value in medians.items())
            print(f"  {state} ({len(seconds[state, 'lean'])} rounds): {cells}")


if __name__ == "__main__":
    main()
