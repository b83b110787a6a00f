"""What ``fit()`` reports and who can act on it: the history, callbacks and early stopping."""

from __future__ import annotations

import math
from typing import Any, Protocol

from .history import History

__all__ = ["Callback", "EarlyStopping", "History", "LambdaCallback", "TrainerLike"]


class TrainerLike(Protocol):
    """What a callback sees of the :class:`~xpnn.Trainer` that ``fit()`` runs: the model and its optimizer,
    the history so far, the flag that stops training after this epoch, and a copy of the model's state."""

    model: Any
    optimizer: Any
    history: History
    stop_training: bool

    def snapshot(self) -> dict[str, Any]: ...


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
