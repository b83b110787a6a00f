"""Whole-step capture (xpnn.runtime.graphs): which steps replay, which run eagerly, and that results do not change.

Without a GPU the capture is played by a fake that records the step without running it and runs it at each
replay, as a CUDA graph does with the device work; everything else (static buffers, the capturable optimizer,
schedules, the partial batch, recapture after a reload) is the real code. The real capture runs on torch-cuda.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import types
import weakref

import numpy as np
import pytest

import xpnn
import xpnn.runtime.graphs as graphs_module
from tests.conftest import make_backend
from xpnn.core.backend import Backend
from xpnn.optim import SGD, Adam, Momentum
from xpnn.runtime.graphs import (
    CublasRoute,
    CupyCapture,
    StepGraph,
    capture_refusal,
    device_refusal,
    gemm_arguments,
    make_step_graph,
)
from xpnn.training.trainer import Trainer


def capture_checker(watcher=None):
    """A context that refuses, on the CPU, what a CUDA graph capture refuses on the GPU.

    Refused: making a tensor from host data (a host-to-device copy on CUDA: a Python scalar or a NumPy array
    turned into a tensor), reading values back to the host (``item()``, ``bool()``, ``numpy()``,
    ``tolist()``), and operations whose output size depends on the data (they synchronise: ``nonzero``,
    boolean-mask indexing, ``unique``, ``masked_select``, ``equal``, ``repeat_interleave`` without an output
    size). Not seen: a copy between devices (everything is on the CPU here).
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    refused = {
        aten.lift_fresh.default: "a tensor made from host data (a host-to-device copy)",
        aten._local_scalar_dense.default: "a value read back to the host (a synchronisation)",
        aten.nonzero.default: "nonzero (a data-dependent size: a synchronisation)",
        aten.masked_select.default: "masked_select (a data-dependent size)",
        aten._unique2.default: "unique (a data-dependent size)",
        aten.unique_dim.default: "unique (a data-dependent size)",
        aten.unique_consecutive.default: "unique_consecutive (a data-dependent size)",
        aten.equal.default: "equal (a host bool: a synchronisation)",
        aten.repeat_interleave.Tensor: "repeat_interleave (a data-dependent size)",
    }

    class Checker(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in refused and not (func is aten.repeat_interleave.Tensor and kwargs.get("output_size")):
                raise RuntimeError(f"not allowed during CUDA graph capture: {refused[func]} ({func})")
            if func is aten.index.Tensor and any(getattr(i, "dtype", None) == torch.bool for i in args[1]):
                raise RuntimeError("not allowed during CUDA graph capture: boolean-mask indexing (a data-dependent "
                                   "size)")
            if watcher is not None:
                return watcher.dispatch(func, args, kwargs, lambda: func(*args, **kwargs))
            return func(*args, **kwargs)

    def host_read(*args, **kwargs):
        raise RuntimeError("not allowed during CUDA graph capture: a tensor read on the host")

    @contextlib.contextmanager
    def checking():
        with contextlib.ExitStack() as stack:
            for name in ("numpy", "tolist", "__array__"):
                stack.enter_context(_patched(torch.Tensor, name, host_read))
            stack.enter_context(Checker())
            yield

    return checking()


@contextlib.contextmanager
def _patched(owner, name, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


class ReadsWatcher:
    """Remembers the tensors from outside a captured step that the step reads, and fails once one is gone.

    A CUDA graph replays the addresses it was recorded with: if an array made before the capture (a layer's
    cache, say) is freed later, every replay reads memory that the allocator may have handed out again. The
    first replay records each operation's inputs that no earlier operation of the step made (as the base
    tensor, so that views made outside count as their owner); each later replay first checks they are alive.
    """

    def __init__(self) -> None:
        self.outside: list[tuple[weakref.ref, str]] = []
        self.made: set[int] = set()  # ids of the tensors seen so far: made by the step, or recorded as outside
        self.recording = True

    def dispatch(self, func, args, kwargs, run):
        import torch
        from torch.utils._pytree import tree_flatten

        if not self.recording:
            return run()
        made = self.made
        for value in tree_flatten((args, kwargs))[0]:
            if isinstance(value, torch.Tensor):
                owner = value._base if value._base is not None else value
                if id(owner) not in made:
                    made.add(id(owner))
                    self.outside.append((weakref.ref(owner), f"{tuple(owner.shape)} read by {func}"))
        result = run()
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor):
                made.add(id(value._base if value._base is not None else value))
        return result

    def check(self) -> None:
        self.recording = False
        gone = [what for ref, what in self.outside if ref() is None]
        if gone:
            raise RuntimeError(f"a captured step reads tensors freed since it was recorded: {gone}")


class FakeCapture:
    """Records the step without running it; the returned replay runs it (the device work of a CUDA graph).

    With ``check=True`` (torch) each replay runs under :func:`capture_checker`, so a step that a real
    capture would refuse fails here too, and so does one that reads an array freed since it was recorded
    (:class:`ReadsWatcher`).
    """

    def __init__(self, check: bool = False) -> None:
        self.recorded = 0
        self.warmups = 0
        self.check = check

    @contextlib.contextmanager
    def warmup(self):
        self.warmups += 1
        yield

    def capture(self, body):
        self.recorded += 1
        if not self.check:
            return body

        watcher = ReadsWatcher()

        def replay():
            if not watcher.recording:
                watcher.check()
            with capture_checker(watcher):
                body()
            watcher.recording = False

        return replay


N, BATCH = 300, 64  # 4 full batches and a partial one of 44 per epoch


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, 6)).astype(np.float32), rng.integers(0, 3, N)


