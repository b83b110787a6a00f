"""What ``fit()`` reports and who can act on it: the history, callbacks, early stopping, and the callbacks that
write a checkpoint and a metrics file after every epoch."""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any, Protocol

from ..core.validation import check_bool
from ..io import files  # files.write_file, looked up at each call: one writer for every file xpnn writes
from .checkpoint import save_checkpoint
from .history import History

__all__ = ["Callback", "EarlyStopping", "History", "JsonLinesLogger", "LambdaCallback", "ModelCheckpoint",
           "TrainerLike"]


class TrainerLike(Protocol):
    """What a callback sees of the :class:`~xpnn.Trainer` that ``fit()`` runs: the model and its optimizer,
    the history so far, the flag that stops training after this epoch, and a copy of the model's state."""

    model: Any
    optimizer: Any
    history: History
    stop_training: bool
    comm: Any  # the MPI communicator (rank 0 writes the files), or one standing for a single process

    def snapshot(self) -> dict[str, Any]:
        """A copy of the model's state, to put back with ``model.load_state_dict``."""


class Callback:
    """Hooks ``fit()`` calls; override the ones you need.

    A callback reaches the model, optimizer and history through ``trainer``; setting
    ``trainer.stop_training = True`` ends training after the current epoch.
    """

    def on_train_begin(self, trainer: TrainerLike) -> None:
        """Before the first epoch of this ``fit()`` call."""

    def on_epoch_end(self, trainer: TrainerLike, row: dict[str, Any]) -> None:
        """After each epoch, with the epoch's row (already in ``trainer.history``)."""

    def on_train_end(self, trainer: TrainerLike) -> None:
        """After the last epoch (also after early stopping; not after an exception)."""


class LambdaCallback(Callback):
    """A callback from a function ``on_epoch_end(trainer, row)``."""

    def __init__(self, on_epoch_end: Any):
        self._on_epoch_end = on_epoch_end

    def on_epoch_end(self, trainer: TrainerLike, row: dict[str, Any]) -> None:
        self._on_epoch_end(trainer, row)


