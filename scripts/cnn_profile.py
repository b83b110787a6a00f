"""Where a CNN training step spends its time: milliseconds per step for each layer's forward and backward.

    python scripts/cnn_profile.py [--workers N|auto] [--batches 40]

Trains xpnn.cnn() (no dropout, SGD, batch 128) on the first batches of Fashion-MNIST (random data of the
same shape where it is not installed) for one untimed and one timed epoch, wrapping every layer's forward
and backward in a timer kept per thread (with --workers 2 each worker thread has its own column). Also
prints the epoch's wall time, user and system CPU seconds and minor page faults, which tell whether the
cores were busy and whether the C heap kept returning memory to the kernel. A pass that calls another
(Affine's backward calls its backward_params) includes it. Times on a shared machine drift by 20 % and
more; compare columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from implementations import cnn_images, load_data

import xpnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=lambda text: text if text == "auto" else int(text), default="auto",
                        help="threads per batch, as fit's workers (default: auto)")
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    batch = 128
    x, y, source = load_data(batch * args.batches)
    model = xpnn.cnn(dropout=0.0, backend="cpu", seed=0)
    model.check_values = False
    spent: dict[tuple[str, str], float] = collections.defaultdict(float)
    threads: dict[str, str] = {}

    def timed(method: str, function):
        def run(self, *a, **k):
            start = time.perf_counter()
            try:
                return function(self, *a, **k)
            finally:
                name = threading.current_thread().name
                if name not in threads:
                    others = sum(column != "main" for column in threads.values())
                    threads[name] = "main" if name == "MainThread" else f"worker {others + 1}"
                spent[(self._profile_name, method, threads[name])] += time.perf_counter() - start
        return run

    trainer = xpnn.trainer.Trainer(model, xpnn.optim.SGD(model, lr=0.01), batch_size=batch, seed=0,
                                   workers=args.workers)
    data = trainer.device_data(cnn_images(x), y)
    trainer.train_epoch(data, 0)
    # Patched on the classes, with a name on each layer that the workers' replicas (deep copies) inherit.
    for index, layer in enumerate(model.layers):
        layer._profile_name = f"{index} {type(layer).__name__}"
    for cls in {type(layer) for layer in model.layers}:
        for method in ("forward", "backward", "backward_params"):
            if hasattr(cls, method):
                setattr(cls, method, timed(method, getattr(cls, method)))
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    trainer.train_epoch(data, 1)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    steps = -(-x.shape[0] // batch)
    columns = sorted(set(threads.values()), key=lambda c: (c != "main", c))
    print(f"{source}, {steps} batches of {batch}, workers={trainer.workers}: {seconds:.3f} s wall, "
          f"{after.ru_utime - before.ru_utime:.2f} s user, {after.ru_stime - before.ru_stime:.2f} s system, "
          f"{after.ru_minflt - before.ru_minflt:,} minor page faults")
    print(f"{'layer':<16} {'pass':<16}" + "".join(f"{c:>12}" for c in columns) + "   (ms per step)")
    for layer_name, method in sorted({(k[0], k[1]) for k in spent}, key=lambda k: (int(k[0].split()[0]), k[1])):
        cells = [spent.get((layer_name, method, c), 0.0) / steps * 1e3 for c in columns]
        print(f"{layer_name:<16} {method:<16}" + "".join(f"{v:12.2f}" for v in cells))


if __name__ == "__main__":
    main()
