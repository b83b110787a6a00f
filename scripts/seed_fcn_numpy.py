"""fcn-base-numpy's setting, side by side: a loop written the seed's way against xpnn, on the same data.

The seed (shared/SEEDS.md, system 4) trains 784-256-128-10 ReLU with softmax cross-entropy, column-major
NumPy (W is (out, in), X is (784, m)), its "xavier" init randn / sqrt(n_out / 2), zero biases, a fresh
np.random.permutation shuffle per epoch, minibatch 128, plain SGD lr 0.01. xpnn runs the same setting
through the library: ``mlp(..., init="fcn_xavier")``, ``optim.SGD(lr=0.01)`` and ``xpnn.fit``.
MNIST cannot be downloaded here, so both read real Fashion-MNIST (--data).

    python scripts/seed_fcn_numpy.py                  # 5 epochs, seed 0
    python scripts/seed_fcn_numpy.py --epochs 15 --seeds 0 1 2 --he
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

import xpnn
from xpnn.io.data import load_dataset
from xpnn.optim import SGD

SIZES = [784, 256, 128, 10]


def seed_loop(x_train, y_train, x_test, y_test, epochs: int, seed: int, lr: float = 0.01, batch: int = 128) -> float:
    """The seed's own training loop (column-major float64 NumPy); returns the test accuracy."""
    np.random.seed(seed)
    W = [np.random.randn(n_out, n_in) / np.sqrt(n_out / 2) for n_in, n_out in itertools.pairwise(SIZES)]
    b = [np.zeros((n_out, 1)) for n_out in SIZES[1:]]
    X, Y = x_train.T.astype(np.float64), np.eye(10)[y_train].T  # (784, m), one-hot (10, m)
    m = X.shape[1]
    for _ in range(epochs):
        order = np.random.permutation(m)
        X, Y = X[:, order], Y[:, order]
        for start in range(0, m, batch):
            A = [X[:, start:start + batch]]
            Yb = Y[:, start:start + batch]
            for i in range(3):
                Z = W[i] @ A[-1] + b[i]
                if i < 2:
                    A.append(np.maximum(Z, 0))
                else:
                    E = np.exp(Z - Z.max(axis=0, keepdims=True))
                    A.append(E / E.sum(axis=0, keepdims=True))
            dZ = (A[3] - Yb) / Yb.shape[1]
            for i in (2, 1, 0):
                dW, db = dZ @ A[i].T, dZ.sum(axis=1, keepdims=True)
                if i > 0:
                    dZ = (W[i].T @ dZ) * (A[i] > 0)
                W[i] -= lr * dW
                b[i] -= lr * db
    A = x_test.T.astype(np.float64)
    for i in range(3):
        A = W[i] @ A + b[i]
        if i < 2:
            A = np.maximum(A, 0)
    return float(np.mean(A.argmax(axis=0) == y_test))


def xpnn_run(data, epochs: int, seed: int, init: str, device: str, lr: float = 0.01, batch: int = 128) -> float:
    """The same setting through the library; returns the test accuracy after the last epoch."""
    model = xpnn.mlp(SIZES, init=init, backend=device, seed=seed)
    history = xpnn.fit(model, SGD(model, lr=lr), data.x_train, data.y_train, epochs=epochs, batch_size=batch,
                       eval_sets={"test": (data.x_test, data.y_test)}, seed=seed, verbose=False, progress=False)
    return history[-1]["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs (the seed reports 5 and 15; default: 5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to run (default: 0)")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                        help="folder with the four IDX files (default: /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--device", default="cpu", help="xpnn backend (default: cpu)")
    parser.add_argument("--he", action="store_true", help="also run xpnn with its default init 'he'")
    args = parser.parse_args()
    data = load_dataset("fashion-mnist", data_dir=args.data, download_missing=False, quiet=True)
    columns = ["seed's loop (NumPy)", "xpnn init=fcn_xavier"] + (["xpnn init=he"] if args.he else [])
    print(f"784-256-128-10 ReLU, SGD lr 0.01, batch 128, {args.epochs} epochs, {data.name} from {data.directory}")
    print(f"test accuracy  {'seed':>4}  " + "  ".join(f"{c:>22}" for c in columns))
    results = []
    for seed in args.seeds:
        start = time.perf_counter()
        row = [seed_loop(data.x_train, data.y_train, data.x_test, data.y_test, args.epochs, seed),
               xpnn_run(data, args.epochs, seed, "fcn_xavier", args.device)]
        if args.he:
            row.append(xpnn_run(data, args.epochs, seed, "he", args.device))
        results.append(row)
        print(f"{'':13}  {seed:>4}  " + "  ".join(f"{100 * a:21.2f}%" for a in row)
              + f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    mean = np.mean(results, axis=0)
    print(f"{'mean':>13}  {'':>4}  " + "  ".join(f"{100 * a:21.2f}%" for a in mean))
    # Both sides run the same algorithm from differently drawn weights and shuffles: compare per seed.
    differences = 100 * (np.asarray(results)[:, 1] - np.asarray(results)[:, 0])
    spread = float(np.std(differences, ddof=1)) if len(differences) > 1 else float("nan")
    stderr = spread / np.sqrt(len(differences))
    if differences.mean() >= 0:
        verdict = "at least as accurate as"
    elif len(differences) > 1 and -differences.mean() < 2 * stderr:
        verdict = "within seed-to-seed noise of"
    else:
        verdict = "LESS accurate than"
    print(f"xpnn - seed's loop: {differences.mean():+.2f} points (per-seed standard deviation {spread:.2f}, "
          f"{len(differences)} seeds): xpnn in the seed's setting is {verdict} the seed's own loop")


if __name__ == "__main__":
    main()
