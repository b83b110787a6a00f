"""A whole training step (forward, backward, optimizer) captured once as a CUDA graph and replayed per batch.

Follows ``torch.cuda.graph``'s whole-network recipe: a few warm-up steps on a side stream, static input and
target buffers that each batch is copied into, and an optimizer that updates in place with its learning rate
and step count as 0-d device arrays (``capturable=True``), so a schedule that changes ``lr`` between replays is
seen by the next replay. A batch of another size (the last, partial one: 60,000 = 468 x 128 + 96) runs
eagerly. The step is recaptured when the optimizer's flat buffers are rebuilt (a load_state_dict, a freeze) or
a layer's buffer is replaced by another array.

State a replay must see lives in device arrays updated in place: BatchNorm's running statistics and Dropout's
step count (its masks are a hash of (seed, step, element), :meth:`xpnn.Backend.dropout_mask`, so each replay
draws the next mask). Two libraries capture:

- torch on CUDA, through ``torch.cuda.graph`` (:class:`TorchCapture`), whose private memory pool it uses;
- CuPy, through ``cupy.cuda.Stream.begin_capture`` (:class:`CupyCapture`) with a ``cupy.cuda.MemoryPool`` used
  only while recording and kept alive with the graph. CuPy's cuBLAS wrapper refuses stream capture on purpose,
  so while recording, the step's matrix products (:meth:`xpnn.Backend.matmul`) go to a cuBLAS handle of xpnn's
  own through nvmath-python (:class:`CublasRoute`), bound to the capture stream with a workspace it owns.

Never captured: a step that all-reduces over MPI, a layer with a random stream of its own (``self.random``,
which a replay would repeat), a layer that rebinds its buffers each step, an optimizer that does not update
in place.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..nn import metrics

__all__ = ["CublasRoute", "CupyCapture", "StepGraph", "TorchCapture", "capture_refusal", "device_refusal",
           "gemm_arguments", "make_step_graph"]


def capture_refusal(model: Any, optimizer: Any, comm: Any = None) -> str | None:
    """Why a training step of ``model`` cannot be captured, or None when it can (all but the device)."""
    if comm is not None and getattr(comm, "size", 1) > 1:
        return "the step all-reduces gradients over MPI"
    for index, layer in enumerate(model.layers):
        if getattr(layer, "random", None) is not None:
            return f"layer {index} ({type(layer).__name__}) draws from a random stream, which a replay would repeat"
    if not model.backend.inplace or optimizer.inplace is False:
        return "the optimizer does not update in place"
    return None


def device_refusal(backend: Any) -> str | None:
    """Why steps on ``backend`` cannot be captured at all, or None (torch on CUDA; CuPy with nvmath-python)."""
    if not backend.graphs:
        return f"the {backend.name} backend cannot capture; it needs torch on CUDA or CuPy"
    if backend._library == "cupy":
        try:
            _nvmath_cublas()
        except ImportError as error:
            return (f"CuPy captures its matrix products through nvmath-python, which cannot be imported "
                    f"({type(error).__name__}: {error}); pip install 'nvmath-python[cu12]'")
    return None


def _nvmath_cublas() -> Any:
    """nvmath-python's cuBLAS binding (ImportError where it is missing or cannot load its libraries)."""
    from nvmath.bindings import cublas

    return cublas


def rebound_buffers(model: Any, before: list[tuple[int, str, int]]) -> str | None:
    """The first buffer a step replaced by another array since ``before`` (:func:`buffer_ids`), or None."""
    for (index, key, identity), (_, _, now) in zip(before, buffer_ids(model), strict=False):
        if identity != now:
            layer = model.layers[index]
            return (f"layer {index} ({type(layer).__name__}) replaces its buffer {key!r} each step instead of "
                    "writing into it (Backend.assign), so a replay would not update it")
    return None


def buffer_ids(model: Any) -> list[tuple[int, str, int]]:
    """``(layer index, key, id)`` of every buffer: a replayed graph reads and writes those very arrays."""
    return [(index, key, id(value)) for index, layer in enumerate(model.layers) for key, value in layer.buffers.items()]


class TorchCapture:
    """CUDA graph capture through ``torch.cuda.graph`` on one device."""

    def __init__(self, device: Any):
        import torch

        self.torch, self.device = torch, device

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        """Run the enclosed eager steps on a side stream, as the recipe asks before capturing."""
        cuda = self.torch.cuda
        stream = cuda.Stream(self.device)
        stream.wait_stream(cuda.current_stream(self.device))
        with cuda.stream(stream):
            yield
        cuda.current_stream(self.device).wait_stream(stream)

    def capture(self, body: Callable[[], None]) -> Callable[[], None]:
        """Record ``body`` (it does not run now) and return the function that replays it."""
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(graph):
            body()
        return graph.replay


