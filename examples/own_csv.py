"""Train a classifier on a CSV file of your own: one row per sample, the label (0..K-1) in the last column.

    python examples/own_csv.py data.csv              # a header row is skipped if there is one
    python examples/own_csv.py --tiny                # writes a small CSV to a temporary folder and uses it

The features are standardized with the training part's mean and standard deviation; a fifth of the rows,
drawn at random, is held out for testing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import xpnn


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float32 and integer labels (N,) from a comma-separated file."""
    with open(path) as file:
        first = file.readline()
    has_header = any(ch.isalpha() for ch in first)
    table = np.loadtxt(path, delimiter=",", skiprows=1 if has_header else 0, ndmin=2)
    labels = table[:, -1]
    if not np.array_equal(labels, np.round(labels)) or labels.min() < 0:
        raise SystemExit(f"{path}: the last column must hold integer labels 0..K-1")
    return table[:, :-1].astype(np.float32), labels.astype(int)


def write_example_csv(path: Path) -> None:
    """Three classes of points in 4 dimensions, with a header row."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] + x[:, 2] > 0.5)
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="f1,f2,f3,f4,label", comments="", fmt="%.5g")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, help="the CSV file")
    parser.add_argument("--tiny", action="store_true", help="make a small CSV and train on it")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the data (default: 30)")
    args = parser.parse_args()
    if args.csv is None and not args.tiny:
        parser.error("give a CSV file, or --tiny")

    with tempfile.TemporaryDirectory() as folder:
        path = args.csv
        if args.tiny:
            path = Path(folder) / "example.csv"
            write_example_csv(path)
        x, y = read_csv(path)

    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[: len(x) // 5], order[len(x) // 5:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8
    x = (x - mean) / std

    model = xpnn.mlp([x.shape[1], 64, int(y.max()) + 1], dropout=0.1, seed=0)
    history = xpnn.fit(model, xpnn.optim.Adam(model, lr=3e-3), x[train], y[train], epochs=args.epochs,
                       batch_size=32, eval_sets={"test": (x[test], y[test])}, verbose=False)
    print(f"{len(train)} training rows, {x.shape[1]} features, {int(y.max()) + 1} classes")
    print(f"test accuracy {history[-1]['test_accuracy']:.2%}")


if __name__ == "__main__":
    main()
