"""max(x, 0) on NumPy three ways, at the shapes the MLP and the CNN train with: microseconds per call.

    python scripts/relu_kernels.py [--repeats 7]

NumPy's loop for ``maximum`` over two arrays is vectorized; the loop over an array and a scalar (or a 0-d array)
is not. ``Backend.relu`` therefore writes the maximum into a zeroed array of the input's shape and memory layout
instead of comparing with a 0-d zero. Each way is checked bit for bit against ``np.maximum(x, 0)`` (signed zeros, NaN
and infinities included) before it is timed, on one thread.
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np

# name: (shape in memory, axes of the view the layer sees). The CNN's ReLUs follow its max-pools, whose outputs
# are NCHW views of channels-last memory, as each worker sees them with a batch of 128 on two workers.
SHAPES = {"MLP hidden 1": ((128, 256), (0, 1)), "MLP hidden 2": ((128, 128), (0, 1)),
          "MLP evaluation": ((1000, 256), (0, 1)),
          "CNN after pool 1": ((64, 14, 14, 32), (0, 3, 1, 2)), "CNN after pool 2": ((64, 7, 7, 64), (0, 3, 1, 2))}


def scalar(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype))


def into_zeros(x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape, x.dtype) if x.flags.c_contiguous else np.zeros_like(x, subok=False)  # as Backend.relu
    return np.maximum(x, out, out=out)


def mask(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return x * (x > 0)  # -0.0 for negative x, NaN for -inf: shown for its speed, not bit-equal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    rng = np.random.default_rng(0)
    special = np.array([-0.0, 0.0, np.nan, -np.inf, np.inf, 1e-45, -1e-45], np.float32)
    print(f"NumPy {np.__version__}; microseconds per call, best of {repeats}")
    print(f"  {'shape':36s} {'max(x, 0-d zero)':>17s} {'max into zeros':>15s} {'x * (x > 0)':>12s}")
    for name, (memory, axes) in SHAPES.items():
        x = rng.standard_normal(memory).astype(np.float32)
        x.reshape(-1)[: special.size] = special
        x = np.transpose(x, axes)
        shape = x.shape
        reference = np.maximum(x, np.float32(0)).view(np.uint32)
        assert np.array_equal(scalar(x).view(np.uint32), reference)
        assert np.array_equal(into_zeros(x).view(np.uint32), reference)
        number = max(5, int(2e7 / x.size))
        times = [min(timeit.repeat(lambda f=f, x=x: f(x), number=number, repeat=repeats)) / number * 1e6
                 for f in (scalar, into_zeros, mask)]
        print(f"  {name + ' ' + str(shape):36s} {times[0]:17.1f} {times[1]:15.1f} {times[2]:12.1f}")


if __name__ == "__main__":
    main()
