"""An epoch with its test evaluation through the CLI, against the same network in PyTorch, interleaved.

    python bench/cli_epoch.py --model mlp --rounds 5 --epochs 3
    python bench/cli_epoch.py --model cnn --rounds 3 --epochs 2
    python bench/cli_epoch.py --model mlp --full-batch --rounds 5 --epochs 3
    python bench/cli_epoch.py --device torch:cuda --torch-device cuda --rounds 5 --epochs 3

Each round runs ``python -m xpnn.train`` with its default ``--workers`` (auto; ``--workers N`` passes a number)
and then the PyTorch loop in a fresh process, both on Fashion-MNIST with SGD (lr 0.01), no dropout, a constant
schedule and batch 128 (or ``--full-batch``): the MLP 784-256-128-10, or the CNN of ``--model cnn`` (conv 32 and
64, dense 128) against the same layers in torch.nn. PyTorch runs with its default threads (one per core). The
seconds per epoch are those each one reports for its epoch with the test evaluation (xpnn's ``seconds`` in
--metrics). The table gives, over all epochs after the first of every round, the median and the minimum, the
ratio xpnn / PyTorch of each, and each process's peak resident memory; then each round's medians beside the
probes of the machine taken before, between and after its two processes.

A shared virtual machine changes under its tenants. Its two cores may exchange data quickly ("near") or
slowly ("far": a core-to-core round trip 2.4 times as long, each core alone as fast as before, as if the
host had placed them apart; ``scripts/core_pingpong.c``). In the far state the small products a step splits
between two threads slow down, xpnn's and PyTorch's alike, while one thread's do not. The probe tells the two
apart by a product of the MLP's size (128x256 by 256x128) on two threads against one: about 0.65 of the
one-thread time when near, about 1.1 when far; with fewer than two cores, or a BLAS that threadpoolctl cannot
limit, it names no state. The summary then gives the ratio again over the rounds whose three probes all read
the same state, one line per state. ``--json PATH`` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FASHION = "/usr/share/datasets/fashion-mnist"


def positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def run_child(command: list[str]) -> tuple[str, float]:
    """Run ``command`` to the end; its stdout and its peak resident set size in MB (from wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{err.read().decode()}")
        return out.read().decode(), usage.ru_maxrss / 1024  # kilobytes on Linux


def xpnn_epochs(args: argparse.Namespace) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as folder:
        metrics = Path(folder) / "m.jsonl"
        command = [sys.executable, "-m", "xpnn.train", "--model", args.model, "--dataset", "fashion-mnist",
                   "--data-dir", FASHION, "--device", args.device, "--epochs", str(args.epochs), "--optimizer", "sgd",
                   "--lr", "0.01", "--dropout", "0", "--schedule", "constant", "--quiet", "--metrics", str(metrics)]
        command += ["--full-batch"] if args.full_batch else ["--batch-size", str(args.batch)]
        if args.workers is not None:
            command += ["--workers", args.workers]
        _, peak = run_child(command)
        return [json.loads(line)["seconds"] for line in metrics.read_text().splitlines() if line.strip()], peak


def pytorch_epochs(args: argparse.Namespace) -> tuple[list[float], float]:
    out, peak = run_child([sys.executable, __file__, "--pytorch-child", "--model", args.model, "--torch-device",
                           args.torch_device, "--epochs", str(args.epochs), "--batch", str(args.batch)]
                          + (["--full-batch"] if args.full_batch else []))
    return json.loads(out.strip().splitlines()[-1]), peak


def pytorch_child(model_name: str, device_name: str, epochs: int, batch: int | None) -> list[float]:
    """What a PyTorch user writes: nn.Sequential, SGD, preloaded tensors, an evaluation pass after each epoch."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import xpnn

    ds = xpnn.data.load_dataset("fashion-mnist", FASHION)
    device = torch.device(device_name)
    torch.manual_seed(0)
    nn = torch.nn
    if model_name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # as bench/implementations.py writes it
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
        shape = (-1, 1, 28, 28)
    else:
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                              nn.Linear(128, 10)).to(device)
        shape = (-1, 784)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(ds.x_train).reshape(shape).to(device), torch.from_numpy(ds.y_train).to(device)
    x_test = torch.from_numpy(ds.x_test).reshape(shape).to(device)
    y_test = torch.from_numpy(ds.y_test).to(device)
    batch = batch or x.shape[0]
    eval_batch = 128 if model_name == "cnn" else 1000  # xpnn's default evaluation batches for these models
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
            for lo in range(0, x_test.shape[0], eval_batch):
                logits = model(x_test[lo:lo + eval_batch])
                test_loss += loss_fn(logits, y_test[lo:lo + eval_batch]) * logits.shape[0]
                test_correct += (logits.argmax(1) == y_test[lo:lo + eval_batch]).sum()
        float(total), float(test_loss)  # read back, as the CLI does, before the clock stops
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="network (default: mlp)")
    parser.add_argument("--device", default="cpu", help="xpnn --device (default: cpu)")
    parser.add_argument("--workers", default=None, help="xpnn --workers (default: the CLI's own, auto)")
    parser.add_argument("--torch-device", default="cpu", help="PyTorch device (default: cpu)")
    parser.add_argument("--rounds", type=positive, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--epochs", type=positive, default=3, help="epochs per process (default: 3)")
    parser.add_argument("--batch", type=positive, default=128, help="batch size (default: 128)")
    parser.add_argument("--full-batch", action="store_true", help="one step per epoch (default: off)")
    parser.add_argument("--json", default=None, help="write every epoch's seconds here (default: none)")
    parser.add_argument("--pytorch-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pytorch_child:
        batch = None if args.full_batch else args.batch
        print(json.dumps(pytorch_child(args.model, args.torch_device, args.epochs, batch)))
        return
    runs: dict[str, list[list[float]]] = {"xpnn": [], "pytorch": []}
    peaks: dict[str, list[float]] = {"xpnn": [], "pytorch": []}
    probes: list[list[dict[str, Any]]] = []
    for _ in range(args.rounds):
        probed = [machine_probe()]
        for name, run in (("xpnn", xpnn_epochs), ("pytorch", pytorch_epochs)):
            seconds, peak = run(args)
            runs[name].append(seconds)
            peaks[name].append(peak)
            probed.append(machine_probe())
        probes.append(probed)
    kept = {name: [s for epochs in rounds for s in epochs[1:] or epochs] for name, rounds in runs.items()}
    best = {name: min(values) for name, values in kept.items()}
    median = {name: statistics.median(values) for name, values in kept.items()}
    peak = {name: max(values) for name, values in peaks.items()}
    batch = "full batch" if args.full_batch else f"batch {args.batch}"
    print(f"{args.model}, cores {len(os.sched_getaffinity(0))}, xpnn --device {args.device} --workers "
          f"{args.workers or 'auto (default)'}, PyTorch on {args.torch_device} with {_torch_threads()} threads, "
          f"{batch}, {args.rounds} rounds x {args.epochs} epochs")
    kept_epochs = "epochs after each process's first" if args.epochs > 1 else "each process's only epoch"
    print(f"seconds per epoch with its test evaluation, {kept_epochs}:")
    print(f"  median: xpnn {median['xpnn']:.3f} s, PyTorch {median['pytorch']:.3f} s, "
          f"ratio {median['xpnn'] / median['pytorch']:.2f}")
    print(f"  minimum: xpnn {best['xpnn']:.3f} s, PyTorch {best['pytorch']:.3f} s, "
          f"ratio {best['xpnn'] / best['pytorch']:.2f}")
    print(f"peak resident memory of the whole process: xpnn {peak['xpnn']:.0f} MB, PyTorch {peak['pytorch']:.0f} MB")
    print("by round (median epoch; the state and the small product's two-thread / one-thread time before xpnn, "
          "between, after PyTorch):")
    for k, probed in enumerate(probes):
        x, t = (statistics.median(runs[name][k][1:] or runs[name][k]) for name in ("xpnn", "pytorch"))
        states = ", ".join(f"{p['state']} {p['small_ratio']:.2f}" if p["state"] else "no probe" for p in probed)
        print(f"  {k + 1}: xpnn {x:.3f} s, PyTorch {t:.3f} s, ratio {x / t:.2f}; {states}")
    print("rounds whose three probes read one state (median epoch):")
    by_state = medians_by_state(runs, probes)
    for state in ("near", "far"):
        if state not in by_state:
            print(f"  {state}: no round")
            continue
        rounds, x, t = by_state[state]
        print(f"  {state} ({rounds} of {len(probes)} rounds): xpnn {x:.3f} s, PyTorch {t:.3f} s, ratio {x / t:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "seconds": runs, "best": best, "median": median,
                                               "peak_rss_mb": peaks, "probes": probes, "by_state": by_state,
                                               "self_maxrss_mb":
                                               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, indent=1))


def medians_by_state(runs: dict[str, list[list[float]]],
                     probes: list[list[dict[str, Any]]]) -> dict[str, tuple[int, float, float]]:
    """For each state that every probe of some round read: (those rounds, xpnn's median epoch in them, PyTorch's).

    ``runs[name][k]`` holds round k's epochs (the first left out when there are more) and ``probes[k]`` its
    probes. A round with a probe in another state, or with no probe, counts for no state.
    """
    out = {}
    for state in ("near", "far"):
        same = [k for k, probed in enumerate(probes) if probed and all(p["state"] == state for p in probed)]
        if same:
            out[state] = (len(same), *(statistics.median(s for k in same for s in runs[name][k][1:] or runs[name][k])
                                       for name in ("xpnn", "pytorch")))
    return out


NEAR_BELOW = 0.85  # the small product's two-thread / one-thread time: about 0.65 near, 1.1 far (here)


def machine_probe() -> dict[str, Any]:
    """The machine's state now, measured in a fresh process: ``small_ratio`` (a 128x256 by 256x128 float32
    product on two threads over one, median of 5 batches of 100), ``state`` ("near" below ``NEAR_BELOW``, else
    "far"; None, with the other fields, where fewer than two cores are usable, or without numpy, threadpoolctl
    or a BLAS it can limit) and a 1024^3 product's milliseconds on one and on two threads (best of 3), the
    probe of earlier runs."""
    nothing = {"one_thread_ms": None, "two_threads_ms": None, "small_ratio": None, "state": None}
    if len(os.sched_getaffinity(0)) < 2:
        return nothing
    code = ("import json, statistics, time, numpy as np\n"
            "from threadpoolctl import threadpool_info, threadpool_limits\n"
            "if not any(i['user_api'] == 'blas' for i in threadpool_info()): raise SystemExit(3)\n"
            "rng = np.random.default_rng(0); out, small = {}, {}\n"
            "a, b = rng.random((128, 256), dtype=np.float32), rng.random((256, 128), dtype=np.float32)\n"
            "big = rng.random((1024, 1024), dtype=np.float32)\n"
            "for n, key in ((1, 'one_thread_ms'), (2, 'two_threads_ms')):\n"
            "    with threadpool_limits(n):\n"
            "        for _ in range(50): a @ b\n"
            "        times = []\n"
            "        for _ in range(5):\n"
            "            t = time.perf_counter()\n"
            "            for _ in range(100): a @ b\n"
            "            times.append(time.perf_counter() - t)\n"
            "        small[n] = statistics.median(times)\n"
            "        big @ big; best = float('inf')\n"
            "        for _ in range(3):\n"
            "            t = time.perf_counter(); big @ big; best = min(best, time.perf_counter() - t)\n"
            "    out[key] = best * 1e3\n"
            "out['small_ratio'] = small[2] / small[1]\n"
            "print(json.dumps(out))")
    try:
        out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout)
    except (subprocess.CalledProcessError, OSError, ValueError):
        return nothing
    out["state"] = "near" if out["small_ratio"] < NEAR_BELOW else "far"
    return out


def _torch_threads() -> str:
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True, check=True).stdout
        return out.strip()
    except (subprocess.CalledProcessError, OSError):
        return "?"


if __name__ == "__main__":
    main()
