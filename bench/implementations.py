"""The implementations the benchmarks race: one training epoch of 784-256-128-10 (ReLU, softmax
cross-entropy, SGD) each, plus the matrix products alone (the bound).

Every ``epoch()`` ends with the device synchronized, so a timer around it measures finished work.
Used by ``bench/test_epoch.py`` and, in a subprocess, by ``bench/memory.py``.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import xpnn
from xpnn.core.backend import BackendError

SIZES = (784, 256, 128, 10)
LR = 0.01
FASHION = Path("/usr/share/datasets/fashion-mnist")


def load_data(n: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """MNIST-shaped training data: real Fashion-MNIST when installed, else random of the same shape."""
    if xpnn.data.find_files(FASHION) is not None:
        ds = xpnn.data.load_dataset("fashion-mnist", FASHION)
        x, y, source = ds.x_train, ds.y_train, "fashion-mnist"
    else:
        rng = np.random.default_rng(0)
        x = rng.random((60_000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 60_000)
        source = "random"
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y, source


def epoch_flops(n: int, batch: int) -> int:
    """Floating-point operations of one epoch's matrix products: forward and weight gradients for
    every layer, input gradients for every layer but the first (2 flops per multiply-add)."""
    macs_per_sample = 0
    for index, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
        macs_per_sample += n_in * n_out * (2 if index == 0 else 3)
    return 2 * macs_per_sample * n


@dataclass
class Epoch:
    """One ready-to-run implementation: ``run()`` trains one epoch and synchronizes."""

    implementation: str
    backend: str
    batch: int
    samples: int
    run: Callable[[], None]


def interleaved(others: list[Epoch]) -> Callable[[], None]:
    """The setup run before each timed round: one untimed epoch of every other implementation on the device.

    A neighbour that raises is dropped with a warning instead of failing every row of its device; its own
    row still fails and shows the error.
    """

    def setup() -> None:  # pedantic() would take a returned value as the target's arguments
        for epoch in list(others):
            try:
                epoch.run()
            except Exception as error:
                others.remove(epoch)
                warnings.warn(f"{epoch.implementation} on {epoch.backend} failed; left out of the interleaving: "
                              f"{error}", stacklevel=2)

    return setup


# ---------------------------------------------------------------------- xpnn
def xpnn_backend(name: str) -> xpnn.Backend:
    """A backend by benchmark name; raises LookupError (to be skipped) when it is missing."""
    try:
        if name == "numpy":
            return xpnn.get_backend("cpu")
        if name == "cupy":
            return xpnn.get_backend("gpu")
        if name == "torch-cpu":
            return xpnn.get_backend("torch")
        if name == "torch-cuda":
            torch = _torch()
            if not torch.cuda.is_available():
                raise LookupError("torch has no CUDA device here")
            return xpnn.get_backend("torch:cuda")
        if name == "array-api-strict":
            return xpnn.get_backend("array_api_strict")
    except BackendError as error:
        raise LookupError(str(error)) from None
    raise ValueError(name)


def xpnn_epoch(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int, cuda_graphs: str = "auto",
               workers: int | str = "auto") -> Epoch:
    """xpnn's Trainer with its defaults (``workers="auto"``: one thread per core on NumPy, 1 elsewhere)."""
    backend = xpnn_backend(backend_name)
    model = xpnn.mlp(list(SIZES), backend=backend, seed=0)
    model.check_values = False
    trainer = xpnn.trainer.Trainer(model, xpnn.optim.SGD(model, lr=LR), batch_size=batch, seed=0,
                                   cuda_graphs=cuda_graphs, workers=workers)
    data = trainer.device_data(x, y)
    counter = iter(range(10**9))

    def run() -> None:
        loss = trainer.train_epoch(data, next(counter))["loss"]
        backend.sync()
        del loss

    name = "xpnn" if cuda_graphs == "auto" else "xpnn-eager"
    return Epoch(name if workers == "auto" else f"{name}-{workers}worker", backend_name, batch, x.shape[0], run)


