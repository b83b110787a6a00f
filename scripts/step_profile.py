"""Where the host spends a training epoch: a cProfile of the bench's epochs, per backend and model.

    python scripts/step_profile.py --backend cupy --model mlp [--epochs 2] [--top 25]

On a GPU at batch 128 the epoch is launch-bound: its time is the host's Python and library overhead per
operation, which cProfile sees (the device work runs asynchronously behind it). Runs one untimed epoch
(warm-up, lazy caches, graph capture), then profiles ``--epochs`` epochs of the same implementation that
bench/test_epoch.py (``--model mlp``) or bench/test_cnn.py (``--model cnn``) times, and prints the wall
time per epoch and the functions with the most own time. Compare columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from implementations import load_data, make_cnn_epoch, make_epoch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", help="numpy, torch-cpu, cupy or torch-cuda")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--implementation", default="xpnn", help="xpnn, xpnn-eager, pytorch, ...")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.model == "cnn":
        x, y, source = load_data(40 * args.batch)
        epoch = make_cnn_epoch(args.implementation, args.backend, x, y, args.batch)
    else:
        x, y, source = load_data()
        epoch = make_epoch(args.implementation, args.backend, x, y, args.batch)
    epoch.run()
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for _ in range(args.epochs):
        epoch.run()
    profile.disable()
    seconds = (time.perf_counter() - start) / args.epochs
    steps = -(-x.shape[0] // args.batch)
    print(f"{args.implementation} {args.model} on {args.backend}, batch {args.batch}, {source}: "
          f"{seconds:.3f} s per epoch under the profiler, {1e3 * seconds / steps:.3f} ms per step")
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(args.top)
    print(text.getvalue())


if __name__ == "__main__":
    main()
