"""Train a multilayer perceptron or a CNN from the command line on MNIST-layout data or a file of your own.

    python -m xpnn.train --device cpu --dataset fashion-mnist --epochs 20
    python -m xpnn.train --model cnn --dataset fashion-mnist
    python -m xpnn.train --data iris.csv --target species --standardize

The flags follow pytorch/examples' mnist/main.py; ``python -m xpnn.train --help`` lists them all. The
command is a thin layer over :func:`xpnn.fit`: it parses flags, loads data, builds the model and passes
callbacks that print, checkpoint and write metrics.

Started by an MPI launcher with more than one rank (``mpirun -n 4 python -m xpnn.train ...``) it trains
data-parallel: every rank takes its part of each global batch, rank 0 alone prints and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import shlex
import signal
import stat
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..core.backend import BackendError, get_backend
from ..io.data import DATASETS, DataError, SplitSizeError, input_paths, load_dataset
from ..io.datafile import DEFAULT_TEST_SIZE, load_data_file
from ..io.files import OutputError, check_outputs, write_file
from ..io.lock import OutputLock
from ..io.serialization import FormatError, open_npz, read_npz
from ..model import ACTIVATIONS, Sequential, mlp, standardized
from ..nn.initializers import _BY_NAME as INITIALIZERS
from ..nn.layers.base import LayerTooLargeError
from ..optim import OPTIMIZERS, get_optimizer, get_schedule
from ..runtime.distributed import DistributedError, Local, communicator, launcher_environment, rank_device
from ..runtime.heap import retain_freed_memory
from ..runtime.parallel import AUTO, resolve_workers
from ..training.callbacks import Callback
from ..training.checkpoint import load_checkpoint, save_checkpoint
from ..training.trainer import DivergenceError, Trainer

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


def _workers(text: str) -> int | str:
    """``auto`` or a positive integer."""
    if text == AUTO:
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


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


MODELS = ("mlp", "cnn")

# Defaults that differ by --model; a flag given on the command line always wins.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"epochs": 20, "lr": 0.001, "optimizer": "adam", "schedule": "cosine", "dropout": 0.1},
    "cnn": {"epochs": 15, "lr": 0.001, "optimizer": "adam", "schedule": "cosine", "dropout": 0.5},
}

# Settings saved in a checkpoint: a resumed run takes them from the checkpoint when the flag is not given,
# and refuses a different value, which would make the resumed run differ from an uninterrupted one (except
# TUNABLE_SETTINGS below).
# --epochs and --workers may change (with a warning); --device may change (results then agree to float rounding).
EXACT_SETTINGS = ("model", "dataset", "batch_size", "full_batch", "lr", "optimizer", "momentum", "weight_decay",
                  "schedule", "seed", "val", "hidden", "activation", "init", "dropout", "target", "test_size",
                  "standardize")
# Of those, the ones fine-tuning may change on --resume: training continues from the checkpoint's weights and
# optimizer state with the new values (one warning: no longer an exact continuation), and the new values are saved.
TUNABLE_SETTINGS = ("lr", "schedule", "batch_size", "weight_decay")
# Why a resumed run cannot change the others, for the message that refuses them.
_FIXED_BY_CHECKPOINT = {
    **dict.fromkeys(("model", "hidden", "activation", "dropout"), "the checkpoint's weights fit its architecture"),
    **dict.fromkeys(("dataset", "val", "target", "test_size"), "its weights and history were trained on that data"),
    **dict.fromkeys(("optimizer", "momentum"), "its optimizer state belongs to its update rule"),
    "full_batch": "its optimizer state belongs to its batch mode",
    "seed": "the shuffles and dropout masks of the epochs left follow its seed",
    "init": "its weights are already initialized",
    "standardize": "its model holds (or lacks) the training set's statistics",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="Train a multilayer perceptron or a CNN with hand-written backprop on MNIST-layout data.",
    )
    add = parser.add_argument
    mlp_d, cnn_d = MODEL_DEFAULTS["mlp"], MODEL_DEFAULTS["cnn"]

    def per_model(key: str) -> str:
        return f"(default: {mlp_d[key]}; with --model cnn: {cnn_d[key]})"

    add("--model", default="mlp", choices=MODELS,
        help="mlp: a multilayer perceptron on (N, 784); cnn: two conv layers on (N, 1, 28, 28) "
             "(default: mlp)")
    add("--device", default="cpu", help="cpu, gpu, cuda:N, torch or torch:cuda (default: cpu)")
    add("--dataset", default="mnist", choices=sorted(DATASETS), help="dataset to train on (default: mnist)")
    add("--data-dir", default=None, metavar="DIR",
        help="folder with the four MNIST-layout IDX files, .gz or raw; no download (default: search, then download)")
    add("--data", dest="data_file", default=None, metavar="FILE",
        help="train on your own .npz (x_train, y_train, optional x_test, y_test) or .csv (a header row, numeric "
             "features, a label column) instead of --dataset/--data-dir (default: none)")
    add("--target", default=None, metavar="COLUMN",
        help="the label column of a --data CSV (default: the column named label, else the last column)")
    add("--test-size", type=_fraction, default=None, metavar="F",
        help=f"fraction of a --data file held out as the test set when it has none (default: {DEFAULT_TEST_SIZE})")
    add("--standardize", action="store_true",
        help="scale each feature (each channel of images) by the training set's mean and standard deviation, "
             "saved with the model so that predictions apply it too (default: off)")
    add("--epochs", type=_positive_int, default=None, help=f"number of epochs {per_model('epochs')}")
    add("--batch-size", type=_positive_int, default=128, metavar="N", help="samples per step (default: 128)")
    add("--full-batch", action="store_true", help="one step per epoch over the whole training set (default: off)")
    add("--lr", type=_positive_float, default=None, help=f"learning rate {per_model('lr')}")
    add("--optimizer", default=None, choices=sorted(OPTIMIZERS), help=f"update rule {per_model('optimizer')}")
    add("--momentum", type=_probability, default=0.9, help="momentum for --optimizer momentum (default: 0.9)")
    add("--weight-decay", type=_non_negative_float, default=0.0, help="L2 penalty (default: 0)")
    add("--schedule", default=None, choices=["constant", "step", "cosine"],
        help=f"learning-rate schedule over the epochs {per_model('schedule')}")
    add("--hidden", type=_hidden, default=[256, 128], help="MLP hidden layer sizes, comma-separated (default: 256,128)")
    add("--activation", default="relu", choices=sorted(ACTIVATIONS), help="MLP hidden activation (default: relu)")
    add("--init", default=None, choices=sorted(set(INITIALIZERS) - {"zeros"}),
        help="weight initializer; normal uses std 0.01 (default: he for relu/elu, xavier otherwise)")
    add("--dropout", type=_probability, default=None, help=f"dropout before the last layer(s) {per_model('dropout')}")
    add("--val", type=_non_negative_int, default=0, metavar="N",
        help="hold out N training samples for validation (default: 0)")
    add("--seed", type=_non_negative_int, default=1, help="random seed, an integer >= 0 (default: 1)")
    add("--save", default=None, metavar="PATH",
        help="checkpoint after every epoch and at the end; an existing file is refused unless it is --resume's "
             "or --overwrite is given (default: none)")
    add("--overwrite", action="store_true",
        help="let a new run replace the file at --save, once its first epoch is done (default: off)")
    add("--resume", default=None, metavar="PATH",
        help="continue from a checkpoint written by --save; flags not given are taken from it, and --lr, "
             "--schedule, --batch-size, --weight-decay and --epochs may change to fine-tune it (default: none)")
    add("--metrics", default=None, metavar="PATH", help="write one JSON object per epoch per line (default: none)")
    add("--plot", default=None, metavar="PATH", help="save loss and accuracy curves as a PNG (default: none)")
    add("--quiet", action="store_true", help="print only the final summary (default: off)")
    add("--workers", type=_workers, default=AUTO, metavar="N",
        help="threads that share each batch on --device cpu (NumPy runs element-wise work on one core); "
             "auto: one per core this process may use with --device cpu, 1 with torch, gpu or MPI "
             "(default: auto)")
    add("--cuda-graphs", default="auto", choices=["auto", "on", "off"],
        help="capture the training step as a CUDA graph and replay it (--device gpu needs nvmath-python, "
             "which the gpu extra installs); auto: on gpu and torch:cuda wherever it can, eager with one "
             "warning line where it cannot (several MPI ranks); on: exit with an error instead (default: auto)")
    return parser


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options written on the command line (``--lr 0.1`` and ``--lr=0.1``)."""
    by_option = {option: action.dest for action in parser._actions for option in action.option_strings}
    return {by_option[arg.split("=", 1)[0]] for arg in argv if arg.split("=", 1)[0] in by_option}