def trainer_for(backend, make_optimizer, graph):
    model = xpnn.mlp([6, 16, 8, 3], backend=backend, seed=0)
    optimizer = make_optimizer(model)
    schedule = xpnn.optim.get_schedule("step", 3, step_size=1, gamma=0.5)
    trainer = Trainer(model, optimizer, batch_size=BATCH, schedule=schedule, seed=0, cuda_graphs="off", workers=1)
    if graph == "fake":
        trainer.graph = StepGraph(model, optimizer, FakeCapture(check=backend.name.startswith("torch")))
    elif graph == "real":
        trainer.graph = make_step_graph("on", model, optimizer)
    return trainer


def run(trainer, epochs=3):
    x, y = data()
    device_data = trainer.device_data(x, y)
    rows = []
    for index in range(epochs):
        sums = trainer.train_epoch(device_data, index)
        rows.append((float(trainer.model.backend.to_numpy(sums["loss"])),
                     int(trainer.model.backend.to_numpy(sums["correct"]))))
    return rows


def parameters(trainer):
    be = trainer.model.backend
    return {k: be.to_numpy(v) for k, v in trainer.model.named_parameters().items()}


OPTIMIZERS = {
    "sgd": lambda m: SGD(m, lr=0.1),
    "momentum-l2": lambda m: Momentum(m, lr=0.05, weight_decay=0.01),
    "adamw": lambda m: Adam(m, lr=0.01, weight_decay=0.1, decoupled=True),
}


@pytest.fixture(params=[False, True], ids=["cpu-like", "gpu-like"])
def launch_bound(request, monkeypatch):
    """As on a GPU (one gather per epoch, one flat optimizer update) or as on the CPU."""
    monkeypatch.setattr(Backend, "launch_bound", property(lambda self: request.param))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_replayed_steps_match_eager_steps(backend_name, name, launch_bound):
    backend = make_backend(backend_name)
    eager, captured = trainer_for(backend, OPTIMIZERS[name], None), trainer_for(backend, OPTIMIZERS[name], "fake")
    assert run(eager) == run(captured)
    for key, value in parameters(eager).items():
        np.testing.assert_array_equal(parameters(captured)[key], value, err_msg=key, strict=True)
    assert captured.optimizer.steps == eager.optimizer.steps == 15
    assert captured.optimizer.lr == eager.optimizer.lr == 0.25 * eager.base_lr
    graph = captured.graph
    # 3 warm-up steps, then 9 replays of the full batches; 3 partial batches eager; one capture
    assert (graph.eager, graph.replayed, graph.captures, graph.capture.warmups) == (6, 9, 1, 3)


