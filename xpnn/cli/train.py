"""Train a multilayer perceptron or a CNN from the command line on MNIST-layout data or a file of your own.

    python -m xpnn.train --device cpu --dataset fashion-mnist --epochs 20
    python -m xpnn.train --model cnn --dataset fashion-mnist
    python -m xpnn.train --data iris.csv --target species --standardize

The flags follow pytorch/examples' mnist/main.py; ``python -m xpnn.train --help`` lists them all. The
command is a thin layer over :func:`xpnn.fit`: it parses flags into one :class:`~xpnn.cli.settings.TrainSettings`,
loads data, builds the model and passes callbacks that print, checkpoint
(:class:`~xpnn.training.callbacks.ModelCheckpoint`) and write metrics
(:class:`~xpnn.training.callbacks.JsonLinesLogger`).

One run, in order (:func:`_train`): flags -> settings (:mod:`xpnn.cli.settings`) -> outputs checked and
``--save`` claimed (:mod:`xpnn.cli.outputs`) -> backend, data, model, optimizer and trainer
(:func:`open_session`) -> resume -> ``fit`` with the callbacks -> final files and the summary line.

Started by an MPI launcher with more than one rank (``mpirun -n 4 python -m xpnn.train ...``) it trains
data-parallel: every rank takes its part of each global batch, rank 0 alone prints and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ..core.backend import Backend, BackendError, get_backend
from ..io.data import DataError, Dataset, SplitSizeError, load_dataset
from ..io.datafile import load_data_file
from ..io.files import OutputError
from ..io.serialization import FormatError, read_npz
from ..model import Sequential, cnn, mlp, standardized
from ..nn.layers.base import LayerTooLargeError
from ..optim import Optimizer, get_optimizer, get_schedule
from ..runtime.distributed import DistributedError, Local, communicator, launcher_environment, rank_device
from ..runtime.heap import retain_freed_memory
from ..runtime.parallel import AUTO, resolve_workers
from ..training.callbacks import JsonLinesLogger, ModelCheckpoint
from ..training.checkpoint import load_checkpoint
from ..training.trainer import DivergenceError, Trainer
from . import one_line_warnings
from .outputs import claim_outputs
from .plot import has_numbers, plot_history
from .settings import (
    PROG,
    TrainSettings,
    UsageError,
    apply_defaults,
    build_parser,
    check_data_flags,
    check_epochs_left,
    check_settings,
    given_flags,
)
from .signals import InterruptsDeferred, Terminated, interrupts_deferred, sigterm_as_interrupt

__all__ = ["PROG", "TrainSession", "TrainSettings", "build_parser", "main", "open_session", "train"]


def device_kind(backend: Any) -> str:
    """The kind of device a run computes on, as saved in a checkpoint: ``numpy``, ``torch``, ``torch (GPU)``, ...

    The GPU's index is left out: MPI ranks train on different GPUs of one kind, and another GPU of the same
    kind computes the same numbers.
    """
    library = backend.name.split(":")[0]
    return f"{library} (GPU)" if backend.launch_bound and backend.name != library else backend.name


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def data_fingerprint(x: Any, y: Any, class_names: Sequence[str] | None = None) -> str:
    """A short hash of the training arrays (and the class names, if any), so a resume on other data is refused."""
    digest = hashlib.blake2b(digest_size=8)
    for a in (x, y):
        digest.update(str((a.shape, a.dtype.str)).encode())
        digest.update(memoryview(a).cast("B"))
    if class_names is not None:
        digest.update(json.dumps(list(class_names)).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------- the session: what one run builds
@dataclasses.dataclass
class TrainSession:
    """What one run builds from its settings: the backend, data, model, optimizer and trainer, and where a
    resumed run starts."""

    settings: TrainSettings
    comm: Any
    say: Callable[..., None]
    backend: Backend
    data: Dataset
    fingerprint: str
    image_shape: tuple[int, ...] | None
    model: Sequential
    optimizer: Optimizer
    trainer: Trainer
    start_epoch: int = 0
    resumed_rows: int = 0  # rows of the history that came from the checkpoint

    def inputs(self, x: Any) -> Any:
        """Images as the model takes them: (N, 784) rows for the MLP, (N, 1, 28, 28) for the CNN."""
        return x if self.image_shape is None else x.reshape(x.shape[0], *self.image_shape)

    def checkpoint_settings(self) -> dict[str, Any]:
        """The settings a checkpoint of this run saves (a resumed run compares them)."""
        return self.settings.checkpoint_settings(data=self.fingerprint, device=device_kind(self.backend),
                                                 processes=self.comm.size)

    def describe(self) -> str:
        a, d = self.settings, self.data
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
        workers, now = saved.get("workers", 1), self.settings.workers
        if isinstance(workers, int) and workers != now:
            changes.append(f"with {_count(now, 'worker')} (the checkpoint was trained with "
                           f"{_count(workers, 'worker')})")
        if not changes:
            return None
        batchnorm = workers != now and any("BatchNorm" in type(layer).__name__ for layer in self.model)
        return (f"resuming {' and '.join(changes)}: from here the numbers agree with an uninterrupted run only to "
                "float rounding" + (", and BatchNorm normalizes each worker's shard by its own statistics"
                                    if batchnorm else ""))


def open_session(args: TrainSettings, saved: dict[str, Any] | None = None, comm: Any = None,
                 given: set[str] | None = None) -> TrainSession:
    """Backend, data, model, optimizer and trainer, in this order (the data split, the weights and the shuffles
    each follow the seed); ``args.workers`` becomes the number the trainer uses, as checkpoints save it."""
    comm = Local() if comm is None else comm
    quiet = args.quiet or not comm.is_root
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    try:
        backend = get_backend(rank_device(args.device, comm))
    except ValueError as error:
        raise UsageError(f"--device: {error}") from None
    try:  # a number is checked before the data is loaded (or downloaded); the Trainer resolves "auto"
        if args.workers != AUTO:
            args.workers = resolve_workers(args.workers, backend, PROG, option="--workers", processes=comm.size)
    except (ValueError, ImportError) as error:
        if not args.workers_from_checkpoint:
            raise UsageError(str(error)) from None
        # The checkpoint's number does not fit this device or machine (a NumPy run resumed on torch, say):
        # like every machine setting, it gives way to what this one does best, with the warning below.
        args.workers = AUTO
    data = _load_data(args)
    fingerprint = data_fingerprint(data.x_train, data.y_train, data.class_names)
    if saved is not None and saved.get("data", fingerprint) != fingerprint:
        source = (f"--data {args.data_file}" if args.data_file is not None
                  else f"{data.directory} (dataset {args.dataset})")
        raise UsageError(f"--resume: the checkpoint was trained on other data than {source} (--val {args.val}); "
                         f"point {'--data' if args.data_file is not None else '--data-dir'} at the same files")
    _check_batch_size(args, data.x_train.shape[0], comm, given)
    try:
        model, image_shape = _build_model(args, data, backend)
    except ValueError as error:  # e.g. a CNN whose pooling windows do not fit the images
        raise UsageError(f"--model {args.model} does not fit {data.name}: {error}") from None
    model.check_values = False  # the data is checked once, in fit(), not at every step
    options: dict[str, Any] = {"weight_decay": args.weight_decay}
    if args.optimizer == "momentum":
        options["momentum"] = args.momentum
    optimizer = get_optimizer(args.optimizer, model, args.lr, **options)
    try:
        trainer = Trainer(model, optimizer, batch_size=None if args.full_batch else args.batch_size,
                          schedule=get_schedule(args.schedule, args.epochs), seed=args.seed, comm=comm,
                          cuda_graphs=args.cuda_graphs, workers=args.workers)
    except ValueError as error:
        raise UsageError(str(error)) from None
    args.workers = trainer.workers  # the checkpoint keeps the number, not "auto"
    return TrainSession(args, comm, say, backend, data, fingerprint, image_shape, model, optimizer, trainer)


def _load_data(args: TrainSettings) -> Dataset:
    try:
        if args.data_file is not None:
            try:
                return load_data_file(args.data_file, target=args.target, test_size=args.test_size, val=args.val,
                                      seed=args.seed)
            except DataError:
                raise
            except ValueError as error:  # a flag the file contradicts (--target for an .npz, ...)
                raise UsageError(str(error)) from None
        return load_dataset(args.dataset, args.data_dir, val=args.val, seed=args.seed, quiet=args.quiet)
    except SplitSizeError as error:  # --val as large as the training set
        raise UsageError(str(error)) from None


def _check_batch_size(args: TrainSettings, n: int, comm: Any, given: set[str] | None) -> None:
    chosen = given is None or "batch_size" in given  # the default (or a checkpoint's) takes a small set whole
    if not args.full_batch and args.batch_size > n and chosen:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the training set ({n} samples)")
    if min(n if args.full_batch else args.batch_size, n) < comm.size:  # every rank needs a sample
        what = "the training set" if args.full_batch or args.batch_size >= n else f"--batch-size {args.batch_size}"
        raise UsageError(f"{what} is smaller than the number of processes ({comm.size}), so some would have "
                         f"no sample; use --batch-size {comm.size} or more, or fewer processes")


def _build_model(args: TrainSettings, data: Dataset, backend: Backend) -> tuple[Sequential, tuple[int, ...] | None]:
    """The model and the shape each input row takes for it (None: the MLP takes rows as they are)."""
    std = 0.01 if args.init == "normal" else None
    if args.model == "cnn":
        if data.image_shape is None:
            raise ValueError(f"it holds rows of {data.n_features} features, not images; a CNN takes images "
                             "(N, H, W) or (N, C, H, W) from an .npz: use --model mlp")
        image_shape = data.input_shape
        model = cnn((data.channels, 32, 64), (128, data.n_classes), image_size=data.image_shape,
                    activation=args.activation, init=args.init, dropout=args.dropout, backend=backend, seed=args.seed)
    else:
        image_shape = None
        sizes = [data.n_features, *args.hidden, data.n_classes]
        model = mlp(sizes, activation=args.activation, init=args.init, std=std, dropout=args.dropout,
                    backend=backend, seed=args.seed)
    if args.standardize:
        x = data.x_train if image_shape is None else data.x_train.reshape(data.x_train.shape[0], *image_shape)
        model = standardized(model, x)
    model.class_names = data.class_names
    return model, image_shape


def resume(session: TrainSession, path: str, checkpoint: ModelCheckpoint | None) -> None:
    """Restore the checkpoint at ``path`` into the session's model, optimizer and history."""
    args = session.settings
    header = load_checkpoint(path, session.model, session.optimizer)
    session.start_epoch = header["epoch"]
    session.trainer.history.rows[:] = header["history"]
    session.resumed_rows = len(header["history"])
    if checkpoint is not None:  # what --save holds so far: this checkpoint when it is the same file
        same = os.path.exists(args.save) and os.path.samefile(args.save, path)
        checkpoint.saved_epoch = session.start_epoch if same else None
    if session.start_epoch > args.epochs:
        raise UsageError(f"--epochs {args.epochs}: the checkpoint {path} has already trained "
                         f"{session.start_epoch} epochs; pass a larger --epochs to continue")
    session.say(f"resumed from {path} after epoch {session.start_epoch}")