def apply_defaults(args: argparse.Namespace, given: set[str], saved: dict[str, Any] | None) -> list[str]:
    """Fill flags not given: from the checkpoint's settings on --resume, else from the model's defaults.

    Returns warnings to print. Raises UsageError for a given flag that differs from the checkpoint.
    """
    warnings = []
    tuned: list[str] = []  # fine-tuning: "--lr 0.001 (checkpoint: 0.01)"
    if saved is not None:
        saved = {**{"model": "mlp"}, **saved}  # checkpoints from before --model trained MLPs
        if "init" in saved and saved["init"] is None:  # before the effective initializer was saved
            saved["init"] = default_init(saved.get("activation", "relu"))
        for key in EXACT_SETTINGS:
            if key not in saved:
                continue
            flag = "--" + key.replace("_", "-")
            if key not in given:
                setattr(args, key, saved[key])
            elif _differs(getattr(args, key), saved[key]):
                if key == "momentum" and saved.get("optimizer") != "momentum":
                    continue  # the checkpoint's optimizer has no momentum: refused below, naming the real problem
                if key in TUNABLE_SETTINGS:
                    tuned.append(f"{flag} {_show(getattr(args, key))} (checkpoint: {_show(saved[key])})")
                    continue
                raise UsageError(
                    f"{flag} {_show(getattr(args, key))} differs from the checkpoint's {_show(saved[key])}, and "
                    f"{_FIXED_BY_CHECKPOINT.get(key, 'a resumed run keeps it')}: drop {flag} to continue that run, "
                    "or start a new one without --resume (fine-tuning may change only "
                    f"{', '.join('--' + k.replace('_', '-') for k in TUNABLE_SETTINGS)} and --epochs)"
                )
    for key, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.init is None:
        args.init = default_init(args.activation)
    if "momentum" in given and args.optimizer != "momentum":
        fix = ("drop --momentum to continue the checkpoint's run" if saved is not None
               else "add --optimizer momentum (SGD with momentum) or drop --momentum")
        raise UsageError(f"--momentum is the coefficient of --optimizer momentum, and {args.optimizer} would ignore "
                         f"it: {fix}")
    if args.full_batch and "batch_size" in given and saved is None:  # base flags plus --full-batch: common
        warnings.append(f"--batch-size {args.batch_size} is ignored: --full-batch takes the whole training set in "
                        "every step")
    if args.model == "cnn" and "hidden" in given:
        raise UsageError("--hidden sets the MLP's layers; the CNN's are fixed (conv 32 and 64, dense 128): "
                         "drop --hidden or use --model mlp")
    if saved is not None and "workers" not in saved:
        saved = {**saved, "workers": 1}  # written before --workers existed: one thread trained it
    if saved is not None and "workers" not in given:  # like --device, a machine's setting: may change (Run warns)
        args.workers = saved["workers"]
        args.workers_from_checkpoint = True
    if saved is not None and "epochs" in saved:
        if "epochs" not in given:
            args.epochs = saved["epochs"]
        elif args.epochs != saved["epochs"] and tuned:
            tuned.append(f"--epochs {args.epochs} (checkpoint: {saved['epochs']})")
        elif args.epochs != saved["epochs"]:
            note = (f"--epochs {args.epochs} differs from the checkpoint's {saved['epochs']}: training continues "
                    f"to epoch {args.epochs}")
            if args.schedule == "cosine":
                note += (f"; the cosine schedule now spans {args.epochs} epochs, so the learning rates from here "
                         "on differ from both an uninterrupted run of either length")
            warnings.append(note)
    if tuned:
        warnings.append(f"fine-tuning with {', '.join(tuned)}: training continues from the checkpoint's weights and "
                        "optimizer state with these settings, so this run is no longer an exact continuation of "
                        "the one that wrote it (the checkpoints it writes hold the new settings)")
    return warnings


