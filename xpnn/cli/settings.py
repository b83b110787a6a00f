"""The flags of ``python -m xpnn.train``: the parser, the one :class:`TrainSettings` object built from it, and the
rules that fill and check it (per-model defaults, a resumed checkpoint's settings, flags that cannot go together).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..io.data import DATASETS
from ..io.datafile import DEFAULT_TEST_SIZE
from ..io.serialization import FormatError
from ..model import ACTIVATIONS
from ..model.builders import default_init
from ..nn.initializers import INITIALIZERS
from ..optim import OPTIMIZERS
from ..runtime.parallel import AUTO

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


def _float_where(accept: Callable[[float], bool], expected: str, must: str) -> Callable[[str], float]:
    """An argparse type: a float that ``accept`` takes (NaN never does), else "expected ..." / "must be ..."."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
        return value

    return parse


_positive_float = _float_where(lambda v: v > 0 and math.isfinite(v), "a number", "a positive finite number")
_non_negative_float = _float_where(lambda v: v >= 0 and math.isfinite(v), "a number", "a finite number >= 0")
_fraction = _float_where(lambda v: 0.0 < v < 1.0, "a fraction between 0 and 1", "between 0 and 1 (exclusive)")
_probability = _float_where(lambda v: 0.0 <= v < 1.0, "a number in [0, 1)", "in [0, 1)")


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


@dataclasses.dataclass
class TrainSettings:
    """Everything the flags say, built once from the parsed command line; the run reads this, not the flags.

    A field holds None until :func:`apply_defaults` fills it (from the model's defaults, or from the
    checkpoint being resumed) where its flag defaults to None.
    """

    model: str = "mlp"
    device: str = "cpu"
    dataset: str = "mnist"
    data_dir: str | None = None
    data_file: str | None = None
    target: str | None = None
    test_size: float | None = None
    standardize: bool = False
    epochs: int | None = None
    batch_size: int = 128
    full_batch: bool = False
    lr: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str | None = None
    hidden: list[int] = dataclasses.field(default_factory=lambda: [256, 128])
    activation: str = "relu"
    init: str | None = None
    dropout: float | None = None
    val: int = 0
    seed: int = 1
    save: str | None = None
    overwrite: bool = False
    resume: str | None = None
    metrics: str | None = None
    plot: str | None = None
    quiet: bool = False
    workers: int | str = AUTO
    cuda_graphs: str = "auto"
    workers_from_checkpoint: bool = False  # --workers not given on --resume: the checkpoint's may give way

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainSettings:
        """The settings of a namespace from :func:`build_parser` (one field per flag)."""
        return cls(**vars(args))

    def checkpoint_settings(self, *, data: str, device: str, processes: int) -> dict[str, Any]:
        """What a checkpoint's header saves of this run, in this order (resumed runs compare it)."""
        keys = ("epochs", "workers", *EXACT_SETTINGS)
        file = None if self.data_file is None else os.path.abspath(self.data_file)
        return {**{k: getattr(self, k) for k in keys}, "data": data, "data_file": file, "device": device,
                "processes": processes}


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options written on the command line (``--lr 0.1`` and ``--lr=0.1``)."""
    by_option = {option: action.dest for action in parser._actions for option in action.option_strings}
    return {by_option[arg.split("=", 1)[0]] for arg in argv if arg.split("=", 1)[0] in by_option}


def apply_defaults(args: TrainSettings, given: set[str], saved: dict[str, Any] | None) -> list[str]:
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
    # like --device, a machine's setting: it may change on resuming (TrainSession.machine_warning warns)
    if saved is not None and "workers" not in given:
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


def check_data_flags(args: TrainSettings, given: set[str]) -> None:
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


def check_epochs_left(args: TrainSettings, given: set[str], saved: dict[str, Any], done: int) -> None:
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