# ---------------------------------------------------------------------- the run
def train(args: TrainSettings, given: set[str] | None = None, comm: Any = None) -> int:
    """Run one training command; returns the exit status. Locks held for ``--save`` are released on any exit."""
    with contextlib.ExitStack() as cleanup:
        return _train(args, given, comm, cleanup)


def _settle_flags(args: TrainSettings, given: set[str]) -> tuple[dict[str, Any] | None, list[str], UsageError | None]:
    """Fill ``args`` from the checkpoint being resumed and the model's defaults.

    Returns the checkpoint's settings (None without --resume), the warnings to print, and a refused flag, which
    is raised only after the outputs are checked: a --save another run is writing is said first.
    """
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib; install it with pip install matplotlib") from None
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
    try:
        check_data_flags(args, given)
        if saved is not None and args.data_file is None and isinstance(saved.get("data_file"), str):
            flags = " and ".join(f"--{key.replace('_', '-')}" for key in ("dataset", "data_dir") if key in given)
            raise UsageError(f"--resume: the checkpoint was trained on --data {saved['data_file']}, not on an "
                             f"MNIST-layout dataset; drop {flags} to train on that file again")
        notes = apply_defaults(args, given, saved)
        if saved is not None:
            check_epochs_left(args, given, saved, header["epoch"])
    except UsageError as error:
        return saved, [], error
    return saved, notes, None


