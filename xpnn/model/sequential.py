"""The sequential model: layers applied in order, a loss at the end, backprop as a reversed walk."""

from __future__ import annotations

import contextlib
import itertools
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, overload

import numpy as np

from ..core.backend import Backend, get_backend, to_numpy
from ..core.validation import check_bool, check_positive_int, check_real
from ..io.serialization import FormatError, open_npz, validate_header, write_npz
from ..nn.layers import ELU, Affine, BatchNorm1d, Dropout, Layer, LeakyReLU, ReLU, Sigmoid, Tanh
from ..nn.layers.batchnorm import BatchNorm2d
from ..nn.layers.conv import Conv2d
from ..nn.layers.pooling import MaxPool2d
from ..nn.layers.reshape import Flatten
from ..nn.losses import Loss, SoftmaxCrossEntropy
from ..nn.metrics import count_correct, has_accuracy, probabilities
from .onnx import DEFAULT_OPSET, export_onnx

__all__ = ["ACTIVATIONS", "IncompatibleKeys", "Sequential", "cnn", "load", "mlp", "standardized"]

# Independent random streams derived from one seed (numpy.random.SeedSequence keys).
INIT_STREAM, SHUFFLE_STREAM, DROPOUT_STREAM = 0, 1, 2

ACTIVATIONS: dict[str, type[Layer]] = {
    "relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh, "elu": ELU,
}


