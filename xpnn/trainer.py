"""Minibatch training loops that never wait for the device inside an epoch, and checkpoints."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .checkpoint import load_checkpoint, save_checkpoint
from .losses import one_hot
from .model import SHUFFLE_STREAM, Sequential
from .optim import Optimizer
from .progress import ProgressBar

__all__ = ["DivergenceError", "EpochResult", "Trainer", "load_checkpoint", "save_checkpoint"]


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochResult:
    """What one epoch measured (losses are means over samples, accuracies fractions)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    seconds: float
    samples_per_second: float
    lr: float
    val_loss: float | None = None
    val_accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Trainer:
    """Trains a classifier with minibatches cut on the device.

    Each epoch draws one permutation on the host (from the seed and the epoch number, so a resumed
    run shuffles exactly as an uninterrupted one), gathers the data once in that order on the device,
    then slices contiguous batches. Full-batch training skips the shuffle: the gradient of the whole
    set does not depend on the order. Losses and correct counts accumulate as device arrays and are
    read once at the end of the epoch.

    Parameters
    ----------
    model : Sequential
        A classifier with a softmax cross-entropy loss.
    optimizer : Optimizer
    batch_size : int or None
        Samples per step; None trains full batch (one step per epoch).
    schedule : callable, optional
        Learning-rate factor per 0-based epoch (see :func:`xpnn.optim.get_schedule`).
    seed : int
        Seeds the shuffles.
    """

    def __init__(self, model: Sequential, optimizer: Optimizer, *, batch_size: int | None = 128,
                 schedule: Callable[[int], float] | None = None, seed: int = 0):
        self.model, self.optimizer, self.batch_size = model, optimizer, batch_size
        self.schedule, self.seed = schedule, seed
        self.base_lr = optimizer.lr

    def device_data(self, x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[Any, Any, Any]:
        """Copy a host dataset to the device once: images, integer labels and one-hot labels."""
        be = self.model.backend
        if not np.all(np.isfinite(x)):
            raise ValueError("the training data contains NaN or infinite values")
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"labels must lie in [0, {n_classes}), got values from {y.min()} to {y.max()}")
        labels = be.asarray(y)
        return be.asarray(x), labels, one_hot(be.xp, labels, n_classes, be.dtype)

    def train_epoch(self, data: tuple[Any, Any, Any], epoch: int, progress: bool = False) -> tuple[Any, Any]:
        """One pass over ``data`` (from :meth:`device_data`); returns summed loss and correct count, on device."""
        model, be = self.model, self.model.backend
        xp = be.xp
        x, labels, targets = data
        n = x.shape[0]
        batch = n if self.batch_size is None else min(self.batch_size, n)
        if self.schedule is not None:
            self.optimizer.lr = self.base_lr * self.schedule(epoch)
        model.reseed(epoch)
        if batch < n:  # a full batch sums over every sample whatever their order: nothing to shuffle
            order = be.asarray(np.random.default_rng([self.seed, SHUFFLE_STREAM, epoch]).permutation(n))
            x, labels, targets = (xp.take(a, order, axis=0) for a in (x, labels, targets))
        losses, hits, sizes = [], [], []
        steps = math.ceil(n / batch)
        # device_data() checked the data once; checking every batch again would wait for the device.
        checking, model.check_values = model.check_values, False
        with _restore_checks(model, checking), \
                ProgressBar(steps, f"epoch {epoch + 1}", unit="batches", enabled=progress) as bar:
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                logits = model.predict(x[start:stop, ...], train=True)
                loss = model.loss_fn(logits, targets[start:stop, ...])
                model.backward()
                self.optimizer.step()
                # Kept as 0-d device arrays and added up once, after the epoch: no read-back, fewer launches.
                losses.append(loss)
                hits.append(xp.count_nonzero(xp.argmax(logits, axis=1) == labels[start:stop]))
                sizes.append(stop - start)
                bar.update()
        loss_sum = xp.sum(xp.stack(losses) * be.asarray(np.asarray(sizes, dtype=np.float64)))
        return loss_sum, xp.sum(xp.stack(hits))

    def run_epoch(self, data: tuple[Any, Any, Any], epoch: int, evaluations: dict[str, tuple[Any, Any]],
                  progress: bool = False) -> EpochResult:
        """Train one epoch, evaluate on each named set, and read every number back once."""
        be = self.model.backend
        n = data[0].shape[0]
        start = time.perf_counter()
        loss_sum, correct = self.train_epoch(data, epoch, progress)
        checking, self.model.check_values = self.model.check_values, False
        with _restore_checks(self.model, checking):
            scores = {name: self.model.evaluate(x, t) for name, (x, t) in evaluations.items()}
        train_loss = be.item(loss_sum) / n  # the first read: waits for the device
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise DivergenceError(f"training diverged in epoch {epoch + 1} (loss {train_loss})")
        read = {name: (be.item(loss), int(be.item(hits)) / x.shape[0])
                for (name, (loss, hits)), (x, _) in zip(scores.items(), evaluations.values(), strict=True)}
        test = read.get("test", (None, None))
        val = read.get("val", (None, None))
        return EpochResult(
            epoch=epoch + 1, train_loss=train_loss, train_accuracy=int(be.item(correct)) / n,
            test_loss=test[0], test_accuracy=test[1], val_loss=val[0], val_accuracy=val[1],
            seconds=seconds, samples_per_second=n / seconds, lr=self.optimizer.lr,
        )


@contextlib.contextmanager
def _restore_checks(model: Sequential, checking: bool) -> Iterator[None]:
    try:
        yield
    finally:
        model.check_values = checking
