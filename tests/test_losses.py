"""Losses against NumPy references, numerical stability, and bad targets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from xpnn.nn.losses import BCEWithLogits, MeanSquaredError, SoftmaxCrossEntropy


def reference_softmax_ce(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def test_softmax_ce_matches_reference_and_gradient(backend64, rng):
    logits, labels = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    loss = SoftmaxCrossEntropy()
    value = loss(backend64.asarray(logits), backend64.asarray(labels))
    assert value.shape == ()
    assert float(backend64.to_numpy(value)) == pytest.approx(reference_softmax_ce(logits, labels), rel=1e-12)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = (p - np.eye(4)[labels]) / 5
    np.testing.assert_allclose(backend64.to_numpy(loss.backward()), expected, rtol=1e-10)


def test_softmax_ce_integer_and_one_hot_labels_agree(backend, rng):
    logits, labels = backend.asarray(rng.standard_normal((6, 3))), rng.integers(0, 3, 6)
    by_label = SoftmaxCrossEntropy()(logits, backend.asarray(labels))
    by_one_hot = SoftmaxCrossEntropy()(logits, backend.asarray(np.eye(3)[labels]))
    assert backend.item(by_label) == pytest.approx(backend.item(by_one_hot), rel=1e-6)


def test_mse_matches_torch_convention_and_half(backend64, rng):
    y, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    full, half = MeanSquaredError(), MeanSquaredError(half=True)
    assert backend64.item(full(backend64.asarray(y), backend64.asarray(t))) == pytest.approx(((y - t) ** 2).mean())
    half_value = backend64.item(half(backend64.asarray(y), backend64.asarray(t)))
    assert half_value == pytest.approx(0.5 * ((y - t) ** 2).mean())
    np.testing.assert_allclose(backend64.to_numpy(full.backward()), 2 * (y - t) / 12, rtol=1e-12)


def test_bce_with_logits_matches_reference(backend64, rng):
    y, t = rng.standard_normal((5, 2)), rng.integers(0, 2, (5, 2)).astype(float)
    p = 1 / (1 + np.exp(-y))
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    assert backend64.item(BCEWithLogits()(backend64.asarray(y), backend64.asarray(t))) == pytest.approx(expected)


@pytest.mark.parametrize("make", [SoftmaxCrossEntropy, BCEWithLogits])
def test_extreme_logits_give_finite_loss_and_gradient_without_warnings(backend, make):
    logits = backend.asarray(np.array([[1000.0, -1000.0], [-1000.0, 1000.0], [1000.0, 1000.0]]))
    target = np.array([1, 1, 0]) if make is SoftmaxCrossEntropy else np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    loss = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = backend.item(loss(logits, backend.asarray(target)))
        grad = backend.to_numpy(loss.backward())
    assert np.isfinite(value) and value > 100  # the confidently wrong rows cost about 1000
    assert np.all(np.isfinite(grad))


def test_labels_out_of_range_are_named(backend):
    logits = backend.zeros((3, 10))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got values from 0 to 12"):
        SoftmaxCrossEntropy()(logits, backend.asarray(np.array([0, 12, 3])))


def test_float_labels_of_wrong_shape_are_rejected(backend):
    with pytest.raises(ValueError, match=r"predictions have shape \(3, 10\), targets \(3, 4\)"):
        SoftmaxCrossEntropy()(backend.zeros((3, 10)), backend.zeros((3, 4)))
    with pytest.raises(TypeError, match="1-d labels must be integers"):
        SoftmaxCrossEntropy()(backend.zeros((3, 10)), backend.zeros((3,)))
    with pytest.raises(ValueError, match="3 logits rows but 2 labels"):
        SoftmaxCrossEntropy()(backend.zeros((3, 10)), backend.asarray(np.array([1, 2])))