class IncompatibleKeys(NamedTuple):
    """What :meth:`Sequential.load_state_dict` could not match (both empty after a strict load)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Sequential:
    """Layers applied in order, followed by a loss.

    Parameters
    ----------
    layers : iterable of Layer
        Unbuilt layers; the model creates their arrays on ``backend``.
    loss : Loss, optional
        Defaults to :class:`~xpnn.losses.SoftmaxCrossEntropy`.
    backend : Backend or str
        Where the arrays live (see :func:`xpnn.get_backend`).
    seed : int
        Seeds the initial weights (drawn on the host, identical on every backend) and dropout.
    check_values : bool
        Check inputs for NaN and labels for range on every call. Each check reads a number back from
        the device; a training loop that validated its data once turns this off.
    input_shape : tuple of int, optional
        Shape of one input sample (no batch axis), e.g. ``(784,)``. Checked against the layers at once and
        used by :meth:`summary` and ``repr``; when omitted it is taken from a leading Affine layer.

    Attributes
    ----------
    class_names : list of str or None
        What each output of a classifier stands for (``class_names[i]`` for output i), saved with the model;
        ``python -m xpnn.train --data`` sets it when the labels are names. None by default.

    Notes
    -----
    Two kinds of forward pass:

    - **Training**: :meth:`loss` (training mode by default: dropout on, batch statistics) keeps what
      :meth:`backward` needs. Each ``loss()`` allows exactly one ``backward()``.
    - **Evaluation**: :meth:`predict`, :meth:`predict_proba`, :meth:`evaluate` and :meth:`accuracy` always
      run in evaluation mode and never disturb a pending backward, so ``loss(x); accuracy(x2); backward()``
      gives the gradients of ``loss(x)``. For a validation loss use ``evaluate`` (or ``loss(..., train=False)``).

    Inputs: ``loss``/``backward`` are the training hot path and take arrays of the model's backend only.
    The evaluation methods also take NumPy arrays (any real dtype) and nested lists, which they copy to the
    backend in its float dtype, as scikit-learn does for host data. Arrays of another array library (a
    torch tensor for a NumPy model, a CuPy array for a torch model) raise TypeError: xpnn never moves
    data between devices behind your back; convert with ``model.backend.asarray(x)``.

    A model is a container: ``len(model)``, ``model[i]`` (a layer; a slice gives a list), ``for layer in model``.

    Examples
    --------
    >>> import xpnn
    >>> model = xpnn.mlp([784, 256, 10], backend="cpu", seed=0)
    >>> model.predict(model.backend.zeros((2, 784))).shape
    (2, 10)
    >>> model[0].trainable = False      # freeze the first Affine layer
    >>> len(model), model.n_trainable
    (3, 2570)
    """

    def __init__(
        self,
        layers: Iterable[Layer],
        loss: Loss | None = None,
        *,
        backend: Backend | str = "cpu",
        seed: int = 0,
        check_values: bool = True,
        input_shape: Sequence[int] | None = None,
    ):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("Sequential: needs at least one layer")
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: {layer!r} is not an xpnn Layer; subclass xpnn.Layer")
        if len({id(layer) for layer in self.layers}) != len(self.layers):
            raise ValueError("Sequential: the same layer object appears twice; create a new layer for each position")
        if loss is not None and not isinstance(loss, Loss):
            raise TypeError(f"Sequential: loss must be an xpnn Loss such as xpnn.MeanSquaredError(), got {loss!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"Sequential: seed must be a non-negative integer, got {seed!r}")
        self.loss_fn = SoftmaxCrossEntropy() if loss is None else loss
        self.backend = get_backend(backend)
        self.seed = int(seed)
        self.check_values = check_values
        self._pending_backward = False
        self.class_names: list[str] | None = None
        self._shape_given = input_shape is not None
        if input_shape is None:
            first = self.layers[0]
            self.input_shape = (first.n_in,) if isinstance(first, Affine) else None
        else:
            if isinstance(input_shape, int | numbers.Integral):
                input_shape = (input_shape,)
            self.input_shape = tuple(check_positive_int("Sequential", "input_shape", n) for n in input_shape)
            self.output_shapes(self.input_shape)  # refuse layers that cannot follow each other now, not later
        init_rng = np.random.default_rng(np.random.SeedSequence([self.seed, INIT_STREAM]))
        for layer in self.layers:
            layer.build(self.backend, init_rng)
        self.reseed()

    @property
    def check_values(self) -> bool:
        """Whether inputs are checked for NaN and labels for range (each check syncs the device)."""
        return self.loss_fn.check_values

    @check_values.setter
    def check_values(self, value: bool) -> None:
        self.loss_fn.check_values = value

    # ------------------------------------------------------------------ container
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    @overload
    def __getitem__(self, index: int) -> Layer: ...

    @overload
    def __getitem__(self, index: slice) -> list[Layer]: ...

    def __getitem__(self, index: int | slice) -> Layer | list[Layer]:
        """``model[i]`` is the i-th layer (negative indices count from the end); a slice gives a list."""
        return self.layers[index]

    # ------------------------------------------------------------------ computation
    def predict(self, x: Any, batch_size: int | None = None, *, train: bool = False) -> Any:
        """Run the layers on ``x`` and return the outputs, e.g. logits, in evaluation mode.

        Parameters
        ----------
        x : array (N, ...), NumPy array or nested list
            Inputs; host data is copied to the backend (see the class notes).
        batch_size : int, optional
            Forward at most this many samples at once (bounds memory); the outputs are joined.
        train : bool
            Run in training mode instead (dropout on, batch statistics) and keep what :meth:`backward`
            needs, as :meth:`loss` does; then call ``loss_fn`` on the outputs and :meth:`backward`.
            Takes arrays of the backend only, and no ``batch_size``.

        Returns
        -------
        array (N, n_out)
            On the model's backend.
        """
        if train:
            if batch_size is not None:
                raise ValueError("predict: batch_size cannot be used with train=True (backward needs one forward)")
            self._check_input(x)
            self._pending_backward = False
            y = self._forward(x, train=True)
            self._pending_backward = True
            return y
        x = self._as_input(x)
        with self._keeping_backward_state():
            n = x.shape[0]
            if batch_size is None or check_positive_int("predict", "batch_size", batch_size) >= n:
                return self._forward(x, train=False)
            outputs = [self._forward(x[start:min(start + batch_size, n), ...], train=False)
                       for start in range(0, n, batch_size)]
            return self.backend.xp.concat(outputs, axis=0)

    __call__ = predict

    def predict_proba(self, x: Any, batch_size: int | None = None) -> Any:
        """Class probabilities of ``x`` in evaluation mode (inputs as for :meth:`predict`).

        Returns
        -------
        array (N, C)
            Softmax rows for :class:`~xpnn.losses.SoftmaxCrossEntropy`; for
            :class:`~xpnn.losses.BCEWithLogits` the sigmoid of each output (the probability of a 1).

        Raises
        ------
        ValueError
            For a regression (e.g. :class:`~xpnn.losses.MeanSquaredError`), whose outputs are not probabilities.
        """
        if not has_accuracy(self.loss_fn):
            raise ValueError(f"predict_proba: {self.loss_fn!r} is a regression loss, its outputs are not "
                             "probabilities; use predict()")
        return probabilities(self.loss_fn, self.predict(x, batch_size))

    def loss(self, x: Any, t: Any, *, train: bool = True) -> Any:
        """Forward ``x`` (N, ...) and return the loss against targets ``t`` as a 0-d array; arms :meth:`backward`.

        This is the training step's forward: it runs in **training mode by default** (dropout on, batch
        normalization on batch statistics and moving its running statistics). For a validation or test
        loss use :meth:`evaluate`, which always runs in evaluation mode, or pass ``train=False``.

        Parameters
        ----------
        x : array (N, ...)
            Inputs, an array of the model's backend (convert host data once with ``model.backend.asarray``).
        t : array
            Targets as the loss expects them: integer labels (N,) or one-hot rows (N, C) for softmax,
            (N, K) 0/1 values for BCEWithLogits, (N, D) values for a regression.
        """
        self._check_input(x)
        self._pending_backward = False
        value = self.loss_fn(self._forward(x, train=train), t)
        self._pending_backward = True
        return value

    def backward(self, *, input_grad: bool = False) -> Any:
        """Backpropagate the last :meth:`loss`, filling the ``grads`` of every trainable layer.

        Frozen layers in front of the first trainable one are skipped. Runs once per :meth:`loss`.

        Returns
        -------
        array (N, ...) or None
            The gradient for the input when ``input_grad`` is true, else None (the first layer then
            skips computing it).

        Raises
        ------
        RuntimeError
            Without a :meth:`loss` since the last backward (or since :meth:`to`).
        """
        if not self._pending_backward:
            raise RuntimeError("backward() needs a loss() first: call model.loss(x, t) before each backward() "
                               "(one backward per loss; moving the model with to() also drops the pending one)")
        self._pending_backward = False
        dy = self.loss_fn.backward()
        first = 0
        if not input_grad:  # layers before the first one with trainable parameters need no gradient at all
            while first < len(self.layers) and not (self.layers[first].trainable and self.layers[first].params):
                first += 1
            if first == len(self.layers):
                return None
        for layer in reversed(self.layers[first + 1:]):
            dy = layer.backward(dy)
        if input_grad:
            return self.layers[0].backward(dy)
        self.layers[first].backward_params(dy)
        return None

    def evaluate(self, x: Any, t: Any, batch_size: int = 1000) -> tuple[Any, Any]:
        """Mean loss and number of correct predictions over ``x``, in evaluation mode.

        Parameters
        ----------
        x : array (N, ...), NumPy array or nested list
            Inputs (host data is copied to the backend, see the class notes).
        t : array
            Targets in the loss's form: integer labels (N,) or one-hot rows (N, C) for a softmax head,
            0/1 targets (N, K) for BCEWithLogits (a sample counts as correct when every output's sign
            matches), values (N, D) for a regression.
        batch_size : int
            Samples per forward pass (bounds memory).

        Returns
        -------
        loss : 0-d float array
            Mean loss over the samples, on the device (nothing is read back until you ask).
        correct : 0-d int64 array or None
            Number of correct predictions (see :func:`xpnn.metrics.count_correct`); None for a regression.
        """
        x, t = self._as_input(x), self._as_targets(t)
        n = x.shape[0]
        if n == 0:
            raise ValueError("evaluate: x holds no samples")
        if t.ndim == 0 or t.shape[0] != n:
            raise ValueError(f"evaluate: {n} inputs but targets of shape {tuple(t.shape)}; give one target per input")
        batch_size = check_positive_int("evaluate", "batch_size", batch_size)
        total_loss, correct = self.backend.zeros(()), None
        with self._keeping_backward_state():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)  # the array API leaves out-of-range slices unspecified
                xb, tb = x[start:stop, ...], t[start:stop, ...]
                y = self._forward(xb, train=False)
                total_loss = total_loss + self.loss_fn(y, tb) * (stop - start)
                hits = count_correct(self.loss_fn, y, tb)
                if hits is not None:
                    correct = hits if correct is None else correct + hits
        # NumPy reduces to scalars; asarray makes them 0-d arrays like every other library's (no copy elsewhere).
        xp = self.backend.xp
        return xp.asarray(total_loss / n), None if correct is None else xp.asarray(correct)

    def accuracy(self, x: Any, t: Any, batch_size: int = 1000) -> float:
        """Fraction of correctly predicted samples, in evaluation mode (arguments as for :meth:`evaluate`).

        Raises
        ------
        ValueError
            For a regression loss, which has no accuracy (use :meth:`evaluate` for its loss).
        """
        if not has_accuracy(self.loss_fn):
            raise ValueError(f"accuracy() is not defined for a regression ({self.loss_fn!r}); "
                             "use evaluate(x, t) for the mean loss")
        x = self._as_input(x)
        _, correct = self.evaluate(x, t, batch_size)
        return int(self.backend.item(correct)) / int(x.shape[0])

    def _forward(self, x: Any, train: bool) -> Any:
        for layer in self.layers:
            x = layer.forward(x, train=train)
        return x

    @contextlib.contextmanager
    def _keeping_backward_state(self) -> Iterator[None]:
        """While a backward is pending, put back every attribute the layers and the loss had afterwards.

        What the training forward kept for backward survives an evaluation in between. Parameters and
        buffers are not rebound in evaluation mode, so restoring the attributes restores the same arrays.
        Without a pending backward nothing is restored, so caches a layer builds lazily persist.
        """
        if not self._pending_backward:
            yield
            return
        owners = [*self.layers, self.loss_fn]
        saved = [dict(vars(owner)) for owner in owners]
        try:
            yield
        finally:
            for owner, attributes in zip(owners, saved, strict=True):
                vars(owner).update(attributes)

    # ------------------------------------------------------------------ parameters and freezing
    def parameter_slots(self, trainable_only: bool = False) -> Iterator[tuple[str, Layer, str]]:
        """``(dotted name, owning layer, key)`` for every parameter, in layer order.

        With ``trainable_only``, parameters of frozen layers (``layer.trainable = False``) are left out.
        """
        for index, layer in enumerate(self.layers):
            if trainable_only and not layer.trainable:
                continue
            for key in layer.params:
                yield f"{index}.{key}", layer, key

    def named_parameters(self, trainable_only: bool = False) -> dict[str, Any]:
        """Parameter arrays by dotted name (``"0.W"``, ``"0.b"``, ...); frozen ones too unless ``trainable_only``."""
        return {name: layer.params[key] for name, layer, key in self.parameter_slots(trainable_only)}

    def named_gradients(self) -> dict[str, Any]:
        """Gradients from the last :meth:`backward`, keyed like :meth:`named_parameters`."""
        return {name: layer.grads[key] for name, layer, key in self.parameter_slots()}

    def freeze(self, *which: int | slice | Layer) -> Sequential:
        """Freeze layers: optimizers leave their parameters bit-identical (weight decay included).

        Parameters
        ----------
        *which : int, slice or Layer
            Layers by index (``model.freeze(0, 2)``), slice (``model.freeze(slice(0, -1))``) or object;
            none means every layer. Same as setting ``layer.trainable = False``; the flag is saved with
            the model. BatchNorm's running statistics still follow training batches, as in PyTorch: call
            ``predict``/``evaluate`` (evaluation mode) or keep such layers out of training-mode forwards.

        Returns
        -------
        Sequential
            ``self``.
        """
        for layer in self._select(which, "freeze"):
            layer.trainable = False
        return self

    def unfreeze(self, *which: int | slice | Layer) -> Sequential:
        """Make layers trainable again (arguments as for :meth:`freeze`; none means every layer)."""
        for layer in self._select(which, "unfreeze"):
            layer.trainable = True
        return self

    def _select(self, which: tuple[Any, ...], what: str) -> list[Layer]:
        if not which:
            return list(self.layers)
        chosen: list[Layer] = []
        for item in which:
            if isinstance(item, Layer):
                if not any(item is layer for layer in self.layers):
                    raise ValueError(f"{what}: {item!r} is not a layer of this model")
                chosen.append(item)
            elif isinstance(item, slice):
                chosen.extend(self.layers[item])
            elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
                if not -len(self.layers) <= item < len(self.layers):
                    raise IndexError(f"{what}: layer index {item} out of range for {len(self.layers)} layers")
                chosen.append(self.layers[item])
            else:
                raise TypeError(f"{what}: expected layer indices, slices or layers, got {item!r}")
        return chosen

    def state_dict(self) -> dict[str, Any]:
        """Parameters (frozen ones too) and buffers (running statistics) by dotted name."""
        state = self.named_parameters()
        for index, layer in enumerate(self.layers):
            state.update({f"{index}.{key}": value for key, value in layer.buffers.items()})
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, *, source: str = "state") -> IncompatibleKeys:
        """Copy arrays (of any library) into this model, checking every key and shape before changing anything.

        Parameters
        ----------
        state : dict of str to array
            As :meth:`state_dict` returns, e.g. ``{"0.W": (n_in, n_out) array, ...}``.
        strict : bool
            When false, load the keys both sides have and report the rest instead of raising (as PyTorch).
        source : str
            Named in error messages (a file name).

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``: keys of the model not in ``state``, and keys of ``state``
            the model does not have (both empty after a strict load).

        Raises
        ------
        FormatError
            Naming the missing or unexpected keys (strict only), or a key whose value is not a floating
            array of the model's shape (always).
        """
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise TypeError(f"{source}: expected a dict of name -> array, as state_dict() returns, got "
                            f"{type(state).__name__}")
        own = self.state_dict()
        expected = {name: tuple(value.shape) for name, value in own.items()}
        optional = self._optional_keys()
        missing = sorted(set(expected) - set(state) - optional)
        unexpected = sorted(set(state) - set(expected))
        if strict and (missing or unexpected):
            raise FormatError(
                f"{source}: does not match this model (missing keys {missing}, unexpected keys {unexpected})"
            )
        host: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            if name not in state:
                continue
            value = state[name]
            if not hasattr(value, "shape"):
                raise FormatError(f"{source}: {name!r} is a {type(value).__name__}, expected an array of shape {shape}")
            if tuple(value.shape) != shape:
                raise FormatError(
                    f"{source}: parameter {name!r} has shape {tuple(value.shape)}, the model expects {shape}"
                )
            host[name] = np.asarray(to_numpy(value))
            integer = own[name].dtype in (self.backend.xp.int64, self.backend.xp.int32)  # a counter or key
            if integer and host[name].dtype.kind not in "iu":
                raise FormatError(f"{source}: {name!r} has dtype {host[name].dtype}, expected integers")
            if not integer and host[name].dtype.kind != "f":
                raise FormatError(f"{source}: {name!r} has dtype {host[name].dtype}, expected floating point")
        for index, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for key in store:
                    if f"{index}.{key}" in host:
                        value = host[f"{index}.{key}"]
                        store[key] = self.backend.asarray(value, dtype=store[key].dtype if value.dtype.kind in "iu"
                                                          else None)
        return IncompatibleKeys(missing, unexpected)

    def _optional_keys(self) -> set[str]:
        """Buffers that files written before their layer had them lack (Dropout's seed and step)."""
        return {f"{index}.{key}" for index, layer in enumerate(self.layers) for key in layer.optional_buffers}

    @property
    def n_parameters(self) -> int:
        """Number of parameter scalars, trainable and frozen (buffers excluded)."""
        return sum(_size(value.shape) for value in self.named_parameters().values())

    @property
    def n_trainable(self) -> int:
        """Number of parameter scalars that optimizers update (those of layers that are not frozen)."""
        return sum(_size(value.shape) for value in self.named_parameters(trainable_only=True).values())

    def reseed(self, *entropy: int) -> None:
        """Restart every random stream from ``(seed, *entropy, layer index)``: Dropout's masks begin again
        from step 0 (as when the model was made, with no entropy), e.g. to repeat a mask in a gradient check.

        Training never calls it: Dropout's masks follow its step count, saved with the model, so a resumed
        run, another device or another number of workers or MPI ranks continue with the same masks."""
        for index, layer in enumerate(self.layers):
            layer.reseed([self.seed, DROPOUT_STREAM, *entropy, index])

    def to(self, backend: Backend | str) -> Sequential:
        """Move the model to another backend (in place) and return it.

        Optimizers made for the model follow it on their next step. A pending :meth:`backward` is dropped.
        """
        self.backend = get_backend(backend)
        for layer in self.layers:
            layer.to(self.backend)
        self._pending_backward = False
        return self

    # ------------------------------------------------------------------ description
    def output_shapes(self, input_shape: Sequence[int] | None = None) -> list[tuple[int, ...]]:
        """Per-sample output shape of every layer for inputs of ``input_shape`` (no batch axis).

        Raises
        ------
        ValueError
            Naming the first layer that cannot take what the previous one gives.
        """
        shape = self.input_shape if input_shape is None else tuple(input_shape)
        if shape is None:
            raise ValueError("output_shapes: the model does not know its input shape; pass input_shape, e.g. (784,)")
        shapes = []
        for index, layer in enumerate(self.layers):
            try:
                shape = tuple(layer.output_shape(shape))
            except ValueError as error:
                raise ValueError(f"layer {index}: {error}") from None
            shapes.append(shape)
        return shapes

    def summary(self, input_shape: Sequence[int] | None = None, *,
                print_fn: Callable[[str], Any] = print) -> None:
        """Print a table of the layers: index, layer, output shape, parameters, trainable; then the totals.

        Parameters
        ----------
        input_shape : tuple of int, optional
            Shape of one input sample, e.g. ``(784,)``; defaults to the model's own. Without either,
            the output-shape column is left out.
        print_fn : callable
            Called with each line (as Keras does); e.g. ``lines.append`` to keep the text.
        """
        shape = self.input_shape if input_shape is None else tuple(input_shape)
        shapes = self.output_shapes(shape) if shape is not None else None
        header = ["#", "Layer", *(["Output shape"] if shapes else []), "Params", "Trainable"]
        rows = []
        for index, layer in enumerate(self.layers):
            count = sum(_size(value.shape) for value in layer.params.values())
            trainable = ("yes" if layer.trainable else "no") if layer.params else "-"
            shown = [_format_shape(shapes[index])] if shapes else []
            rows.append([str(index), repr(layer), *shown, f"{count:,}", trainable])
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        numeric = {0, len(header) - 2}

        def line(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

        rule = "-" * len(line(header))
        total, trainable_count = self.n_parameters, self.n_trainable
        text = [f"Sequential on {self.backend.name} ({self.backend.dtype_name})"
                + (f", input {_format_shape(shape)}" if shape is not None else ""), rule, line(header), rule,
                *(line(row) for row in rows), rule,
                f"Loss: {self.loss_fn!r}",
                f"Total params: {total:,}", f"Trainable params: {trainable_count:,}",
                f"Non-trainable params: {total - trainable_count:,}"]
        for text_line in text:
            print_fn(text_line)

    def config(self) -> dict[str, Any]:
        """A JSON-serializable description that rebuilds the architecture (frozen layers marked).

        Raises
        ------
        TypeError
            When a layer takes constructor arguments but does not say them in ``config()``.
        """
        layers = []
        for layer in self.layers:
            layer._check_config_defined()
            spec = {"type": type(layer).__name__, **layer.config()}
            if not layer.trainable:
                spec["trainable"] = False  # only when frozen, so files of models without freezing do not change
            layers.append(spec)
        config: dict[str, Any] = {"layers": layers,
                                  "loss": {"type": type(self.loss_fn).__name__, **self.loss_fn.config()}}
        if self.input_shape is not None and not (self.layers and isinstance(self.layers[0], Affine)):
            config["input_shape"] = list(self.input_shape)  # an Affine first layer says it itself (older files)
        if self.class_names is not None:
            config["class_names"] = [str(name) for name in self.class_names]
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], *, backend: Backend | str = "cpu", seed: int = 0) -> Sequential:
        """Rebuild a model (freshly initialized) from :meth:`config`.

        Raises
        ------
        FormatError
            When ``config`` does not describe a model: a missing or mistyped field, an unknown layer or
            loss type, or arguments its constructor refuses.
        """
        layers, loss = _from_config(config, "config")
        model = cls(layers, loss, backend=backend, seed=seed, input_shape=_input_shape(config, "config"))
        model.class_names = _class_names(config, "config")
        return model

    def save(self, path: str | os.PathLike) -> Path:
        """Write architecture and weights to an ``.npz`` file atomically; the model stays on its device."""
        arrays = {name: self.backend.to_numpy(value) for name, value in self.state_dict().items()}
        return write_npz(path, arrays, {"kind": "model", "config": self.config(), "seed": self.seed})

    def to_onnx(self, path: str | os.PathLike, *, output: str | None = None, opset: int | None = None,
                input_shape: Sequence[int] | None = None, dtype: str = "float32") -> Path:
        """Write this model (evaluation mode) as an ONNX file with a dynamic batch axis, atomically.

        Parameters
        ----------
        path : path-like
            The ``.onnx`` file to write.
        output : {"probabilities", "logits"}, optional
            Default: ``"probabilities"`` for a classifier (what :meth:`predict_proba` gives) and the raw
            outputs for a regression (what :meth:`predict` gives); ``"logits"`` always gives the raw outputs.
        opset : int, optional
            ONNX opset, 13 or later (default 17).
        input_shape : tuple of int, optional
            Shape of one sample, e.g. ``(1, 28, 28)``; defaults to the model's own.
        dtype : {"float32", "float64"}
            Floating type of the input, weights and output.

        Returns
        -------
        Path
            The file written: input ``"input"`` ``(N, *input_shape)``, output ``"probabilities"`` or
            ``"logits"`` (N, n_out). See :func:`xpnn.export_onnx`; needs ``pip install onnx onnxruntime``.
        """
        return export_onnx(self, path, output=output, opset=DEFAULT_OPSET if opset is None else opset,
                           input_shape=input_shape, dtype=dtype)

    def _check_input(self, x: Any) -> None:
        self.backend.check_array(x, "Sequential input")
        if self.check_values and bool(self.backend.xp.any(self.backend.xp.isnan(x))):
            raise ValueError("Sequential input contains NaN; clean or impute the data before training")

    def _as_input(self, x: Any) -> Any:
        """Host data (NumPy, lists) copied to the backend in its float dtype; backend arrays as they are.

        Flat rows (N, C·H·W) for a model whose input is (C, H, W) are reshaped (see :meth:`unflatten`).
        """
        if isinstance(x, np.ndarray | np.generic | list | tuple):
            host = np.asarray(x)
            if host.dtype.kind not in "fiub":
                raise TypeError(f"Sequential input: expected real numbers, got a NumPy array of dtype {host.dtype}")
            x = self.backend.asarray(self.unflatten(host), dtype=self.backend.dtype)
        else:
            x = self.unflatten(x)
        self._check_input(x)
        return x

    def unflatten(self, x: Any) -> Any:
        """Flat rows (N, prod(input_shape)) as ``(N, *input_shape)`` when the model takes more than one axis.

        :func:`xpnn.data.load_dataset` gives images as flat rows (N, 784); a CNN built for (1, 28, 28) takes
        them as they are, reshaped in C order (channel, row, column), as ``x.reshape(N, C, H, W)`` would.
        Arrays of any other shape (and models whose input shape is unknown or one axis) are returned as they
        are. Used by :meth:`predict`, :meth:`predict_proba`, :meth:`evaluate`, :meth:`accuracy` and
        :func:`xpnn.fit`; :meth:`loss`, the training hot path, takes the model's own shape only.

        Parameters
        ----------
        x : array (N, D) or (N, ...)
            NumPy array or an array of the model's backend.
        """
        shape = self.input_shape
        if (shape is None or len(shape) < 2 or getattr(x, "ndim", 0) != 2
                or int(x.shape[1]) != _size(shape)):
            return x
        if isinstance(x, np.ndarray):
            return x.reshape(x.shape[0], *shape)
        return self.backend.xp.reshape(x, (int(x.shape[0]), *shape))

    def _as_targets(self, t: Any) -> Any:
        """Host targets copied to the backend (integers stay int64, floats take the float dtype)."""
        if isinstance(t, np.ndarray | np.generic | list | tuple):
            t = self.backend.asarray(np.asarray(t))
        self.backend.check_array(t, "Sequential targets")
        return t

    def __repr__(self) -> str:
        try:
            shapes = self.output_shapes() if self.input_shape is not None else None
        except ValueError:
            shapes = None
        lines = []
        for index, layer in enumerate(self.layers):
            text = f"  ({index}) {layer!r}"
            if shapes is not None:
                text += f" -> {_format_shape(shapes[index])}"
            if layer.params and not layer.trainable:
                text += "  [frozen]"
            lines.append(text)
        lines.append(f"  loss: {self.loss_fn!r}")
        frozen = self.n_parameters - self.n_trainable
        head = f"Sequential on {self.backend.name}, {self.n_parameters:,} parameters"
        if frozen:
            head += f" ({frozen:,} frozen)"
        if self.input_shape is not None:
            head += f", input {_format_shape(self.input_shape)}"
        return head + "\n" + "\n".join(lines)


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64))


