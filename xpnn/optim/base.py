"""What every optimizer does: follow the model, keep its state, and take a step on one of two paths.

Two paths give the same numbers. The generic one, the reference, computes each parameter's new value
and rebinds it in the owning layer's ``params`` (so it works on immutable arrays too). Where the library
updates arrays in place (:attr:`Backend.inplace`: NumPy, CuPy, torch) the trained parameters and the
optimizer's state become views of one flat buffer each, and one step is a handful of operations on those
buffers whatever the number of layers. Either way the state is keyed by the parameter's dotted name ("0.W").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ..core.backend import to_numpy
from ..core.validation import check_bool, check_real
from ..io.serialization import FormatError
from ..model.sequential import Sequential
from .flat import FlatLayout

__all__ = ["Optimizer"]


class Optimizer:
    """Base class: ``step()`` applies the gradients of the last backward pass.

    Parameters
    ----------
    model : Sequential
        The model whose parameters are trained.
    lr : float
        Learning rate, positive and finite (may be changed between steps, e.g. by a schedule).
    weight_decay : float
        L2 penalty coefficient, finite and >= 0.
    decoupled : bool
        Apply weight decay directly to the weights (AdamW style) instead of adding it to the gradient.
    params : iterable of str, optional
        Train only these parameters, by dotted name (``["2.W", "2.b"]``, see
        :meth:`Sequential.named_parameters`), as a PyTorch optimizer given a subset. By default every
        parameter of every trainable layer.
    inplace : bool, optional
        Update flat buffers in place (see the module docstring). By default wherever the backend allows it;
        ``False`` forces the generic path.
    capturable : bool
        Keep the learning rate and the step count as 0-d device arrays that the update reads, so that a
        captured CUDA graph (:mod:`xpnn.runtime.graphs`) replays the right values after a schedule changes ``lr``.
        Needs the in-place path.

    Notes
    -----
    On the in-place path the arrays in ``layer.params`` are views that each step overwrites, as in
    PyTorch: copy what you get from :meth:`Sequential.state_dict` if you need the values of an earlier
    step. Rebinding a parameter (``load_state_dict``, ``Sequential.to``, assigning ``layer.params[key]``)
    is noticed at the next step, which copies the new values into a fresh flat buffer.

    Parameters of frozen layers (``layer.trainable = False``, :meth:`Sequential.freeze`) and parameters
    outside ``params`` are never touched: no update, no weight decay, no state; they stay bit-identical.
    The state (moments, velocities) lives on the model's backend and follows the model across
    :meth:`Sequential.to` at the next step, so an optimizer can be kept when the model moves.
    """

    #: Kinds of per-parameter state arrays, e.g. ``("m", "v")``; keys are ``"{kind}.{parameter}"``.
    slots: tuple[str, ...] = ()

    def __init__(self, model: Sequential, lr: float, weight_decay: float = 0.0, decoupled: bool = False,
                 params: Iterable[str] | None = None, inplace: bool | None = None, capturable: bool = False):
        owner = type(self).__name__
        self._flat: FlatLayout | None = None
        if not isinstance(model, Sequential):
            raise TypeError(f"{owner}: expected an xpnn Sequential model, got {type(model).__name__}")
        self.model = model
        self.lr = check_real(owner, "lr", lr, low=0.0, low_open=True)
        self.weight_decay = check_real(owner, "weight_decay", weight_decay, low=0.0)
        self.decoupled = check_bool(owner, "decoupled", decoupled)
        self.params: frozenset[str] | None = None
        if params is not None:
            if isinstance(params, str):
                params = [params]
            names = list(params)
            known = model.named_parameters()
            unknown = [name for name in names if name not in known]
            if unknown or not names:
                raise ValueError(f"{owner}: params must name parameters of the model, got {unknown or names}; "
                                 f"the model has {sorted(known)}")
            self.params = frozenset(names)
        self.state: dict[str, Any] = {}
        self._steps = 0
        self._state_backend = model.backend
        if inplace is not None and check_bool(owner, "inplace", inplace) and not model.backend.inplace:
            raise ValueError(f"{owner}: inplace=True needs a library that updates arrays in place (NumPy, CuPy, "
                             f"torch); {model.backend.name} does not, so leave inplace unset")
        self.inplace = inplace
        self.capturable = check_bool(owner, "capturable", capturable)
        if self.capturable and (inplace is False or not model.backend.inplace):
            raise ValueError(f"{owner}: capturable=True updates parameters in place, which {model.backend.name} "
                             "with inplace=False cannot; drop capturable or use NumPy, CuPy or torch")

    @property
    def steps(self) -> int:
        """Steps taken; setting it also updates the device copy that a capturable update reads."""
        return self._steps

    @steps.setter
    def steps(self, value: int) -> None:
        self._steps = value
        layout = getattr(self, "_flat", None)
        if layout is not None and layout.step is not None:
            layout.backend.fill(layout.step, float(value))

    @property
    def lr(self) -> float:
        """Learning rate; setting it also updates the device copy that a captured graph reads."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = value
        layout = getattr(self, "_flat", None)
        if layout is not None and layout.lr is not None:
            layout.set_lr(value)

    def trained_slots(self) -> Iterator[tuple[str, Any, str]]:
        """``(dotted name, layer, key)`` of every parameter this optimizer updates now (frozen ones left out)."""
        for name, layer, key in self.model.parameter_slots(trainable_only=True):
            if self.params is None or name in self.params:
                yield name, layer, key

    def step(self) -> None:
        """Update every trained parameter from its gradient (frozen parameters are left bit-identical).

        Raises
        ------
        RuntimeError
            When a trained parameter has no gradient: :meth:`SGD.backward_step` already applied it (call
            ``model.backward()`` again first). Nothing is updated and ``steps`` is not counted.
        """
        self._follow_model()
        self._steps += 1  # the device copy, if any, is advanced by the update itself
        try:
            self.apply()
        except _GradientAppliedError:
            self._steps -= 1
            raise

    def backward_step(self) -> None:
        """``model.backward()`` and then :meth:`step`, in one call: what :class:`~xpnn.Trainer` runs after each
        batch's loss in a single process. An optimizer that can apply its update while the gradients are being
        computed overrides it (:meth:`SGD.backward_step`), with the same result up to rounding."""
        self.model.backward()
        self.step()

    def apply(self) -> None:
        """The update of :meth:`step` once ``steps`` has been counted: what a captured graph replays.

        On the capturable path it reads nothing from the host and advances the device step count itself, so
        a replay needs no Python; whoever replays it counts the step on the host with ``_steps += 1``.
        """
        if self._flat_path():
            layout = self.layout()
            if layout is not None:
                grads = [layer.grads[key] for _, layer, key in layout.slots]
                if any(g is None for g in grads):
                    _GradientAppliedError.raise_for(name for name, layer, key in layout.slots
                                                    if layer.grads[key] is None)
                layout.count_step()
                if self.model.backend.launch_bound:  # one launch per operation for all parameters
                    self.update_flat(layout, layout.params, layout.flatten(grads), layout.state)
                else:  # the same operations per view: no copy of the gradients into one buffer
                    self.update_views(layout, grads)
                return
        slots = list(self.trained_slots())
        _GradientAppliedError.raise_for(name for name, layer, key in slots if layer.grads.get(key, 0) is None)
        for name, layer, key in slots:
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

    # ------------------------------------------------------------------ the in-place path
    def _flat_path(self) -> bool:
        backend = self.model.backend
        return backend.inplace and self.inplace is not False

    def layout(self) -> FlatLayout | None:
        """The flat buffers behind the trained parameters, rebuilt when a parameter, the state or the set of
        trained parameters changed since the last step; None when they cannot share one buffer (mixed dtypes)."""
        slots = list(self.trained_slots())
        layout = self._flat
        if layout is not None and layout.matches(self, slots):
            return layout
        self._flat = FlatLayout.build(self, slots)
        return self._flat

    def update_views(self, layout: FlatLayout, grads: list[Any]) -> None:
        """:meth:`update_flat` for each view of the flat buffers, given each one's gradient (in slot order)."""
        for i, g in enumerate(grads):
            state = {kind: views[i] for kind, views in layout.state_views.items()}
            self.update_flat(layout, layout.views[i], g, state)

    def update_flat(self, layout: FlatLayout, p: Any, g: Any, state: dict[str, Any]) -> None:
        """Update ``p`` (the flat buffer or one view of it) and its ``state`` arrays in place from gradient ``g``."""
        if self.weight_decay and not self.decoupled:
            g = g + self.weight_decay * p
        decay = None
        if self.weight_decay and self.decoupled:
            decay = layout.lr_times(self.weight_decay) * p  # of the weights before this step, as the generic path
        self.update_inplace(layout, p, g, state)
        if decay is not None:
            p -= decay

    def update_inplace(self, layout: FlatLayout, p: Any, g: Any, state: dict[str, Any]) -> None:
        """Write the new values into ``p`` and into its ``state`` arrays (by kind: ``"m"``, ``"velocity"``)."""
        raise NotImplementedError

    def _follow_model(self) -> None:
        """Move the state to the model's backend if the model moved since the last step."""
        backend = self.model.backend
        if backend is not self._state_backend:
            self.state = {key: backend.asarray(value) for key, value in self.state.items()}
            self._state_backend = backend

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Arrays of the optimizer's state (``"velocity.0.W"``, ...) plus ``"steps"`` (int) and ``"lr"`` (float)."""
        return {"steps": self.steps, "lr": self.lr, **self.state}

    def load_state_dict(self, state: dict[str, Any], *, source: str = "optimizer state") -> None:
        """Restore from :meth:`state_dict`, checking every key, type and shape before changing anything.

        Arrays of any library are copied to the model's backend.

        Parameters
        ----------
        state : dict
            ``"steps"``: non-negative integer; ``"lr"``: positive finite number; ``"{kind}.{param}"``: for
            each kind in :attr:`slots` and each trained parameter, a finite floating array of the
            parameter's shape. After a step (``steps > 0``) every trained parameter must have all its
            arrays; before the first step they may be absent.
        source : str
            Named in error messages (a file name).

        Raises
        ------
        FormatError
            Naming the key that is missing, unexpected, of the wrong type or shape, or not finite.
        """
        owner = type(self).__name__
        if not isinstance(state, Mapping):
            raise FormatError(f"{source}: expected a dict of optimizer state, got {type(state).__name__}")
        steps = _read_steps(state.get("steps"), source)
        lr = state.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
            raise FormatError(f"{source}: 'lr' must be a positive finite number, got {lr!r}")
        shapes = {name: tuple(value.shape) for name, value in self.model.named_parameters().items()}
        trained = {name for name, _, _ in self.trained_slots()}
        arrays: dict[str, np.ndarray] = {}
        for key, value in state.items():
            if key in ("steps", "lr"):
                continue
            kind, _, name = str(key).partition(".")
            if kind not in self.slots or name not in shapes:
                raise FormatError(f"{source}: unexpected key {key!r} for {owner} (its state is "
                                  f"{', '.join(repr(k + '.<parameter>') for k in self.slots) or 'steps and lr only'})")
            if not hasattr(value, "shape"):
                raise FormatError(f"{source}: {key!r} is a {type(value).__name__}, expected an array of shape "
                                  f"{shapes[name]}")
            host = np.asarray(to_numpy(value))
            if host.shape != shapes[name]:
                raise FormatError(f"{source}: {key!r} has shape {host.shape}, parameter {name!r} has {shapes[name]}")
            if host.dtype.kind != "f":
                raise FormatError(f"{source}: {key!r} has dtype {host.dtype}, expected floating point")
            if not np.all(np.isfinite(host)):
                raise FormatError(f"{source}: {key!r} holds NaN or infinite values")
            if kind == "v" and np.any(host < 0):
                raise FormatError(f"{source}: {key!r} (a second moment) holds negative values")
            arrays[str(key)] = host
        if steps > 0:
            for name in sorted(trained):
                missing = [f"{kind}.{name}" for kind in self.slots if f"{kind}.{name}" not in arrays]
                if missing:
                    raise FormatError(f"{source}: missing {', '.join(map(repr, missing))} after {steps} steps; "
                                      f"the {owner} state is incomplete (resuming would silently reset it)")
        backend = self.model.backend
        self.steps, self.lr = steps, float(lr)
        self.state = {key: backend.asarray(value) for key, value in arrays.items()}
        self._state_backend = backend

    def _slot(self, kind: str, name: str, like: Any) -> Any:
        key = f"{kind}.{name}"
        if key not in self.state:
            self.state[key] = self.model.backend.xp.zeros_like(like)
        return self.state[key]


def _read_steps(value: Any, source: str) -> int:
    if hasattr(value, "shape") and tuple(value.shape) == ():
        value = to_numpy(value).item()
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise FormatError(f"{source}: 'steps' must be a non-negative integer, got {value!r}")
    return int(value)


class _GradientAppliedError(RuntimeError):
    """A step asked for a gradient that an optimizer already applied inside backward (it is None)."""

    @classmethod
    def raise_for(cls, names: Iterable[str]) -> None:
        names = list(names)
        if names:
            raise cls(f"no gradient for {', '.join(names)}: backward_step() already applied it to the weights; "
                      "call model.loss(...) and model.backward() again before step()")
