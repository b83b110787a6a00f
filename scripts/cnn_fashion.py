"""Train xpnn's CNN on Fashion-MNIST and report the test accuracy of every epoch.

    python scripts/cnn_fashion.py                      # the defaults reported for --model cnn
    python scripts/cnn_fashion.py --epochs 1 --subset 2000 --device torch

Images go to the model as (N, 1, 28, 28). Training uses xpnn.Trainer (device_data, run_epoch); the test
set is evaluated in chunks of --eval-batch images, because a 10,000-image batch of CNN activations
needs several GB. One JSON line per epoch goes to stdout (and to --out when given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import xpnn

FASHION = Path("/usr/share/datasets/fashion-mnist")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (default: 15)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per step (default: 128)")
    parser.add_argument("--optimizer", default="adam", help="sgd, momentum or adam (default: adam)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 0.001)")
    parser.add_argument("--schedule", default="cosine", help="constant, step or cosine (default: cosine)")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout after the dense layer (default: 0.5)")
    parser.add_argument("--device", default="cpu", help="xpnn device (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, shuffles, dropout (default: 0)")
    parser.add_argument("--subset", type=int, default=0, help="train on the first N images only (default: all)")
    parser.add_argument("--eval-batch", type=int, default=1000, help="images per evaluation batch (default: 1000)")
    parser.add_argument("--data", type=Path, default=FASHION, help=f"folder of the IDX files (default: {FASHION})")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines here (default: none)")
    args = parser.parse_args(argv)

    ds = xpnn.data.load_dataset("fashion-mnist", args.data, download_missing=False, quiet=True)
    x_train, y_train = ds.x_train, ds.y_train
    if args.subset:
        x_train, y_train = x_train[: args.subset], y_train[: args.subset]
    images = lambda x: x.reshape(-1, 1, 28, 28)  # noqa: E731

    model = xpnn.cnn(dropout=args.dropout, backend=xpnn.get_backend(args.device), seed=args.seed)
    optimizer = xpnn.optim.get_optimizer(args.optimizer, model, args.lr)
    trainer = xpnn.Trainer(model, optimizer, batch_size=args.batch_size, seed=args.seed,
                           schedule=xpnn.optim.get_schedule(args.schedule, args.epochs))
    train = trainer.device_data(images(x_train), y_train, 10)
    x_test, labels_test, _ = trainer.device_data(images(ds.x_test), ds.y_test, 10)
    lines = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        result = trainer.run_epoch(train, epoch, {})
        test_loss, correct = model.evaluate(x_test, labels_test, batch_size=args.eval_batch)
        record = {**result.as_dict(), "test_loss": model.backend.item(test_loss),
                  "test_accuracy": int(model.backend.item(correct)) / ds.x_test.shape[0],
                  "elapsed": time.perf_counter() - start}
        lines.append(json.dumps(record))
        print(lines[-1], flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print(json.dumps({"settings": settings, "final_test_accuracy": record["test_accuracy"]}), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