def _format_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(["N", *(str(n) for n in shape)]) + ")"


def load(path: str | os.PathLike, backend: Backend | str = "cpu") -> Sequential:
    """Load a model for inference onto ``backend`` (any backend) from a model file or a checkpoint.

    Takes what :meth:`Sequential.save` writes and also a checkpoint (``python -m xpnn.train --save``,
    :func:`xpnn.training.checkpoint.save_checkpoint`): its model is returned, its optimizer state is left unread.
    To continue training from a checkpoint, use ``--resume`` or :func:`xpnn.training.checkpoint.load_checkpoint`.

    The file is not trusted: its header is checked against a schema, and the shapes its configuration
    implies (:meth:`Layer.param_shapes`) are compared with the arrays' declared shapes before anything is
    built or read, so a small file claiming huge layers fails at once. Layers that do not declare their
    shapes are built and checked afterwards.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    FormatError
        Naming the file, for any other problem (corrupted, crafted, not a model).
    """
    source = str(path)
    with open_npz(path, ("model", "checkpoint")) as npz:
        layers, loss = _from_config(npz.header["config"], source)
        if npz.header["kind"] == "checkpoint":  # the model's arrays are "model.<name>"; "optim.*" stay unread
            foreign = sorted(name for name in npz.shapes if not name.startswith(("model.", "optim.")))
            if foreign:
                raise FormatError(f"{source}: unexpected arrays {foreign} in a checkpoint (crafted or corrupted)")
            names = {name: name[6:] for name in npz.shapes if name.startswith("model.")}
        else:
            names = {name: name for name in npz.shapes}
        _check_declared_shapes(layers, {names[name]: npz.shapes[name] for name in names}, source)
        arrays = {names[name]: value for name, value in npz.read(names).items()}
    try:
        model = Sequential(layers, loss, backend=backend, seed=npz.header.get("seed", 0),
                           input_shape=_input_shape(npz.header["config"], source))
    except (ValueError, TypeError, OverflowError, MemoryError) as error:
        raise FormatError(f"{source}: its configuration cannot be built ({type(error).__name__}: {error})") from None
    model.load_state_dict(arrays, source=source)
    model.class_names = _class_names(npz.header["config"], source)
    return model


