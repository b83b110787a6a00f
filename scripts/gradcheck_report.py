"""Print the largest relative error of backprop against central differences (float64, NumPy) for every
layer, every loss, and a whole model with batch normalization and dropout.

    python scripts/gradcheck_report.py

The test suite asserts the same checks below 1e-6 on every backend (tests/test_gradcheck.py).
"""

from __future__ import annotations

import numpy as np

import xpnn
from xpnn.model.gradcheck import gradcheck
from xpnn.nn.layers import ELU, Affine, BatchNorm1d, Dropout, LeakyReLU, ReLU, Sigmoid, Tanh
from xpnn.nn.losses import BCEWithLogits, MeanSquaredError, SoftmaxCrossEntropy


def main() -> None:
    backend = xpnn.get_backend("cpu", "float64")
    rng = np.random.default_rng(0)

    def away_from_kinks(shape):
        return rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)

    rows = []
    layers = {"Affine": Affine(5, 4), "ReLU": ReLU(), "LeakyReLU": LeakyReLU(0.1), "Sigmoid": Sigmoid(),
              "Tanh": Tanh(), "ELU": ELU(0.1), "BatchNorm1d": BatchNorm1d(5), "Dropout": Dropout(0.4)}
    for name, layer in layers.items():
        layer.build(backend, rng=2)
        errors = gradcheck(layer, backend.asarray(away_from_kinks((4, 5))), before=lambda layer=layer: layer.reseed(11))
        rows.append((name, errors))
    targets = {"SoftmaxCrossEntropy": (SoftmaxCrossEntropy(), rng.integers(0, 4, 6)),
               "MeanSquaredError": (MeanSquaredError(), rng.standard_normal((6, 4))),
               "BCEWithLogits": (BCEWithLogits(), rng.integers(0, 2, (6, 4)).astype(float))}
    for name, (loss, t) in targets.items():
        rows.append((name, gradcheck(loss, backend.asarray(2 * rng.standard_normal((6, 4))), backend.asarray(t))))
    model = xpnn.Sequential([Affine(6, 8), BatchNorm1d(8), Tanh(), Dropout(0.3), Affine(8, 5), ELU(), Affine(5, 3)],
                            backend=backend, seed=4)
    x, t = backend.asarray(rng.standard_normal((7, 6))), backend.asarray(rng.integers(0, 3, 7))
    errors = gradcheck(model, x, t, before=lambda: model.reseed(5))
    rows.append(("model (Affine-BN-Tanh-Dropout-Affine-ELU-Affine)", errors))

    print(f"{'checked':50s} {'max relative error':>18s}  worst entry")
    for name, errors in rows:
        worst = max(errors, key=errors.get)
        print(f"{name:50s} {errors[worst]:18.1e}  {worst}")


if __name__ == "__main__":
    main()
