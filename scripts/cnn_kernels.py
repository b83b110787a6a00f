"""Ways to compute two kernels of the CNN step on NumPy, side by side: max-pool backward and conv 2's products.

    python scripts/cnn_kernels.py [--repeats 30]

Max-pool backward (2x2 windows over 64 channels-last 28x28x32 images, a third of them tied windows, as after
ReLU or in the blank border of Fashion-MNIST): the first window position that attains the maximum takes the
whole gradient, as in PyTorch. Each variant is checked bit for bit against xpnn's ("remaining"). Then the
three matrix products of conv 2 (32->64 channels, 3x3, 64 images of 14x14) in each memory layout, and a
1024³ product for the core's rate. Everything on one thread; prints thread-time minimum and median.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

N, H, W, C = 64, 28, 28, 32
WINDOWS = [(slice(None), slice(i, None, 2), slice(j, None, 2), slice(None)) for i in range(2) for j in range(2)]


def timing(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    function()
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        function()
        times.append(time.thread_time() - start)
    return min(times), statistics.median(times)


def pool_variants(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    def remaining() -> np.ndarray:  # xpnn's MaxPool2d.backward
        dx, rest = np.empty_like(x), dy
        for k, index in enumerate(WINDOWS):
            if k == len(WINDOWS) - 1:
                share = rest
            else:
                share = (x[index] == y).astype(np.float32)
                share *= rest
                rest = rest - share
            dx[index] = share
        return dx

    def bool_times_remaining() -> np.ndarray:
        dx, rest = np.empty_like(x), dy
        for k, index in enumerate(WINDOWS):
            if k == len(WINDOWS) - 1:
                dx[index] = rest
            else:
                share = (x[index] == y) * rest
                dx[index] = share
                rest = rest - share
        return dx

    def mask_assignment() -> np.ndarray:
        dx, rest = np.empty_like(x), dy.copy()
        for k, index in enumerate(WINDOWS):
            if k == len(WINDOWS) - 1:
                dx[index] = rest
            else:
                hit = x[index] == y
                dx[index] = hit * rest
                rest[hit] = 0
        return dx

    def claimed_maxima_as_nan() -> np.ndarray:
        dx, top = np.empty_like(x), y.copy()
        for k, index in enumerate(WINDOWS):
            hit = x[index] == top
            np.multiply(hit, dy, out=dx[index])
            if k < len(WINDOWS) - 1:
                top[hit] = np.nan
        return dx

    def where_nan() -> np.ndarray:
        dx, top = np.empty_like(x), y.copy()
        for k, index in enumerate(WINDOWS):
            hit = x[index] == top
            dx[index] = hit * dy
            if k < len(WINDOWS) - 1:
                top = np.where(hit, np.float32(np.nan), top)
        return dx

    return {"remaining (xpnn)": remaining, "bool * remaining": bool_times_remaining,
            "boolean-mask assignment": mask_assignment, "claimed maxima set to NaN": claimed_maxima_as_nan,
            "where() NaN": where_nan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    repeats = parser.parse_args().repeats
    rng = np.random.default_rng(0)
    x = np.ascontiguousarray(rng.standard_normal((N, C, H, W), dtype=np.float32).transpose(0, 2, 3, 1))
    x[:, :10] = 0.5  # tied windows
    blocks = [x[index] for index in WINDOWS]
    y = np.maximum(np.maximum(blocks[0], blocks[1]), np.maximum(blocks[2], blocks[3]))
    dy = rng.standard_normal(y.shape, dtype=np.float32)

    def argmax_forward() -> tuple[np.ndarray, np.ndarray]:  # keep the winner's index from the forward pass
        b0, b1, b2, b3 = (x[index] for index in WINDOWS)
        low, high = np.maximum(b0, b1), np.maximum(b2, b3)
        first, second = (b1 > b0).astype(np.int8), (b3 > b2).astype(np.int8) + np.int8(2)
        return np.maximum(low, high), np.where(high > low, second, first)

    _, winner = argmax_forward()

    def argmax_backward() -> np.ndarray:
        dx = np.empty_like(x)
        for k, index in enumerate(WINDOWS):
            share = (winner == k).astype(np.float32)
            share *= dy
            dx[index] = share
        return dx

    with threadpool_limits(1):
        print("max-pool backward, 64 images 28x28x32, 2x2 windows: ms (min, median)")
        variants = pool_variants(x, y, dy)
        reference = variants["remaining (xpnn)"]()
        for name, variant in variants.items():
            assert np.array_equal(variant(), reference), name
            print(f"  {name:28s} {timing(variant, repeats)[0] * 1e3:6.2f} {timing(variant, repeats)[1] * 1e3:6.2f}")
        assert np.array_equal(argmax_backward(), reference)
        plain = timing(lambda: np.maximum(np.maximum(blocks[0], blocks[1]), np.maximum(blocks[2], blocks[3])), repeats)
        for name, cost in [("forward, max only (xpnn)", plain), ("forward keeping the argmax", timing(argmax_forward,
                                                                                                        repeats)),
                           ("backward from the argmax", timing(argmax_backward, repeats))]:
            print(f"  {name:28s} {cost[0] * 1e3:6.2f} {cost[1] * 1e3:6.2f}")

        print("conv 2 products (12544 x 288 patches, 64 filters) and 1024^3: GFLOP/s (best)")
        patches = rng.random((12544, 288), dtype=np.float32)
        weights = rng.random((288, 64), dtype=np.float32)
        grad = rng.random((12544, 64), dtype=np.float32)
        patches_t, weights_t = np.ascontiguousarray(patches.T), np.ascontiguousarray(weights.T)
        square_a, square_b = rng.random((1024, 1024), dtype=np.float32), rng.random((1024, 1024), dtype=np.float32)
        flops = 2 * 12544 * 288 * 64
        for name, product, work in [
            ("forward: patches @ W", lambda: patches @ weights, flops),
            ("forward: W^T @ patches^T", lambda: weights_t @ patches_t, flops),
            ("forward: F-order patches @ W", lambda: patches_t.T @ weights, flops),
            ("dW = patches^T @ dY", lambda: patches.T @ grad, flops),
            ("dW^T = dY^T @ patches", lambda: grad.T @ patches, flops),
            ("dpatches = dY @ W^T", lambda: grad @ weights_t, flops),
            ("1024^3", lambda: square_a @ square_b, 2 * 1024**3),
        ]:
            print(f"  {name:28s} {work / timing(product, repeats)[0] / 1e9:6.1f}")


if __name__ == "__main__":
    main()
