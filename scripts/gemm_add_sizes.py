"""A weight's SGD update inside its gradient product against the separate update, by the weight's size.

    python scripts/gemm_add_sizes.py [--batch 128] [--repeats 3000]

For each weight shape, times ``xpnn.core.blas.gemm_add(W, x.T, dy, -lr)`` (one GEMM that adds the scaled
product into ``W``) against ``W -= lr * (x.T @ dy)`` (NumPy's product, then the update), in one process with
BLAS on its default threads and every array in cache: the best of 5 runs of ``--repeats`` calls, in
microseconds. Where the fused call is slower, its fixed cost through ctypes outweighs the pass it saves:
that is where ``Backend.matmul_add`` stops fusing (``MATMUL_ADD_MIN`` elements).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from cli_epoch import positive

from xpnn.core.backend import MATMUL_ADD_MIN
from xpnn.core.blas import gemm_add
from xpnn.runtime.heap import retain_freed_memory

SHAPES = [(16, 16), (32, 32), (64, 64), (128, 10), (128, 128), (256, 128), (784, 256)]


def fused(w: np.ndarray, x: np.ndarray, dy: np.ndarray) -> None:
    gemm_add(w, x.T, dy, -0.01)


def separate(w: np.ndarray, x: np.ndarray, dy: np.ndarray) -> None:
    w -= 0.01 * (x.T @ dy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive, default=128, help="rows of x and dy (default: 128)")
    parser.add_argument("--repeats", type=positive, default=3000, help="calls per run (default: 3000)")
    args = parser.parse_args()
    retain_freed_memory()  # as the command line does
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, float32, microseconds per update (best of 5 x {args.repeats}); "
          f"Backend.matmul_add fuses from {MATMUL_ADD_MIN} elements")
    for rows, cols in SHAPES:
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        x = rng.standard_normal((args.batch, rows)).astype(np.float32)
        dy = rng.standard_normal((args.batch, cols)).astype(np.float32)
        if not gemm_add(w, x.T, dy, -0.01):
            sys.exit("gemm_add: NumPy's BLAS cannot be reached here, so nothing is fused")

        times = [min(timeit.repeat(partial(run, w, x, dy), number=args.repeats, repeat=5)) / args.repeats * 1e6
                 for run in (fused, separate)]
        print(f"  {rows:4d} x {cols:<4d} ({rows * cols:7,d} elements): fused {times[0]:7.1f}, "
              f"separate {times[1]:7.1f}  ({times[0] / times[1]:.2f}x)")


if __name__ == "__main__":
    main()
