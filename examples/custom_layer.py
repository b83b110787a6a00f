"""A layer of your own: a learnable per-feature scale, its gradient check, training, saving and loading.

    python examples/custom_layer.py
    python examples/custom_layer.py --tiny           # fewer epochs (a smoke test)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import xpnn


class Scale(xpnn.Layer):
    """y = x * a with one learnable factor per feature. Shapes: x (N, n) -> y (N, n)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def initialize(self, rng):
        self.params["a"] = self.backend.ones((self.n,))

    def forward(self, x, *, train=False):
        self.x = x
        return x * self.params["a"]

    def backward(self, dy):
        self.grads["a"] = self.xp.sum(dy * self.x, axis=0)
        return dy * self.params["a"]

    def config(self):
        return {"n": self.n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="fewer epochs: runs in about a second")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    # 1. The backward pass against central differences, in float64.
    backend64 = xpnn.get_backend("cpu", dtype="float64")
    net = xpnn.Sequential([xpnn.Affine(3, 4), Scale(4), xpnn.Tanh(), xpnn.Affine(4, 2)], backend=backend64, seed=0)
    errors = xpnn.gradcheck(net, backend64.asarray(rng.standard_normal((5, 3))), backend64.asarray([0, 1, 1, 0, 1]))
    print("largest relative error:", f"{max(errors.values()):.1e}")
    assert max(errors.values()) < 1e-6, errors

    # 2. Train it inside a model, like any built-in layer.
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    y = (x[:, 0] - 2 * x[:, 1] > 0).astype(int)
    model = xpnn.Sequential([Scale(8), xpnn.Affine(8, 16), xpnn.ReLU(), xpnn.Affine(16, 2)], seed=0)
    xpnn.fit(model, xpnn.optim.Adam(model, lr=1e-2), x, y, epochs=3 if args.tiny else 30, verbose=False)
    print(f"train accuracy {model.accuracy(x, y):.2%}")

    # 3. Save and load: the class must be defined or imported where the model is loaded.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scaled.npz"
        model.save(path)
        again = xpnn.load(path)
        assert isinstance(again[0], Scale)
        print(f"reloaded: train accuracy {again.accuracy(x, y):.2%}")


if __name__ == "__main__":
    main()
