"""The contract every layer follows."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..backend import Backend, Seed, get_backend

__all__ = ["Layer"]


class Layer:
    """A differentiable step ``y = f(x)`` with a hand-written backward pass.

    A layer owns its arrays: ``params`` (trained) and ``grads`` have the same keys, ``buffers`` hold
    state that is saved but not trained (BatchNorm's running statistics). Optimizers replace entries of
    ``params`` with new arrays rather than writing into them, so immutable array libraries work too.

    Subclasses implement ``forward(x, *, train=False) -> y``, keeping only what backward needs, and
    ``backward(dy) -> dx``, which fills ``grads`` and never modifies ``dy``.
    """

    registry: ClassVar[dict[str, type[Layer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Layer.registry[cls.__name__] = cls

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}
        self.backend: Backend | None = None
        self.xp: Any = None

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
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        self.initialize(rng)
        self.reseed(rng.integers(2**63))
        return self

    def initialize(self, rng: np.random.Generator) -> None:
        """Create ``params``, ``grads`` and ``buffers``; layers without parameters do nothing."""

    def reseed(self, seed: Seed) -> None:
        """Restart this layer's random stream (only layers that draw random numbers have one)."""

    def to(self, backend: Any) -> Layer:
        """Move every array of this layer to ``backend`` (copies; the old arrays are left alone)."""
        backend = get_backend(backend)
        for store in (self.params, self.grads, self.buffers):
            for key, value in store.items():
                store[key] = backend.asarray(value)
        self.backend, self.xp = backend, backend.xp
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
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer (saved as JSON with the model)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def _require_built(self) -> None:
        if self.xp is None:
            raise RuntimeError(f"{self!r} has no backend yet; call .build(backend) or put it in a Sequential")
