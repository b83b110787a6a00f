"""What counter-based dropout costs on the CPU, against the generator it replaced, on the CLI's MLP defaults.

Two paired measurements (the machine may be shared, so each alternates the two implementations):

- the masks alone: one training step's masks of 784-256-128-10 with dropout 0.1 at batch 128 ((128, 256) and
  (128, 128)), old and new in alternating blocks, the best block of each, times the 469 steps of an epoch;
- whole epochs: one epoch of Fashion-MNIST (the CLI's MLP defaults, Adam, batch 128, NumPy, one worker) with
  today's Dropout and with a Dropout that draws its masks as before (numpy.random.Generator.random per step),
  alternating, the median of each, in wall time and in this process's CPU time (which other processes on a
  shared machine disturb less).

Usage: python bench/dropout_cost.py [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xpnn
from bench.implementations import load_data
from xpnn.nn.layers import Dropout
from xpnn.training.trainer import Trainer

SHAPES = ((128, 256), (128, 128))
STEPS = 469  # ceil(60,000 / 128)


class GeneratorDropout(Dropout):
    """Dropout as it was: a uniform draw from a seeded generator per step, compared with p."""

    def forward(self, x: Any, *, train: bool = False) -> Any:
        if not train:
            return x
        if getattr(self, "random", None) is None:
            self.random = self.backend.random(int(self.buffers["seed"]))
        keep = self.random.uniform(tuple(x.shape)) >= self.p
        self.keep = self.xp.astype(keep, x.dtype) * (1.0 / (1.0 - self.p))
        return x * self.keep


def masks_per_step() -> dict[str, float]:
    """Seconds per step of the masks alone, best of alternating blocks."""
    backend = xpnn.get_backend("cpu")
    seed, step = backend.asarray(7), backend.asarray(3)
    stream = backend.random(7)

    def old() -> None:
        for shape in SHAPES:
            backend.xp.astype(stream.uniform(shape) >= 0.1, backend.dtype) * (1 / 0.9)

    def new() -> None:
        for shape in SHAPES:
            backend.dropout_mask(seed, step, shape, 0, 0.1)

    best = {"generator": float("inf"), "counter": float("inf")}
    for _ in range(7):
        for name, run in (("generator", old), ("counter", new)):
            best[name] = min(best[name], timeit.timeit(run, number=200) / 200)
    return best


def epoch_seconds(rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    x, y, _ = load_data()
    trainers = {}
    for name, layer in (("generator", GeneratorDropout), ("counter", Dropout)):
        model = xpnn.mlp([784, 256, 128, 10], dropout=0.1, seed=1)
        model.layers = [layer(0.1).build(model.backend) if isinstance(old, Dropout) else old for old in model.layers]
        model.reseed()
        trainer = Trainer(model, xpnn.optim.Adam(model, lr=1e-3), batch_size=128, seed=1, cuda_graphs="off")
        trainers[name] = (trainer, trainer.device_data(x, y))
    times: dict[str, list[float]] = {name: [] for name in trainers}
    cpu: dict[str, list[float]] = {name: [] for name in trainers}
    for index in range(rounds + 1):
        for name, (trainer, data) in trainers.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            trainer.train_epoch(data, index)
            if index:  # the first round warms caches and the heap
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return times, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    masks = masks_per_step()
    times, cpu = epoch_seconds(args.rounds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    extra_masks = (masks["counter"] - masks["generator"]) * STEPS
    result = {"mask_us_per_step": {k: v * 1e6 for k, v in masks.items()},
              "mask_ms_per_epoch": {k: v * STEPS * 1e3 for k, v in masks.items()},
              "epoch_s": times, "epoch_median_s": medians, "epoch_cpu_s": cpu, "epoch_cpu_median_s": cpu_medians,
              "masks_change_pct_of_epoch": 100 * extra_masks / medians["generator"],
              "epoch_change_pct": 100 * (medians["counter"] / medians["generator"] - 1),
              "epoch_cpu_change_pct": 100 * (cpu_medians["counter"] / cpu_medians["generator"] - 1)}
    for name in masks:
        print(f"{name:9s}: masks {masks[name] * 1e6:6.1f} us/step = {masks[name] * STEPS * 1e3:5.1f} ms/epoch; "
              f"epoch median {medians[name]:.3f} s of {[round(t, 3) for t in times[name]]}, CPU time median "
              f"{cpu_medians[name]:.3f} s of {[round(t, 3) for t in cpu[name]]}")
    print(f"masks alone: {result['masks_change_pct_of_epoch']:+.2f} % of an epoch; whole epochs: "
          f"{result['epoch_change_pct']:+.2f} % wall, {result['epoch_cpu_change_pct']:+.2f} % CPU time")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
