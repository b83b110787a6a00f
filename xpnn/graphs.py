"""A whole training step (forward, backward, optimizer) captured once as a CUDA graph and replayed per batch.

Follows ``torch.cuda.graph``'s whole-network recipe: a few warm-up steps on a side stream, static input and
target buffers that each batch is copied into, and an optimizer that updates in place with its learning rate
and step count as 0-d device arrays (``capturable=True``), so a schedule that changes ``lr`` between replays is
seen by the next replay. A batch of another size (the last, partial one: 60,000 = 468 x 128 + 96) runs
eagerly. The step is recaptured when the optimizer's flat buffers are rebuilt (a load_state_dict, a freeze).

Only torch on CUDA captures (:attr:`Backend.graphs`): CuPy refuses cuBLAS calls during stream capture.
Randomness: xpnn's Dropout draws from a generator that each epoch replaces (``Sequential.reseed``); a
captured graph would keep reading the philox state of the generator it saw at capture, so models with
dropout (any layer with a random stream) are never captured; nor are models with buffers (BatchNorm's running
statistics are rebound each step, which a replay would not see), nor steps with an MPI all-reduce.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from . import metrics

__all__ = ["StepGraph", "TorchCapture", "capture_refusal", "make_step_graph"]


def capture_refusal(model: Any, optimizer: Any, comm: Any = None) -> str | None:
    """Why a training step of ``model`` cannot be captured, or None when it can (all but the device)."""
    if comm is not None and getattr(comm, "size", 1) > 1:
        return "the step all-reduces gradients over MPI"
    for index, layer in enumerate(model.layers):
        if layer.buffers and not getattr(layer, "constant_buffers", False):
            return f"layer {index} ({type(layer).__name__}) has buffers that each step rebinds"
        if getattr(layer, "random", None) is not None:
            return f"layer {index} ({type(layer).__name__}) draws random numbers, which a replay would repeat"
    if not model.backend.inplace or optimizer.inplace is False:
        return "the optimizer does not update in place"
    return None


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
        if self._replay is not None and optimizer.layout() is not self._layout:
            self._replay = None  # the flat buffers were rebuilt: the graph reads stale addresses
            self._warm = 0
        if self._replay is None and self._warm < self.warmup_steps:
            self._warm += 1
            self.eager += 1
            with self.capture.warmup():
                return self._body(x, targets, labels)
        if self._replay is None:
            try:
                self._record(x, targets, labels)
            except RuntimeError as error:
                if not self.fallback:
                    raise
                self.failed, self._static = (str(error).strip().splitlines() or [type(error).__name__])[0], {}
                warnings.warn(f"cuda graphs: the training step could not be captured ({self.failed}); it runs "
                              f"eagerly from here (cuda_graphs='off', --cuda-graphs off, skips the attempt)",
                              stacklevel=3)
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
        self.captures += 1

    def _body(self, x: Any, targets: Any, labels: Any) -> tuple[Any, Any]:
        model = self.model
        logits = model.predict(x, train=True)
        loss = model.loss_fn(logits, targets)
        model.backward()
        self.optimizer.apply()
        return loss, metrics.count_correct(model.loss_fn, logits, targets if labels is None else labels)


def make_step_graph(mode: str, model: Any, optimizer: Any, comm: Any = None) -> StepGraph | None:
    """The :class:`StepGraph` that ``mode`` asks for: ``"auto"`` (where safe: torch on CUDA and
    :func:`capture_refusal` finds nothing), ``"on"`` (raise ValueError where it cannot) or ``"off"``."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"cuda_graphs must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off":
        return None
    backend = model.backend
    refusal = None if backend.graphs else f"the {backend.name} backend cannot capture; it needs torch on CUDA"
    refusal = refusal or capture_refusal(model, optimizer, comm)
    if refusal:
        if mode == "on":
            raise ValueError(f"cuda graphs: cannot capture this training step ({refusal}); use --cuda-graphs off")
        return None
    return StepGraph(model, optimizer, TorchCapture(backend.device), fallback=mode == "auto")
