"""Ctrl-C and SIGTERM in ``python -m xpnn.train``: SIGTERM ends a run like a Ctrl-C (exit 143, not 130), and both
are held back while the files of one epoch are written, so that the files and what the run reports agree."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..training.callbacks import Callback, TrainerLike


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's notice, ``docker stop``), ended like a Ctrl-C: exit 143."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt(enabled: bool) -> Iterator[None]:
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
def interrupts_deferred() -> Iterator[None]:
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


class InterruptsDeferred(Callback):
    """Runs its callbacks' ``on_epoch_end`` in one :func:`interrupts_deferred` block: a Ctrl-C between the
    checkpoint and the metrics file would leave the metrics one epoch behind the checkpoint."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def on_train_begin(self, trainer: TrainerLike) -> None:
        for callback in self.callbacks:
            callback.on_train_begin(trainer)

    def on_epoch_end(self, trainer: TrainerLike, row: dict[str, Any]) -> None:
        with interrupts_deferred():
            for callback in self.callbacks:
                callback.on_epoch_end(trainer, row)

    def on_train_end(self, trainer: TrainerLike) -> None:
        for callback in self.callbacks:
            callback.on_train_end(trainer)