def device_kind(backend: Any) -> str:
    """The kind of device a run computes on, as saved in a checkpoint: ``numpy``, ``torch``, ``torch (GPU)``, ...

    The GPU's index is left out: MPI ranks train on different GPUs of one kind, and another GPU of the same
    kind computes the same numbers.
    """
    library = backend.name.split(":")[0]
    return f"{library} (GPU)" if backend.launch_bound and backend.name != library else backend.name


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def default_init(activation: str) -> str:
    """The initializer mlp() and cnn() pick when none is given."""
    return "he" if activation in ("relu", "leaky_relu", "elu") else "xavier"


def check_settings(saved: Any, path: str) -> dict[str, Any]:
    """The settings of a checkpoint header, each checked against what its flag accepts.

    Raises
    ------
    FormatError
        Naming the file and the first setting that no command line could have produced.
    """
    if not isinstance(saved, dict):
        raise FormatError(f"{path}: the checkpoint's settings are not a JSON object")
    actions = {action.dest: action for action in build_parser()._actions}
    for key, value in saved.items():
        if key == "data":
            ok = isinstance(value, str)
        elif key in ("full_batch", "standardize"):
            ok = isinstance(value, bool)
        elif key in ("data_file", "target", "test_size") and value is None:
            ok = True
        elif key == "hidden":
            ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                 for v in value)
        elif key == "init" and value is None:
            ok = True
        elif key == "device":  # a kind of device, as device_kind() writes it
            ok = isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()
        elif key == "processes":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        elif key in actions:
            ok = _accepted(actions[key], value)
        else:
            continue  # a setting of another xpnn version that this one does not use
        if not ok:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            what = {"device": "device kind", "processes": "process count"}.get(key, "--" + key.replace("_", "-"))
            raise FormatError(f"{path}: the checkpoint's setting {key!r} = {shown} is not a valid {what}")
    return saved


