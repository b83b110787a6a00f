"""A CNN training step with and without one of the backend's fast paths, alternating in one process.

    python scripts/fast_path_ab.py first_max_scatter [--batches 80] [--rounds 8] [--workers auto]

PATH names a :class:`xpnn.Backend` method that returns None where it does not apply (``first_max_scatter``,
``unfold_fast``): with the path off it always returns None, and the layers take their generic array-API code.
Trains xpnn.cnn() (no dropout, SGD, batch 128) on the first batches of Fashion-MNIST (random data of the same
shape where it is not installed), an untimed epoch each way and then ``2 × rounds`` timed ones, on and off in
alternation (ABBA), as the command line does (``retain_freed_memory``, the default workers). Prints
milliseconds per step for each epoch, the medians and their ratio. The machine's speed drifts between
minutes, not between neighbouring epochs, so only the ratio of one run means anything.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from cli_epoch import positive
from implementations import cnn_images, load_data

import xpnn
from xpnn.runtime.heap import retain_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", choices=["first_max_scatter", "unfold_fast"], help="the Backend method to switch")
    parser.add_argument("--batches", type=positive, default=80)
    parser.add_argument("--rounds", type=positive, default=8)
    parser.add_argument("--workers", type=lambda text: text if text == "auto" else positive(text), default="auto")
    args = parser.parse_args()
    retain_freed_memory()
    batch = 128
    x, y, source = load_data(batch * args.batches)
    model = xpnn.cnn(dropout=0.0, backend="cpu", seed=0)
    model.check_values = False
    try:
        trainer = xpnn.trainer.Trainer(model, xpnn.optim.SGD(model, lr=0.01), batch_size=batch, seed=0,
                                       workers=args.workers)
    except ValueError as error:  # e.g. more workers than cores
        parser.error(str(error))
    data = trainer.device_data(cnn_images(x), y)
    backend_class = type(model.backend)
    fast = getattr(backend_class, args.path)
    try:
        for on in (True, False):  # an untimed epoch each way: both have made their arrays once
            setattr(backend_class, args.path, fast if on else (lambda self, *a, **k: None))
            trainer.train_epoch(data, 0)
    finally:
        setattr(backend_class, args.path, fast)
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for round_ in range(args.rounds):
            for on in (True, False) if round_ % 2 == 0 else (False, True):
                setattr(backend_class, args.path, fast if on else (lambda self, *a, **k: None))
                start = time.perf_counter()
                trainer.train_epoch(data, 1)
                times[on].append((time.perf_counter() - start) / args.batches * 1e3)
    finally:
        setattr(backend_class, args.path, fast)
    print(f"{source}, {args.batches} batches of {batch}, workers={trainer.workers}, ms per step:")
    for on in (True, False):
        label = f"{args.path} {'on' if on else 'off'}"
        cells = " ".join(f"{t:6.2f}" for t in times[on])
        print(f"{label:<24}{cells}   median {statistics.median(times[on]):.2f}")
    print(f"on / off: {statistics.median(times[True]) / statistics.median(times[False]):.3f}")


if __name__ == "__main__":
    main()
