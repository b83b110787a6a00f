"""Train a classifier on a CSV file of your own: a header row, numeric features and a label column.

    python examples/own_csv.py data.csv                    # the label: the column named "label", else the last
    python examples/own_csv.py data.csv --target species   # or the column you name
    python examples/own_csv.py --tiny                      # writes a small CSV to a temporary folder and uses it

The file is read and checked as ``python -m xpnn.train --data data.csv`` reads it, with the same held-out
test rows (a fifth of each class). The features are standardized inside the model, so the saved model
predicts on raw rows.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import xpnn
from xpnn.io.data import DataError
from xpnn.io.datafile import load_data_file


def write_example_csv(path: Path) -> None:
    """Three named classes of points in 4 dimensions, one feature on a much larger scale."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 4)) * [1, 1, 1, 100]
    kind = (x[:, 0] > 0).astype(int) + (x[:, 1] + x[:, 3] / 100 > 0.5)
    names = np.array(["low", "middle", "high"])[kind]
    with open(path, "w") as file:
        file.write("f1,f2,f3,f4,kind\n")
        for row, name in zip(x, names, strict=True):
            file.write(",".join(f"{v:.5g}" for v in row) + f",{name}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, help="the CSV file")
    parser.add_argument("--target", help="the label column (default: the column named label, else the last)")
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
        try:
            data = load_data_file(path, target=args.target)
        except DataError as error:
            raise SystemExit(f"own_csv.py: {error}") from None

        features, classes = data.x_train.shape[1], data.class_count
        model = xpnn.model.standardized(xpnn.mlp([features, 64, classes], dropout=0.1, seed=0), data.x_train)
        xpnn.fit(model, xpnn.optim.Adam(model, lr=3e-3), data.x_train, data.y_train, epochs=args.epochs,
                 batch_size=32, verbose=False)
        print(f"{data.name}: {len(data.x_train)} training rows, {features} features, {classes} classes "
              f"{data.class_names or ''}")

        model.save(Path(folder) / "model.npz")
        again = xpnn.load(Path(folder) / "model.npz")       # the statistics and class names come with it
        print(f"test accuracy {again.accuracy(data.x_test, data.y_test):.2%}")


if __name__ == "__main__":
    main()
