"""Backprop against central differences in float64, for every layer, every loss and whole models."""

from __future__ import annotations

import numpy as np
import pytest

import xpnn
from xpnn.model.gradcheck import gradcheck, numerical_gradient, relative_error
from xpnn.nn.layers import ELU, Affine, BatchNorm1d, Dropout, LeakyReLU, ReLU, Sigmoid, Tanh
from xpnn.nn.losses import BCEWithLogits, MeanSquaredError, SoftmaxCrossEntropy

TOLERANCE = 1e-6


def away_from_kinks(rng, shape, margin=0.1):
    """Inputs whose magnitude is at least ``margin``, so ReLU-like kinks are never crossed by the step."""
    x = rng.uniform(margin, 2.0, shape)
    return x * rng.choice([-1.0, 1.0], shape)


LAYERS = {
    "Affine": lambda: Affine(5, 4),
    "Affine-no-bias": lambda: Affine(5, 4, bias=False),
    "ReLU": ReLU,
    "LeakyReLU": lambda: LeakyReLU(0.1),
    "Sigmoid": Sigmoid,
    "Tanh": Tanh,
    "ELU": lambda: ELU(0.1),
    "BatchNorm1d": lambda: BatchNorm1d(5),
    "Dropout": lambda: Dropout(0.4),
}


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_backward_matches_numerical(backend64, rng, name):
    layer = LAYERS[name]().build(backend64, rng=2)
    x = backend64.asarray(away_from_kinks(rng, (4, 5)))
    errors = gradcheck(layer, x, before=lambda: layer.reseed(11))
    assert set(errors) == {*layer.params, "input"}
    assert max(errors.values()) < TOLERANCE, errors


def test_batchnorm_eval_mode_backward_matches_numerical(backend64, rng):
    layer = BatchNorm1d(3).build(backend64)
    layer.forward(backend64.asarray(rng.standard_normal((6, 3))), train=True)
    errors = gradcheck(layer, backend64.asarray(rng.standard_normal((4, 3))), train=False)
    assert max(errors.values()) < TOLERANCE, errors


LOSSES = {
    "softmax-ce-labels": (SoftmaxCrossEntropy, lambda rng: rng.integers(0, 4, 6)),
    "softmax-ce-onehot": (SoftmaxCrossEntropy, lambda rng: np.eye(4)[rng.integers(0, 4, 6)]),
    "mse": (MeanSquaredError, lambda rng: rng.standard_normal((6, 4))),
    "mse-half": (lambda: MeanSquaredError(half=True), lambda rng: rng.standard_normal((6, 4))),
    "bce-logits": (BCEWithLogits, lambda rng: rng.integers(0, 2, (6, 4)).astype(float)),
}


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_backward_matches_numerical(backend64, rng, name):
    make_loss, make_target = LOSSES[name]
    y = backend64.asarray(rng.standard_normal((6, 4)) * 2)
    errors = gradcheck(make_loss(), y, backend64.asarray(make_target(rng)))
    assert errors["input"] < TOLERANCE, errors


def test_whole_model_with_batchnorm_and_dropout(backend64, rng):
    layers = [Affine(6, 8), BatchNorm1d(8), Tanh(), Dropout(0.3), Affine(8, 5), ELU(), Affine(5, 3)]
    model = xpnn.Sequential(layers, backend=backend64, seed=4)
    x = backend64.asarray(rng.standard_normal((7, 6)))
    t = backend64.asarray(rng.integers(0, 3, 7))
    errors = gradcheck(model, x, t, before=lambda: model.reseed(5))
    assert set(errors) == {*model.named_parameters(), "input"}
    assert max(errors.values()) < TOLERANCE, errors


def test_gradcheck_catches_a_wrong_backward(rng):
    class BrokenTanh(Tanh):
        def backward(self, dy):
            return dy * (1.0 - self.y)  # forgot to square

    backend = xpnn.get_backend("cpu", "float64")
    errors = gradcheck(BrokenTanh().build(backend), backend.asarray(rng.standard_normal((3, 3))))
    assert errors["input"] > 0.1


def test_gradcheck_refuses_float32(rng):
    layer = ReLU().build("cpu")
    with pytest.raises(ValueError, match="float64 backend"):
        gradcheck(layer, layer.backend.asarray(rng.standard_normal((2, 2))))


def test_relative_error_scale():
    assert relative_error(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0
    assert relative_error(np.array([2.0, 0.0]), np.array([1.0, 0.0])) == pytest.approx(0.5)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.array([1e-10]), np.array([0.0])) < 1e-3  # both zero up to rounding


def test_chapter5_two_layer_net_gradient_check(rng):
    """Deep Learning from Scratch ch. 5: TwoLayerNet(784, 50, 10), 3 samples, backprop vs numerical."""
    backend = xpnn.get_backend("cpu", "float64")
    model = xpnn.Sequential(
        [Affine(784, 50, init="normal", std=0.01), ReLU(), Affine(50, 10, init="normal", std=0.01)],
        SoftmaxCrossEntropy(), backend=backend, seed=0,
    )
    x = backend.asarray(rng.uniform(0, 1, (3, 784)))  # three MNIST-like samples
    t = backend.asarray(np.array([7, 2, 1]))
    model.loss(x, t)
    model.backward()
    analytic = {name: backend.to_numpy(g) for name, g in model.named_gradients().items()}
    for name, layer, key in model.parameter_slots():
        numeric = numerical_gradient(
            lambda: float(model.loss(x, t)),
            backend.to_numpy(layer.params[key]),
            lambda a, layer=layer, key=key: layer.params.__setitem__(key, a),
            eps=1e-4,
        )
        # The book prints the mean absolute difference per parameter: 1e-10 to 1e-13.
        mean_abs_diff = np.mean(np.abs(analytic[name] - numeric))
        assert mean_abs_diff < 1e-9, (name, mean_abs_diff)
