"""Every conforming array library: JAX (CPU), dask.array, ndonnx and marray train the MLP and the CNN.

Each library runs one optimizer step, which must give the parameters NumPy's step gives (the initial weights and
the dropout masks are drawn on the host, so both start identical), and passes float64 gradient checks of whole
models. A library that is not installed is skipped (``pip install jax dask ndonnx marray`` brings them).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import xpnn
from xpnn.model.gradcheck import gradcheck
from xpnn.nn.layers import Affine, AvgPool2d, Conv2d, Flatten, MaxPool2d, ReLU

from .conftest import MORE_BACKENDS, make_backend

TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def _jax_in_float64():
    """JAX makes float32 arrays even when asked for float64 unless x64 is enabled; enable it for these tests only."""
    if importlib.util.find_spec("jax") is None:
        yield
        return
    import jax

    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def small_mlp(backend):
    return xpnn.mlp([6, 5, 4, 3], activation="tanh", dropout=0.3, batchnorm=True, backend=backend, seed=1)


def small_cnn(backend):
    """Padding, BatchNorm2d, max-pooling and dropout (the builder's blocks) on odd image sizes."""
    return xpnn.cnn([2, 3, 4], [5, 3], image_size=(7, 6), activation="tanh", dropout=0.3, batchnorm=True,
                    backend=backend, seed=1)


def strided_cnn(backend):
    """A strided, padded convolution and overlapping windows: the gradients that add into shared entries."""
    layers = [Conv2d(2, 3, 3, stride=2, padding=1), ReLU(), AvgPool2d(2, stride=1), MaxPool2d(2, stride=1),
              Flatten(), Affine(6, 3)]
    return xpnn.Sequential(layers, backend=backend, seed=1, input_shape=(2, 7, 6))


MODELS = {"mlp": (small_mlp, (5, 6)), "cnn": (small_cnn, (3, 2, 7, 6)), "strided-cnn": (strided_cnn, (3, 2, 7, 6))}


def data(backend, shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)  # away from ReLU's kink
    return backend.asarray(x), backend.asarray(rng.integers(0, 3, shape[0]))


def directional_errors(model, x, t, directions=1, eps=1e-6):
    """Relative errors of the directional derivative of the loss along random directions (all parameters and
    the input at once): the backward's <gradient, v> against the central difference (L(θ + εv) - L(θ - εv)) / 2ε.

    Two forwards per direction (one random direction already catches a wrong gradient: the check that it can
    fail below uses one), where :func:`xpnn.gradcheck` needs two per parameter entry: libraries whose every
    operation costs milliseconds (dask.array builds a task graph, ndonnx an ONNX graph) check whole models so.
    """
    backend = model.backend
    slots = list(model.parameter_slots())
    start = {name: backend.to_numpy(layer.params[key]) for name, layer, key in slots}
    x_start = backend.to_numpy(x)

    def loss_at(step, v, v_x):
        for name, layer, key in slots:
            layer.params[key] = backend.asarray(start[name] + step * v[name])
        model.reseed(3)  # the same dropout mask every time
        return backend.item(model.loss(backend.asarray(x_start + step * v_x), t))

    model.reseed(3)
    model.loss(x, t)
    dx = backend.to_numpy(model.backward(input_grad=True))
    grads = {name: backend.to_numpy(layer.grads[key]) for name, layer, key in slots}
    rng = np.random.default_rng(7)
    errors = []
    for _ in range(directions):
        v = {name: rng.standard_normal(value.shape) for name, value in start.items()}
        v_x = rng.standard_normal(x_start.shape)
        analytic = sum(float(np.sum(grads[name] * v[name])) for name in v) + float(np.sum(dx * v_x))
        numeric = (loss_at(eps, v, v_x) - loss_at(-eps, v, v_x)) / (2 * eps)
        errors.append(abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-3))
    for name, layer, key in slots:
        layer.params[key] = backend.asarray(start[name])
    return errors


def test_directional_check_catches_a_wrong_backward():
    class BrokenTanh(xpnn.Tanh):
        def backward(self, dy):
            return super().backward(dy) * 1.01

    backend = xpnn.get_backend("cpu", "float64")
    model = xpnn.Sequential([Affine(4, 3), BrokenTanh(), Affine(3, 3)], backend=backend, seed=0)
    x, t = data(backend, (5, 4))
    assert min(directional_errors(model, x, t)) > 1e-4
    model.layers[1] = xpnn.Tanh().build(backend)
    assert max(directional_errors(model, x, t)) < TOLERANCE


