"""Every layer's forward against an independent NumPy reference, on every backend."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

import xpnn
from xpnn.nn.layers import ELU, Affine, BatchNorm1d, Dropout, LeakyReLU, ReLU, Sigmoid, Tanh


def reference_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


ELEMENTWISE = [
    (ReLU(), lambda x: np.maximum(x, 0)),
    (LeakyReLU(0.1), lambda x: np.where(x > 0, x, 0.1 * x)),
    (Sigmoid(), reference_sigmoid),
    (Tanh(), np.tanh),
    (ELU(0.1), lambda x: np.where(x > 0, x, 0.1 * (np.exp(x) - 1))),
]


def assert_same_place(backend, array):
    assert array.dtype == backend.dtype
    assert array_api_compat.device(array) == backend.device
    assert type(array) is type(backend.zeros((1,)))


@pytest.mark.parametrize(("layer", "reference"), ELEMENTWISE, ids=lambda v: type(v).__name__)
def test_elementwise_forward_matches_reference(backend, rng, layer, reference):
    x = rng.standard_normal((5, 7)) * 3
    layer.build(backend)
    y = layer.forward(backend.asarray(x))
    assert_same_place(backend, y)
    np.testing.assert_allclose(backend.to_numpy(y), reference(x), rtol=1e-5, atol=1e-6)


def test_affine_forward_matches_reference(backend, rng):
    layer = Affine(4, 3).build(backend, rng=1)
    x = rng.standard_normal((6, 4))
    y = layer.forward(backend.asarray(x))
    assert_same_place(backend, y)
    W, b = (backend.to_numpy(layer.params[k]) for k in ("W", "b"))
    np.testing.assert_allclose(backend.to_numpy(y), x @ W + b, rtol=1e-5, atol=1e-6)
    assert W.shape == (4, 3) and b.shape == (3,)


def test_affine_backward_matches_reference(backend, rng):
    layer = Affine(4, 3).build(backend, rng=1)
    x, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    layer.forward(backend.asarray(x))
    dx = layer.backward(backend.asarray(dy))
    W = backend.to_numpy(layer.params["W"])
    np.testing.assert_allclose(backend.to_numpy(dx), dy @ W.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(layer.grads["W"]), x.T @ dy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(layer.grads["b"]), dy.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_initial_weights_identical_on_every_backend(backend):
    cpu = xpnn.mlp([6, 5, 3], backend="cpu", seed=3)
    other = xpnn.mlp([6, 5, 3], backend=backend, seed=3)
    for name, value in cpu.named_parameters().items():
        np.testing.assert_array_equal(backend.to_numpy(other.named_parameters()[name]), value)


def test_batchnorm_forward_train_and_eval(backend, rng):
    layer = BatchNorm1d(3, momentum=0.5).build(backend)
    x = rng.standard_normal((8, 3)) * 2 + 5
    y = backend.to_numpy(layer.forward(backend.asarray(x), train=True))
    expected = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    running_mean = 0.5 * x.mean(0)
    running_var = 0.5 + 0.5 * x.var(0, ddof=1)
    np.testing.assert_allclose(backend.to_numpy(layer.buffers["running_mean"]), running_mean, rtol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(layer.buffers["running_var"]), running_var, rtol=1e-5)
    y_eval = backend.to_numpy(layer.forward(backend.asarray(x), train=False))
    np.testing.assert_allclose(y_eval, (x - running_mean) / np.sqrt(running_var + 1e-5), rtol=1e-4, atol=1e-5)


def test_dropout_is_identity_in_eval_and_scales_in_training(backend, rng):
    layer = Dropout(0.25).build(backend)
    x = backend.asarray(np.ones((200, 50)))
    assert layer.forward(x, train=False) is x
    y = backend.to_numpy(layer.forward(x, train=True))
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.02
    dx = backend.to_numpy(layer.backward(backend.asarray(np.full((200, 50), 2.0))))
    np.testing.assert_array_equal(dx != 0, kept)


def test_dropout_mask_repeats_after_reseed(backend):
    layer = Dropout(0.5).build(backend)
    x = backend.asarray(np.ones((10, 10)))
    layer.reseed(7)
    first = backend.to_numpy(layer.forward(x, train=True))
    layer.reseed(7)
    np.testing.assert_array_equal(backend.to_numpy(layer.forward(x, train=True)), first)


ALL_LAYERS = [
    lambda: Affine(4, 4), ReLU, lambda: LeakyReLU(0.2), Sigmoid, Tanh, ELU,
    lambda: Dropout(0.3), lambda: BatchNorm1d(4),
]


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_backward_leaves_dy_untouched(backend, rng, make):
    layer = make().build(backend)
    layer.forward(backend.asarray(rng.standard_normal((5, 4))), train=True)
    dy_host = rng.standard_normal((5, 4))
    dy = backend.asarray(dy_host)
    dx = layer.backward(dy)
    assert_same_place(backend, dx)
    np.testing.assert_array_equal(backend.to_numpy(dy), dy_host.astype(np.float32))


def test_affine_rejects_wrong_shape_naming_layer_and_shapes(backend):
    layer = Affine(784, 10).build(backend)
    with pytest.raises(ValueError, match=r"Affine\(n_in=784.*expected input of shape \(N, 784\), got \(3, 100\)"):
        layer.forward(backend.zeros((3, 100)))


def test_affine_rejects_integer_input(backend):
    layer = Affine(2, 2).build(backend)
    with pytest.raises(TypeError, match="Affine.*expected .*float32.* input, got .*int64"):
        layer.forward(backend.asarray(np.ones((3, 2), dtype=np.int64)))


def test_activation_rejects_boolean_input(backend):
    with pytest.raises(TypeError, match="ReLU.*floating-point"):
        ReLU().build(backend).forward(backend.asarray(np.ones((2, 2), dtype=bool)))


def test_layer_used_before_build_says_how_to_fix():
    with pytest.raises(RuntimeError, match=r"call \.build\(backend\)"):
        ReLU().forward(np.ones(3))


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_affine_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="Affine: n_in must be a positive integer"):
        Affine(bad, 3)


def test_dropout_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\)"):
        Dropout(1.0)