def _capturable_models(backend):
    layers, losses = xpnn.layers, xpnn.losses
    rng = np.random.default_rng(1)
    images = rng.standard_normal((40, 2, 7, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    convolutional = xpnn.Sequential([
        layers.Conv2d(2, 4, 3, padding=1), layers.ELU(), layers.MaxPool2d(2),
        layers.Conv2d(4, 3, (2, 1), stride=(1, 2)), layers.LeakyReLU(), layers.AvgPool2d(2, stride=1),
        layers.Flatten(), layers.Affine(3 * 1 * 1, 3)], backend=backend, seed=0)
    rows = rng.standard_normal((40, 5)).astype(np.float32)
    regression = xpnn.Sequential([layers.Affine(5, 8), layers.Tanh(), layers.Affine(8, 2)],
                                 loss=losses.MeanSquaredError(), backend=backend, seed=0)
    binary = xpnn.Sequential([layers.Affine(5, 8), layers.Sigmoid(), layers.Affine(8, 1)],
                             loss=losses.BCEWithLogits(), backend=backend, seed=0)
    return {"cnn": (convolutional, images, labels),
            "mse-tanh": (regression, rows, rng.standard_normal((40, 2)).astype(np.float32)),
            "bce-sigmoid": (binary, rows, rng.integers(0, 2, (40, 1)).astype(np.float32))}


@pytest.mark.parametrize("kind", ["cnn", "mse-tanh", "bce-sigmoid"])
def test_every_layer_and_loss_runs_under_the_capture_rules(kind):
    """Each layer and loss, replayed under the capture checker on torch-cpu, gives the eager parameters."""
    backend = make_backend("torch")
    results = []
    for graph in (False, True):
        model, x, y = _capturable_models(backend)[kind]
        optimizer = Adam(model, lr=0.01)
        trainer = Trainer(model, optimizer, batch_size=8, seed=0, cuda_graphs="off", workers=1)
        if graph:
            trainer.graph = StepGraph(model, optimizer, FakeCapture(check=True))
        device_data = trainer.device_data(x, y)
        for epoch in range(2):
            trainer.train_epoch(device_data, epoch)
        results.append(parameters(trainer))
        if graph:
            assert trainer.graph.replayed == 7  # 10 steps, 3 of them warm-up
    for key, value in results[0].items():
        np.testing.assert_array_equal(results[1][key], value, err_msg=key, strict=True)


@pytest.mark.parametrize("name", ["scalar to tensor", "numpy to tensor", "item", "bool", "to_numpy", "tolist",
                                  "equal", "nonzero", "boolean mask", "unique"])
def test_the_capture_checker_refuses_what_a_capture_refuses(name):
    torch = pytest.importorskip("torch")
    from xpnn.core.backend import to_numpy

    t = torch.ones(3)
    operations = {
        "scalar to tensor": lambda: torch.asarray(0.0), "numpy to tensor": lambda: torch.as_tensor(np.ones(2)),
        "item": lambda: t.sum().item(), "bool": lambda: bool(t.sum() > 0), "to_numpy": lambda: to_numpy(t),
        "tolist": lambda: t.tolist(), "equal": lambda: torch.equal(t, t), "nonzero": lambda: torch.nonzero(t),
        "boolean mask": lambda: t[t > 0], "unique": lambda: torch.unique(t),
    }
    with pytest.raises(RuntimeError, match="not allowed during CUDA graph capture"), capture_checker():
        operations[name]()
    operations[name]()  # allowed again after


def test_the_capture_checker_lets_device_work_through():
    torch = pytest.importorskip("torch")
    t, repeats = torch.arange(6.0).reshape(2, 3), torch.ones(3, dtype=torch.int64)
    with capture_checker():
        out = torch.maximum(t * 0.5, torch.zeros(())) @ t.T
        out = out[:, :1] + torch.repeat_interleave(t[0], repeats, output_size=3)[:1]
    np.testing.assert_array_equal(out.numpy(), [[2.5], [7.0]])


def test_the_fake_capture_fails_a_step_that_reads_a_freed_cache():
    """What a layer's cache replaced by a batch of another size (run eagerly) would do to a real graph."""
    torch = pytest.importorskip("torch")
    weight, cache = torch.ones(3), {"ones": torch.ones(3)}
    out = []
    replay = FakeCapture(check=True).capture(lambda: out.append(weight @ cache["ones"]))
    replay()  # the recording
    replay()  # still the same tensors
    cache["ones"] = torch.ones(2)  # the old one is freed
    with pytest.raises(RuntimeError, match=r"reads tensors freed since it was recorded: \['\(3,\) read by"):
        replay()
    assert len(out) == 2


class RecordingCapture(FakeCapture):
    """Runs the step under the capture checker while recording, as a real capture goes through the Python
    code (a refused operation raises there, before any parameter changes)."""

    def capture(self, body):
        self.recorded += 1
        with capture_checker():
            body()
        raise AssertionError("the step above should have been refused")


class ScalarReLU(xpnn.layers.ReLU):
    """A custom layer written with a Python scalar: on torch it copies 0.0 to the device at every call."""

    def _forward(self, x):
        return self.xp.maximum(x, 0.0)


def _scalar_relu_trainer(backend, graph=None):
    model = xpnn.Sequential([xpnn.layers.Affine(6, 8), ScalarReLU(), xpnn.layers.Affine(8, 3)], backend=backend,
                            seed=0)
    optimizer = Adam(model, lr=0.01)
    trainer = Trainer(model, optimizer, batch_size=BATCH, seed=0, cuda_graphs="off", workers=1)
    if graph is not None:
        trainer.graph = StepGraph(model, optimizer, RecordingCapture(), fallback=graph == "auto")
    return trainer


def test_a_step_that_cannot_be_captured_runs_eagerly_after_one_warning():
    backend = make_backend("torch")
    eager, fallen_back = _scalar_relu_trainer(backend), _scalar_relu_trainer(backend, "auto")
    with pytest.warns(UserWarning, match="could not be captured .*host-to-device.*runs eagerly from here") as caught:
        rows = run(fallen_back)
    assert len(caught) == 1 and rows == run(eager)
    graph = fallen_back.graph
    assert "host-to-device" in graph.failed and graph.replayed == 0 and graph.capture.recorded == 1
    for key, value in parameters(eager).items():
        np.testing.assert_array_equal(parameters(fallen_back)[key], value, err_msg=key, strict=True)


def test_cuda_graphs_on_raises_where_the_step_cannot_be_captured():
    trainer = _scalar_relu_trainer(make_backend("torch"), "on")
    with pytest.raises(RuntimeError, match="not allowed during CUDA graph capture"):
        run(trainer, epochs=1)


def test_a_reload_between_epochs_forces_a_recapture():
    backend = make_backend("numpy")
    trainer = trainer_for(backend, OPTIMIZERS["adamw"], "fake")
    reference = trainer_for(backend, OPTIMIZERS["adamw"], None)
    for t in (trainer, reference):
        run(t, epochs=1)
        saved = {k: backend.to_numpy(v) for k, v in t.model.state_dict().items()}
        state = {k: (backend.to_numpy(v) if hasattr(v, "shape") else v) for k, v in t.optimizer.state_dict().items()}
        run(t, epochs=1)  # trained further, then put back: --resume from the first epoch's checkpoint
        t.model.load_state_dict(saved)
        t.optimizer.load_state_dict(state)
        run(t, epochs=1)
    for key, value in parameters(reference).items():
        np.testing.assert_array_equal(parameters(trainer)[key], value, err_msg=key)
    assert trainer.graph.captures == 2  # the old graph read the buffers that the reload replaced


def test_what_is_never_captured():
    model = xpnn.mlp([4, 8, 2], seed=0, dropout=0.5, batchnorm=True)
    assert capture_refusal(model, SGD(model, lr=0.1)) is None  # dropout and BatchNorm keep their state in place
    model = xpnn.Sequential([xpnn.layers.Affine(4, 8), StreamNoise(), xpnn.layers.Affine(8, 2)])
    assert "random stream" in capture_refusal(model, SGD(model, lr=0.1))
    model = xpnn.mlp([4, 8, 2], seed=0)
    assert "in place" in capture_refusal(model, SGD(model, lr=0.1, inplace=False))
    with pytest.raises(ValueError, match="needs torch on CUDA or CuPy"):
        make_step_graph("on", model, SGD(model, lr=0.1))
    assert make_step_graph("auto", model, SGD(model, lr=0.1)) is None
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        make_step_graph("yes", model, SGD(model, lr=0.1))
    strict = xpnn.mlp([4, 8, 2], seed=0, backend=make_backend("strict"))
    with pytest.raises(ValueError, match="in place"):
        StepGraph(strict, SGD(strict, lr=0.1), FakeCapture())


class StreamNoise(xpnn.layers.Layer):
    """A custom layer with a random stream of its own (``self.random``): a replay would repeat its numbers."""

    def reseed(self, seed):
        self.random = self.backend.random(seed)

    def forward(self, x, *, train=False):
        return x + self.random.uniform(tuple(x.shape)) if train else x

    def backward(self, dy):
        return dy


class RebindingCounter(xpnn.layers.Layer):
    """A custom layer that replaces its buffer each step (``buffers[k] = new``): a replay would not see it."""

    def initialize(self, rng):
        self.buffers = {"count": self.backend.zeros(())}

    def forward(self, x, *, train=False):
        if train:
            self.buffers["count"] = self.buffers["count"] + 1
        return x

    def backward(self, dy):
        return dy


def _rebinding_trainer(graph):
    model = xpnn.Sequential([xpnn.layers.Affine(6, 8), RebindingCounter(), xpnn.layers.Affine(8, 3)], seed=0)
    optimizer = Adam(model, lr=0.01)
    trainer = Trainer(model, optimizer, batch_size=BATCH, seed=0, cuda_graphs="off", workers=1)
    if graph is not None:
        trainer.graph = StepGraph(model, optimizer, FakeCapture(), fallback=graph == "auto")
    return trainer


def test_a_layer_that_rebinds_its_buffers_is_found_in_the_warm_up():
    with pytest.raises(RuntimeError, match=r"layer 1 \(RebindingCounter\) replaces its buffer 'count' each step"):
        run(_rebinding_trainer("on"), epochs=1)
    eager, fallen_back = _rebinding_trainer(None), _rebinding_trainer("auto")
    with pytest.warns(UserWarning, match="could not be captured .*replaces its buffer") as caught:
        rows = run(fallen_back)
    assert len(caught) == 1 and rows == run(eager)
    assert fallen_back.graph.captures == 0 and fallen_back.graph.replayed == 0
    assert float(fallen_back.model[1].buffers["count"]) == 15


def _dropout_batchnorm_trainer(backend, graph):
    model = xpnn.mlp([6, 16, 8, 3], dropout=0.3, batchnorm=True, backend=backend, seed=0)
    optimizer = Adam(model, lr=0.01)
    trainer = Trainer(model, optimizer, batch_size=BATCH, seed=0, cuda_graphs="off", workers=1)
    if graph:
        trainer.graph = StepGraph(model, optimizer, FakeCapture(check=backend.name.startswith("torch")))
    return trainer


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_replayed_steps_with_dropout_and_batchnorm_match_eager_steps(backend_name, launch_bound):
    """Each replay draws the next mask (the step count advances in place) and moves BatchNorm's statistics."""
    backend = make_backend(backend_name)
    eager, captured = (_dropout_batchnorm_trainer(backend, graph) for graph in (False, True))
    assert run(eager) == run(captured)
    for key, value in eager.model.state_dict().items():
        np.testing.assert_array_equal(backend.to_numpy(captured.model.state_dict()[key]), backend.to_numpy(value),
                                      err_msg=key, strict=True)
    assert (captured.graph.replayed, captured.graph.captures) == (9, 1)
    dropout = [layer for layer in captured.model if isinstance(layer, xpnn.layers.Dropout)]
    assert dropout and all(int(backend.to_numpy(layer.buffers["step"])) == 15 for layer in dropout)


def test_replays_draw_a_new_mask_each_time():
    backend = make_backend("torch")
    trainer = _dropout_batchnorm_trainer(backend, True)
    layer = trainer.model[3]
    assert isinstance(layer, xpnn.layers.Dropout)
    masks = []
    real = layer.backward

    def spy(dy):
        masks.append(backend.xp.asarray(layer.keep, copy=True))  # a device copy: no read-back inside a replay
        return real(dy)

    layer.backward = spy
    run(trainer, epochs=2)
    assert trainer.graph.replayed == 5 and len(masks) == 10  # 2 x 5 steps: 3 warm-up, 2 partial, 5 replays
    masks = [backend.to_numpy(mask) for mask in masks]
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(masks) if a.shape == b.shape)


def test_a_reload_of_buffers_alone_forces_a_recapture():
    backend = make_backend("numpy")
    trainer, reference = (_dropout_batchnorm_trainer(backend, graph) for graph in (True, False))
    for t in (trainer, reference):
        run(t, epochs=1)
        state = {k: backend.to_numpy(v) for k, v in t.model.state_dict().items()}
        run(t, epochs=1)
        buffers = {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var", "step"))}
        for index, layer in enumerate(t.model.layers):  # replaced, as a loader that rebinds would
            for key in layer.buffers:
                if f"{index}.{key}" in buffers:
                    layer.buffers[key] = backend.asarray(buffers[f"{index}.{key}"],
                                                         dtype=layer.buffers[key].dtype)
        run(t, epochs=1)
    for key, value in reference.model.state_dict().items():
        np.testing.assert_array_equal(trainer.model.state_dict()[key], value, err_msg=key)
    assert trainer.graph.captures == 2


def test_graphs_make_the_optimizer_capturable_without_changing_its_numbers():
    model = xpnn.mlp([4, 8, 2], seed=0)
    optimizer = Adam(model, lr=0.01)
    StepGraph(model, optimizer, FakeCapture())
    assert optimizer.capturable


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_captured_and_eager_steps_agree_on_torch_cuda(name):
    """The real capture: same parameters after several epochs with a schedule change and partial batches."""
    backend = make_backend("torch-cuda")
    eager, captured = trainer_for(backend, OPTIMIZERS[name], None), trainer_for(backend, OPTIMIZERS[name], "real")
    eager_rows, captured_rows = run(eager), run(captured)
    assert captured.graph.replayed == 9 and captured.graph.captures == 1
    for (loss_a, hits_a), (loss_b, hits_b) in zip(eager_rows, captured_rows, strict=True):
        assert loss_a == pytest.approx(loss_b, rel=1e-5) and abs(hits_a - hits_b) <= 1
    for key, value in parameters(eager).items():
        np.testing.assert_allclose(parameters(captured)[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fused_inplace_steps_agree_with_generic_steps_on_cupy(name):
    """CuPy cannot capture; its fast path is the fused in-place kernels on flat buffers, bit for bit."""
    backend = make_backend("cupy")
    results = []
    for inplace in (False, None):
        def make(model, inplace=inplace):
            optimizer = OPTIMIZERS[name](model)
            optimizer.inplace = inplace
            return optimizer
        trainer = trainer_for(backend, make, None)
        run(trainer)
        results.append(parameters(trainer))
    for key, value in results[0].items():
        np.testing.assert_array_equal(results[1][key], value, err_msg=key)


# ---------------------------------------------------------------------- the CuPy capture path, with fakes
class DeviceArray(np.ndarray):
    """A NumPy array that answers ``.data.ptr`` as a CuPy array does (its host address)."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


def _device(a):
    return np.ascontiguousarray(a).view(DeviceArray)


class FakeCupyArrays:
    """The few CuPy functions :class:`CublasRoute` calls, on :class:`DeviceArray`."""

    uint8 = np.uint8

    @staticmethod
    def empty(shape, dtype):
        return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0, dtype=dtype).view(DeviceArray)

    @staticmethod
    def ascontiguousarray(a):
        return _device(a)


class FakeBlas:
    """cuBLAS's column-major ?gemm on raw host addresses, and a log of the handle's settings."""

    def __init__(self):
        self.calls = []

    def create(self):
        return 7

    def set_stream(self, handle, stream):
        self.calls.append(("stream", handle, stream))

    def set_workspace(self, handle, pointer, size):
        self.calls.append(("workspace", handle, size))

    def set_pointer_mode(self, handle, mode):
        self.calls.append(("pointer mode", handle, mode))

    def destroy(self, handle):
        self.calls.append(("destroy", handle))

    def _gemm(self, dtype, handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        import ctypes

        item = np.dtype(dtype).itemsize

        def view(pointer, rows, cols, ld):
            size = ld * (cols - 1) + rows
            buffer = np.frombuffer((ctypes.c_char * (size * item)).from_address(pointer), dtype=dtype)
            return np.lib.stride_tricks.as_strided(buffer, (rows, cols), (item, ld * item), writeable=True)

        op_a = view(a, k, m, lda).T if transa else view(a, m, k, lda)
        op_b = view(b, n, k, ldb).T if transb else view(b, k, n, ldb)
        scale = view(alpha, 1, 1, 1)[0, 0]
        assert view(beta, 1, 1, 1)[0, 0] == 0  # beta = 0: cuBLAS does not read C
        view(c, m, n, ldc)[...] = scale * (op_a @ op_b)
        self.calls.append(("gemm", dtype, transa, transb))

    def sgemm(self, *args):
        self._gemm("float32", *args)

    def dgemm(self, *args):
        self._gemm("float64", *args)


def _route():
    backend = types.SimpleNamespace(device=contextlib.nullcontext())
    return CublasRoute(backend, blas=FakeBlas(), workspace_bytes=64, cupy=FakeCupyArrays)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("a_layout", "b_layout"), [("C", "C"), ("C", "F"), ("F", "C"), ("F", "F")])
@pytest.mark.parametrize(("m", "k", "n"), [(5, 3, 4), (1, 6, 2), (4, 1, 1), (3, 7, 1)])
def test_the_cublas_route_multiplies_row_major_matrices_in_every_layout(m, k, n, a_layout, b_layout, dtype):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    a_in = _device(a) if a_layout == "C" else _device(a.T).T  # "F": a transposed view, as matrix_transpose gives
    b_in = _device(b) if b_layout == "C" else _device(b.T).T
    route = _route()
    out = route.matmul(a_in, b_in)
    assert out.shape == (m, n) and out.flags.c_contiguous
    np.testing.assert_allclose(out, a @ b, rtol=1e-5 if dtype == "float32" else 1e-12)
    gemm = [call for call in route.blas.calls if call[0] == "gemm"]
    expected_trans = (int(b_layout == "F" and not b_in.flags.c_contiguous), int(a_layout == "F"
                                                                                 and not a_in.flags.c_contiguous))
    assert gemm == [("gemm", dtype, *expected_trans)]  # transposed views are read in place, never copied


def test_the_cublas_route_takes_vectors_copies_strided_views_and_refuses_other_dtypes():
    rng = np.random.default_rng(1)
    ones, dy = np.ones(6, dtype=np.float32), rng.standard_normal((6, 3)).astype(np.float32)
    route = _route()
    np.testing.assert_allclose(route.matmul(_device(ones), _device(dy)), ones @ dy, rtol=1e-6)  # Affine's bias sum
    wide = _device(rng.standard_normal((6, 8)).astype(np.float32))
    strided = wide[:, ::2]  # neither C- nor F-contiguous: copied first
    np.testing.assert_allclose(route.matmul(_device(dy.T), strided), dy.T @ np.asarray(strided), rtol=1e-5)
    empty = route.matmul(_device(np.ones((2, 0), np.float32)), _device(np.ones((0, 3), np.float32)))
    np.testing.assert_array_equal(empty, np.zeros((2, 3)))  # k = 0: zeros, no gemm
    with pytest.raises(RuntimeError, match="only 2-d float32/float64 matrices of one dtype"):
        route.matmul(_device(ones.astype(np.float64)), _device(dy))


def test_gemm_arguments_are_valid_cublas_arguments():
    for (m, k, n) in [(1, 1, 1), (128, 784, 256), (3, 0, 2)]:
        for a_layout in "CF":
            for b_layout in "CF":
                transa, transb, cm, cn, ck, lda, ldb, ldc, b_first = gemm_arguments((m, k), a_layout, (k, n),
                                                                                      b_layout)
                assert (cm, cn, ck, b_first) == (n, m, k, 1)
                assert lda >= max(1, cm if transa == 0 else ck) and ldb >= max(1, ck if transb == 0 else cn)
                assert ldc >= max(1, cm)
    with pytest.raises(ValueError, match="do not fit"):
        gemm_arguments((2, 3), "C", (4, 2), "C")


class FakeCuda:
    """``cupy.cuda`` as CupyCapture uses it: streams that record what they capture, pools, allocators."""

    def __init__(self):
        self.allocator = "eager pool"
        self.log = []
        self.default = self.Stream(self, "default")
        self.current = self.default

    class Stream:
        def __init__(self, cuda=None, name="side", non_blocking=False):
            self.cuda, self.name, self.ptr, self.capturing = cuda, name, id(self), False

        def __enter__(self):
            self.saved, self.cuda.current = self.cuda.current, self
            return self

        def __exit__(self, *exc):
            self.cuda.current = self.saved

        def record(self):
            return self.name

        def wait_event(self, event):
            self.cuda.log.append((self.name, "waits for", event))

        def begin_capture(self):
            self.capturing = True
            self.cuda.log.append(("begin capture", self.cuda.allocator))

        def end_capture(self):
            self.capturing = False
            self.cuda.log.append(("end capture",))
            return types.SimpleNamespace(launch=lambda stream: self.cuda.log.append(("launch on", stream.name)))

    class MemoryPool:
        def malloc(self, size):
            raise AssertionError("not called by the fakes")

    @contextlib.contextmanager
    def using_allocator(self, allocator):
        saved, self.allocator = self.allocator, allocator
        try:
            yield
        finally:
            self.allocator = saved

    def get_current_stream(self):
        return self.current


def _fake_cupy():
    cuda = FakeCuda()
    cuda.Stream = functools.partial(FakeCuda.Stream, cuda)
    return types.SimpleNamespace(cuda=cuda)


class FakeRoute:
    def __init__(self):
        self.bound, self.products = [], 0

    def bind(self, stream):
        self.bound.append(stream.name)

    def matmul(self, a, b):
        self.products += 1
        return a @ b


def test_the_cupy_capture_records_with_its_own_pool_and_routes_products_only_while_recording():
    cupy, route = _fake_cupy(), FakeRoute()
    backend = types.SimpleNamespace(device=contextlib.nullcontext())
    capture = CupyCapture(backend, route=route, cupy=cupy)
    numpy_backend = xpnn.get_backend("cpu")
    a, b = np.ones((2, 3)), np.ones((3, 4))
    seen = []

    def body():
        seen.append((cupy.cuda.allocator, cupy.cuda.current.capturing))
        numpy_backend.matmul(a, b)

    with capture.warmup():
        body()  # a warm-up step: eager, on a side stream, CuPy's own products and pool
    replay = capture.capture(body)
    _, pool, stream = capture.graphs[0]
    assert seen[0] == ("eager pool", False) and seen[1] == (pool.malloc, True)
    assert route.products == 1 and route.bound == ["side"] and stream.name == "side"
    assert cupy.cuda.allocator == "eager pool" and cupy.cuda.current is cupy.cuda.default
    numpy_backend.matmul(a, b)  # after the capture: a @ b again
    assert route.products == 1
    replay()
    assert cupy.cuda.log[-1] == ("launch on", "default")
    assert ("default", "waits for", "side") in cupy.cuda.log  # later eager work waits for the warm-up


def test_a_cupy_capture_that_fails_leaves_capture_mode_and_the_routing():
    cupy, route = _fake_cupy(), FakeRoute()
    capture = CupyCapture(types.SimpleNamespace(device=contextlib.nullcontext()), route=route, cupy=cupy)

    def body():
        raise RuntimeError("cudaErrorStreamCaptureUnsupported")

    with pytest.raises(RuntimeError, match="StreamCaptureUnsupported"):
        capture.capture(body)
    assert cupy.cuda.log[-1] == ("end capture",) and cupy.cuda.allocator == "eager pool"
    assert xpnn.get_backend("cpu").matmul(np.ones((1, 1)), np.ones((1, 1))) == 1 and route.products == 0


def test_cupy_is_refused_without_nvmath_and_chosen_with_it(monkeypatch):
    cupy_like = types.SimpleNamespace(graphs=True, _library="cupy", name="cupy:0")

    def missing():
        raise ModuleNotFoundError("No module named 'nvmath'")

    monkeypatch.setattr(graphs_module, "_nvmath_cublas", missing)
    assert device_refusal(cupy_like) == ("CuPy captures its matrix products through nvmath-python, which cannot be "
                                         "imported (ModuleNotFoundError: No module named 'nvmath'); pip install "
                                         "'nvmath-python[cu12]'")
    monkeypatch.setattr(graphs_module, "_nvmath_cublas", lambda: FakeBlas())
    assert device_refusal(cupy_like) is None
    assert "cannot capture; it needs torch on CUDA or CuPy" in device_refusal(xpnn.get_backend("cpu"))


def test_auto_warns_once_when_a_gpu_step_stays_eager(monkeypatch):
    model = xpnn.Sequential([xpnn.layers.Affine(4, 8), StreamNoise(), xpnn.layers.Affine(8, 2)])
    monkeypatch.setattr(Backend, "graphs", property(lambda self: True))
    with pytest.warns(UserWarning, match=r"runs eagerly \(layer 1 \(StreamNoise\) draws from a random stream"):
        assert make_step_graph("auto", model, SGD(model, lr=0.1)) is None
    with pytest.raises(ValueError, match=r"cannot capture this training step \(layer 1 \(StreamNoise\)"):
        make_step_graph("on", model, SGD(model, lr=0.1))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_captured_and_eager_steps_agree_on_cupy(name):
    """The real CuPy capture (nvmath-python's cuBLAS on the capture stream), dropout and BatchNorm included."""
    backend = make_backend("cupy")
    pytest.importorskip("nvmath")
    results = []
    for graph in (None, "real"):
        model = xpnn.mlp([6, 16, 8, 3], dropout=0.3, batchnorm=True, backend=backend, seed=0)
        optimizer = OPTIMIZERS[name](model)
        trainer = Trainer(model, optimizer, batch_size=BATCH, seed=0, cuda_graphs="off", workers=1)
        if graph:
            trainer.graph = make_step_graph("on", model, optimizer)
        results.append((run(trainer), parameters(trainer), trainer))
    (eager_rows, eager, _), (captured_rows, captured, trainer) = results
    assert trainer.graph.replayed == 9 and trainer.graph.captures == 1
    assert isinstance(trainer.graph.capture, CupyCapture)
    for (loss_a, hits_a), (loss_b, hits_b) in zip(eager_rows, captured_rows, strict=True):
        assert loss_a == pytest.approx(loss_b, rel=1e-5) and abs(hits_a - hits_b) <= 1
    for key, value in eager.items():
        np.testing.assert_allclose(captured[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_the_cublas_route_matches_cupy_on_a_gpu():
    backend = make_backend("cupy")
    pytest.importorskip("nvmath")
    import cupy

    route = CublasRoute(backend)
    rng = np.random.default_rng(0)
    a, b = (cupy.asarray(rng.standard_normal(shape).astype(np.float32)) for shape in ((128, 784), (784, 256)))
    for left, right in ((a, b), (b.T, a.T), (cupy.ones(128, dtype=cupy.float32), a)):
        route.bind(cupy.cuda.get_current_stream())
        np.testing.assert_allclose(cupy.asnumpy(route.matmul(left, right)), cupy.asnumpy(left @ right),
                                   rtol=1e-4, atol=1e-4)
    route.close()
