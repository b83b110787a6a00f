"""Train a multilayer perceptron on MNIST (or any MNIST-layout dataset) from the command line.

    python -m xpnn.train --device cpu --dataset fashion-mnist --epochs 20

The flags follow pytorch/examples' mnist/main.py; ``python -m xpnn.train --help`` lists them all.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

from .backend import BackendError, get_backend
from .data import DATASETS, input_paths, load_dataset
from .files import check_outputs, write_file
from .initializers import _BY_NAME as INITIALIZERS
from .model import ACTIVATIONS, Sequential, mlp
from .optim import OPTIMIZERS, get_optimizer, get_schedule
from .serialization import FormatError
from .trainer import DivergenceError, EpochResult, Trainer, load_checkpoint, save_checkpoint

PROG = "python -m xpnn.train"


class UsageError(ValueError):
    """A flag whose value is only found to be wrong once the data is known; reported like argparse."""


# ---------------------------------------------------------------------- argument types
def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a whole number >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    if text.strip() in ("0", "0.0"):
        return 0.0
    return _positive_float(text)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 256,128, got {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a multilayer perceptron with hand-written backprop on MNIST-layout data.",
    )
    add = parser.add_argument
    add("--device", default="cpu", help="cpu, gpu, cuda:N, torch or torch:cuda (default: cpu)")
    add("--dataset", default="mnist", choices=sorted(DATASETS), help="dataset to train on (default: mnist)")
    add("--data-dir", default=None, metavar="DIR",
        help="folder with the four MNIST-layout IDX files, .gz or raw; no download (default: search, then download)")
    add("--epochs", type=_positive_int, default=20, help="number of epochs (default: 20)")
    add("--batch-size", type=_positive_int, default=128, metavar="N", help="samples per step (default: 128)")
    add("--full-batch", action="store_true", help="one step per epoch over the whole training set (default: off)")
    add("--lr", type=_positive_float, default=0.001, help="learning rate (default: 0.001)")
    add("--optimizer", default="adam", choices=sorted(OPTIMIZERS), help="update rule (default: adam)")
    add("--momentum", type=_probability, default=0.9, help="momentum for --optimizer momentum (default: 0.9)")
    add("--weight-decay", type=_non_negative_float, default=0.0, help="L2 penalty (default: 0)")
    add("--schedule", default="cosine", choices=["constant", "step", "cosine"],
        help="learning-rate schedule over the epochs (default: cosine)")
    add("--hidden", type=_hidden, default=[256, 128], help="hidden layer sizes, comma-separated (default: 256,128)")
    add("--activation", default="relu", choices=sorted(ACTIVATIONS), help="hidden activation (default: relu)")
    add("--init", default=None, choices=sorted(set(INITIALIZERS) - {"zeros"}),
        help="weight initializer; normal uses std 0.01 (default: he for relu/elu, xavier otherwise)")
    add("--dropout", type=_probability, default=0.1, help="dropout after each hidden layer (default: 0.1)")
    add("--val", type=_non_negative_int, default=0, metavar="N",
        help="hold out N training samples for validation (default: 0)")
    add("--seed", type=int, default=1, help="random seed (default: 1)")
    add("--save", default=None, metavar="PATH", help="checkpoint after every epoch and at the end (default: none)")
    add("--resume", default=None, metavar="PATH", help="continue from a checkpoint written by --save (default: none)")
    add("--metrics", default=None, metavar="PATH", help="write one JSON object per epoch per line (default: none)")
    add("--plot", default=None, metavar="PATH", help="save loss and accuracy curves as a PNG (default: none)")
    add("--quiet", action="store_true", help="print only the final summary (default: off)")
    return parser


# ---------------------------------------------------------------------- the run
class Run:
    """Everything one invocation builds, so that the steps below stay short."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
        self.backend = get_backend(args.device)
        self.data = load_dataset(args.dataset, args.data_dir, val=args.val, seed=args.seed, quiet=args.quiet)
        n = self.data.x_train.shape[0]
        if not args.full_batch and args.batch_size > n:
            raise UsageError(f"--batch-size {args.batch_size} is larger than the training set ({n} samples)")
        sizes = [self.data.n_features, *args.hidden, self.data.n_classes]
        std = 0.01 if args.init == "normal" else None
        self.model: Sequential = mlp(sizes, activation=args.activation, init=args.init, std=std,
                                     dropout=args.dropout, backend=self.backend, seed=args.seed)
        self.model.check_values = False  # the data is checked once, below, not at every step
        options: dict[str, Any] = {"weight_decay": args.weight_decay}
        if args.optimizer == "momentum":
            options["momentum"] = args.momentum
        self.optimizer = get_optimizer(args.optimizer, self.model, args.lr, **options)
        self.trainer = Trainer(self.model, self.optimizer, batch_size=None if args.full_batch else args.batch_size,
                               schedule=get_schedule(args.schedule, args.epochs), seed=args.seed)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.saved_epoch: int | None = None

    def settings(self) -> dict[str, Any]:
        keys = ("dataset", "epochs", "batch_size", "full_batch", "lr", "optimizer", "momentum", "weight_decay",
                "schedule", "seed", "val")
        return {k: getattr(self.args, k) for k in keys}

    def resume(self, path: str) -> None:
        header = load_checkpoint(path, self.model, self.optimizer)
        self.start_epoch, self.history = header["epoch"], header["history"]
        self.saved_epoch = self.start_epoch
        self.say(f"resumed from {path} after epoch {self.start_epoch}")

    def checkpoint(self, epoch: int) -> None:
        if self.args.save:
            save_checkpoint(self.args.save, self.model, self.optimizer, epoch, self.history, self.settings())
            self.saved_epoch = epoch

    def describe(self) -> str:
        a, d = self.args, self.data
        sizes = "-".join(str(s) for s in [d.n_features, *a.hidden, d.n_classes])
        batch = "full batch" if a.full_batch else f"batch {a.batch_size}"
        return (f"{sizes} {a.activation} MLP ({self.model.n_parameters:,} parameters) on {d.name} "
                f"({d.x_train.shape[0]:,} train / {d.x_test.shape[0]:,} test) with {self.backend.name}, "
                f"{a.optimizer} lr {a.lr} ({a.schedule}), {batch}, dropout {a.dropout}, seed {a.seed}")


