"""The contract every layer follows."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from ...core.backend import Backend, Seed, get_backend
from ...core.memory import physical_memory
from ...core.validation import check_bool

__all__ = ["Layer", "LayerTooLargeError", "stepping_in_backward"]

#: While an optimizer takes its step inside backward: ``apply(layer, key, a, b) -> bool``, which moves
#: ``layer.params[key]`` by the gradient ``a @ b`` without forming it, or returns False to leave it to the step.
_PRODUCT_STEP: contextvars.ContextVar[Callable[..., bool] | None] = contextvars.ContextVar(
    "xpnn_product_step", default=None)


@contextlib.contextmanager
def stepping_in_backward(apply: Callable[[Layer, str, Any, Any], bool]) -> Iterator[None]:
    """Within this block, :meth:`Layer.set_grad_product` offers each product gradient to ``apply`` first
    (see :meth:`xpnn.optim.SGD.backward_step`)."""
    token = _PRODUCT_STEP.set(apply)
    try:
        yield
    finally:
        _PRODUCT_STEP.reset(token)


class LayerTooLargeError(MemoryError):
    """A layer whose parameters and gradients alone exceed the machine's memory (raised before allocating)."""


class Layer:
    """A differentiable step ``y = f(x)`` with a hand-written backward pass.

    A layer owns its arrays: ``params`` (trained) and ``grads`` have the same keys, ``buffers`` hold
    state that is saved but not trained (BatchNorm's running statistics). Optimizers replace entries of
    ``params`` with new arrays rather than writing into them, so immutable array libraries work too.

    Writing a layer (the whole contract; ``docs/user_guide/custom_layers.md`` has a complete example):

    - ``__init__`` calls ``super().__init__()`` first, then stores its (checked) arguments. No arrays yet:
      the layer does not know its backend until it is built.
    - ``initialize(rng)`` is called once by :meth:`build` (a :class:`~xpnn.Sequential` builds its layers)
      after ``self.backend`` (a :class:`~xpnn.Backend`) and ``self.xp`` (its array-API namespace) are
      set. Create every array there: ``self.backend.asarray(host_array)`` copies a NumPy array drawn
      from ``rng`` (a ``numpy.random.Generator``, so every backend starts from the same weights);
      ``self.backend.zeros(shape)`` / ``ones(shape)`` make constants in the backend's float dtype.
      Fill ``self.params`` and ``self.buffers``. ``self.grads`` need not be pre-filled: ``backward``
      assigns ``self.grads[key]`` for every key of ``params`` (pre-filling with zeros is harmless).
    - ``forward(x, *, train=False) -> y`` computes with ``self.xp`` only (never ``import numpy`` for
      array math, never ask which library is in use) and keeps on ``self`` exactly what ``backward``
      needs. ``train`` tells training from evaluation (dropout, batch statistics).
    - ``backward(dy) -> dx`` assigns every ``self.grads[key]`` (the same shape as ``params[key]``) and
      returns dL/dx shaped like ``x``; it must not modify ``dy`` in place.
      A gradient that is one matrix product (a weight's ``xᵀ · dy``) may be set with
      ``self.set_grad_product(key, a, b)`` instead, after the last use of ``params[key]`` in ``backward``:
      an optimizer that steps inside backward then moves the weight within the product, and leaves
      ``grads[key]`` None.
    - ``config() -> dict`` returns the constructor arguments as JSON values. A layer whose ``__init__``
      takes arguments must override it, or saving the model raises (it could not be rebuilt).
    - Optional: ``output_shape(input_shape)`` (per-sample shapes, for :meth:`Sequential.summary`; the
      default keeps the shape), ``param_shapes`` and ``reseed(seed)`` for layers that draw random numbers
      (``self.random = self.backend.random(seed)``).

    Every layer also takes a keyword ``trainable`` (default True), without declaring it: a frozen layer
    (``trainable=False``) keeps its parameters unchanged under every optimizer, and the flag is saved.
    Subclass names are registered so that saved models can be rebuilt; import (or define) the class
    before loading a model that uses it.
    """

    registry: ClassVar[dict[str, type[Layer]]] = {}
    #: Keys of ``buffers`` that files saved before the layer had them lack (loading keeps the built values).
    optional_buffers: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Layer.registry[cls.__name__] = cls
        if "__init__" in cls.__dict__:
            cls.__init__ = _accept_trainable(cls.__dict__["__init__"])  # type: ignore[method-assign]

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}
        self.backend: Backend | None = None
        self.xp: Any = None
        self._trainable = True

    @property
    def trainable(self) -> bool:
        """Whether optimizers update this layer's parameters (False: frozen, its weights stay bit-identical)."""
        return getattr(self, "_trainable", True)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = check_bool(type(self).__name__, "trainable", value)

    # ------------------------------------------------------------------ set-up
    def build(self, backend: Any = "cpu", rng: np.random.Generator | Seed | None = 0) -> Layer:
        """Create this layer's arrays on ``backend``, drawing initial values from ``rng``.

        Parameters
        ----------
        backend : Backend or str
            Where the arrays live (see :func:`xpnn.get_backend`).
        rng : numpy.random.Generator or int
            Host generator (or seed) for initial weights.

        Returns
        -------
        Layer
            ``self``, so that ``ReLU().build("cpu")`` reads naturally.
        """
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self._check_memory()
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        self.initialize(rng)
        self.reseed(rng.integers(2**63))
        return self

    def _check_memory(self) -> None:
        """MemoryError before allocating when the declared arrays and their gradients exceed the machine's
        memory. Where the kernel overcommits memory, such an allocation succeeds and the process is killed
        (or hangs swapping) while the weights are drawn, instead of failing with a message."""
        total = physical_memory()
        count = sum(math.prod(shape) for shape in self.param_shapes().values())
        need = 2 * count * np.dtype(self.backend.dtype_name).itemsize
        if total and need > total:
            raise LayerTooLargeError(f"{self!r}: its parameters and their gradients need {need / 2**30:,.1f} GiB, "
                                     f"more than this machine's {total / 2**30:,.1f} GiB of memory; make the layer "
                                     f"smaller")

    def initialize(self, rng: np.random.Generator) -> None:
        """Create ``params``, ``grads`` and ``buffers``; layers without parameters do nothing."""

    def reseed(self, seed: Seed) -> None:
        """Restart this layer's random stream (only layers that draw random numbers have one)."""

    def advance(self) -> None:
        """Count a training step that skipped this layer's forward (an MPI rank given no samples of a batch);
        layers that count steps (:class:`~xpnn.layers.Dropout`) do, so that they stay in step with the others."""

    def to(self, backend: Any) -> Layer:
        """Move every array of this layer to ``backend`` (copies; the old arrays are left alone).

        Buffers keep their values (Dropout's step count included); a random stream made by ``reseed``
        (``self.random``) restarts from its seed on the new backend.
        """
        backend = get_backend(backend)
        for store in (self.params, self.grads, self.buffers):
            for key, value in store.items():
                if value is not None:  # a gradient an optimizer applied inside backward is None
                    store[key] = backend.asarray(value)
        self.backend, self.xp = backend, backend.xp
        stream = getattr(self, "random", None)
        if stream is not None and hasattr(stream, "seed"):
            self.random = backend.random(stream.seed)
        return self

    # ------------------------------------------------------------------ computation
    def forward(self, x: Any, *, train: bool = False) -> Any:
        """Compute ``y`` from ``x`` (N, ...), keeping what :meth:`backward` needs.

        ``train`` switches dropout on and batch normalization to batch statistics.
        """
        raise NotImplementedError

    def backward(self, dy: Any) -> Any:
        """Given dL/dy (shaped like ``y``), fill ``grads`` and return dL/dx (shaped like ``x``).

        Called once per forward; it never modifies ``dy``.
        """
        raise NotImplementedError

    def backward_params(self, dy: Any) -> None:
        """Fill ``grads`` without returning ``dx``; a first layer need not pay for its input gradient."""
        self.backward(dy)

    def set_grad_product(self, key: str, a: Any, b: Any) -> None:
        """Set ``grads[key]`` to the matrix product ``a @ b`` (2-d arrays), the gradient of ``params[key]``.

        While an optimizer takes its step inside backward (:meth:`xpnn.optim.SGD.backward_step`), the step may
        instead be applied to ``params[key]`` within the product itself; ``grads[key]`` is then None. So call
        it after ``backward`` has read ``params[key]`` for the last time.
        """
        apply = _PRODUCT_STEP.get()
        if apply is not None and apply(self, key, a, b):
            self.grads[key] = None
        else:
            self.grads[key] = self.backend.matmul(a, b)

    def __call__(self, x: Any, *, train: bool = False) -> Any:
        return self.forward(x, train=train)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of every array in ``params`` and ``buffers`` that :meth:`build` will create.

        Computed from the constructor arguments without allocating, so that :func:`xpnn.load` can refuse a
        file whose configuration claims huge layers before building them. The default, ``{}``, means "not
        declared": loading then falls back to building the layer and comparing afterwards.
        """
        return {}

    # ------------------------------------------------------------------ description
    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one output sample for input samples of ``input_shape`` (no batch axis).

        The default keeps the shape (element-wise layers); layers that change it override this and
        raise ValueError for an input shape they cannot take.
        """
        return tuple(input_shape)

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer (saved as JSON with the model).

        Override it whenever ``__init__`` takes arguments; the default (no arguments) is only right for
        layers like ``ReLU()``.
        """
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def _check_config_defined(self) -> None:
        """Raise if ``__init__`` takes arguments that ``config()`` does not report (the layer would reload wrong)."""
        if type(self).config is not Layer.config:
            return
        init = type(self).__init__
        names = [name for name, p in inspect.signature(init).parameters.items()
                 if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if names:
            listed = ", ".join(names)
            returned = ", ".join(f'"{n}": self.{n}' for n in names)
            raise TypeError(
                f"{type(self).__name__} takes constructor arguments ({listed}) but does not define config(), so a "
                f"saved model could not rebuild it; add: def config(self): return {{{returned}}}"
            )

    def _require_built(self) -> None:
        if self.xp is None:
            raise RuntimeError(f"{self!r} has no backend yet; call .build(backend) or put it in a Sequential")


_UNSET = object()


def _accept_trainable(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a layer's ``__init__`` so that it also takes ``trainable=`` (as every Keras layer does)."""
    if getattr(init, "_accepts_trainable", False):
        return init

    @functools.wraps(init)
    def init_with_trainable(self: Layer, *args: Any, trainable: Any = _UNSET, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if trainable is not _UNSET:
            self.trainable = trainable

    init_with_trainable._accepts_trainable = True  # type: ignore[attr-defined]
    return init_with_trainable