@pytest.mark.parametrize("library", MORE_BACKENDS)
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_one_training_step_gives_numpys_gradients_and_parameters(library, model_name):
    """Loss, backward and a momentum SGD step in float64 give NumPy's loss, gradients and new parameters."""
    make_model, shape = MODELS[model_name]
    results = []
    for backend in (make_backend(library, "float64"), xpnn.get_backend("cpu", "float64")):
        model = make_model(backend)
        optimizer = xpnn.optim.Momentum(model, lr=0.1)
        x, t = data(backend, shape)
        loss = model.loss(x, t)
        model.backward()
        grads = {name: backend.to_numpy(g) for name, g in model.named_gradients().items()}
        optimizer.step()
        assert xpnn.backend.namespace_of(model[0].params["W"]) is backend.xp  # still the library's arrays
        results.append((backend.item(loss), grads, {k: backend.to_numpy(v) for k, v in model.state_dict().items()}))
    (loss, grads, state), (reference_loss, reference_grads, reference) = results
    assert loss == pytest.approx(reference_loss, rel=1e-12)
    for name, value in reference_grads.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-10, atol=1e-12, err_msg=name)
    assert state.keys() == reference.keys()
    for key in reference:
        np.testing.assert_allclose(state[key], reference[key], rtol=1e-10, atol=1e-10, err_msg=key)
    initial = make_model(xpnn.get_backend("cpu", "float64")).state_dict()
    assert any(not np.array_equal(reference[key], initial[key]) for key in reference)  # the step moved something


@pytest.mark.parametrize("library", MORE_BACKENDS)
@pytest.mark.parametrize("model_name", MODELS)
def test_whole_model_gradients_match_central_differences(library, model_name):
    """float64: the gradient along random directions of every parameter and the input at once; for the MLP on
    libraries fast enough for it (JAX, marray) also every entry of every gradient with :func:`xpnn.gradcheck`."""
    backend = make_backend(library, "float64")
    make_model, shape = MODELS[model_name]
    model = make_model(backend)
    x, t = data(backend, shape, seed=2)
    errors = directional_errors(model, x, t)
    assert max(errors) < TOLERANCE, errors
    if library in ("jax", "marray") and model_name == "mlp":
        errors = gradcheck(model, x, t, before=lambda: model.reseed(3))
        assert set(errors) == {*model.named_parameters(), "input"}
        assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("library", MORE_BACKENDS)
def test_float32_model_predicts_what_numpy_predicts(library):
    """The default dtype: arrays stay float32 on the library and the outputs match NumPy's."""
    backend = make_backend(library)
    x, _ = data(backend, (4, 2, 7, 6))
    model = small_cnn(backend)
    y = model.predict(x)
    assert backend.to_numpy(y).dtype == np.float32
    reference = small_cnn("cpu").predict(backend.to_numpy(x))
    np.testing.assert_allclose(backend.to_numpy(y), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("library", MORE_BACKENDS)
def test_backend_is_named_after_the_library_and_copies_back_to_numpy(library):
    backend = make_backend(library)
    assert backend.name == library
    a = backend.asarray(np.arange(6.0).reshape(2, 3))
    host = backend.to_numpy(a)
    assert isinstance(host, np.ndarray) and host.dtype == np.float32
    np.testing.assert_array_equal(host, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(backend.to_numpy(backend.asarray(host)), host)  # and back again
    host[0, 0] = 99.0  # a writeable copy, not the library's memory
    assert backend.to_numpy(a)[0, 0] == 0.0


def test_jax_in_float64_without_x64_is_refused_with_the_fix():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", False)  # the autouse fixture puts it back
    with pytest.raises(xpnn.BackendError, match=r"jax made float32 arrays when asked for float64; enable it with "
                                                r"jax.config.update\("):
        xpnn.get_backend(jax.numpy, "float64")
    # float32 too: without x64 JAX truncates int64 labels with a warning, and dropout's 32-bit counter arithmetic
    # overflowed in a traceback
    with pytest.raises(xpnn.BackendError, match=r"jax made int32 arrays when asked for int64, which xpnn needs .*"
                                                r"jax.config.update\("):
        xpnn.get_backend(jax.numpy)
    jax.config.update("jax_enable_x64", True)
    assert xpnn.get_backend(jax.numpy).dtype_name == "float32"