def _class_names(config: dict[str, Any], source: str) -> list[str] | None:
    """The class names a configuration records, checked: distinct strings, at least two."""
    names = config.get("class_names")
    if names is None:
        return None
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
            and len(set(names)) == len(names)):
        raise FormatError(f"{source}: class_names must be a list of at least 2 distinct strings, got "
                          f"{str(names)[:60]}")
    return names


def _from_config(config: Any, source: str) -> tuple[list[Layer], Loss]:
    """Unbuilt layers and the loss that ``config`` describes, checked against the configuration schema."""
    validate_header(config, "config", source)
    layers = [_construct(Layer.registry, spec, f"layer {index}", source) for index, spec in enumerate(config["layers"])]
    return layers, _construct(Loss.registry, config["loss"], "loss", source)


def _input_shape(config: dict[str, Any], source: str) -> tuple[int, ...] | None:
    """The per-sample input shape a configuration records (models whose first layer does not imply it)."""
    shape = config.get("input_shape")
    if shape is None:
        return None
    if not (isinstance(shape, list) and 1 <= len(shape) <= 8
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 2**31 for n in shape)):
        raise FormatError(f"{source}: input_shape must be a list of 1 to 8 positive integers, got {shape!r}")
    return tuple(shape)


def _construct(registry: dict[str, type], spec: dict[str, Any], what: str, source: str = "config") -> Any:
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in registry:
        known = ", ".join(sorted(name for name in registry if not name.startswith("_")))
        raise FormatError(f"{source}: unknown {what} type {kind!r} in the saved configuration; if it is a custom "
                          f"{what.split()[0]}, define or import its class before loading (known: {known})")
    try:
        return registry[kind](**spec)
    except (TypeError, ValueError, OverflowError) as error:
        raise FormatError(f"{source}: {what} {kind} cannot be made from {spec} ({error})") from None


