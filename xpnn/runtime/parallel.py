"""Data parallelism over threads in one process, for NumPy (and array-api-strict, which wraps it).

NumPy runs every element-wise operation, copy and reduction on one core; only its matrix products (BLAS)
use several. A CNN step spends more than half its time outside the products, so ``workers=2`` on a
two-core machine splits each batch into two contiguous shards and runs the first on the model and the
second on a replica of it, each in its own thread (NumPy releases the GIL inside its loops), with BLAS
held to one thread per call so that the threads do not fight over the cores. The replica's gradients
are then combined, weighted by shard size, with the model's own, and the optimizer steps once.

Replicas are deep copies made at the start of every epoch and every evaluation that share the model's
``params`` dicts (never copies), so every step sees the current weights, and own everything else.
What changes with the number of workers, as with data parallelism over MPI (:mod:`xpnn.runtime.distributed`):

- the gradient is the whole batch's up to rounding (the shards are summed in a different order);
- BatchNorm normalizes each shard by its own statistics, and the model's running averages follow the
  first shard (PyTorch's DistributedDataParallel without SyncBatchNorm does the same).

Dropout's masks do not change: each shard draws its rows of the whole batch's mask (its offset in the batch
is set with :func:`xpnn.layers.dropout.global_rows`). So a run is reproducible for a given number of workers,
and the CLI keeps ``--workers`` with the other settings of a checkpoint.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib.util
import itertools
import math
import numbers
import os
import queue
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ..nn import metrics
from ..nn.layers.dropout import global_rows

__all__ = ["ThreadWorkers", "auto_workers", "check_workers", "resolve_workers", "shard_bounds"]

#: The ``workers`` setting that picks the number of threads for the machine and backend (:func:`auto_workers`).
AUTO = "auto"


def check_workers(workers: Any, backend: Any, owner: str, option: str | None = None) -> int:
    """Check a ``workers`` setting before any data is touched.

    Parameters
    ----------
    workers : int
        Threads that share each batch; 1 trains in the calling thread alone.
    backend : Backend
        Where the model lives: workers > 1 needs one whose operations run on one core (NumPy,
        array-api-strict; see :attr:`xpnn.Backend.single_threaded`).
    owner : str
        Who asks, named in the messages (``"Trainer"``).
    option : str, optional
        The command-line flag to name instead of the keyword (``"--workers"``).

    Returns
    -------
    int
        ``workers`` as a Python int.

    Raises
    ------
    ValueError
        For a value that is not a positive integer, more workers than usable cores, or workers > 1 on
        torch or CuPy.
    ImportError
        For workers > 1 without threadpoolctl (``pip install threadpoolctl``).
    """
    if not isinstance(workers, numbers.Integral) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"{owner}: workers must be a positive integer or 'auto', got {workers!r}")
    workers = int(workers)
    given = f"{option} {workers}" if option else f"{owner}: workers={workers}"
    fix = f"{option} 1" if option else "workers=1"
    if workers > 1 and not backend.single_threaded:
        raise ValueError(f"{given} splits batches over threads, which pays only on NumPy (and array-api-strict); "
                         f"{backend.name} already uses every core in each operation: use {fix}")
    if workers > usable_cores():
        raise ValueError(f"{given} is more than the {usable_cores()} cores this process may use: threads beyond "
                         f"them only wait for each other; use {option + ' ' if option else 'workers='}"
                         f"{usable_cores()} or fewer")
    if workers > 1 and importlib.util.find_spec("threadpoolctl") is None:
        raise ImportError(f"{given} needs threadpoolctl to hold BLAS to one thread per worker: "
                          f"pip install threadpoolctl, or use {fix}")
    return workers


#: ``workers="auto"`` shares a batch only when each worker's largest layer output holds at least this many
#: elements: below it a step is too short for threads to pay (the MLP at batch 128 ran 1.10x PyTorch with two
#: workers and 0.85x with one on the 2-core machine; the CNN and full batches gain from two).
AUTO_MIN_ELEMENTS = 1 << 17


def auto_workers(backend: Any, processes: int = 1, model: Any = None, batch_size: int | None = None) -> int:
    """The number of workers that ``workers="auto"`` picks: the cores this process may use on NumPy and
    array-api-strict where a step is large enough to share, 1 elsewhere.

    One thread per usable core (:func:`usable_cores`, the affinity mask) where element-wise operations run on
    one core (:attr:`xpnn.Backend.single_threaded`) and threadpoolctl is installed; 1 on torch and CuPy (they
    already use every core or the GPU in each operation), without threadpoolctl, when ``processes`` > 1
    (MPI ranks, which already share the machine's cores), and when ``model`` with batches of ``batch_size``
    (None: the whole training set) would give each worker a largest layer output of fewer than
    :data:`AUTO_MIN_ELEMENTS` elements (a small MLP at batch 128, whose steps are too short to share).
    """
    if not backend.single_threaded or processes > 1 or importlib.util.find_spec("threadpoolctl") is None:
        return 1
    cores = usable_cores()
    if cores > 1 and model is not None and batch_size is not None:
        try:
            largest = max(math.prod(shape) for shape in model.output_shapes())
        except ValueError:  # the model does not know its input shape: no estimate, share
            return cores
        if batch_size // cores * largest < AUTO_MIN_ELEMENTS:
            return 1
    return cores


def resolve_workers(workers: Any, backend: Any, owner: str, option: str | None = None, processes: int = 1,
                    model: Any = None, batch_size: int | None = None) -> int:
    """``workers`` as a number of threads: ``"auto"`` through :func:`auto_workers` (with ``model`` and
    ``batch_size`` when known), a number through :func:`check_workers` (same arguments and errors; ValueError
    also for a string other than ``"auto"``)."""
    if isinstance(workers, str) and workers == AUTO:
        return auto_workers(backend, processes, model, batch_size)
    return check_workers(workers, backend, owner, option)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Split a batch of ``n`` samples into contiguous shards, one per worker.

    Parameters
    ----------
    n : int
        Samples in the batch (>= 1).
    parts : int
        Workers available.

    Returns
    -------
    list of (int, int)
        Up to ``parts`` (start, stop) ranges covering ``range(n)`` in order, sizes within one of each other.
        No shard holds a single sample unless the batch does: BatchNorm cannot train on one sample, and a
        batch of 2 that trains with one worker must train with several.
    """
    parts = max(1, min(parts, n // 2))
    return [(k * n // parts, (k + 1) * n // parts) for k in range(parts)]


class ThreadWorkers:
    """Runs each training step of ``model`` over ``workers`` threads (see the module docstring).

    The first shard of each batch runs on ``model`` itself, in the calling thread; the others on replicas
    (:func:`replica`) made at the start of every epoch and of every evaluation.

    Parameters
    ----------
    model : Sequential
        The model being trained; its own gradients receive the combined result.
    workers : int
        Threads per step, the calling thread included (>= 2).
    """

    def __init__(self, model: Any, workers: int):
        from threadpoolctl import ThreadpoolController  # present: check_workers made sure

        self.model, self.workers = model, workers
        self._blas = ThreadpoolController()
        self._lanes: list[_Lane] = []  # one per extra worker, started when first needed
        self._tickets = itertools.count()
        weakref.finalize(self, _Lane.stop_all, self._lanes)
        self.replicas: list[Any] = []

    @contextlib.contextmanager
    def epoch(self) -> Iterator[None]:
        """Fresh replicas of the model as it is now (Dropout's step counts included); BLAS on one thread inside."""
        with self._replicas():
            yield

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        """Fresh replicas, which see the model's current buffers (BatchNorm's running averages); BLAS on one
        thread inside."""
        with self._replicas():
            yield

    @contextlib.contextmanager
    def _replicas(self) -> Iterator[None]:
        self.replicas = []
        try:
            with self._blas.limit(limits=1, user_api="blas"):
                yield
        finally:
            self.replicas = []  # their caches (the last shard's patches, masks) go with them

    def _models(self, count: int) -> list[Any]:
        """The model and ``count - 1`` replicas, made when first needed (in the first step, before the model
        changes), so that small batches with few shards make no more than they use."""
        while len(self.replicas) < count - 1:
            self.replicas.append(replica(self.model))
        return [self.model, *self.replicas[: count - 1]]

    def step(self, x: Any, targets: Any, truth: Any, first: int = 0) -> tuple[Any, Any]:
        """:func:`train_step` of one batch over the workers: (mean loss, correct count or None), the model's
        gradients those of the whole batch. ``first``: the batch's first row in the global batch (MPI)."""
        n = x.shape[0]
        bounds, models, results = self._map(
            lambda model, lo, hi: train_step(model, x[lo:hi, ...], targets[lo:hi, ...], truth[lo:hi, ...], first + lo),
            n)
        weights = [(hi - lo) / n for lo, hi in bounds]
        self._combine(models, weights, self.model.backend.inplace)
        return sum(w * loss for w, (loss, _) in zip(weights, results, strict=True)), _total_hits(results)

    def evaluate(self, x: Any, targets: Any, truth: Any) -> tuple[Any, Any]:
        """:func:`eval_step` of one batch over the workers (inside :meth:`evaluation`)."""
        _, _, results = self._map(
            lambda model, lo, hi: eval_step(model, x[lo:hi, ...], targets[lo:hi, ...], truth[lo:hi, ...]),
            x.shape[0])
        return sum(loss for loss, _ in results), _total_hits(results)

    def _map(self, run: Any, n: int) -> tuple[list[tuple[int, int]], list[Any], list[Any]]:
        """``run(model, lo, hi)`` for each shard of ``range(n)``, the first in this thread, the rest in workers.

        This thread waits for every worker before it returns or raises, even when its own shard failed or a
        signal (Ctrl-C, SIGTERM) interrupted it: no worker runs on into the next step."""
        bounds = shard_bounds(n, self.workers)
        models = self._models(len(bounds))
        while len(self._lanes) < len(bounds) - 1:
            self._lanes.append(_Lane(f"xpnn-worker_{len(self._lanes)}"))
        ticket = next(self._tickets)
        lanes = self._lanes[: len(bounds) - 1]
        for lane, model, (lo, hi) in zip(lanes, models[1:], bounds[1:], strict=True):
            # A copy of this thread's context, so that np.errstate (a context variable) holds in the worker too:
            # fit() reports overflow once, as divergence, not as warnings from every thread.
            lane.submit(ticket, contextvars.copy_context().run, run, model, lo, hi)
        try:
            results = [run(models[0], *bounds[0])]
        finally:
            outcomes = [lane.result(ticket) for lane in lanes]
        for failed, value in outcomes:
            if failed:
                raise value
        return bounds, models, results + [value for _, value in outcomes]

    @staticmethod
    def _combine(models: list[Any], weights: list[float], inplace: bool = False) -> None:
        """The model's gradient := Σ weight × each worker's mean gradient (the mean over the whole batch).

        Shards of one size (an even batch over two workers) are added first and scaled once, into the new sum
        where the backend writes in place: two passes instead of three, and for two workers the same bits
        (scaling by 1/2 is exact)."""
        if len(models) == 1:
            return
        equal = len(set(weights)) == 1
        for layers in zip(*(model.layers for model in models), strict=True):
            first = layers[0]
            if not (first.trainable and first.params):
                continue
            for key in first.params:
                if equal:
                    total = first.grads[key] + layers[1].grads[key]
                    for layer in layers[2:]:
                        total = total + layer.grads[key]
                    if inplace:
                        total *= weights[0]  # total is a new array, ours alone
                    else:
                        total = weights[0] * total
                else:
                    total = weights[0] * first.grads[key]
                    for weight, layer in zip(weights[1:], layers[1:], strict=True):
                        total = total + weight * layer.grads[key]
                first.grads[key] = total


class _Lane:
    """One worker thread and its two queues: tasks in, (failed, result or exception) out, each tagged with a
    ticket.

    Only C-level queue operations pass between the threads. A signal handler that raises (Ctrl-C, SIGTERM) can
    stop the waiting thread at any bytecode; inside the Python-level locking of concurrent.futures it could
    leave a future's lock held, and the worker, then unable to take it, would keep the interpreter from
    exiting. A result whose ticket is not the one awaited (left behind by a step that a signal cut short)
    is dropped. The thread is a daemon and stops when its ThreadWorkers is collected.
    """

    def __init__(self, name: str):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, args=(self.tasks, self.results), name=name, daemon=True).start()

    def submit(self, ticket: int, function: Any, *args: Any) -> None:
        self.tasks.put((ticket, function, args))

    def result(self, ticket: int) -> tuple[bool, Any]:
        """(failed, the task's return value or its exception) of the task submitted with ``ticket``."""
        while True:
            got, failed, value = self.results.get()
            if got == ticket:
                return failed, value

    @staticmethod
    def _serve(tasks: queue.SimpleQueue, results: queue.SimpleQueue) -> None:
        while (task := tasks.get()) is not None:
            ticket, function, args = task
            try:
                results.put((ticket, False, function(*args)))
            except BaseException as error:  # handed to the waiting thread, which raises it
                results.put((ticket, True, error))
            del task, function, args  # hold no model between steps

    @staticmethod
    def stop_all(lanes: list[_Lane]) -> None:
        for lane in lanes:
            lane.tasks.put(None)


def train_step(model: Any, x: Any, targets: Any, truth: Any, first: int = 0,
               backward: Callable[[], None] | None = None) -> tuple[Any, Any]:
    """Forward and backward of one batch: (mean loss, correct count against ``truth`` or None); ``first`` is
    the index of its first row in the global batch (a shard's or rank's offset), which keys dropout's masks.
    ``backward`` replaces ``model.backward`` (an optimizer's :meth:`~xpnn.optim.Optimizer.backward_step`)."""
    with global_rows(first):
        logits = model.predict(x, train=True)
    loss = model.loss_fn(logits, targets)
    (model.backward if backward is None else backward)()
    return loss, metrics.count_correct(model.loss_fn, logits, truth)


def eval_step(model: Any, x: Any, targets: Any, truth: Any) -> tuple[Any, Any]:
    """Inference on one batch: (loss × samples, correct count against ``truth`` or None)."""
    logits = model.predict(x)
    return model.loss_fn(logits, targets) * x.shape[0], metrics.count_correct(model.loss_fn, logits, truth)


def _total_hits(results: list[tuple[Any, Any]]) -> Any:
    hits = [hit for _, hit in results]
    return None if hits[0] is None else sum(hits[1:], hits[0])


def replica(model: Any) -> Any:
    """A deep copy of ``model`` whose layers share the model's ``params`` dicts (the same dict objects, so
    every step sees the current weights, however the optimizer rebinds them), nested layers included.

    Everything else is the copy's own: gradients, buffers (updated in place or rebound, they never touch
    the model's), and any array a layer keeps, so a layer may write into its own scratch arrays. Backends
    and array namespaces are shared.

    Raises
    ------
    TypeError
        Naming the layer that cannot be deep-copied (one holding a lock or an open file, say).
    """
    be = model.backend
    memo: dict[int, Any] = {id(be): be, id(be.xp): be.xp}
    for layer in _layers([*model.layers, model.loss_fn]):
        memo[id(layer.params)] = layer.params
        memo.update({id(v): v for v in vars(layer).values() if isinstance(v, types.ModuleType)})
    shared = dict(memo)  # deepcopy fills memo as it goes, failed copies included
    try:
        return copy.deepcopy(model, memo)
    except Exception as error:  # deepcopy raises whatever the object's reducer raises
        for index, layer in enumerate(model.layers):
            try:
                copy.deepcopy(layer, dict(shared))
            except Exception:
                raise TypeError(f"workers > 1 copies the model for each worker thread, but layer {index} "
                                f"({layer!r}) cannot be copied: {error}; give it a __deepcopy__ or use "
                                "workers=1") from None
        raise TypeError(f"workers > 1 copies the model for each worker thread, but it cannot be copied: {error}; "
                        "use workers=1") from None


def _layers(roots: list[Any]) -> list[Any]:
    """Every object with a ``params`` dict reachable from ``roots`` through attributes, lists, tuples and
    dicts: the layers, and layers nested inside composite ones."""
    found: dict[int, Any] = {}
    stack = list(roots)
    while stack:
        item = stack.pop()
        if id(item) in found or isinstance(item, str | bytes | int | float | types.ModuleType):
            continue
        if isinstance(item, list | tuple | set):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(getattr(item, "params", None), dict) and hasattr(item, "__dict__"):
            found[id(item)] = item
            stack.extend(v for k, v in vars(item).items() if k not in ("params", "grads", "buffers", "backend"))
    return list(found.values())
