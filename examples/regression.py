"""Fit a smooth function of two inputs with a mean-squared-error MLP and early stopping.

    python examples/regression.py
    python examples/regression.py --tiny             # fewer samples and epochs (a smoke test)
"""

from __future__ import annotations

import argparse

import numpy as np

import xpnn


def target(x: np.ndarray) -> np.ndarray:
    """y = sin(3·x0) · cos(2·x1), for x in [-1, 1]^2; shape (N,)."""
    return np.sin(3 * x[:, 0]) * np.cos(2 * x[:, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a small problem that runs in about a second")
    args = parser.parse_args()

    n, epochs = (1000, 20) if args.tiny else (20_000, 200)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    y = target(x).astype(np.float32)
    x_test = rng.uniform(-1, 1, (2000, 2)).astype(np.float32)

    model = xpnn.mlp([2, 64, 64, 1], activation="tanh", loss=xpnn.MeanSquaredError(), seed=0)
    stop = xpnn.EarlyStopping(monitor="val_loss", patience=10)
    history = xpnn.fit(model, xpnn.optim.Adam(model, lr=3e-3), x, y, epochs=epochs, batch_size=64,
                       validation_split=0.1, callbacks=[stop], verbose=False)
    predicted = xpnn.backend.to_numpy(model.predict(x_test))[:, 0]
    mse = float(np.mean((predicted - target(x_test)) ** 2))
    print(f"{len(history)} epochs; best val loss at epoch {stop.best_epoch}")
    print(f"test mse {mse:.5f} (the target's variance: {np.var(target(x_test)):.3f})")


if __name__ == "__main__":
    main()