def _train(args: TrainSettings, given: set[str] | None, comm: Any, cleanup: contextlib.ExitStack) -> int:
    given = set() if given is None else given
    saved, notes, refused = _settle_flags(args, given)
    keep_earlier_save = claim_outputs(args, comm, cleanup)
    if refused is not None:
        raise refused
    session = open_session(args, saved, comm, given)
    for warning in notes:  # once the outputs, data and model are accepted: a refused run says only why
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if (note := session.machine_warning(saved)) and session.comm.is_root:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    settings = session.checkpoint_settings()
    # the command decided already what it may replace: --save by --resume or --overwrite, --metrics always
    checkpoint = ModelCheckpoint(args.save, settings=settings, overwrite=True) if args.save else None
    logger = JsonLinesLogger(args.metrics, overwrite=True) if args.metrics else None
    if args.resume:
        resume(session, args.resume, checkpoint)
    session.say(f"xpnn: {session.describe()}")
    data, trainer = session.data, session.trainer
    eval_sets = {"test": (session.inputs(data.x_test), data.y_test)}
    if data.x_val is not None:
        eval_sets = {"val": (session.inputs(data.x_val), data.y_val), **eval_sets}
    if checkpoint is not None and checkpoint.saved_epoch is None and not keep_earlier_save:
        with interrupts_deferred():  # so that an interrupted first epoch still leaves a checkpoint to resume from
            checkpoint.write(trainer, session.start_epoch)
    started = time.perf_counter()
    try:  # after each epoch: its checkpoint, then the metrics file, with Ctrl-C held back until both are written
        trainer.fit(session.inputs(data.x_train), data.y_train, epochs=args.epochs, eval_sets=eval_sets,
                    callbacks=[InterruptsDeferred([c for c in (checkpoint, logger) if c is not None])],
                    initial_epoch=session.start_epoch, verbose=not args.quiet, progress=not args.quiet)
    except KeyboardInterrupt as interrupt:
        return _interrupted(session, checkpoint, interrupt)
    except DivergenceError as error:
        return _diverged(args, checkpoint, error)
    if not session.comm.is_root:
        return 0
    return _finish(session, checkpoint, logger, started)