def gemm_arguments(a_shape: tuple[int, int], a_layout: str, b_shape: tuple[int, int],
                   b_layout: str) -> tuple[int, int, int, int, int, int, int, int, int]:
    """cuBLAS (column-major) arguments that compute the row-major ``C = A @ B`` (C-contiguous, ``(m, n)``).

    A row-major matrix is its transpose in column-major order, so cuBLAS computes ``C^T = B^T A^T``: B comes
    first. An operand in layout ``"C"`` (C-contiguous) is already its transpose (no operation, leading
    dimension its row length); one in ``"F"`` (a transposed view of a C-contiguous array) is transposed by
    cuBLAS (leading dimension its column length).

    Returns
    -------
    tuple
        ``(transa, transb, m, n, k, lda, ldb, ldc)`` in cuBLAS's order and naming (0: no transpose, 1:
        transpose), followed by 1: the first cuBLAS operand is ``B``.
    """
    (m, k), (k2, n) = a_shape, b_shape
    if k != k2:
        raise ValueError(f"matmul: shapes {a_shape} and {b_shape} do not fit")
    transa, lda = (0, max(n, 1)) if b_layout == "C" else (1, max(k, 1))
    transb, ldb = (0, max(k, 1)) if a_layout == "C" else (1, max(m, 1))
    return transa, transb, n, m, k, lda, ldb, max(n, 1), 1