def _check_declared_shapes(layers: list[Layer], found: dict[str, tuple[int, ...]], source: str) -> None:
    """Compare the arrays a file declares with what its layers will create, before building anything."""
    declared: dict[str, tuple[int, ...]] = {}
    undeclared = set()
    for index, layer in enumerate(layers):
        if type(layer).param_shapes is Layer.param_shapes:
            undeclared.add(str(index))
        else:
            declared.update({f"{index}.{key}": tuple(shape) for key, shape in layer.param_shapes().items()})
    missing = sorted(set(declared) - set(found))
    unexpected = sorted(name for name in found if name not in declared and name.partition(".")[0] not in undeclared)
    if missing or unexpected:
        raise FormatError(f"{source}: the arrays do not match the configuration (missing {missing}, "
                          f"unexpected {unexpected})")
    for name, shape in declared.items():
        if found[name] != shape:
            raise FormatError(f"{source}: array {name!r} has shape {found[name]}, its layer "
                              f"{type(layers[int(name.partition('.')[0])]).__name__} needs {shape}")


def mlp(
    sizes: Sequence[int],
    *,
    activation: str = "relu",
    init: str | None = None,
    std: float | None = None,
    dropout: float = 0.0,
    batchnorm: bool = False,
    loss: Loss | None = None,
    backend: Backend | str = "cpu",
    seed: int = 0,
) -> Sequential:
    """A multilayer perceptron: Affine layers of ``sizes`` with an activation between them.

    Parameters
    ----------
    sizes : sequence of int
        ``[n_in, hidden..., n_out]``, e.g. ``[784, 256, 128, 10]``; inputs are (N, n_in), outputs (N, n_out).
    activation : {"relu", "leaky_relu", "sigmoid", "tanh", "elu"}
        Hidden activation.
    init : str, optional
        Weight initializer (see :mod:`xpnn.initializers`, including the tutorials' ``"fcn_xavier"``); defaults
        to ``"he"`` for ReLU-like activations, ``"xavier"`` otherwise.
    std : float, optional
        Standard deviation when ``init="normal"`` (default 0.01), >= 0.
    dropout : float
        Dropout probability after each hidden activation, in [0, 1) (0 disables it).
    batchnorm : bool
        Insert BatchNorm1d before each hidden activation.
    loss, backend, seed
        As for :class:`Sequential`; the loss defaults to softmax cross-entropy (use
        :class:`~xpnn.losses.BCEWithLogits` with ``n_out=1`` for binary, :class:`~xpnn.losses.MeanSquaredError`
        for a regression).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise ValueError(f"mlp: sizes must list at least the input and output sizes, e.g. [784, 10], got {sizes!r}")
    for index, size in enumerate(sizes):
        check_positive_int("mlp", f"sizes[{index}]", size)
    dropout = check_real("mlp", "dropout", dropout, low=0.0, high=1.0, high_open=True)
    check_bool("mlp", "batchnorm", batchnorm)
    if std is not None:
        check_real("mlp", "std", std, low=0.0)
    if init is None:
        init = "he" if activation in ("relu", "leaky_relu", "elu") else "xavier"
    layers: list[Layer] = []
    for index, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(Affine(n_in, n_out, init=init, std=std))
        if index < len(sizes) - 2:
            if batchnorm:
                layers.append(BatchNorm1d(n_out))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout))
    return Sequential(layers, loss, backend=backend, seed=seed, input_shape=(int(sizes[0]),))



def cnn(
    channels: Sequence[int] = (1, 32, 64),
    sizes: Sequence[int] = (128, 10),
    *,
    image_size: int | tuple[int, int] = 28,
    kernel_size: int = 3,
    pool: int = 2,
    activation: str = "relu",
    init: str | None = None,
    dropout: float = 0.5,
    batchnorm: bool = False,
    loss: Loss | None = None,
    backend: Backend | str = "cpu",
    seed: int = 0,
) -> Sequential:
    """A convolutional network: conv blocks of ``channels``, then a multilayer perceptron of ``sizes``.

    Each block is Conv2d (``kernel_size``, stride 1, padding that keeps the size for odd kernels),
    optionally BatchNorm2d, the activation and MaxPool2d(``pool``); then Flatten and Affine layers with
    the activation (and dropout) between them. The defaults build the two-conv network that ``--model cnn`` trains:
    conv 1->32 3x3, ReLU, max-pool 2; conv 32->64 3x3, ReLU, max-pool 2; flatten; 3136->128, ReLU,
    dropout 0.5; 128->10.

    With ReLU the block pools first and applies ReLU to the pooled values: for finite inputs
    ``max(relu(x)) == relu(max(x))`` exactly, and the gradients are identical too (a window whose maximum
    is positive sends it to the same first maximum either way; one whose maximum is <= 0 gets none either
    way), at a quarter of the activation's cost. (A NaN in a window, or torch's sign of a zero result, can
    differ; neither changes a loss that is finite.) Other activations keep the order above (saturation
    could create ties that move the gradient to another element of the window).

    Parameters
    ----------
    channels : sequence of int
        ``[in_channels, block channels...]``, e.g. ``[1, 32, 64]``.
    sizes : sequence of int
        Dense layers after flattening, ``[hidden..., n_out]``; the flattened size is computed.
    image_size : int or (int, int)
        Height and width of the input images; inputs are (N, channels[0], H, W).
    kernel_size : int
        Side of the square convolution kernels (odd sizes keep the spatial size).
    pool : int
        Side and stride of the max-pooling windows (1 disables pooling).
    activation : {"relu", "leaky_relu", "sigmoid", "tanh", "elu"}
        Activation after every convolution and hidden dense layer.
    init : str, optional
        Weight initializer; defaults to ``"he"`` for ReLU-like activations, ``"xavier"`` otherwise.
    dropout : float
        Dropout probability after each hidden dense activation (0 disables it).
    batchnorm : bool
        Insert BatchNorm2d after each convolution (before the activation).
    loss, backend, seed
        As for :class:`Sequential`.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if len(channels) < 2 or len(sizes) < 1:
        raise ValueError(f"cnn needs at least [in_channels, channels] and [n_out], got {list(channels)} and "
                         f"{list(sizes)}")
    if init is None:
        init = "he" if activation in ("relu", "leaky_relu", "elu") else "xavier"
    layers: list[Layer] = []
    shape: tuple[int, ...] = (channels[0], *(image_size if isinstance(image_size, tuple | list) else
                                            (image_size, image_size)))
    input_shape = tuple(int(size) for size in shape)
    for c_in, c_out in itertools.pairwise(channels):
        conv = Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, init=init)
        shape = conv.output_shape(shape)
        layers.append(conv)
        if batchnorm:
            layers.append(BatchNorm2d(c_out))
        block = [ACTIVATIONS[activation](), MaxPool2d(pool)] if pool > 1 else [ACTIVATIONS[activation]()]
        if activation == "relu":
            block.reverse()  # pooled first: the same numbers (see the docstring) on a quarter of the elements
        for layer in block:
            shape = layer.output_shape(shape)
        layers.extend(block)
    layers.append(Flatten())
    dense = [int(np.prod(shape)), *sizes]
    for index, (n_in, n_out) in enumerate(itertools.pairwise(dense)):
        layers.append(Affine(n_in, n_out, init=init))
        if index < len(dense) - 2:
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout))
    return Sequential(layers, loss, backend=backend, seed=seed, input_shape=input_shape)


def standardized(model: Sequential, x: Any) -> Sequential:
    """``model`` with a :class:`~xpnn.layers.Standardize` layer in front, its statistics taken from ``x``.

    Features of (N, D) rows are scaled one by one; images (N, C, H, W) channel by channel. The statistics
    are saved with the model, so :meth:`Sequential.predict` on raw data applies them.

    Parameters
    ----------
    model : Sequential
        A model that knows its input shape (as :func:`mlp` and :func:`cnn` build); its layers are rebuilt,
        so their weights are drawn anew from its seed.
    x : NumPy array, shape ``(N, *model.input_shape)``
        The training inputs (never validation or test data).
    """
    from ..nn.layers.standardize import Standardize

    if model.input_shape is None:
        raise ValueError("standardized: the model does not know its input shape; build it with input_shape=...")
    shape = model.input_shape if len(model.input_shape) == 1 else (model.input_shape[0],) + (1,) * (
        len(model.input_shape) - 1)
    layer = Standardize(shape)
    result = Sequential([layer, *model.layers], model.loss_fn, backend=model.backend, seed=model.seed,
                        check_values=model.check_values, input_shape=model.input_shape)
    layer.adapt(model.unflatten(np.asarray(x)))
    result.class_names = model.class_names
    return result
