"""An epoch with its test evaluation through the CLI, against the same in PyTorch, interleaved.

    python bench/cli_epoch.py --device cpu --torch-device cpu --rounds 5 --epochs 3
    python bench/cli_epoch.py --device torch:cuda --torch-device cuda --rounds 5 --epochs 3

Each round runs ``python -m xpnn.train`` (SGD, lr 0.01, no dropout, constant schedule, batch 128, 784-256-128-10
on Fashion-MNIST) and then the PyTorch loop in a fresh process; the seconds per epoch are those each one reports
for its epoch with the test evaluation (xpnn's ``seconds`` in --metrics), and the table gives the minimum over
all epochs after the first of all rounds, and the ratio xpnn / PyTorch. ``--json PATH`` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FASHION = "/usr/share/datasets/fashion-mnist"


def xpnn_epochs(device: str, epochs: int, batch: int) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        metrics = Path(folder) / "m.jsonl"
        subprocess.run([sys.executable, "-m", "xpnn.train", "--dataset", "fashion-mnist", "--data-dir", FASHION,
                        "--device", device, "--epochs", str(epochs), "--optimizer", "sgd", "--lr", "0.01",
                        "--dropout", "0", "--schedule", "constant", "--batch-size", str(batch), "--quiet",
                        "--metrics", str(metrics)], check=True, capture_output=True, text=True)
        return [json.loads(line)["seconds"] for line in metrics.read_text().splitlines() if line.strip()]


def pytorch_epochs(device: str, epochs: int, batch: int) -> list[float]:
    out = subprocess.run([sys.executable, __file__, "--pytorch-child", "--torch-device", device, "--epochs",
                          str(epochs), "--batch", str(batch)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def pytorch_child(device_name: str, epochs: int, batch: int) -> list[float]:
    """What a PyTorch user writes: nn.Sequential, SGD, preloaded tensors, an evaluation pass after each epoch."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import xpnn

    ds = xpnn.data.load_dataset("fashion-mnist", FASHION)
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.from_numpy(ds.x_train).to(device), torch.from_numpy(ds.y_train).to(device)
    x_test, y_test = torch.from_numpy(ds.x_test).to(device), torch.from_numpy(ds.y_test).to(device)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(x.shape[0], device=device)
        total, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.int64)
        for lo in range(0, x.shape[0], batch):
            index = order[lo:lo + batch]
            optimizer.zero_grad()
            logits = model(x[index])
            loss = loss_fn(logits, y[index])
            loss.backward()
            optimizer.step()
            total += loss.detach() * index.shape[0]
            correct += (logits.argmax(1) == y[index]).sum()
        with torch.no_grad():
            test_loss, test_correct = torch.zeros((), device=device), torch.zeros((), device=device)
            for lo in range(0, x_test.shape[0], 1000):
                logits = model(x_test[lo:lo + 1000])
                test_loss += loss_fn(logits, y_test[lo:lo + 1000]) * logits.shape[0]
                test_correct += (logits.argmax(1) == y_test[lo:lo + 1000]).sum()
        float(total), float(test_loss)  # read back, as the CLI does, before the clock stops
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="xpnn --device (default: cpu)")
    parser.add_argument("--torch-device", default="cpu", help="PyTorch device (default: cpu)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per process (default: 3)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--json", default=None, help="write every epoch's seconds here (default: none)")
    parser.add_argument("--pytorch-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pytorch_child:
        print(json.dumps(pytorch_child(args.torch_device, args.epochs, args.batch)))
        return
    runs: dict[str, list[list[float]]] = {"xpnn": [], "pytorch": []}
    for _ in range(args.rounds):
        runs["xpnn"].append(xpnn_epochs(args.device, args.epochs, args.batch))
        runs["pytorch"].append(pytorch_epochs(args.torch_device, args.epochs, args.batch))
    best = {name: min(s for epochs in rounds for s in epochs[1:] or epochs) for name, rounds in runs.items()}
    print(f"cores {os.cpu_count()}, xpnn --device {args.device}, PyTorch on {args.torch_device}, batch {args.batch}")
    print(f"xpnn {best['xpnn']:.3f} s, PyTorch {best['pytorch']:.3f} s per epoch with its test evaluation "
          f"(minimum); ratio {best['xpnn'] / best['pytorch']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "seconds": runs, "best": best}, indent=1))


if __name__ == "__main__":
    main()
