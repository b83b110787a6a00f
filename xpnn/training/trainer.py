"""Minibatch training that never waits for the device inside an epoch: :func:`fit` and the Trainer behind it.

Each epoch draws one permutation on the host (from the seed and the epoch number, so a resumed run
shuffles exactly as an uninterrupted one), gathers the data once in that order on the device, then slices
contiguous batches. Losses and correct counts accumulate as device arrays and are read back once, at the
end of the epoch, when the epoch is also checked for divergence.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..core.backend import namespace_of
from ..core.validation import check_positive_int
from ..io.progress import ProgressBar
from ..model import SHUFFLE_STREAM, Sequential
from ..nn import metrics
from ..nn.losses import one_hot
from ..optim import Optimizer, get_schedule
from ..runtime.distributed import Local
from ..runtime.graphs import make_step_graph
from ..runtime.parallel import ThreadWorkers, eval_step, resolve_workers, train_step
from .callbacks import Callback
from .checkpoint import load_checkpoint, save_checkpoint
from .history import History

#: Default bound on the largest layer output of one evaluation pass (see Trainer's ``eval_batch_size``).
EVAL_BYTES = 8 << 20
#: Default upper bound on the samples of one evaluation pass.
EVAL_MAX = 1000

__all__ = ["DeviceData", "DivergenceError", "Trainer", "fit", "format_row", "load_checkpoint", "save_checkpoint"]


class DivergenceError(RuntimeError):
    """Training diverged: a non-finite loss or weight, or a training loss far above where it started."""


@dataclass
class DeviceData:
    """A dataset on the model's device.

    Attributes
    ----------
    x : array, (N, ...)
        Inputs, in the model's float dtype.
    targets : array
        What the loss takes: one-hot rows (N, C) for a softmax classifier, (N, K) floats otherwise.
    labels : array or None
        Integer labels (N,) that the accuracy counts against (softmax classifiers), else None.
    """

    x: Any
    targets: Any
    labels: Any = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def take(self, order: Any) -> DeviceData:
        """The same data in the order of the index array ``order``."""
        xp = namespace_of(self.x)
        labels = None if self.labels is None else xp.take(self.labels, order, axis=0)
        return DeviceData(xp.take(self.x, order, axis=0), xp.take(self.targets, order, axis=0), labels)

    def rows(self, start: int, stop: int) -> DeviceData:
        """Samples ``start:stop``."""
        labels = None if self.labels is None else self.labels[start:stop]
        return DeviceData(self.x[start:stop, ...], self.targets[start:stop, ...], labels)


class Trainer:
    """Trains a model on data held on its device, one epoch at a time, and keeps its history.

    Parameters
    ----------
    model : Sequential
        Any model: a softmax classifier (integer or one-hot labels), a binary one
        (:class:`~xpnn.losses.BCEWithLogits`) or a regression (:class:`~xpnn.losses.MeanSquaredError`).
    optimizer : Optimizer
    batch_size : int or None
        Samples per step (the global batch across MPI ranks); None trains full batch.
    schedule : callable, optional
        Learning-rate factor per 0-based epoch (see :func:`xpnn.optim.get_schedule`).
    seed : int
        Seeds the shuffles.
    comm : communicator, optional
        :class:`xpnn.runtime.distributed.Local` (default) or an MPI communicator from :mod:`xpnn.runtime.distributed`.
    divergence_factor : float or None
        An epoch whose mean training loss exceeds this many times the loss of the first batch trained is
        treated as diverged, as is any non-finite loss or weight. None checks only for non-finite values.
    eval_batch_size : int, optional
        Samples per forward pass when evaluating. By default as many as keep every layer's output under
        8 MiB per pass, at most 1000 and at least each process's share of the training batch (which already
        fits): 1000 for an MLP on MNIST, 128 for :func:`xpnn.cnn` at batch 128. Larger evaluation batches
        multiply the peak memory, and for a CNN on the CPU are slower too (the C heap returns arrays of tens
        of megabytes to the system after each batch and pages new ones in).
    cuda_graphs : {"auto", "on", "off"}
        Capture the training step as a CUDA graph and replay it (:mod:`xpnn.runtime.graphs`): ``auto`` wherever it can
        (torch on CUDA, or CuPy with nvmath-python; one process; dropout and BatchNorm included), with one
        warning where a GPU step stays eager and after one warning if recording fails; ``on`` raises where it
        cannot. Same results as eager steps (matrix products may round differently on CuPy).
    workers : int or "auto", default "auto"
        Threads that share each batch on NumPy (and array-api-strict; :mod:`xpnn.runtime.parallel`). ``"auto"`` takes
        one per core this process may use there (when threadpoolctl is installed) and 1 on torch, CuPy and
        under MPI (:func:`xpnn.runtime.parallel.auto_workers`); the chosen number is :attr:`workers`. On a two-core
        machine 2 trains a CNN about 1.6x faster than 1. The gradient is the same up to rounding and dropout's
        masks are the same; BatchNorm's per-shard statistics depend on the number, so a run is reproducible for
        a given number. A number more than 1 raises ValueError on torch and CuPy (they use every core already)
        and ImportError without threadpoolctl (``pip install threadpoolctl``). A script that trains on NumPy
        may also want :func:`xpnn.runtime.heap.retain_freed_memory`, which the command line calls.

    Attributes
    ----------
    history : History
        One row per epoch trained (also the rows of a resumed run, when passed in).
    stop_training : bool
        Set by a callback to end :meth:`fit` after the current epoch.
    """

    def __init__(self, model: Sequential, optimizer: Optimizer, *, batch_size: int | None = 128,
                 schedule: Callable[[int], float] | None = None, seed: int = 0, comm: Any = None,
                 divergence_factor: float | None = 100.0, eval_batch_size: int | None = None, cuda_graphs: str = "auto",
                 workers: int | str = "auto"):
        _check_pair(model, optimizer)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer)
                                       or batch_size < 1):
            raise ValueError(f"Trainer: batch_size must be a positive integer or None, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"Trainer: seed must be an integer >= 0, got {seed!r}")
        if divergence_factor is not None and not divergence_factor > 1:
            raise ValueError(f"Trainer: divergence_factor must be > 1 or None, got {divergence_factor!r}")
        self.model, self.optimizer, self.batch_size = model, optimizer, batch_size
        self.schedule, self.seed = schedule, seed
        self.comm = Local() if comm is None else comm
        if eval_batch_size is not None:
            eval_batch_size = check_positive_int("Trainer", "eval_batch_size", eval_batch_size)
        self.divergence_factor, self.eval_batch_size = divergence_factor, eval_batch_size
        self.base_lr = optimizer.lr
        self.history = History()
        self.stop_training = False
        self.reference_loss: float | None = None
        # Full batch over several ranks: fit() gives each rank only its shard of this many samples.
        self.full_batch_of: int | None = None
        #: The captured step (:class:`xpnn.runtime.graphs.StepGraph`) that full batches replay, or None (eager steps).
        self.graph = make_step_graph(cuda_graphs, model, optimizer, self.comm)
        #: Threads that share each batch (:mod:`xpnn.runtime.parallel`), ``"auto"`` resolved.
        self.workers = resolve_workers(workers, model.backend, "Trainer", processes=self.comm.size, model=model,
                                       batch_size=batch_size)
        #: The :class:`xpnn.runtime.parallel.ThreadWorkers` that run them, or None with one worker.
        self.parallel = ThreadWorkers(model, self.workers) if self.workers > 1 else None

    # ------------------------------------------------------------------ data
    def device_data(self, x: Any, y: Any, what: str = "training data") -> DeviceData:
        """Check a host dataset against the model and copy it to the device once.

        Parameters
        ----------
        x : array_like, (N, ...)
            Inputs (NumPy arrays or lists; converted to the model's backend and float dtype). Flat rows
            (N, C·H·W) for a model of input (C, H, W) are reshaped (:meth:`Sequential.unflatten`).
        y : array_like
            Softmax classifier: integer labels (N,) in [0, C) or one-hot rows (N, C). Binary classifier:
            0/1 targets (N,) or (N, K). Regression: targets (N,) or (N, K). A 1-d target of a binary model
            or a regression becomes (N, 1).
        what : str
            How errors name this dataset.

        Raises
        ------
        ValueError
            Naming the problem (sizes, NaN, label range, shapes that do not fit the model) before any training.
        """
        be, model = self.model.backend, self.model
        x, y = model.unflatten(_host(x, f"{what}: x")), _host(y, f"{what}: y")
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"{what}: x must have shape (N, features...) with N >= 1, got {x.shape}")
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{what}: x has {x.shape[0]} samples but y has shape {y.shape}")
        if x.dtype.kind not in "fiub":
            raise ValueError(f"{what}: x must hold numbers, got dtype {x.dtype}")
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise ValueError(f"{what}: x contains NaN or infinite values; clean or impute them first")
        if x.dtype.kind != "f":
            x = x.astype(np.float64)  # integer pixels, booleans: the backend turns them into its float dtype
        n_out = self._output_shape(be.asarray(x[:1]), what)
        task = metrics.task_of(model.loss_fn)
        labels = None
        if task == "multiclass":
            n_classes = n_out[-1]
            if y.ndim == 2 and y.shape[1] == 1 and n_classes > 1 and y.dtype.kind in "iu":
                y = y[:, 0]  # a column of labels, as scikit-learn and Keras' sparse losses accept
            if y.ndim == 2 and y.dtype.kind in "iub" and y.shape[1:] == (n_classes,) and np.isin(y, (0, 1)).all():
                y = y.astype(np.float64)  # integer one-hot rows, as Keras' to_categorical can give
            if y.ndim == 1:
                if y.dtype.kind not in "iu":
                    raise ValueError(f"{what}: class labels must be integers, got dtype {y.dtype}; "
                                     "convert whole-number labels with y.astype(int)")
                if y.min() < 0 or y.max() >= n_classes:
                    raise ValueError(f"{what}: labels must lie in [0, {n_classes}) for this {n_classes}-output "
                                     f"model, got values from {y.min()} to {y.max()}")
                labels = be.asarray(y)
                targets = one_hot(be.xp, labels, n_classes, be.dtype)
            else:
                if y.shape[1:] != (n_classes,) or y.dtype.kind != "f":
                    raise ValueError(f"{what}: one-hot targets must be floats of shape (N, {n_classes}), "
                                     f"got {y.dtype} {y.shape}")
                labels = be.asarray(np.argmax(y, axis=1))
                targets = be.asarray(y)
        else:
            if y.dtype.kind not in "fiub":
                raise ValueError(f"{what}: y must hold numbers, got dtype {y.dtype}")
            y = y.astype(np.float64).reshape(y.shape[0], -1) if y.ndim == 1 else y.astype(np.float64)
            if not np.all(np.isfinite(y)):
                raise ValueError(f"{what}: y contains NaN or infinite values")
            if y.shape[1:] != tuple(n_out):
                raise ValueError(f"{what}: targets have shape {y.shape}, the model outputs (N, "
                                 f"{', '.join(map(str, n_out))})")
            if task == "binary" and (y.min() < 0 or y.max() > 1):
                raise ValueError(f"{what}: binary targets must lie in [0, 1], got values from {y.min()} to {y.max()}")
            targets = be.asarray(y)
        return DeviceData(be.asarray(x), targets, labels)

    def _output_shape(self, sample: Any, what: str) -> tuple[int, ...]:
        try:
            out = self.model.predict(sample)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{what} does not fit the model (one sample of shape {tuple(sample.shape[1:])} "
                             f"tried): {error}") from None
        return tuple(out.shape[1:])

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, data: DeviceData, index: int, progress: bool = False) -> dict[str, Any]:
        """One pass over ``data``; ``index`` is the 0-based epoch number (it seeds the shuffle).

        Returns this rank's sums as device arrays (nothing is read back): ``loss`` (Σ batch loss × batch
        size), ``correct`` (or None), ``first`` (the first batch's loss × its size), ``first_n``, ``n``.
        """
        model, be, comm = self.model, self.model.backend, self.comm
        xp = be.xp
        n = data.n
        batch = n if self.batch_size is None else min(self.batch_size, n)
        if (self.full_batch_of or batch) < comm.size:
            raise ValueError(f"batch size {batch} is smaller than the number of processes ({comm.size})")
        if self.schedule is not None:
            self.optimizer.lr = self.base_lr * _schedule_factor(self.schedule, index)
        order = None
        if batch < n:  # a full batch sums over every sample whatever their order: nothing to shuffle
            order = be.asarray(np.random.default_rng([self.seed, SHUFFLE_STREAM, index]).permutation(n))
            if be.launch_bound:  # one gather per epoch, then slices; on the CPU each batch's gather stays in cache
                data, order = data.take(order), None
        losses, hits, sizes = [], [], []
        checking, model.check_values = model.check_values, False  # the data was checked once, up front
        with _restore_checks(model, checking), \
                self.parallel.epoch() if self.parallel else contextlib.nullcontext(), \
                ProgressBar(math.ceil(n / batch), f"epoch {index + 1}", unit="batches", enabled=progress) as bar:
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                lo, hi = comm.shard(start, stop)
                first = lo - start  # this rank's first row in the global batch: its part of dropout's masks
                if self.full_batch_of is not None:  # full batch, sharded: this rank holds only its rows
                    first = comm.shard(0, self.full_batch_of)[0]
                    lo, hi, stop = 0, n, self.full_batch_of
                if hi == lo:  # a last batch smaller than the number of ranks leaves some ranks nothing
                    for layer in model.layers:
                        layer.advance()  # Dropout counts the step, as on the ranks that trained it
                    comm.allreduce_gradients(model, 0, stop - start)
                    self.optimizer.step()
                    bar.update()
                    continue
                part = data.rows(lo, hi) if order is None else data.take(order[lo:hi])
                if self.graph is not None and comm.size == 1:
                    loss, hit = self.graph.step(part.x, part.targets, part.labels)
                    losses.append(loss)
                    sizes.append(hi - lo)
                    if hit is not None:
                        hits.append(hit)
                    bar.update()
                    continue
                truth = part.targets if part.labels is None else part.labels
                if self.parallel is None and comm.size == 1:  # the gradients are final as computed: the
                    # optimizer may step inside backward (SGD moves dense weights within their products)
                    loss, hit = train_step(model, part.x, part.targets, truth, first, self.optimizer.backward_step)
                else:
                    step = self.parallel.step if self.parallel is not None else partial(train_step, model)
                    loss, hit = step(part.x, part.targets, truth, first)
                    comm.allreduce_gradients(model, hi - lo, stop - start)
                    self.optimizer.step()
                # Kept as 0-d device arrays and added up once, after the epoch: no read-back, fewer launches.
                losses.append(loss)
                sizes.append(hi - lo)
                if hit is not None:
                    hits.append(hit)
                bar.update()
        weights = be.asarray(np.asarray(sizes, dtype=np.float64))
        return {"loss": xp.sum(xp.stack(losses) * weights), "correct": xp.sum(xp.stack(hits)) if hits else None,
                "first": losses[0] * sizes[0], "first_n": sizes[0], "n": sum(sizes)}

    def evaluate(self, data: DeviceData) -> tuple[Any, Any]:
        """This rank's share of ``data`` in evaluation mode: (Σ loss × samples, correct count or None), on device."""
        model, xp = self.model, self.model.backend.xp
        lo, hi = self.comm.shard(0, data.n)
        total = self.model.backend.zeros(())
        correct = None
        checking, model.check_values = model.check_values, False
        with _restore_checks(model, checking), \
                self.parallel.evaluation() if self.parallel else contextlib.nullcontext():
            step_size = self.evaluation_batch(data)
            for start in range(lo, hi, step_size):
                part = data.rows(start, min(start + step_size, hi))
                truth = part.targets if part.labels is None else part.labels
                step = self.parallel.evaluate if self.parallel is not None else partial(eval_step, model)
                loss_sum, hit = step(part.x, part.targets, truth)
                total = total + loss_sum
                if hit is not None:
                    correct = hit if correct is None else correct + hit
        if correct is None and metrics.has_accuracy(model.loss_fn):
            correct = xp.zeros((), dtype=xp.int64)
        return total, correct

    def evaluation_batch(self, data: DeviceData) -> int:
        """Samples per forward pass when evaluating ``data``: ``eval_batch_size``, or the default it describes."""
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        sample = tuple(data.x.shape[1:])
        try:
            largest = max(math.prod(shape) for shape in [sample, *self.model.output_shapes(sample)])
        except Exception:  # a custom layer whose output_shape fails: only the size estimate is lost
            largest = 0
        itemsize = self.model.backend.xp.finfo(data.x.dtype).bits // 8
        fits = EVAL_BYTES // (largest * itemsize) if largest else EVAL_MAX
        share = -(-self.batch_size // self.comm.size) if self.batch_size else 1  # this rank's training rows
        return max(share, min(EVAL_MAX, fits))

    def run_epoch(self, data: DeviceData, index: int, evaluations: dict[str, DeviceData] | None = None,
                  progress: bool = False) -> dict[str, Any]:
        """Train the epoch with 0-based ``index``, evaluate each named set, read every number back once.

        Returns the epoch's row (``"epoch": index + 1``, 1-based as printed). Raises DivergenceError.
        """
        evaluations = evaluations or {}
        be, start = self.model.backend, time.perf_counter()
        sums = self.train_epoch(data, index, progress)
        scores = {name: self.evaluate(d) for name, d in evaluations.items()}
        xp = be.xp
        params = list(self.model.named_parameters().values())
        bad_weights = xp.count_nonzero(xp.logical_not(xp.stack([xp.all(xp.isfinite(p)) for p in params])))
        local = [sums["loss"], sums["n"], sums["correct"], sums["first"], sums["first_n"], bad_weights]
        for loss_sum, correct in scores.values():
            local += [loss_sum, correct]
        values = self.comm.sum(_read_all(be, local))
        seconds = time.perf_counter() - start
        loss_sum, n, correct, first, first_n, bad_weights = values[:6]
        train_loss = loss_sum / n
        if self.reference_loss is None:
            self.reference_loss = first / first_n
        row: dict[str, Any] = {"epoch": index + 1, "train_loss": train_loss}
        if sums["correct"] is not None:
            row["train_accuracy"] = correct / n
        for offset, (name, d) in enumerate(evaluations.items()):
            e_loss, e_correct = values[6 + 2 * offset: 8 + 2 * offset]
            row[f"{name}_loss"] = e_loss / d.n
            if not math.isnan(e_correct):
                row[f"{name}_accuracy"] = e_correct / d.n
        row.update(seconds=seconds, samples_per_second=n / seconds, lr=self.optimizer.lr)
        self._check_divergence(row, bad_weights)
        return row

    def _check_divergence(self, row: dict[str, Any], bad_weights: float) -> None:
        epoch, loss = row["epoch"], row["train_loss"]
        problem = None
        if not math.isfinite(loss):
            problem = f"training loss {loss}"
        elif bad_weights:
            problem = f"{int(bad_weights)} parameter arrays hold NaN or infinite values"
        elif self.divergence_factor and loss > self.divergence_factor * max(self.reference_loss, 1e-12):
            problem = (f"training loss {loss:.4g}, more than {self.divergence_factor:g} times the "
                       f"{self.reference_loss:.4g} it started from")
        else:
            bad = [k for k, v in row.items() if k.endswith("_loss") and not math.isfinite(v)]
            if bad:
                problem = f"{bad[0].removesuffix('_loss')} loss {row[bad[0]]}"
        if problem:
            raise DivergenceError(f"training diverged in epoch {epoch} ({problem})")

    # ------------------------------------------------------------------ the loop
    def snapshot(self) -> dict[str, Any]:
        """Copies of the model's parameters and buffers on the device (for :meth:`Sequential.load_state_dict`)."""
        xp = self.model.backend.xp
        return {name: xp.asarray(value, copy=True) for name, value in self.model.state_dict().items()}

    def optimizer_snapshot(self) -> dict[str, Any]:
        """A copy of the optimizer's state (moments, step count, learning rate), for :meth:`restore_optimizer`."""
        xp = self.model.backend.xp
        return {key: xp.asarray(value, copy=True) if hasattr(value, "shape") else value
                for key, value in self.optimizer.state_dict().items()}

    def restore_optimizer(self, snapshot: dict[str, Any]) -> None:
        """Put back what :meth:`optimizer_snapshot` copied (unchecked: it came from this optimizer)."""
        optimizer = self.optimizer
        optimizer.state = {key: value for key, value in snapshot.items() if key not in ("steps", "lr")}
        optimizer.steps, optimizer.lr = snapshot["steps"], snapshot["lr"]  # the next step rebuilds its buffers

    def fit(self, x: Any, y: Any, *, epochs: int = 10, validation_data: tuple[Any, Any] | None = None,
            validation_split: float = 0.0, eval_sets: dict[str, tuple[Any, Any]] | None = None,
            callbacks: Iterable[Callback] = (), initial_epoch: int = 0, verbose: bool = True,
            progress: bool = True) -> History:
        """Train for ``epochs`` epochs (counting those before ``initial_epoch``); see :func:`xpnn.fit`."""
        if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 1:
            raise ValueError(f"fit: epochs must be a positive integer, got {epochs!r}")
        if (isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int | np.integer)
                or not 0 <= initial_epoch <= epochs):
            raise ValueError(f"fit: initial_epoch must be an integer in [0, epochs={epochs}], got {initial_epoch!r}")
        if (isinstance(validation_split, bool) or not isinstance(validation_split, int | float | np.floating)
                or not 0.0 <= validation_split < 1.0):
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
        _check_pair(self.model, self.optimizer)
        _check_trainable(self.model, self.optimizer)
        callbacks = _callback_list(callbacks)
        if validation_split and validation_data is not None:
            raise ValueError("fit: pass validation_data or validation_split, not both")
        x, y = _host(x, "fit: x"), _host(y, "fit: y")
        sets: dict[str, tuple[Any, Any]] = {}
        if validation_split:
            x, y, sets["val"] = _split(x, y, validation_split, self.seed)
        elif validation_data is not None:
            if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
                raise ValueError("fit: validation_data must be a pair (x_val, y_val)")
            sets["val"] = tuple(validation_data)
        if eval_sets is not None and not isinstance(eval_sets, dict):
            raise ValueError("fit: eval_sets must be a dict of name -> (x, y), e.g. {'test': (x_test, y_test)}")
        for name, pair in (eval_sets or {}).items():
            if name in sets or name == "train" or not str(name).isidentifier():
                raise ValueError(f"fit: evaluation set name {name!r} is taken or not a plain name")
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValueError(f"fit: eval_sets[{name!r}] must be a pair (x, y)")
            sets[name] = tuple(pair)
        self.full_batch_of = None
        if self.batch_size is None and self.comm.size > 1:  # one step over all data: each rank holds its shard
            lo, hi = self.comm.shard(0, x.shape[0])
            if hi == lo:
                raise ValueError(f"fit: {x.shape[0]} samples cannot be shared among {self.comm.size} processes")
            self.full_batch_of, x, y = x.shape[0], x[lo:hi], y[lo:hi]
        try:
            data, problem = self.device_data(x, y), None
        except ValueError as error:
            data, problem = None, error
        if self.comm.any(problem is not None):  # a shard's problem stops every rank, not just its own
            raise problem or ValueError("fit: another process found a problem in its part of the training data")
        evaluations = {name: self.device_data(*pair, what=f"{name} data") for name, pair in sets.items()}
        self.comm.broadcast_parameters(self.model)
        self.stop_training = False
        for callback in callbacks:
            callback.on_train_begin(self)
        last_good, last_good_state = self.snapshot(), self.optimizer_snapshot()
        with np.errstate(all="ignore"):  # overflow is reported once, as divergence, not as warnings
            for index in range(initial_epoch, epochs):
                try:
                    row = self.run_epoch(data, index, evaluations, progress=progress and self.comm.is_root)
                except DivergenceError:
                    # What the model and optimizer keep is the last good epoch: moments that blew up would
                    # make the next fit() diverge at its first step.
                    self.model.load_state_dict(last_good)
                    self.restore_optimizer(last_good_state)
                    for callback in callbacks:  # EarlyStopping may put back an even better one
                        callback.on_train_end(self)
                    raise
                self.history.append(row)
                if verbose and self.comm.is_root:
                    print(format_row(row, epochs), flush=True)
                last_good, last_good_state = self.snapshot(), self.optimizer_snapshot()
                for callback in callbacks:
                    callback.on_epoch_end(self, row)
                if self.stop_training:
                    break
        for callback in callbacks:
            callback.on_train_end(self)
        return self.history


def fit(model: Sequential, optimizer: Optimizer, x: Any, y: Any, *, epochs: int = 10, batch_size: int | None = 128,
        validation_data: tuple[Any, Any] | None = None, validation_split: float = 0.0,
        eval_sets: dict[str, tuple[Any, Any]] | None = None, schedule: str | Callable[[int], float] | None = None,
        callbacks: Sequence[Callback] = (), seed: int = 0, verbose: bool = True, progress: bool = True,
        comm: Any = None, workers: int | str = "auto") -> History:
    """Train ``model`` on host data, as Keras' ``model.fit`` does, and return its history.

    Parameters
    ----------
    model : Sequential
        Softmax classifier, binary classifier (BCEWithLogits) or regression (MeanSquaredError).
    optimizer : Optimizer
        E.g. ``xpnn.optim.Adam(model, lr=1e-3)``.
    x : array_like, (N, ...)
        Inputs on the host (NumPy arrays or lists); copied to the model's device once. Flat rows (N, C·H·W)
        for a model of input (C, H, W), such as :func:`xpnn.data.load_dataset` gives, are reshaped.
    y : array_like
        Integer labels (N,) or one-hot rows (N, C) for a softmax classifier; 0/1 targets (N,) or (N, K)
        for a binary one; targets (N,) or (N, K) for a regression.
    epochs : int
        Number of passes over the data.
    batch_size : int or None
        Samples per step; None trains full batch (one step per epoch).
    validation_data : (x_val, y_val), optional
        Evaluated after every epoch as ``val_loss`` / ``val_accuracy``.
    validation_split : float
        Or hold out this fraction of ``x`` (a seeded random subset) as validation data.
    eval_sets : dict of name -> (x, y), optional
        More sets evaluated after every epoch, e.g. ``{"test": (x_test, y_test)}`` -> ``test_loss``.
    schedule : {"constant", "step", "cosine"} or callable, optional
        Learning-rate factor per 0-based epoch; a name is resolved over ``epochs``.
    callbacks : sequence of Callback
        E.g. ``[xpnn.EarlyStopping(patience=3)]``; called after every epoch.
    seed : int
        Seeds the shuffles and the validation split.
    verbose : bool
        Print one line per epoch.
    progress : bool
        Show a progress bar within each epoch (only on a terminal).
    comm : communicator, optional
        For data-parallel training over MPI (see :mod:`xpnn.runtime.distributed`).
    workers : int or "auto", default "auto"
        Threads that share each batch: ``"auto"`` takes one per usable core on NumPy, 1 on torch and CuPy
        (see :class:`Trainer` and :mod:`xpnn.runtime.parallel`).

    Returns
    -------
    History
        One dict per epoch (``history["val_loss"]`` gives a column).

    Raises
    ------
    ValueError
        Before training, when the data does not fit the model (shapes, label range, NaN).
    DivergenceError
        When a loss or weight becomes non-finite or the loss explodes; the model is put back to the
        parameters of the last good epoch.

    Examples
    --------
    >>> import numpy as np, xpnn
    >>> x = np.random.default_rng(0).normal(size=(200, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype(int)
    >>> model = xpnn.mlp([4, 8, 2], seed=0)
    >>> history = xpnn.fit(model, xpnn.optim.Adam(model, lr=0.01), x, y, epochs=3, verbose=False,
    ...                    validation_split=0.2, callbacks=[xpnn.EarlyStopping(patience=2)])
    >>> len(history), sorted(history[0])[:3]
    (3, ['epoch', 'lr', 'samples_per_second'])
    """
    if isinstance(schedule, str):
        schedule = get_schedule(schedule, epochs)
    trainer = Trainer(model, optimizer, batch_size=batch_size, schedule=schedule, seed=seed, comm=comm,
                      workers=workers)
    return trainer.fit(x, y, epochs=epochs, validation_data=validation_data, validation_split=validation_split,
                       eval_sets=eval_sets, callbacks=callbacks, verbose=verbose, progress=progress)


def _check_pair(model: Any, optimizer: Any) -> None:
    """One line when the optimizer is not an xpnn optimizer of this very model."""
    if not isinstance(model, Sequential):
        raise TypeError(f"fit: model must be an xpnn Sequential (e.g. xpnn.mlp(...)), got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"fit: optimizer must be an xpnn optimizer made for the model, e.g. "
                        f"xpnn.optim.Adam(model, lr=1e-3), got {optimizer!r}")
    if optimizer.model is not model:
        raise ValueError(f"fit: the {type(optimizer).__name__} was made for another model, so it would train that one "
                         f"and leave this one as it is; make it for this model: {type(optimizer).__name__}(model, ...)")


def _check_trainable(model: Sequential, optimizer: Optimizer) -> None:
    """One line when the optimizer would update no parameter at all."""
    if next(optimizer.trained_slots(), None) is not None:
        return
    if not model.named_parameters():
        raise ValueError("fit: the model has no parameters to train; add a layer with weights (e.g. Affine)")
    if not model.named_parameters(trainable_only=True):
        raise ValueError("fit: every layer of the model is frozen, so training would change nothing; unfreeze "
                         "some (model.unfreeze(...) or layer.trainable = True)")
    names = ", ".join(sorted(optimizer.params or ()))
    raise ValueError(f"fit: every parameter the {type(optimizer).__name__} trains ({names}) is frozen, so training "
                     "would change nothing; unfreeze their layers or give it other params")


def _callback_list(callbacks: Any) -> list[Callback]:
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        raise TypeError(f"fit: callbacks must be a list of callbacks; wrap the one you have: callbacks=[{callbacks!r}]")
    try:
        callbacks = list(callbacks)
    except TypeError:
        raise TypeError(f"fit: callbacks must be a list of xpnn.callbacks.Callback, got {callbacks!r}") from None
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(f"fit: {callback!r} is not an xpnn.callbacks.Callback; subclass it, or wrap a function "
                            "as LambdaCallback(on_epoch_end)")
    return callbacks


def format_row(row: dict[str, Any], epochs: int) -> str:
    """One epoch as a line: ``epoch 3/20  train loss 0.4123 acc 85.12%  val loss ...  2.1 s  28,000 samples/s``."""
    line = f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}"
    names = ["train"] + [key[:-5] for key in row if key.endswith("_loss") and key != "train_loss"]
    for name in names:
        line += f"  {name} loss {row[f'{name}_loss']:.4f}"
        if f"{name}_accuracy" in row:
            line += f" acc {row[f'{name}_accuracy']:6.2%}"
    return line + f"  {row['seconds']:5.1f} s  {row['samples_per_second']:,.0f} samples/s"