def _last_epoch(session: TrainSession) -> int:
    """The last epoch trained, by this run or (when it trained none) by the checkpoint it resumed."""
    rows = session.trainer.history
    return rows[-1]["epoch"] if len(rows) > session.resumed_rows else session.start_epoch  # resumed rows: few


def _interrupted(session: TrainSession, checkpoint: ModelCheckpoint | None, interrupt: KeyboardInterrupt) -> int:
    terminated = isinstance(interrupt, Terminated)
    print(f"\n{'terminated' if terminated else 'interrupted'} in epoch {_last_epoch(session) + 1}", file=sys.stderr)
    if checkpoint is not None and checkpoint.saved_epoch is not None:
        save = session.settings.save
        print(f"checkpoint after epoch {checkpoint.saved_epoch} is in {save}; continue with --resume {save}",
              file=sys.stderr)
    return 143 if terminated else 130


def _diverged(args: TrainSettings, checkpoint: ModelCheckpoint | None, error: DivergenceError) -> int:
    smaller = f"--lr {args.lr / 10:g}"
    if checkpoint is not None and checkpoint.saved_epoch is not None:
        advice = (f"; the last good checkpoint (epoch {checkpoint.saved_epoch}) is in {args.save}: continue "
                  f"from it with --resume {shlex.quote(args.save)} {smaller}")
    else:
        advice = f", e.g. {smaller}"
    print(f"{PROG}: error: {error}: try a smaller --lr (now {args.lr}){advice}", file=sys.stderr)
    return 1


def _finish(session: TrainSession, checkpoint: ModelCheckpoint | None, logger: JsonLinesLogger | None,
            started: float) -> int:
    """On rank 0 after training: the files not written yet, the plot and the summary line."""
    args, trainer, history = session.settings, session.trainer, session.trainer.history
    last = _last_epoch(session)
    if checkpoint is not None and checkpoint.saved_epoch != last:  # e.g. a finished checkpoint into another --save
        checkpoint.write(trainer, last)
    if logger is not None and len(history) and not logger.written:
        logger.write(trainer)
    if args.plot and len(history):
        plot_history(args.plot, history.rows, session.describe())
    scored = [row for row in history if has_numbers(row, "epoch", "test_accuracy", "test_loss")]
    if scored:  # rows of a checkpoint written by the library may lack the test columns
        best = max(scored, key=lambda row: row["test_accuracy"])
        last_row = scored[-1]
        print(f"done: {last_row['epoch']} epochs, {time.perf_counter() - started:.1f} s this run; "
              f"test accuracy {last_row['test_accuracy']:.2%} (best {best['test_accuracy']:.2%} at epoch "
              f"{best['epoch']}), test loss {last_row['test_loss']:.4f}"
              + (f"; checkpoint {args.save}" if args.save else ""), flush=True)
    return 0


# ---------------------------------------------------------------------- the entry point
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
    with _quiet_unless(comm.is_root, held), warnings.catch_warnings(), sigterm_as_interrupt(comm.size == 1):
        warnings.showwarning = one_line_warnings(PROG)
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
        return train(TrainSettings.from_args(args), given_flags(parser, argv), comm)
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
