"""The sequential model: layers applied in order, a loss at the end, backprop as a reversed walk."""

from __future__ import annotations

import contextlib
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, overload

import numpy as np

from ..core.backend import Backend, get_backend, to_numpy
from ..core.validation import check_positive_int
from ..io.serialization import FormatError
from ..nn.layers import Affine, Layer
from ..nn.losses import Loss, SoftmaxCrossEntropy
from ..nn.metrics import count_correct, has_accuracy, probabilities
from . import freezing, saving, summary
from .onnx import DEFAULT_OPSET, export_onnx

__all__ = ["IncompatibleKeys", "Sequential"]

# Independent random streams derived from one seed (numpy.random.SeedSequence keys).
INIT_STREAM, SHUFFLE_STREAM, DROPOUT_STREAM = 0, 1, 2


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
        """Gradients from the last :meth:`backward`, keyed like :meth:`named_parameters`; None for a weight that
        an optimizer moved inside backward (:meth:`xpnn.optim.SGD.backward_step`)."""
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
        freezing.set_trainable(self, which, False, "freeze")
        return self

    def unfreeze(self, *which: int | slice | Layer) -> Sequential:
        """Make layers trainable again (arguments as for :meth:`freeze`; none means every layer)."""
        freezing.set_trainable(self, which, True, "unfreeze")
        return self

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
        return sum(summary.size_of(value.shape) for value in self.named_parameters().values())

    @property
    def n_trainable(self) -> int:
        """Number of parameter scalars that optimizers update (those of layers that are not frozen)."""
        return sum(summary.size_of(value.shape) for value in self.named_parameters(trainable_only=True).values())

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
        return summary.output_shapes(self, input_shape)

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
        summary.print_summary(self, input_shape, print_fn)

    def config(self) -> dict[str, Any]:
        """A JSON-serializable description that rebuilds the architecture (frozen layers marked).

        Raises
        ------
        TypeError
            When a layer takes constructor arguments but does not say them in ``config()``.
        """
        return saving.model_config(self)

    @classmethod
    def from_config(cls, config: dict[str, Any], *, backend: Backend | str = "cpu", seed: int = 0) -> Sequential:
        """Rebuild a model (freshly initialized) from :meth:`config`.

        Raises
        ------
        FormatError
            When ``config`` does not describe a model: a missing or mistyped field, an unknown layer or
            loss type, or arguments its constructor refuses.
        """
        layers, loss = saving.layers_from_config(config, "config")
        model = cls(layers, loss, backend=backend, seed=seed, input_shape=saving.input_shape_of(config, "config"))
        model.class_names = saving.class_names_of(config, "config")
        return model

    def save(self, path: str | os.PathLike) -> Path:
        """Write architecture and weights to an ``.npz`` file atomically; the model stays on its device."""
        return saving.save_model(self, path)

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
                or int(x.shape[1]) != summary.size_of(shape)):
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
                text += f" -> {summary.format_shape(shapes[index])}"
            if layer.params and not layer.trainable:
                text += "  [frozen]"
            lines.append(text)
        lines.append(f"  loss: {self.loss_fn!r}")
        frozen = self.n_parameters - self.n_trainable
        head = f"Sequential on {self.backend.name}, {self.n_parameters:,} parameters"
        if frozen:
            head += f" ({frozen:,} frozen)"
        if self.input_shape is not None:
            head += f", input {summary.format_shape(self.input_shape)}"
        return head + "\n" + "\n".join(lines)
