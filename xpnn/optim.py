"""Optimizers and learning-rate schedules.

An optimizer computes each parameter's new value and rebinds it in the owning layer's ``params``
(so it works on immutable arrays too). Its state is keyed by the parameter's dotted name ("0.W").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .model import Sequential

__all__ = ["SGD", "Adam", "Momentum", "Optimizer", "get_optimizer", "get_schedule"]


class Optimizer:
    """Base class: ``step()`` applies the gradients of the last backward pass.

    Parameters
    ----------
    model : Sequential
        The model whose parameters are trained.
    lr : float
        Learning rate (may be changed between steps, e.g. by a schedule).
    weight_decay : float
        L2 penalty coefficient.
    decoupled : bool
        Apply weight decay directly to the weights (AdamW style) instead of adding it to the gradient.
    """

    def __init__(self, model: Sequential, lr: float, weight_decay: float = 0.0, decoupled: bool = False):
        if not lr > 0 or not math.isfinite(lr):
            raise ValueError(f"{type(self).__name__}: lr must be a positive finite number, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {weight_decay}")
        self.model, self.lr, self.weight_decay, self.decoupled = model, lr, weight_decay, decoupled
        self.state: dict[str, Any] = {}
        self.steps = 0

    def step(self) -> None:
        """Update every parameter from its gradient."""
        self.steps += 1
        for name, layer, key in self.model.parameter_slots():
            p, g = layer.params[key], layer.grads[key]
            if self.weight_decay and not self.decoupled:
                g = g + self.weight_decay * p
            new = self.update(name, p, g)
            if self.weight_decay and self.decoupled:
                new = new - (self.lr * self.weight_decay) * p
            layer.params[key] = new

    def update(self, name: str, p: Any, g: Any) -> Any:
        """Return the new value of parameter ``name`` given its value ``p`` and gradient ``g``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Arrays of the optimizer's state (``"velocity.0.W"``, ...) plus ``"steps"`` and ``"lr"``."""
        return {"steps": self.steps, "lr": self.lr, **self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (arrays of any library are copied to the model's backend)."""
        state = dict(state)
        self.steps = int(state.pop("steps"))
        self.lr = float(state.pop("lr"))
        self.state = {name: self.model.backend.asarray(value) for name, value in state.items()}

    def _slot(self, kind: str, name: str, like: Any) -> Any:
        key = f"{kind}.{name}"
        if key not in self.state:
            self.state[key] = self.model.backend.xp.zeros_like(like)
        return self.state[key]


class SGD(Optimizer):
    """Plain stochastic gradient descent: p ← p - lr·g."""

    def update(self, name: str, p: Any, g: Any) -> Any:
        fused = self.model.backend.fused
        if fused is not None:
            return fused.sgd(p, g, self.lr)
        return p - self.lr * g


class Momentum(Optimizer):
    """SGD with momentum (PyTorch's form): v ← μ·v + g; p ← p - lr·v, or p - lr·(g + μ·v) with Nesterov.

    Parameters
    ----------
    momentum : float
        μ, in [0, 1).
    nesterov : bool
        Use Nesterov's look-ahead gradient.
    """

    def __init__(self, model: Sequential, lr: float, momentum: float = 0.9, nesterov: bool = False, **kwargs: Any):
        super().__init__(model, lr, **kwargs)
        if not 0 <= momentum < 1:
            raise ValueError(f"Momentum: momentum must be in [0, 1), got {momentum}")
        self.momentum, self.nesterov = momentum, nesterov

    def update(self, name: str, p: Any, g: Any) -> Any:
        v = self._slot("velocity", name, p)
        fused = self.model.backend.fused
        if fused is not None:
            p, self.state[f"velocity.{name}"] = fused.momentum(p, g, v, self.lr, self.momentum, self.nesterov)
            return p
        v = self.momentum * v + g
        self.state[f"velocity.{name}"] = v
        return p - self.lr * (g + self.momentum * v if self.nesterov else v)


class Adam(Optimizer):
    """Adam with bias correction; ``decoupled=True`` with weight decay gives AdamW.

    Parameters
    ----------
    betas : tuple of float
        Decay rates of the first and second moment estimates.
    eps : float
        Added to the denominator.
    """

    def __init__(
        self, model: Sequential, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        **kwargs: Any,
    ):
        super().__init__(model, lr, **kwargs)
        self.betas, self.eps = betas, eps

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


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def get_optimizer(name: str, model: Sequential, lr: float, **kwargs: Any) -> Optimizer:
    """Make an optimizer by name: ``"sgd"``, ``"momentum"`` or ``"adam"``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](model, lr, **kwargs)


def get_schedule(name: str, epochs: int, step_size: int = 10, gamma: float = 0.1) -> Callable[[int], float]:
    """A learning-rate factor per (0-based) epoch.

    Parameters
    ----------
    name : {"constant", "step", "cosine"}
        ``step`` multiplies by ``gamma`` every ``step_size`` epochs; ``cosine`` falls from 1 to 0 over
        ``epochs`` along half a cosine.
    epochs : int
        Total number of epochs (for ``cosine``).
    """
    if name == "constant":
        return lambda epoch: 1.0
    if name == "step":
        return lambda epoch: gamma ** (epoch // step_size)
    if name == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
    raise ValueError(f"unknown schedule {name!r}; choose 'constant', 'step' or 'cosine'")