def xpnn_1worker_epoch(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    """xpnn with ``workers=1`` on NumPy, where the default takes one thread per core: what auto gains."""
    workers_available(backend_name)
    return xpnn_epoch(backend_name, x, y, batch, workers=1)


def xpnn_eager_epoch(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    """xpnn with --cuda-graphs off: what capture gains on torch-cuda."""
    return xpnn_epoch(backend_name, x, y, batch, cuda_graphs="off")


# ---------------------------------------------------------------------- plain PyTorch
def _torch():
    if importlib.util.find_spec("torch") is None:
        raise LookupError("torch is not installed")
    import torch

    return torch


def torch_device(backend_name: str):
    torch = _torch()
    if backend_name == "torch-cuda" and not torch.cuda.is_available():
        raise LookupError("torch has no CUDA device here")
    return torch.device("cuda" if backend_name == "torch-cuda" else "cpu")


def pytorch_epoch(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int, compiled: bool = False) -> Epoch:
    """The same network and step as PyTorch users write it: nn.Sequential, optim.SGD, tensors preloaded.

    ``compiled``: the step under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs through Inductor).
    """
    torch = _torch()
    device = torch_device(backend_name)
    if compiled and device.type != "cuda":
        raise LookupError("torch.compile(mode='reduce-overhead') is a CUDA-graph mode; CUDA only")
    torch.manual_seed(0)
    layers = []
    for index, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
        layers.append(torch.nn.Linear(n_in, n_out))
        if index < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    inputs = torch.from_numpy(x).to(device)
    targets = torch.from_numpy(y).to(device)
    n = inputs.shape[0]

    def step(batch_x, batch_t):
        optimizer.zero_grad()
        loss = loss_fn(model(batch_x), batch_t)
        loss.backward()
        optimizer.step()
        return loss.detach()

    if compiled:
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(LR, device=device)  # a tensor lr, so a schedule would not recompile
        compiled_step = torch.compile(step, mode="reduce-overhead")

        def step(batch_x, batch_t):
            # Each call is a new training iteration: the graphs' outputs of the last one may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
            return compiled_step(batch_x, batch_t)

    def run() -> None:
        order = torch.randperm(n, device=device)
        for start in range(0, n, batch):
            index = order[start : start + batch]
            step(inputs[index], targets[index])
        if device.type == "cuda":
            torch.cuda.synchronize()

    return Epoch("pytorch-compiled" if compiled else "pytorch", backend_name, batch, n, run)


def pytorch_compiled_epoch(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    return pytorch_epoch(backend_name, x, y, batch, compiled=True)


# ---------------------------------------------------------------------- hand-written NumPy
def numpy_epoch(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    """What the classic tutorials write: float32 NumPy, no framework, shuffled minibatches."""
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal(shape) * np.sqrt(2 / shape[0])).astype(np.float32)
               for shape in itertools.pairwise(SIZES)]
    biases = [np.zeros(o, np.float32) for o in SIZES[1:]]
    one_hot = np.eye(10, dtype=np.float32)[y]
    n = x.shape[0]

    def run() -> None:
        order = rng.permutation(n)
        xs, ts = x[order], one_hot[order]
        for start in range(0, n, batch):
            a0, t = xs[start : start + batch], ts[start : start + batch]
            z1 = a0 @ weights[0] + biases[0]
            a1 = np.maximum(z1, 0)
            z2 = a1 @ weights[1] + biases[1]
            a2 = np.maximum(z2, 0)
            z3 = a2 @ weights[2] + biases[2]
            e = np.exp(z3 - z3.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            d3 = (p - t) / a0.shape[0]
            d2 = (d3 @ weights[2].T) * (z2 > 0)
            d1 = (d2 @ weights[1].T) * (z1 > 0)
            for W, b, a, d in zip(weights, biases, (a0, a1, a2), (d1, d2, d3), strict=False):
                W -= LR * (a.T @ d)
                b -= LR * d.sum(axis=0)

    return Epoch("numpy-by-hand", "numpy", batch, n, run)


# ---------------------------------------------------------------------- the bound
def matmul_bound(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    """Only the epoch's matrix products, at their real shapes, into preallocated outputs."""
    n = x.shape[0]
    batches = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    if backend_name == "numpy":
        lib, put = np, np.asarray
        sync = lambda: None  # noqa: E731
    elif backend_name in ("cupy",):
        try:
            import cupy as lib
        except ImportError:
            raise LookupError("cupy is not installed") from None
        put = lib.asarray
        sync = lambda: lib.cuda.Device().synchronize()  # noqa: E731
    else:
        torch = _torch()
        device = torch_device(backend_name)
        lib = torch
        put = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    shapes = {}
    for b in set(batches):
        layers = []
        for index, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
            a = put(rng.random((b, n_in), dtype=np.float32))
            W = put(rng.random((n_in, n_out), dtype=np.float32))
            d = put(rng.random((b, n_out), dtype=np.float32))
            out = [put(np.empty((b, n_out), np.float32)), put(np.empty((n_in, n_out), np.float32)),
                   put(np.empty((b, n_in), np.float32))]
            layers.append((index, a, W, d, out))
        shapes[b] = layers

    def run() -> None:
        for b in batches:
            for index, a, W, d, (y_out, dW, dx) in shapes[b]:
                lib.matmul(a, W, out=y_out)
                lib.matmul(a.T, d, out=dW)
                if index:
                    lib.matmul(d, W.T, out=dx)
        sync()

    return Epoch("matmul-bound", backend_name, batch, n, run)


IMPLEMENTATIONS = {"xpnn": xpnn_epoch, "xpnn-1worker": xpnn_1worker_epoch, "xpnn-eager": xpnn_eager_epoch,
                   "pytorch": pytorch_epoch,
                   "pytorch-compiled": pytorch_compiled_epoch, "numpy-by-hand": numpy_epoch,
                   "matmul-bound": matmul_bound}


def make_epoch(implementation: str, backend_name: str, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    return IMPLEMENTATIONS[implementation](backend_name, x, y, batch)


def rounds(default: int) -> int:
    """Timed rounds, reduced in CI through $XPNN_BENCH_ROUNDS."""
    return int(os.environ.get("XPNN_BENCH_ROUNDS", default))


def gflops(n: int, batch: int, seconds: float) -> float:
    return epoch_flops(n, batch) / seconds / 1e9 if seconds > 0 and math.isfinite(seconds) else float("nan")


# ---------------------------------------------------------------------- the CNN of xpnn.cnn()
# conv 1->32 3x3 pad 1, ReLU, max-pool 2; conv 32->64 3x3 pad 1, ReLU, max-pool 2; 3136->128, ReLU; 128->10.
CNN_LR = 0.01


def cnn_images(x: np.ndarray) -> np.ndarray:
    """MNIST-shaped rows (N, 784) as the CNN's (N, 1, 28, 28) images."""
    return np.ascontiguousarray(x.reshape(-1, 1, 28, 28))


def cnn_matmul_shapes(batch: int) -> list[tuple[tuple[int, int], tuple[int, int], bool]]:
    """(input rows × features, weight matrix, whether its input gradient is needed) of every product per step."""
    return [((batch * 28 * 28, 1 * 9), (9, 32), False),  # conv 1 as im2col
            ((batch * 14 * 14, 32 * 9), (32 * 9, 64), True),  # conv 2 as im2col
            ((batch, 3136), (3136, 128), True),
            ((batch, 128), (128, 10), True)]


def cnn_epoch_flops(n: int, batch: int) -> int:
    """Floating-point operations of the CNN epoch's matrix products (forward, weight and input gradients)."""
    steps = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    total = 0
    for b in steps:
        for (rows, k), (_, out), input_grad in cnn_matmul_shapes(b):
            total += 2 * rows * k * out * (3 if input_grad else 2)
    return total


def xpnn_cnn_epoch(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int, workers: int | str = "auto") -> Epoch:
    """xpnn.cnn() without dropout, SGD, the trainer's epoch (shuffled, batches cut on the device), its default
    workers (one thread per core on NumPy)."""
    backend = xpnn_backend(backend_name)
    model = xpnn.cnn(dropout=0.0, backend=backend, seed=0)
    model.check_values = False
    trainer = xpnn.trainer.Trainer(model, xpnn.optim.SGD(model, lr=CNN_LR), batch_size=batch, seed=0,
                                   workers=workers)
    data = trainer.device_data(cnn_images(x), y)
    counter = iter(range(10**9))

    def run() -> None:
        loss = trainer.train_epoch(data, next(counter))["loss"]
        backend.sync()
        del loss

    return Epoch("xpnn" if workers == "auto" else f"xpnn-{workers}worker", backend_name, batch, x.shape[0], run)


def xpnn_cnn_1worker_epoch(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    """xpnn with ``workers=1`` on NumPy, where the default takes one thread per core: what auto gains."""
    workers_available(backend_name)
    return xpnn_cnn_epoch(backend_name, x, y, batch, workers=1)


def workers_available(backend_name: str) -> None:
    """LookupError (a skip) where the default already trains on one worker: another library, no threadpoolctl,
    or one core."""
    if backend_name != "numpy":
        raise LookupError("workers > 1 pays only on NumPy; the default is 1 worker here")
    if importlib.util.find_spec("threadpoolctl") is None:
        raise LookupError("threadpoolctl is not installed (pip install '.[threads]'): the default is 1 worker")
    if xpnn.runtime.parallel.usable_cores() < 2:
        raise LookupError("one core: the default is 1 worker")


def pytorch_cnn_epoch(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    """The same CNN as PyTorch users write it (nn.Conv2d, nn.MaxPool2d: oneDNN on the CPU, cuDNN on a GPU)."""
    torch = _torch()
    device = torch_device(backend_name)
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=CNN_LR)
    loss_fn = nn.CrossEntropyLoss()
    inputs = torch.from_numpy(cnn_images(x)).to(device)
    targets = torch.from_numpy(y).to(device)
    n = inputs.shape[0]

    def run() -> None:
        order = torch.randperm(n, device=device)
        for start in range(0, n, batch):
            index = order[start : start + batch]
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[index]), targets[index])
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return Epoch("pytorch", backend_name, batch, n, run)


def cnn_matmul_bound(backend_name: str, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    """Only the CNN epoch's matrix products (convolutions as im2col products), at their real shapes.

    Weight gradients are ``dot(a.T, d)``, the form xpnn's tensordot reaches (NumPy's matmul is much slower
    on a transposed operand with few columns).
    """
    n = x.shape[0]
    batches = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    if backend_name == "numpy":
        lib, put, mm = np, np.asarray, np.dot
        sync = lambda: None  # noqa: E731
    elif backend_name == "cupy":
        try:
            import cupy as lib
        except ImportError:
            raise LookupError("cupy is not installed") from None
        put, mm = lib.asarray, lib.matmul
        sync = lambda: lib.cuda.Device().synchronize()  # noqa: E731
    else:
        torch = _torch()
        device = torch_device(backend_name)
        lib, mm = torch, torch.matmul
        put = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    products = {}
    for b in set(batches):
        products[b] = []
        for (rows, k), (_, out), input_grad in cnn_matmul_shapes(b):
            a, W, d = (put(rng.random(shape, dtype=np.float32)) for shape in ((rows, k), (k, out), (rows, out)))
            outputs = [put(np.empty(shape, np.float32)) for shape in ((rows, out), (k, out), (rows, k))]
            products[b].append((a, W, d, input_grad, outputs))

    def run() -> None:
        for b in batches:
            for a, W, d, input_grad, (y_out, dW, dx) in products[b]:
                mm(a, W, out=y_out)
                mm(a.T, d, out=dW)
                if input_grad:
                    mm(d, W.T, out=dx)
        sync()

    return Epoch("matmul-bound", backend_name, batch, n, run)


CNN_IMPLEMENTATIONS = {"xpnn": xpnn_cnn_epoch, "xpnn-1worker": xpnn_cnn_1worker_epoch, "pytorch": pytorch_cnn_epoch,
                       "matmul-bound": cnn_matmul_bound}


def make_cnn_epoch(implementation: str, backend_name: str, x: np.ndarray, y: np.ndarray, batch: int) -> Epoch:
    return CNN_IMPLEMENTATIONS[implementation](backend_name, x, y, batch)
