"""The command line's default networks on a GPU, against PyTorch written fast: one epoch each, alternating.

Rows (``--models mlp cnn``; each at ``--batch`` 128 on Fashion-MNIST, or random data of its shape):

- ``xpnn``: the CLI's default MLP (784-256-128-10, ReLU, dropout 0.1) or CNN (conv 32 and 64, dense 128,
  dropout 0.5), Adam lr 1e-3, through the trainer's epoch, on CuPy (``cupy``) and torch (``torch-cuda``),
  with ``--cuda-graphs auto`` (captured) and ``off`` (``xpnn-eager``);
- ``pytorch``: the same network as a PyTorch user writes it fast: nn.Sequential, Adam (foreach), the data
  on the GPU, batches gathered on the device, no host synchronisation inside the epoch;
- ``pytorch-compiled``: its step under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs via Inductor).

Each implementation first trains one untimed epoch (compilation, capture), then the timed rounds run the
implementations one after another, round by round, so drifts of the machine reach all of them alike. The
table gives the median epoch and its ratio to PyTorch eager on the same model.

Usage: python bench/defaults_gpu.py [--rounds 5] [--json out.json] [--md out.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xpnn
from bench.implementations import cnn_images, load_data
from xpnn.training.trainer import Trainer

LR = 1e-3


def xpnn_epoch(model_name: str, device: str, x: np.ndarray, y: np.ndarray, batch: int,
               cuda_graphs: str) -> Callable[[int], None]:
    backend = xpnn.get_backend(device)
    if model_name == "mlp":
        model = xpnn.mlp([784, 256, 128, 10], dropout=0.1, backend=backend, seed=1)
    else:
        model, x = xpnn.cnn(backend=backend, seed=1), cnn_images(x)
    trainer = Trainer(model, xpnn.optim.Adam(model, lr=LR), batch_size=batch, seed=1, cuda_graphs=cuda_graphs)
    data = trainer.device_data(x, y)

    def run(index: int) -> None:
        trainer.train_epoch(data, index)
        backend.sync()

    run.trainer = trainer  # type: ignore[attr-defined]
    return run


def pytorch_epoch(model_name: str, x: np.ndarray, y: np.ndarray, batch: int, compiled: bool) -> Callable[[int], None]:
    import torch

    nn, device = torch.nn, torch.device("cuda")
    torch.manual_seed(1)
    if model_name == "mlp":
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 128), nn.ReLU(),
                              nn.Dropout(0.1), nn.Linear(128, 10))
    else:
        x = cnn_images(x)
        model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
                              nn.Conv2d(32, 64, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3136, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
    model = model.to(device)
    if compiled:  # a tensor lr and capturable state, as torch.compile's CUDA graphs want
        optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(LR, device=device), capturable=True)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=LR, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    inputs, targets = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    n = inputs.shape[0]

    def step(batch_x, batch_t):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch_x), batch_t)
        loss.backward()
        optimizer.step()
        return loss.detach()

    if compiled:
        compiled_step = torch.compile(step, mode="reduce-overhead")

        def step(batch_x, batch_t):
            torch.compiler.cudagraph_mark_step_begin()
            return compiled_step(batch_x, batch_t)

    def run(index: int) -> None:
        model.train()
        order = torch.randperm(n, device=device)
        for start in range(0, n, batch):
            chosen = order[start:start + batch]
            step(inputs[chosen], targets[chosen])
        torch.cuda.synchronize()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args(argv)
    x, y, source = load_data()
    rows = []
    for model_name in args.models:
        makers = {
            ("xpnn", "cupy"): lambda m=model_name: xpnn_epoch(m, "gpu", x, y, args.batch, "auto"),
            ("xpnn-eager", "cupy"): lambda m=model_name: xpnn_epoch(m, "gpu", x, y, args.batch, "off"),
            ("xpnn", "torch-cuda"): lambda m=model_name: xpnn_epoch(m, "torch:cuda", x, y, args.batch, "auto"),
            ("xpnn-eager", "torch-cuda"): lambda m=model_name: xpnn_epoch(m, "torch:cuda", x, y, args.batch, "off"),
            ("pytorch", "torch-cuda"): lambda m=model_name: pytorch_epoch(m, x, y, args.batch, False),
            ("pytorch-compiled", "torch-cuda"): lambda m=model_name: pytorch_epoch(m, x, y, args.batch, True),
        }
        runs, times, notes = {}, {}, {}
        for key, make in makers.items():
            try:
                run = make()
                run(0)  # untimed: compilation, warm-up steps, capture
                runs[key], times[key] = run, []
                trainer = getattr(run, "trainer", None)
                if trainer is not None and trainer.graph is not None:
                    graph = trainer.graph
                    notes[key] = (f"captured: {graph.replayed} replayed, {graph.eager} eager steps"
                                  if graph.failed is None else f"eager after: {graph.failed}")
                elif trainer is not None:
                    notes[key] = "eager"
            except Exception as error:  # a missing library or a failed compile: the row says so
                notes[key] = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                traceback.print_exc()
        for round_index in range(args.rounds):
            for key, run in runs.items():
                start = time.perf_counter()
                run(round_index + 1)
                times[key].append(time.perf_counter() - start)
        base = statistics.median(times[("pytorch", "torch-cuda")]) if times.get(("pytorch", "torch-cuda")) else None
        for key in makers:
            median = statistics.median(times[key]) if times.get(key) else None
            rows.append({"model": model_name, "implementation": key[0], "backend": key[1], "batch": args.batch,
                         "median_s": median, "times_s": times.get(key, []),
                         "vs_pytorch": median / base if median and base else None, "note": notes.get(key, "")})
    lines = [f"One epoch of the CLI's default networks, {source}, batch {args.batch}, median of {args.rounds} "
             "alternating rounds (bench/defaults_gpu.py)", "",
             "| model | implementation | backend | epoch | vs PyTorch eager | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        epoch = f"{row['median_s']:.3f} s" if row["median_s"] else "-"
        ratio = f"{row['vs_pytorch']:.2f}x" if row["vs_pytorch"] else "-"
        lines.append(f"| {row['model']} | {row['implementation']} | {row['backend']} | {epoch} | {ratio} | "
                     f"{row['note']} |")
    table = "\n".join(lines)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.md:
        args.md.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
