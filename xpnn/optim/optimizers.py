"""The optimizers: SGD, SGD with momentum and Adam, and :func:`get_optimizer` to make one by name."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from ..core.validation import check_bool, check_real
from ..model.sequential import Sequential
from ..nn.layers.base import stepping_in_backward
from .base import Optimizer
from .flat import FlatLayout

__all__ = ["OPTIMIZERS", "SGD", "Adam", "Momentum", "get_optimizer"]


class SGD(Optimizer):
    """Plain stochastic gradient descent: p ← p - lr·g.

    Parameters as for :class:`Optimizer`. :meth:`backward_step` (what :class:`~xpnn.Trainer` and :func:`~xpnn.fit`
    use in one process) moves dense weights inside the products that compute their gradients.
    """

    def update(self, name: str, p: Any, g: Any) -> Any:
        fused = self.model.backend.fused
        if fused is not None:
            return fused.sgd(p, g, self.lr)
        return p - self.lr * g

    def update_inplace(self, layout: FlatLayout, p: Any, g: Any, state: dict[str, Any]) -> None:
        fused = self.model.backend.fused
        if fused is not None and layout.lr is None:
            fused.sgd(p, g, self.lr, inplace=True)
        else:
            p -= layout.current_lr() * g

    def backward_step(self) -> None:
        """``model.backward()`` and :meth:`step` in one pass, each weight whose gradient is a matrix product
        (:class:`~xpnn.layers.Affine`'s ``W``: ``xᵀ · dy``) moved within that product.

        On NumPy the BLAS adds ``-lr · (xᵀ · dy)`` into ``W`` block by block (:meth:`xpnn.Backend.matmul_add`,
        for weights of 16,384 elements or more), so the gradient is never written out and read back. That saves
        a pass over the weights and, where the BLAS runs on several cores, the gradient's trip between them
        (each core adds in the block it computed; a separate update reads them all on one core). Such a ``W``
        agrees with ``backward(); step()``'s to float rounding (at batch 128 within the last bit; see
        :func:`xpnn.core.blas.gemm_add`), and its ``grads`` entry is None afterwards; the other parameters get
        the step's arithmetic. With weight decay, a capturable optimizer, the generic path, another library,
        or a subclass that overrides how a step is taken (``step``, ``apply``, ``update``, ``update_flat``,
        ``update_inplace``, ``update_views``), it is ``backward()`` then ``step()``. Should backward raise
        part-way, the weights it has reached have moved and the step is not counted.
        """
        be = self.model.backend
        if (self.weight_decay or self.capturable or not self._flat_path() or be.fused is not None
                or _overrides_step(type(self))):
            super().backward_step()
            return
        self._follow_model()
        layout = self.layout()
        if layout is None:
            super().backward_step()
            return
        lr = self.lr
        trained = {(id(layer), key) for _, layer, key in layout.slots}

        def apply(layer: Any, key: str, a: Any, b: Any) -> bool:
            return (id(layer), key) in trained and be.matmul_add(layer.params[key], a, b, -lr)

        with stepping_in_backward(apply):
            self.model.backward()
        self._steps += 1
        self.update_views(layout, [layer.grads[key] for _, layer, key in layout.slots])  # the rest

    def update_views(self, layout: FlatLayout, grads: list[Any]) -> None:
        if self.weight_decay or self.model.backend.fused is not None:
            super().update_views(layout, grads)
            return
        lr = layout.current_lr()  # what update_inplace reads per view, read once: the same arithmetic
        for p, g in zip(layout.views, grads, strict=True):
            if g is not None:  # None: already applied inside backward (backward_step)
                p -= lr * g


@functools.cache
def _overrides_step(cls: type) -> bool:
    """Whether an SGD subclass changes how a step is taken, which the fused update would bypass."""
    return any(getattr(cls, name) is not getattr(SGD, name)
               for name in ("step", "apply", "update", "update_flat", "update_inplace", "update_views"))


class Momentum(Optimizer):
    """SGD with momentum (PyTorch's form): v ← μ·v + g; p ← p - lr·v, or p - lr·(g + μ·v) with Nesterov.

    Parameters
    ----------
    momentum : float
        μ, in [0, 1).
    nesterov : bool
        Use Nesterov's look-ahead gradient.
    **kwargs
        ``weight_decay``, ``decoupled``, ``params`` as for :class:`Optimizer`.
    """

    slots = ("velocity",)

    def __init__(self, model: Sequential, lr: float, momentum: float = 0.9, nesterov: bool = False, **kwargs: Any):
        super().__init__(model, lr, **kwargs)
        self.momentum = check_real("Momentum", "momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.nesterov = check_bool("Momentum", "nesterov", nesterov)

    def update(self, name: str, p: Any, g: Any) -> Any:
        v = self._slot("velocity", name, p)
        fused = self.model.backend.fused
        if fused is not None:
            p, self.state[f"velocity.{name}"] = fused.momentum(p, g, v, self.lr, self.momentum, self.nesterov)
            return p
        v = self.momentum * v + g
        self.state[f"velocity.{name}"] = v
        return p - self.lr * (g + self.momentum * v if self.nesterov else v)

    def update_inplace(self, layout: FlatLayout, p: Any, g: Any, state: dict[str, Any]) -> None:
        v = state["velocity"]
        fused = self.model.backend.fused
        if fused is not None and layout.lr is None:
            fused.momentum(p, g, v, self.lr, self.momentum, self.nesterov, inplace=True)
            return
        v *= self.momentum
        v += g
        p -= layout.current_lr() * (g + self.momentum * v if self.nesterov else v)


class Adam(Optimizer):
    """Adam with bias correction; ``decoupled=True`` with weight decay gives AdamW.

    Parameters
    ----------
    betas : tuple of float
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float
        Added to the denominator, finite and >= 0.
    **kwargs
        ``weight_decay``, ``decoupled``, ``params`` as for :class:`Optimizer`.
    """

    slots = ("m", "v")

    def __init__(
        self, model: Sequential, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        **kwargs: Any,
    ):
        super().__init__(model, lr, **kwargs)
        if isinstance(betas, str) or not isinstance(betas, Iterable) or len(betas := tuple(betas)) != 2:
            raise ValueError(f"Adam: betas must be a pair of numbers in [0, 1), e.g. (0.9, 0.999), got {betas!r}")
        self.betas = tuple(check_real("Adam", f"betas[{i}]", beta, low=0.0, high=1.0, high_open=True)
                           for i, beta in enumerate(betas))
        self.eps = check_real("Adam", "eps", eps, low=0.0)

    def update(self, name: str, p: Any, g: Any) -> Any:
        beta1, beta2 = self.betas
        m, v = self._slot("m", name, p), self._slot("v", name, p)
        m_hat_scale = 1 / (1 - beta1**self.steps)
        v_hat_scale = 1 / (1 - beta2**self.steps)
        fused = self.model.backend.fused
        if fused is not None:
            p, self.state[f"m.{name}"], self.state[f"v.{name}"] = fused.adam(
                p, g, m, v, self.lr, self.betas, (m_hat_scale, v_hat_scale), self.eps)
            return p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * (g * g)
        self.state[f"m.{name}"], self.state[f"v.{name}"] = m, v
        return p - self.lr * (m * m_hat_scale) / (self.model.backend.xp.sqrt(v * v_hat_scale) + self.eps)

    def update_inplace(self, layout: FlatLayout, p: Any, g: Any, state: dict[str, Any]) -> None:
        beta1, beta2 = self.betas
        m, v = state["m"], state["v"]
        fused = self.model.backend.fused
        if fused is not None and layout.lr is None:
            scales = (1 / (1 - beta1**self.steps), 1 / (1 - beta2**self.steps))
            fused.adam(p, g, m, v, self.lr, self.betas, scales, self.eps, inplace=True)
            return
        m_hat_scale, v_hat_scale = layout.bias_corrections(self.betas, self.steps)
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        p -= layout.current_lr() * (m * m_hat_scale) / (self.model.backend.xp.sqrt(v * v_hat_scale) + self.eps)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def get_optimizer(name: str, model: Sequential, lr: float, **kwargs: Any) -> Optimizer:
    """Make an optimizer by name: ``"sgd"``, ``"momentum"`` or ``"adam"``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](model, lr, **kwargs)