def _accepted(action: argparse.Action, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    if action.choices is not None and value not in action.choices:
        return False
    if action.type is None:
        return isinstance(value, str)
    try:
        return action.type(str(value)) == value
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False


def _differs(value: Any, saved: Any) -> bool:
    if isinstance(value, float) or isinstance(saved, float):
        return not (isinstance(saved, int | float) and float(value) == float(saved))
    return value != saved


def _show(value: Any) -> str:
    if value is None:  # a flag left to its default
        return "(default)"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "(on)" if value is True else "(off)" if value is False else str(value)


def data_fingerprint(x: Any, y: Any, class_names: Sequence[str] | None = None) -> str:
    """A short hash of the training arrays (and the class names, if any), so a resume on other data is refused."""
    digest = hashlib.blake2b(digest_size=8)
    for a in (x, y):
        digest.update(str((a.shape, a.dtype.str)).encode())
        digest.update(memoryview(a).cast("B"))
    if class_names is not None:
        digest.update(json.dumps(list(class_names)).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------- the run
class Run:
    """Everything one invocation builds, so that the steps below stay short."""

    def __init__(self, args: argparse.Namespace, saved: dict[str, Any] | None = None, comm: Any = None,
                 given: set[str] | None = None):
        self.args = args
        self.comm = Local() if comm is None else comm
        quiet = args.quiet or not self.comm.is_root
        self.say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
        try:
            self.backend = get_backend(rank_device(args.device, self.comm))
        except ValueError as error:
            raise UsageError(f"--device: {error}") from None
        try:  # a number is checked before the data is loaded (or downloaded); the Trainer resolves "auto"
            if args.workers != AUTO:
                args.workers = resolve_workers(args.workers, self.backend, PROG, option="--workers",
                                               processes=self.comm.size)
        except (ValueError, ImportError) as error:
            if not getattr(args, "workers_from_checkpoint", False):
                raise UsageError(str(error)) from None
            # The checkpoint's number does not fit this device or machine (a NumPy run resumed on torch, say):
            # like every machine setting, it gives way to what this one does best, with the warning below.
            args.workers = AUTO
        try:
            if args.data_file is not None:
                try:
                    self.data = load_data_file(args.data_file, target=args.target, test_size=args.test_size,
                                               val=args.val, seed=args.seed)
                except DataError:
                    raise
                except ValueError as error:  # a flag the file contradicts (--target for an .npz, ...)
                    raise UsageError(str(error)) from None
            else:
                self.data = load_dataset(args.dataset, args.data_dir, val=args.val, seed=args.seed,
                                         quiet=args.quiet)
        except SplitSizeError as error:  # --val as large as the training set
            raise UsageError(str(error)) from None
        self.fingerprint = data_fingerprint(self.data.x_train, self.data.y_train, self.data.class_names)
        if saved is not None and saved.get("data", self.fingerprint) != self.fingerprint:
            source = (f"--data {args.data_file}" if args.data_file is not None
                      else f"{self.data.directory} (dataset {args.dataset})")
            raise UsageError(f"--resume: the checkpoint was trained on other data than {source} (--val {args.val}); "
                             f"point {'--data' if args.data_file is not None else '--data-dir'} at the same files")
        n = self.data.x_train.shape[0]
        chosen = given is None or "batch_size" in given  # the default (or a checkpoint's) takes a small set whole
        if not args.full_batch and args.batch_size > n and chosen:
            raise UsageError(f"--batch-size {args.batch_size} is larger than the training set ({n} samples)")
        if min(n if args.full_batch else args.batch_size, n) < self.comm.size:  # every rank needs a sample
            what = "the training set" if args.full_batch or args.batch_size >= n else f"--batch-size {args.batch_size}"
            raise UsageError(f"{what} is smaller than the number of processes ({self.comm.size}), so some would have "
                             f"no sample; use --batch-size {self.comm.size} or more, or fewer processes")
        try:
            self.model = self.build_model()
        except ValueError as error:  # e.g. a CNN whose pooling windows do not fit the images
            raise UsageError(f"--model {args.model} does not fit {self.data.name}: {error}") from None
        self.model.check_values = False  # the data is checked once, in fit(), not at every step
        options: dict[str, Any] = {"weight_decay": args.weight_decay}
        if args.optimizer == "momentum":
            options["momentum"] = args.momentum
        self.optimizer = get_optimizer(args.optimizer, self.model, args.lr, **options)
        try:
            self.trainer = Trainer(self.model, self.optimizer,
                                   batch_size=None if args.full_batch else args.batch_size,
                                   schedule=get_schedule(args.schedule, args.epochs), seed=args.seed,
                                   comm=self.comm, cuda_graphs=args.cuda_graphs, workers=args.workers)
        except ValueError as error:
            raise UsageError(str(error)) from None
        args.workers = self.trainer.workers  # the checkpoint keeps the number, not "auto"
        self.start_epoch = 0
        self.resumed_rows = 0
        self.saved_epoch: int | None = None
        self.metrics_written = False

    def build_model(self) -> Sequential:
        args, data = self.args, self.data
        std = 0.01 if args.init == "normal" else None
        if args.model == "cnn":
            from ..model import cnn

            if data.image_shape is None:
                raise ValueError(f"it holds rows of {data.n_features} features, not images; a CNN takes images "
                                 "(N, H, W) or (N, C, H, W) from an .npz: use --model mlp")
            self.image_shape = data.input_shape
            model = cnn((data.channels, 32, 64), (128, data.n_classes), image_size=data.image_shape,
                        activation=args.activation, init=args.init, dropout=args.dropout, backend=self.backend,
                        seed=args.seed)
        else:
            self.image_shape = None
            sizes = [data.n_features, *args.hidden, data.n_classes]
            model = mlp(sizes, activation=args.activation, init=args.init, std=std, dropout=args.dropout,
                        backend=self.backend, seed=args.seed)
        if args.standardize:
            model = standardized(model, self.inputs(data.x_train))
        model.class_names = data.class_names
        return model

    def inputs(self, x: Any) -> Any:
        """Images as the model takes them: (N, 784) rows for the MLP, (N, 1, 28, 28) for the CNN."""
        return x if self.image_shape is None else x.reshape(x.shape[0], *self.image_shape)

    def settings(self) -> dict[str, Any]:
        keys = ("epochs", "workers", *EXACT_SETTINGS)
        file = None if self.args.data_file is None else os.path.abspath(self.args.data_file)
        return {**{k: getattr(self.args, k) for k in keys}, "data": self.fingerprint, "data_file": file,
                "device": device_kind(self.backend), "processes": self.comm.size}

    def machine_warning(self, saved: dict[str, Any] | None) -> str | None:
        """One line when the checkpoint was trained on another kind of device or another number of MPI processes."""
        if saved is None:
            return None
        changes = []
        device = device_kind(self.backend)
        if isinstance(saved.get("device"), str) and saved["device"] != device:
            changes.append(f"on {device} (the checkpoint was trained on {saved['device']})")
        processes = saved.get("processes")
        if isinstance(processes, int) and processes != self.comm.size:
            changes.append(f"with {_count(self.comm.size, 'process')} (the checkpoint was trained with "
                           f"{_count(processes, 'process')})")
        workers = saved.get("workers", 1)
        if isinstance(workers, int) and workers != self.args.workers:
            changes.append(f"with {_count(self.args.workers, 'worker')} (the checkpoint was trained with "
                           f"{_count(workers, 'worker')})")
        if not changes:
            return None
        batchnorm = workers != self.args.workers and any("BatchNorm" in type(layer).__name__ for layer in self.model)
        return (f"resuming {' and '.join(changes)}: from here the numbers agree with an uninterrupted run only to "
                "float rounding" + (", and BatchNorm normalizes each worker's shard by its own statistics"
                                    if batchnorm else ""))

    def resume(self, path: str) -> None:
        header = load_checkpoint(path, self.model, self.optimizer)
        self.start_epoch = header["epoch"]
        self.trainer.history.rows[:] = header["history"]
        self.resumed_rows = len(header["history"])
        same = self.args.save is not None and os.path.exists(self.args.save) and os.path.samefile(self.args.save, path)
        self.saved_epoch = self.start_epoch if same else None  # what --save holds so far
        if self.start_epoch > self.args.epochs:
            raise UsageError(f"--epochs {self.args.epochs}: the checkpoint {path} has already trained "
                             f"{self.start_epoch} epochs; pass a larger --epochs to continue")
        self.say(f"resumed from {path} after epoch {self.start_epoch}")

    def checkpoint(self, epoch: int) -> None:
        if self.args.save:
            if self.comm.is_root:
                save_checkpoint(self.args.save, self.model, self.optimizer, epoch, self.trainer.history.rows,
                                self.settings())
            self.saved_epoch = epoch

    def describe(self) -> str:
        a, d = self.args, self.data
        if a.model == "cnn":
            kind = f"CNN {'x'.join(map(str, self.image_shape))} -> {d.n_classes}"
        else:
            kind = "-".join(str(s) for s in [d.n_features, *a.hidden, d.n_classes]) + f" {a.activation} MLP"
        if a.standardize:
            kind += " (standardized inputs)"
        batch = "full batch" if a.full_batch else f"batch {min(a.batch_size, d.x_train.shape[0])}"
        ranks = f" x {self.comm.size} processes" if self.comm.size > 1 else ""
        ranks += f" x {a.workers} workers" if a.workers > 1 else ""
        return (f"{kind} ({self.model.n_parameters:,} parameters) on {d.name} "
                f"({d.x_train.shape[0]:,} train / {d.x_test.shape[0]:,} test) with {self.backend.name}{ranks}, "
                f"{a.optimizer} lr {a.lr} ({a.schedule}), {batch}, dropout {a.dropout}, seed {a.seed}")


class _EpochEnd(Callback):
    """After each good epoch: checkpoint, then the metrics file, with Ctrl-C held back until both are written."""

    def __init__(self, run: Run):
        self.run = run

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        with _interrupts_deferred():
            self.run.checkpoint(row["epoch"])
            if self.run.args.metrics and self.run.comm.is_root:
                write_metrics(self.run.args.metrics, trainer.history.rows)
                self.run.metrics_written = True


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """The library's warnings (e.g. a step that could not be captured) as one line, like the CLI's own."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's notice, ``docker stop``), ended like a Ctrl-C: exit 143."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt(enabled: bool) -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread (one process only: under MPI the
    launcher ends every rank at once, and a rank leaving a collective on its own would hang the others)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT), or a SIGTERM turned into one, that arrives inside the block and raise it once the
    block is done.

    So the files on disk and what the run reports about them always agree.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = [signal.SIGINT] + ([signal.SIGTERM] if signal.getsignal(signal.SIGTERM) is _on_sigterm else [])
    previous = {number: signal.signal(number, lambda number, frame: received.append(number)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if signal.SIGTERM in received:
        raise Terminated
    if received:
        raise KeyboardInterrupt


def write_metrics(path: str, history: list[dict[str, Any]]) -> None:
    """Write ``history`` as JSON lines through :func:`xpnn.io.files.write_file` (atomic; /dev/null works)."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    write_file(path, lambda file: file.write(text.encode()))


def plot_history(path: str, history: list[dict[str, Any]], title: str) -> None:
    """Loss and accuracy per epoch, train against test (and validation), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val", "test"):
        rows = [row for row in history if _numbers(row, "epoch", f"{split}_loss", f"{split}_accuracy")]
        if rows:  # a resumed checkpoint's rows may lack columns that later rows have
            epochs = [row["epoch"] for row in rows]
            left.plot(epochs, [row[f"{split}_loss"] for row in rows], marker="o", label=split)
            right.plot(epochs, [100 * row[f"{split}_accuracy"] for row in rows], marker="o", label=split)
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


def check_data_flags(args: argparse.Namespace, given: set[str]) -> None:
    """Refuse flags that cannot go together: --data with --dataset/--data-dir, --target without a --data CSV."""
    if args.data_file is not None:
        both = [f"--{key.replace('_', '-')}" for key in ("dataset", "data_dir") if key in given]
        if both:
            raise UsageError(f"--data and {' and '.join(both)} cannot be used together: --data trains on your own "
                             f"file, {both[0]} on an MNIST-layout dataset; give one of them")
        return
    for flag, key in (("--target", "target"), ("--test-size", "test_size")):
        if getattr(args, key) is not None and key in given:
            raise UsageError(f"{flag} applies to a --data file; add --data FILE or drop {flag}")


def train(args: argparse.Namespace, given: set[str] | None = None, comm: Any = None) -> int:
    """Run one training command; returns the exit status. Locks held for ``--save`` are released on any exit."""
    with contextlib.ExitStack() as cleanup:
        return _train(args, given, comm, cleanup)


def claim_save(args: argparse.Namespace, comm: Any, cleanup: contextlib.ExitStack) -> bool:
    """Apply the rule for an existing ``--save`` file and lock it for this run (rank 0 decides for every rank).

    A new run never destroys what a path already holds: a ``--save`` file that is not the checkpoint being
    resumed is refused unless ``--overwrite`` is given, and even then it is kept until the new run's first
    epoch has a checkpoint to put there. A second run on the same ``--save`` path is refused while the
    first holds its lock file.

    Returns
    -------
    bool
        Whether ``--save`` holds an earlier file to keep until the first epoch ends (no epoch-0 checkpoint).
    """
    if args.overwrite and not args.save:
        raise UsageError("--overwrite lets a new run replace the file at --save; give --save PATH or drop --overwrite")
    comm = comm or Local()
    if not args.save:
        return False
    problem: OutputError | None = None
    keep = False
    if comm.is_root:
        try:
            if not _is_device(args.save):  # first: a file another run is writing is not "an earlier run's"
                cleanup.enter_context(OutputLock(args.save, "--save"))
            keep = _existing_save(args)
        except OutputError as error:
            problem = error
    if comm.any(problem is not None):  # every rank stops; the others' message is never shown
        raise problem or OutputError("--save: refused by rank 0")
    return keep


def _is_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _existing_save(args: argparse.Namespace) -> bool:
    """Refuse (or, with --overwrite, keep until the first epoch) a non-empty file at --save; see claim_save."""
    try:
        info = os.stat(args.save)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return False
    if args.resume and os.path.exists(args.resume) and os.path.samefile(args.save, args.resume):
        return False
    if args.overwrite:
        return True
    try:
        with open_npz(args.save, "checkpoint") as npz:
            what = f"a checkpoint after epoch {npz.header['epoch']}"
    except (FormatError, OSError):
        what = "a file that is not an xpnn checkpoint"
    if args.resume:
        return _refuse(f"--save {args.save} already holds {what}, and this run resumes another file; choose "
                       "another --save path, or pass --overwrite to replace it")
    return _refuse(f"--save {args.save} already holds {what}; continue that run with --resume {args.save}, or "
                   "start over with --overwrite (or delete the file)")


def _check_epochs_left(args: argparse.Namespace, given: set[str], saved: dict[str, Any], done: int) -> None:
    """Before any warning: --epochs below what the checkpoint has trained, or fine-tuning flags on a checkpoint
    that has trained all its epochs (they would change nothing), are refused."""
    if done > args.epochs:
        raise UsageError(f"--epochs {args.epochs}: the checkpoint {args.resume} has already trained {done} epochs; "
                         "pass a larger --epochs to continue")
    tuned = [key for key in TUNABLE_SETTINGS
             if key in given and key in saved and _differs(getattr(args, key), saved[key])]
    if tuned and done >= args.epochs:
        flags = " and ".join("--" + key.replace("_", "-") for key in tuned)
        raise UsageError(f"--resume {args.resume} has trained all {args.epochs} epochs, so {flags} would change "
                         f"nothing; pass --epochs larger than {done} to fine-tune it")


def _refuse(message: str) -> bool:
    raise OutputError(message)


def _train(args: argparse.Namespace, given: set[str] | None, comm: Any, cleanup: contextlib.ExitStack) -> int:
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib; install it with pip install matplotlib") from None
    given = set() if given is None else given
    for flag, path, what in (("--resume", args.resume, "checkpoint file"), ("--data-dir", args.data_dir, "folder"),
                             ("--data", args.data_file, ".npz or .csv file")):
        if path == "":
            raise UsageError(f"{flag}: empty path; give a {what} or drop the flag")
    saved = None
    if args.resume:
        _, header = read_npz(args.resume, "checkpoint")
        saved = check_settings(header.get("settings", {}), args.resume)
        if args.data_file is None and not {"dataset", "data_dir"} & given and saved.get("data_file") is not None:
            args.data_file = saved["data_file"]  # like every flag not given: taken from the checkpoint
    refused: UsageError | None = None
    try:
        check_data_flags(args, given)
        if saved is not None and args.data_file is None and isinstance(saved.get("data_file"), str):
            flags = " and ".join(f"--{key.replace('_', '-')}" for key in ("dataset", "data_dir") if key in given)
            raise UsageError(f"--resume: the checkpoint was trained on --data {saved['data_file']}, not on an "
                             f"MNIST-layout dataset; drop {flags} to train on that file again")
        notes = apply_defaults(args, given, saved)
        if saved is not None:
            _check_epochs_left(args, given or set(), saved, header["epoch"])
    except UsageError as error:  # said after the outputs' checks: a --save another run is writing comes first
        notes, refused = [], error
    data_inputs = ({"--data": [args.data_file]} if args.data_file is not None
                   else {"--data-dir": input_paths(args.dataset, args.data_dir)})
    check_outputs({"--save": args.save, "--metrics": args.metrics, "--plot": args.plot},
                  inputs={"--resume": args.resume, **data_inputs}, allow_same=[("--save", "--resume")])
    keep_earlier_save = claim_save(args, comm, cleanup)
    if refused is not None:
        raise refused
    run = Run(args, saved, comm, given)
    for warning in notes:  # once the outputs, data and model are accepted: a refused run says only why
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if (note := run.machine_warning(saved)) and run.comm.is_root:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    if args.resume:
        run.resume(args.resume)
    run.say(f"xpnn: {run.describe()}")
    data = run.data
    eval_sets = {"test": (run.inputs(data.x_test), data.y_test)}
    if data.x_val is not None:
        eval_sets = {"val": (run.inputs(data.x_val), data.y_val), **eval_sets}
    if args.save and run.saved_epoch is None and not keep_earlier_save:
        with _interrupts_deferred():  # so that an interrupted first epoch still leaves a checkpoint to resume from
            run.checkpoint(run.start_epoch)
    started = time.perf_counter()
    try:
        history = run.trainer.fit(run.inputs(data.x_train), data.y_train, epochs=args.epochs, eval_sets=eval_sets,
                                  callbacks=[_EpochEnd(run)], initial_epoch=run.start_epoch,
                                  verbose=not args.quiet, progress=not args.quiet)
    except KeyboardInterrupt as interrupt:
        rows = run.trainer.history
        done = rows[-1]["epoch"] if len(rows) > run.resumed_rows else run.start_epoch  # resumed rows may be few
        terminated = isinstance(interrupt, Terminated)
        print(f"\n{'terminated' if terminated else 'interrupted'} in epoch {done + 1}", file=sys.stderr)
        if args.save and run.saved_epoch is not None:
            print(f"checkpoint after epoch {run.saved_epoch} is in {args.save}; "
                  f"continue with --resume {args.save}", file=sys.stderr)
        return 143 if terminated else 130
    except DivergenceError as error:
        smaller = f"--lr {args.lr / 10:g}"
        if args.save and run.saved_epoch is not None:
            advice = (f"; the last good checkpoint (epoch {run.saved_epoch}) is in {args.save}: continue from it "
                      f"with --resume {shlex.quote(args.save)} {smaller}")
        else:
            advice = f", e.g. {smaller}"
        print(f"{PROG}: error: {error}: try a smaller --lr (now {args.lr}){advice}", file=sys.stderr)
        return 1
    if not run.comm.is_root:
        return 0
    last = history[-1]["epoch"] if len(history) > run.resumed_rows else run.start_epoch
    if args.save and run.saved_epoch != last:  # e.g. a finished checkpoint resumed into another --save
        run.checkpoint(last)
    if args.metrics and len(history) and not run.metrics_written:
        write_metrics(args.metrics, history.rows)
    if args.plot and len(history):
        plot_history(args.plot, history.rows, run.describe())
    scored = [row for row in history if _numbers(row, "epoch", "test_accuracy", "test_loss")]
    if scored:  # rows of a checkpoint written by the library may lack the test columns
        best = max(scored, key=lambda row: row["test_accuracy"])
        last = scored[-1]
        print(f"done: {last['epoch']} epochs, {time.perf_counter() - started:.1f} s this run; "
              f"test accuracy {last['test_accuracy']:.2%} (best {best['test_accuracy']:.2%} at epoch "
              f"{best['epoch']}), test loss {last['test_loss']:.4f}"
              + (f"; checkpoint {args.save}" if args.save else ""), flush=True)
    return 0


def _numbers(row: dict[str, Any], *keys: str) -> bool:
    """Whether ``row`` holds a number (not a bool) under each of ``keys``."""
    return all(isinstance(row.get(k), int | float) and not isinstance(row.get(k), bool) for k in keys)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m xpnn.train``; returns the exit status.

    Under an MPI launcher with more than one rank, training is data-parallel; the ranks other than 0
    keep quiet, and every rank leaves with a non-zero status when any fails (see
    :meth:`xpnn.runtime.distributed.MPICommunicator.finish`).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    retain_freed_memory()  # a CNN epoch on NumPy otherwise may page its arrays in anew at every step
    parser = build_parser()
    launched = launcher_environment()
    root = launched is None or not launched[0]
    # Before MPI starts, a failing rank cannot wait for the others; mpirun ends the job at the first
    # non-zero exit, so the silent ranks give rank 0 a moment to say why.
    with _quiet_unless(root):
        try:
            args = parser.parse_args(argv)  # bad flags: every rank exits 2, rank 0 says why
        except SystemExit:
            if not root:
                time.sleep(1)
            raise
    try:
        comm = communicator()
    except DistributedError as error:
        if root:
            print(f"{PROG}: error: {error}", file=sys.stderr)
        else:
            time.sleep(1)
        return 2
    held, usage = io.StringIO(), False
    with _quiet_unless(comm.is_root, held), warnings.catch_warnings(), _sigterm_as_interrupt(comm.size == 1):
        warnings.showwarning = _one_line_warning
        try:
            code = _main(parser, args, argv, comm)
        except SystemExit as error:  # parser.error(): a flag found wrong once the data is known
            code, usage = int(error.code or 0), True
    code = comm.finish(code, "".join(f"[rank {comm.rank}] {line}" for line in held.getvalue().splitlines(True)))
    if usage:
        sys.exit(code)
    return code


@contextlib.contextmanager
def _quiet_unless(speaking: bool, stderr: io.StringIO | None = None) -> Any:
    """Silence stdout and hold back stderr on the ranks that do not speak."""
    if speaking:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr or io.StringIO()):
        yield


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str], comm: Any) -> int:
    try:
        return train(args, given_flags(parser, argv), comm)
    except (UsageError, OutputError) as error:  # a flag found wrong once the data, files or model are known
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except BackendError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        print(f"\n{PROG}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except LayerTooLargeError as error:  # a size flag too large for this machine, found before allocating
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{PROG}: error: out of memory; try a smaller --batch-size (or --hidden), or --full-batch off",
              file=sys.stderr)
        return 1
    except (FormatError, FileNotFoundError, ValueError, OSError, DistributedError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
