"""Train the 784-256-128-10 multilayer perceptron on Fashion-MNIST with ``xpnn.fit``, save it, load it back.

    python examples/mlp_fashion_mnist.py             # the real data (found on disk or downloaded), 5 epochs
    python examples/mlp_fashion_mnist.py --tiny      # 512 random images of the same shape, 1 epoch (a smoke test)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import xpnn
from xpnn.io.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="random data, one epoch: runs in about a second")
    parser.add_argument("--device", default="cpu", help="cpu, gpu, torch or torch:cuda (default: cpu)")
    args = parser.parse_args()

    if args.tiny:
        rng = np.random.default_rng(0)
        x_train, y_train = rng.random((512, 784), dtype=np.float32), rng.integers(0, 10, 512)
        x_test, y_test = rng.random((128, 784), dtype=np.float32), rng.integers(0, 10, 128)
        epochs = 1
    else:
        data = load_dataset("fashion-mnist")            # float32 rows in [0, 1], integer labels
        x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
        epochs = 5

    model = xpnn.mlp([784, 256, 128, 10], dropout=0.1, backend=args.device, seed=0)
    optimizer = xpnn.optim.Adam(model, lr=1e-3)
    xpnn.fit(model, optimizer, x_train, y_train, epochs=epochs, batch_size=128, schedule="cosine",
             eval_sets={"test": (x_test, y_test)}, verbose=not args.tiny)
    print(f"test accuracy {model.accuracy(x_test, y_test):.2%}")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mlp.npz"
        model.save(path)
        again = xpnn.load(path, backend=args.device)
        print(f"reloaded from {path.name}: test accuracy {again.accuracy(x_test, y_test):.2%}")


if __name__ == "__main__":
    main()