class EarlyStopping(Callback):
    """Stop when a monitored number has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str
        A key of the history rows, e.g. ``"val_loss"`` (default) or ``"val_accuracy"``.
    patience : int
        Stop after this many epochs in a row without improvement (>= 0; 0 and 1 both stop at the first).
    min_delta : float
        Smallest change that counts as an improvement (>= 0).
    mode : {"auto", "min", "max"}
        Whether smaller or larger is better; ``"auto"`` maximizes accuracies and minimizes the rest.
    restore_best_weights : bool
        At the end, put back the parameters (and running statistics) of the best epoch, as Keras does.

    Attributes
    ----------
    best : float or None
        The best value seen.
    best_epoch : int or None
        Its epoch (1-based).
    stopped_epoch : int or None
        The epoch after which training stopped, or None if it ran to the end.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = True):
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 0, got {patience!r}")
        if not (min_delta >= 0 and math.isfinite(min_delta)):
            raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0, got {min_delta!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.restore_best_weights = restore_best_weights
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self._wait = 0
        self._best_state: dict[str, Any] | None = None

    def on_train_begin(self, trainer: TrainerLike) -> None:
        self.best = self.best_epoch = self.stopped_epoch = None
        self._wait, self._best_state = 0, None

    def on_epoch_end(self, trainer: TrainerLike, row: dict[str, Any]) -> None:
        if self.monitor not in row:
            raise ValueError(
                f"EarlyStopping: the history has no {self.monitor!r} (it has {sorted(row)}); pass validation "
                "data to fit() (validation_data= or validation_split=) or monitor another key"
            )
        value = row[self.monitor]
        if self.best is None or self._improved(value):
            self.best, self.best_epoch, self._wait = value, row["epoch"], 0
            if self.restore_best_weights:
                self._best_state = trainer.snapshot()
            return
        self._wait += 1
        if self._wait >= max(self.patience, 1):  # as Keras: patience=2 stops after 2 epochs without improvement
            self.stopped_epoch = row["epoch"]
            trainer.stop_training = True

    def on_train_end(self, trainer: TrainerLike) -> None:
        last_epoch = trainer.history[-1]["epoch"] if len(trainer.history) else None
        if self.restore_best_weights and self._best_state is not None and self.best_epoch != last_epoch:
            trainer.model.load_state_dict(self._best_state)

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def __repr__(self) -> str:
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta}, "
                f"mode={self.mode!r}, restore_best_weights={self.restore_best_weights})")


def _is_root(trainer: TrainerLike) -> bool:
    """Whether this process writes the files: under MPI (``fit(comm=...)``) rank 0 alone does."""
    comm = getattr(trainer, "comm", None)
    return comm is None or bool(comm.is_root)


def _output_path(path: Any, who: str, overwrite: Any) -> str:
    """``path`` made absolute (a later ``os.chdir`` does not move it), checked now rather than after the first
    epoch: writable, not a folder, and not a file with something in it unless ``overwrite``."""
    if isinstance(path, bool) or not isinstance(path, str | os.PathLike):
        raise TypeError(f"{who}: path must be a file path (str or pathlib.Path), got {path!r}")
    files.check_output(path)  # a folder, a read-only file, ...
    if not check_bool(who, "overwrite", overwrite):
        try:
            info = os.stat(path)
        except OSError:  # nothing there (yet)
            info = None
        if info is not None and stat.S_ISREG(info.st_mode) and info.st_size > 0:  # /dev/null and empty files pass
            raise FileExistsError(f"{who}: {os.fspath(path)} already exists; pass overwrite=True to replace it "
                                  "(to resume into it, say), or choose another path")
    return os.path.abspath(path)


class ModelCheckpoint(Callback):
    """Save a checkpoint after every epoch: model, optimizer state, epochs done, history and settings.

    Each write replaces the file atomically (see :mod:`xpnn.io.files`), so a run stopped at any moment, even
    while writing, leaves the checkpoint of its last completed epoch. Resume from it with
    :func:`xpnn.training.load_checkpoint` and :meth:`xpnn.Trainer.fit` with ``initial_epoch`` (see the
    example). After a :class:`~xpnn.DivergenceError` nothing is written: the file keeps the last good epoch.
    Under MPI (``fit(comm=...)``) rank 0 alone writes.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file to write; checked when the callback is made.
    settings : dict, optional
        JSON values saved in the header (e.g. your hyperparameters), returned by ``load_checkpoint`` as
        ``header["settings"]``.
    overwrite : bool
        Whether a file with something in it, already at ``path`` when the callback is made, may be replaced
        (as when resuming into the checkpoint you loaded); refused by default, so that a rerun never destroys
        a finished run. Empty files and ``/dev/null`` are always accepted.

    Attributes
    ----------
    saved_epoch : int or None
        The epoch whose checkpoint the file holds, as written by this callback (None before the first write).

    Raises
    ------
    TypeError
        When ``path`` is not a path or ``settings`` is not a dict of JSON values.
    FileExistsError
        When ``path`` exists and ``overwrite`` is false.
    xpnn.io.files.OutputError
        When ``path`` cannot be written (a folder, a read-only file, ...).

    Examples
    --------
    >>> import numpy as np, xpnn
    >>> from xpnn.training import load_checkpoint
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype(int)
    >>> model = xpnn.mlp([4, 8, 2], seed=0)
    >>> optimizer = xpnn.optim.Adam(model, lr=0.01)
    >>> checkpoint = xpnn.ModelCheckpoint("run.npz", settings={"lr": 0.01})
    >>> _ = xpnn.fit(model, optimizer, x, y, epochs=2, seed=0, verbose=False, callbacks=[checkpoint])
    >>> checkpoint.saved_epoch
    2

    Later, in a new process, continue to 5 epochs as if never stopped. Make the :class:`~xpnn.Trainer` before
    loading: it takes the optimizer's ``lr`` as the base of its schedule, and the checkpoint holds the ``lr`` the
    schedule had reached.

    >>> model = xpnn.mlp([4, 8, 2], seed=0)
    >>> optimizer = xpnn.optim.Adam(model, lr=0.01)
    >>> trainer = xpnn.Trainer(model, optimizer, seed=0)
    >>> header = load_checkpoint("run.npz", model, optimizer)
    >>> trainer.history.rows[:] = header["history"]
    >>> again = xpnn.ModelCheckpoint("run.npz", settings=header["settings"], overwrite=True)
    >>> _ = trainer.fit(x, y, epochs=5, initial_epoch=header["epoch"], verbose=False, callbacks=[again])
    >>> again.saved_epoch, len(trainer.history)
    (5, 5)
    """

    def __init__(self, path: str | os.PathLike, settings: dict[str, Any] | None = None, *, overwrite: bool = False):
        self.path = _output_path(path, "ModelCheckpoint", overwrite)
        if settings is not None and not isinstance(settings, dict):
            raise TypeError(f"ModelCheckpoint: settings must be a dict of JSON values, got {type(settings).__name__}")
        try:
            json.dumps(settings)
        except (TypeError, ValueError) as error:
            raise TypeError(f"ModelCheckpoint: settings must hold JSON values (numbers, strings, lists, dicts): "
                            f"{error}") from None
        self.settings: dict[str, Any] = {} if settings is None else dict(settings)
        self.saved_epoch: int | None = None

    def write(self, trainer: TrainerLike, epoch: int) -> None:
        """Save ``trainer``'s model, optimizer and history as the checkpoint after ``epoch`` (0: before training).

        Rank 0 alone writes under MPI; ``saved_epoch`` is set on every rank.
        """
        if _is_root(trainer):
            save_checkpoint(self.path, trainer.model, trainer.optimizer, epoch, trainer.history.rows, self.settings)
        self.saved_epoch = epoch

    def on_epoch_end(self, trainer: TrainerLike, row: dict[str, Any]) -> None:
        self.write(trainer, row["epoch"])

    def __repr__(self) -> str:
        return f"ModelCheckpoint({self.path!r})"


class JsonLinesLogger(Callback):
    """Write the history to a JSON Lines file after every epoch: one object per epoch, one per line.

    The rows are those of ``trainer.history`` (``epoch``, ``train_loss``, ``val_loss``, ..., ``lr``,
    ``seconds``, ``samples_per_second``), as ``python -m xpnn.train --metrics`` writes them. The whole file is
    replaced atomically each time, so a reader never sees half a line, and it always holds every epoch so far
    (with a resumed trainer's earlier rows first). ``/dev/null`` works. Under MPI rank 0 alone writes.

    Parameters
    ----------
    path : str or path-like
        The file to write; checked when the callback is made.
    overwrite : bool
        Whether a file with something in it already at ``path`` may be replaced; refused by default.

    Attributes
    ----------
    written : bool
        Whether the file holds the history up to the last epoch written (False before the first write).

    Raises
    ------
    TypeError
        When ``path`` is not a path.
    FileExistsError
        When ``path`` holds something and ``overwrite`` is false.
    xpnn.io.files.OutputError
        When ``path`` cannot be written (a folder, a read-only file, ...).

    Examples
    --------
    >>> import json, numpy as np, xpnn
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype(int)
    >>> model = xpnn.mlp([4, 8, 2], seed=0)
    >>> logger = xpnn.JsonLinesLogger("metrics.jsonl")
    >>> _ = xpnn.fit(model, xpnn.optim.Adam(model, lr=0.01), x, y, epochs=2, verbose=False, callbacks=[logger])
    >>> [json.loads(line)["epoch"] for line in open("metrics.jsonl")]
    [1, 2]
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False):
        self.path = _output_path(path, "JsonLinesLogger", overwrite)
        self.written = False

    def write(self, trainer: TrainerLike) -> None:
        """Write every row of ``trainer.history`` now (rank 0 alone under MPI)."""
        if _is_root(trainer):
            text = "".join(json.dumps(row) + "\n" for row in trainer.history.rows)
            files.write_file(self.path, lambda file: file.write(text.encode()))
        self.written = True

    def on_epoch_end(self, trainer: TrainerLike, row: dict[str, Any]) -> None:
        self.write(trainer)

    def __repr__(self) -> str:
        return f"JsonLinesLogger({self.path!r})"