class CublasRoute:
    """Matrix products on a cuBLAS handle of xpnn's own (nvmath-python's binding), for CuPy steps being captured.

    CuPy's handle refuses stream capture (``cublasSetStream`` raises while a stream captures). This handle is
    bound to the capture stream once per recording, with a workspace this object owns (cuBLAS would otherwise
    allocate one during the capture), and computes ``a @ b`` for float32 and float64 operands that are
    C-contiguous or transposed views of C-contiguous arrays (others are copied first); a 1-d ``a`` is a row.

    Parameters
    ----------
    backend : Backend
        A CuPy backend.
    blas : module, optional
        ``nvmath.bindings.cublas`` (tests pass a fake).
    workspace_bytes : int
        cuBLAS workspace; 32 MiB is what NVIDIA recommends for Hopper.
    cupy : module, optional
        CuPy (tests pass a fake).
    """

    def __init__(self, backend: Any, blas: Any = None, workspace_bytes: int = 32 << 20, cupy: Any = None):
        if cupy is None:
            import cupy
        if blas is None:
            blas = _nvmath_cublas()
        self.cupy, self.blas, self.backend = cupy, blas, backend
        with backend.device:
            self.handle = blas.create()
            self.workspace = cupy.empty(workspace_bytes, dtype=cupy.uint8)  # from the eager pool: lives with us
        self._scalars = {name: (np.ones(1, name), np.zeros(1, name)) for name in ("float32", "float64")}
        self._gemm = {"float32": blas.sgemm, "float64": blas.dgemm}

    def bind(self, stream: Any) -> None:
        """Issue every product on ``stream``; setting a stream resets the workspace, so it is set after."""
        self.blas.set_stream(self.handle, stream.ptr)
        self.blas.set_workspace(self.handle, self.workspace.data.ptr, self.workspace.nbytes)
        self.blas.set_pointer_mode(self.handle, 0)  # host scalars: alpha = 1 and beta = 0 are baked in

    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b`` as a new C-contiguous array (2-d @ 2-d or 1-d @ 2-d)."""
        cupy = self.cupy
        row = a.ndim == 1
        a2 = a.reshape(1, -1) if row else a
        if a2.ndim != 2 or b.ndim != 2 or a2.dtype != b.dtype or a2.dtype.name not in self._gemm:
            raise RuntimeError(f"a captured CuPy step can multiply only 2-d float32/float64 matrices of one dtype, "
                               f"got {a.dtype}{a.shape} @ {b.dtype}{b.shape}")
        a2, a_layout = self._layout(a2)
        b2, b_layout = self._layout(b)
        m, n = a2.shape[0], b2.shape[1]
        out = cupy.empty((m, n), dtype=a2.dtype)
        if m and n:
            if a2.shape[1] == 0:
                out.fill(0)
            else:
                transa, transb, cm, cn, ck, lda, ldb, ldc, _ = gemm_arguments(a2.shape, a_layout, b2.shape,
                                                                              b_layout)
                one, zero = self._scalars[a2.dtype.name]
                self._gemm[a2.dtype.name](self.handle, transa, transb, cm, cn, ck, one.ctypes.data, b2.data.ptr,
                                          lda, a2.data.ptr, ldb, zero.ctypes.data, out.data.ptr, ldc)
        return out.reshape(n) if row else out

    def _layout(self, x: Any) -> tuple[Any, str]:
        if x.flags.c_contiguous:
            return x, "C"
        if x.flags.f_contiguous:
            return x, "F"
        return self.cupy.ascontiguousarray(x), "C"

    def close(self) -> None:
        """Destroy the handle (it also goes with the process)."""
        if self.handle:
            self.blas.destroy(self.handle)
            self.handle = 0


class CupyCapture:
    """CUDA graph capture of a CuPy step: ``Stream.begin_capture``/``end_capture`` on a side stream.

    While recording, memory comes from a ``cupy.cuda.MemoryPool`` of the graph's own (kept alive with it, so
    no eager array ever gets its blocks and the replays find their memory where the recording left it), and
    :meth:`xpnn.Backend.matmul` routes the products to a :class:`CublasRoute` bound to the capture stream.

    Parameters
    ----------
    backend : Backend
        A CuPy backend.
    route : CublasRoute, optional
        Made on the first capture when not given (tests pass a fake, with a fake ``cupy``).
    cupy : module, optional
    """

    def __init__(self, backend: Any, route: Any = None, cupy: Any = None):
        if cupy is None:
            import cupy
        self.cupy, self.backend, self.route = cupy, backend, route
        self.graphs: list[tuple[Any, Any, Any]] = []  # (graph, its memory pool, its stream), alive together

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        """Run the enclosed eager steps on a side stream, after the work queued before and before later work."""
        cuda = self.cupy.cuda
        with self.backend.device:
            current = cuda.get_current_stream()
            stream = cuda.Stream(non_blocking=True)
            stream.wait_event(current.record())
            with stream:
                yield
            current.wait_event(stream.record())

    def capture(self, body: Callable[[], None]) -> Callable[[], None]:
        """Record ``body`` (its device work does not run now) and return the function that replays it."""
        from ..core.backend import _MATMUL_ROUTE

        cuda = self.cupy.cuda
        with self.backend.device:
            if self.route is None:
                self.route = CublasRoute(self.backend)
            pool = cuda.MemoryPool()
            stream = cuda.Stream(non_blocking=True)
            current = cuda.get_current_stream()
            stream.wait_event(current.record())
            self.route.bind(stream)
            token = _MATMUL_ROUTE.set(self.route.matmul)
            graph = None
            try:
                with cuda.using_allocator(pool.malloc), stream:
                    stream.begin_capture()
                    try:
                        body()
                    finally:
                        graph = stream.end_capture()  # leaves capture mode even when the body failed
            finally:
                _MATMUL_ROUTE.reset(token)
            self.graphs = [(graph, pool, stream)]  # an earlier graph (before a recapture) is never replayed again

        def replay() -> None:
            with self.backend.device:
                graph.launch(cuda.get_current_stream())

        return replay


class StepGraph:
    """Training steps of one model, full-size batches replayed from a captured graph, others eager.

    Parameters
    ----------
    model : Sequential
    optimizer : Optimizer
        Switched to ``capturable=True`` (same results, learning rate and step count on the device).
    capture : object
        Has ``warmup()`` (a context manager) and ``capture(body) -> replay``; :class:`TorchCapture` on CUDA.
    warmup_steps : int
        Eager steps of the full batch size before capturing (the recipe's warm-up; also lazy caches).
    fallback : bool
        When recording raises a RuntimeError (a layer that copies host data to the device, or reads a value
        back, inside its step: capture refuses both), warn once and run every later step eagerly, instead of
        raising. ``cuda_graphs="auto"`` falls back; ``"on"`` raises.

    Attributes
    ----------
    eager, replayed : int
        Steps run eagerly and replayed so far; ``captures`` counts graphs recorded.
    failed : str or None
        Why recording failed, once it has (every step is then eager).
    """

    def __init__(self, model: Any, optimizer: Any, capture: Any, warmup_steps: int = 3, fallback: bool = False):
        refusal = capture_refusal(model, optimizer)
        if refusal:
            raise ValueError(f"cuda graphs: cannot capture this training step ({refusal}); use --cuda-graphs off")
        self.model, self.optimizer, self.capture, self.warmup_steps = model, optimizer, capture, warmup_steps
        self.fallback, self.failed = fallback, None
        if not optimizer.capturable:
            optimizer.capturable = True
            optimizer._flat = None  # rebuilt with the learning rate and step count on the device
        self.eager = self.replayed = self.captures = 0
        self._shape: tuple[int, ...] | None = None
        self._warm = 0
        self._replay: Callable[[], None] | None = None
        self._layout: Any = None
        self._buffers: list[tuple[int, str, int]] = []
        self._static: dict[str, Any] = {}

    def step(self, x: Any, targets: Any, labels: Any = None) -> tuple[Any, Any]:
        """One training step on a batch; returns (loss, correct count or None) as fresh 0-d device arrays."""
        optimizer = self.optimizer
        optimizer._follow_model()
        optimizer._steps += 1  # the host's count; the device's is advanced inside the (replayed) update
        if self._shape is None:
            self._shape = tuple(x.shape)
        if tuple(x.shape) != self._shape or self.failed is not None:
            self.eager += 1
            return self._body(x, targets, labels)
        if self._replay is not None and (optimizer.layout() is not self._layout
                                         or buffer_ids(self.model) != self._buffers):
            self._replay = None  # flat buffers rebuilt or buffers replaced (a reload): the graph reads stale addresses
            self._warm = 0
        if self._replay is None and self._warm < self.warmup_steps:
            self._warm += 1
            self.eager += 1
            before = buffer_ids(self.model)
            with self.capture.warmup():
                result = self._body(x, targets, labels)
            rebound = rebound_buffers(self.model, before)
            if rebound:
                self._give_up(RuntimeError(rebound))
            return result
        if self._replay is None:
            try:
                self._record(x, targets, labels)
            except RuntimeError as error:
                self._give_up(error)
                self.eager += 1
                return self._body(x, targets, labels)
        static = self._static
        for name, value in (("x", x), ("targets", targets), ("labels", labels)):
            if value is not None:
                static[name][...] = value
        self._replay()
        self.replayed += 1
        xp = self.model.backend.xp
        hits = static.get("hits")
        return xp.asarray(static["loss"], copy=True), None if hits is None else xp.asarray(hits, copy=True)

    def _give_up(self, error: RuntimeError) -> None:
        """Raise ``error`` (``cuda_graphs="on"``), or warn once and run every later step eagerly."""
        if not self.fallback:
            raise error
        self.failed, self._static = (str(error).strip().splitlines() or [type(error).__name__])[0], {}
        warnings.warn(f"cuda graphs: the training step could not be captured ({self.failed}); it runs "
                      f"eagerly from here (cuda_graphs='off', --cuda-graphs off, skips the attempt)", stacklevel=4)

    def _record(self, x: Any, targets: Any, labels: Any) -> None:
        xp, be = self.model.backend.xp, self.model.backend
        static = self._static = {"x": xp.asarray(x, copy=True), "targets": xp.asarray(targets, copy=True),
                                 "loss": be.zeros(())}
        if labels is not None:
            static["labels"] = xp.asarray(labels, copy=True)
        if metrics.has_accuracy(self.model.loss_fn):
            static["hits"] = xp.zeros((), dtype=xp.int64, device=be.device)

        def body() -> None:
            loss, hits = self._body(static["x"], static["targets"], static.get("labels"))
            static["loss"][...] = loss
            if hits is not None:
                static["hits"][...] = hits

        self._replay = self.capture.capture(body)
        self._layout = self.optimizer.layout()
        self._buffers = buffer_ids(self.model)
        self.captures += 1

    def _body(self, x: Any, targets: Any, labels: Any) -> tuple[Any, Any]:
        model = self.model
        logits = model.predict(x, train=True)
        loss = model.loss_fn(logits, targets)
        model.backward()
        self.optimizer.apply()
        return loss, metrics.count_correct(model.loss_fn, logits, targets if labels is None else labels)


def make_step_graph(mode: str, model: Any, optimizer: Any, comm: Any = None) -> StepGraph | None:
    """The :class:`StepGraph` that ``mode`` asks for: ``"auto"`` (where safe: torch on CUDA or CuPy with
    nvmath-python, and :func:`capture_refusal` finds nothing), ``"on"`` (raise ValueError where it cannot)
    or ``"off"``."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"cuda_graphs must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off":
        return None
    backend = model.backend
    refusal = device_refusal(backend) or capture_refusal(model, optimizer, comm)
    if refusal:
        if mode == "on":
            raise ValueError(f"cuda graphs: cannot capture this training step ({refusal}); use --cuda-graphs off")
        if backend.graphs:  # a GPU run that stays eager says why, once; elsewhere capture is not expected
            warnings.warn(f"cuda graphs: the training step runs eagerly ({refusal})", stacklevel=2)
        return None
    capture = TorchCapture(backend.device) if backend._library == "torch" else CupyCapture(backend)
    return StepGraph(model, optimizer, capture, fallback=mode == "auto")