def _read_all(be: Any, values: list[Any]) -> np.ndarray:
    """Device scalars, Python numbers and None (as NaN) as one float64 vector, with a single read-back."""
    xp = be.xp
    on_device = [i for i, v in enumerate(values) if hasattr(v, "shape")]
    out = np.array([np.nan if v is None else v if i not in on_device else 0.0 for i, v in enumerate(values)],
                   dtype=np.float64)
    if on_device:
        out[on_device] = be.to_numpy(xp.stack([xp.astype(values[i], xp.float64) for i in on_device]))
    return out


def _host(a: Any, what: str) -> np.ndarray:
    """A NumPy view of host data; arrays of a device library must be copied by the caller, deliberately."""
    if isinstance(a, np.ndarray):
        return a
    module = type(a).__module__.split(".")[0]
    if isinstance(a, list | tuple) or np.isscalar(a) or module in ("numpy", "array_api_strict", "pandas"):
        try:
            host = np.asarray(a.to_numpy() if module == "pandas" else a)
        except ValueError as error:  # ragged lists
            raise ValueError(f"{what}: cannot be made one array ({error}); give rows of equal length") from None
        if host.dtype == object:
            raise ValueError(f"{what}: holds {type(a).__name__} items of mixed types or lengths, not numbers")
        return host
    raise TypeError(f"{what}: fit() takes host data (NumPy arrays or lists), got {type(a).__module__}."
                    f"{type(a).__name__}; copy it to NumPy first (e.g. backend.to_numpy(a))")


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[Any, Any, tuple[Any, Any]]:
    n = x.shape[0]
    n_val = round(n * fraction)
    if not 1 <= n_val < n:
        raise ValueError(f"fit: validation_split={fraction} leaves {n_val} of {n} samples for validation")
    order = np.random.default_rng([seed, SHUFFLE_STREAM, 2**31]).permutation(n)
    train, val = np.sort(order[n_val:]), np.sort(order[:n_val])
    return x[train], y[train], (x[val], y[val])


@contextlib.contextmanager
def _restore_checks(model: Sequential, checking: bool) -> Iterator[None]:
    try:
        yield
    finally:
        model.check_values = checking


def _schedule_factor(schedule: Callable[[int], float], epoch: int) -> float:
    """``schedule(epoch)``, refused unless a finite number >= 0 (a negative factor would climb the loss)."""
    factor = schedule(epoch)
    if isinstance(factor, bool) or not isinstance(factor, int | float | np.floating | np.integer) \
            or not (math.isfinite(factor) and factor >= 0):
        raise ValueError(f"fit: schedule({epoch}) returned {factor!r}; a schedule gives each 0-based epoch a finite "
                         "learning-rate factor >= 0 (1.0 keeps the optimizer's lr)")
    return float(factor)