def format_epoch(result: EpochResult, epochs: int) -> str:
    line = (f"epoch {result.epoch:>{len(str(epochs))}}/{epochs}  "
            f"train loss {result.train_loss:.4f} acc {result.train_accuracy:6.2%}")
    if result.val_loss is not None:
        line += f"  val loss {result.val_loss:.4f} acc {result.val_accuracy:6.2%}"
    line += (f"  test loss {result.test_loss:.4f} acc {result.test_accuracy:6.2%}  "
             f"{result.seconds:5.1f} s  {result.samples_per_second:,.0f} samples/s")
    return line


def write_metrics(path: str, history: list[dict[str, Any]]) -> None:
    """Write ``history`` as JSON lines through :func:`xpnn.files.write_file` (atomic; /dev/null works)."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    write_file(path, lambda file: file.write(text.encode()))


def plot_history(path: str, history: list[dict[str, Any]], title: str) -> None:
    """Loss and accuracy per epoch, train against test (and validation), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val", "test"):
        if f"{split}_loss" in history[0]:
            left.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
            right.plot(epochs, [100 * row[f"{split}_accuracy"] for row in history], marker="o", label=split)
    left.set(xlabel="epoch", ylabel="loss", title="Loss")
    right.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    fig.tight_layout()
    try:
        write_file(path, lambda file: fig.savefig(file, format="png", dpi=100))
    finally:
        plt.close(fig)


def train(args: argparse.Namespace) -> int:
    check_outputs({"--save": args.save, "--metrics": args.metrics, "--plot": args.plot},
                  inputs={"--resume": args.resume, "--data-dir": input_paths(args.dataset, args.data_dir)},
                  allow_same=[("--save", "--resume")])
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError('--plot needs matplotlib; install it with pip install "xpnn[plot]"') from None
    run = Run(args)
    if args.resume:
        run.resume(args.resume)
    run.say(f"xpnn: {run.describe()}")
    be, data = run.backend, run.data
    train_data = run.trainer.device_data(data.x_train, data.y_train, data.n_classes)
    evaluations = {"test": (be.asarray(data.x_test), be.asarray(data.y_test))}
    if data.x_val is not None:
        evaluations = {"val": (be.asarray(data.x_val), be.asarray(data.y_val)), **evaluations}
    if args.save and run.saved_epoch is None:
        run.checkpoint(0)  # so that an interrupted first epoch still leaves a checkpoint to resume from
    started = time.perf_counter()
    epoch = run.start_epoch
    try:
        for epoch in range(run.start_epoch, args.epochs):
            result = run.trainer.run_epoch(train_data, epoch, evaluations, progress=not args.quiet)
            run.history.append(result.as_dict())
            run.say(format_epoch(result, args.epochs))
            run.checkpoint(epoch + 1)
            if args.metrics:
                write_metrics(args.metrics, run.history)
    except KeyboardInterrupt:
        print(f"\ninterrupted in epoch {epoch + 1}", file=sys.stderr)
        if args.save:
            print(f"checkpoint after epoch {run.saved_epoch} is in {args.save}; "
                  f"continue with --resume {args.save}", file=sys.stderr)
        return 130
    except DivergenceError as error:
        kept = f"; the last good checkpoint (epoch {run.saved_epoch}) is in {args.save}" if args.save else ""
        print(f"{PROG}: error: {error}: try a smaller --lr (now {args.lr}){kept}", file=sys.stderr)
        return 1
    if args.plot and run.history:
        plot_history(args.plot, run.history, run.describe())
    if run.history:
        best = max(run.history, key=lambda row: row["test_accuracy"])
        last = run.history[-1]
        print(f"done: {len(run.history)} epochs, {time.perf_counter() - started:.1f} s this run; "
              f"test accuracy {last['test_accuracy']:.2%} (best {best['test_accuracy']:.2%} at epoch "
              f"{best['epoch']}), test loss {last['test_loss']:.4f}"
              + (f"; checkpoint {args.save}" if args.save else ""), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m xpnn.train``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return train(args)
    except UsageError as error:
        parser.error(str(error))
    except BackendError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except (FormatError, FileNotFoundError, ValueError, OSError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
