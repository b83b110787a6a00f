"""Freezing: frozen parameters stay bit-identical under every optimizer (weight decay included), backward skips
what it can, and the flag survives save, load and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

import xpnn
from xpnn.optim import SGD, Adam, Momentum
from xpnn.training.trainer import load_checkpoint, save_checkpoint

OPTIMIZERS = {
    "sgd": lambda m, **k: SGD(m, lr=0.1, weight_decay=0.1, **k),
    "momentum": lambda m, **k: Momentum(m, lr=0.1, weight_decay=0.1, **k),
    "nesterov": lambda m, **k: Momentum(m, lr=0.1, nesterov=True, weight_decay=0.1, **k),
    "adam": lambda m, **k: Adam(m, lr=0.01, weight_decay=0.1, **k),
    "adamw": lambda m, **k: Adam(m, lr=0.01, weight_decay=0.1, decoupled=True, **k),
}


def snapshot(model):
    return {k: model.backend.to_numpy(v).copy() for k, v in model.named_parameters().items()}


def train(model, opt, steps=3, rng=None):
    rng = rng or np.random.default_rng(0)
    be = model.backend
    x, t = be.asarray(rng.standard_normal((8, 4))), be.asarray(rng.integers(0, 3, 8))
    for _ in range(steps):
        model.loss(x, t)
        model.backward()
        opt.step()


def changed(before, after):
    return {name for name in before if not np.array_equal(before[name], after[name])}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_frozen_layer_stays_bit_identical_under_every_optimizer(backend, kind):
    model = xpnn.mlp([4, 6, 5, 3], backend=backend, seed=0)
    model[0].trainable = False
    before = snapshot(model)
    opt = OPTIMIZERS[kind](model)
    train(model, opt)
    assert changed(before, snapshot(model)) == {"2.W", "2.b", "4.W", "4.b"}
    assert not any(key.endswith(".0.W") or key.endswith(".0.b") for key in opt.state)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizer_given_a_parameter_subset_trains_only_those(backend, kind):
    model = xpnn.mlp([4, 6, 3], backend=backend, seed=0)
    before = snapshot(model)
    train(model, OPTIMIZERS[kind](model, params=["2.W"]))
    assert changed(before, snapshot(model)) == {"2.W"}


def test_freeze_and_unfreeze_select_layers_by_index_slice_and_object():
    model = xpnn.mlp([4, 6, 5, 3])
    assert model.freeze() is model and not any(layer.trainable for layer in model)
    model.unfreeze(-1)
    assert [layer.trainable for layer in model] == [False, False, False, False, True]
    model.unfreeze(slice(0, 2)).freeze(model[0])
    assert [layer.trainable for layer in model] == [False, True, False, False, True]
    with pytest.raises(IndexError, match="layer index 5 out of range for 5 layers"):
        model.freeze(5)
    with pytest.raises(ValueError, match="is not a layer of this model"):
        model.freeze(xpnn.Affine(2, 2))
    with pytest.raises(TypeError, match="expected layer indices"):
        model.freeze("0")


def test_everything_frozen_changes_nothing_and_unfreezing_resumes(backend):
    model = xpnn.mlp([4, 6, 3], backend=backend, seed=0).freeze()
    assert model.n_trainable == 0 and model.n_parameters == 4 * 6 + 6 + 6 * 3 + 3
    before = snapshot(model)
    opt = Adam(model, lr=0.01, weight_decay=0.5, decoupled=True)
    train(model, opt)
    assert changed(before, snapshot(model)) == set()
    model.unfreeze()
    train(model, opt)  # moments are created for the newly trainable parameters
    assert changed(before, snapshot(model)) == set(before)


def test_frozen_leading_layers_are_skipped_by_backward(monkeypatch):
    model = xpnn.mlp([4, 6, 3])
    model[0].trainable = False
    calls = []
    monkeypatch.setattr(model[0], "backward_params", lambda dy: calls.append("params"))
    monkeypatch.setattr(model[0], "backward", lambda dy: calls.append("input") or dy @ model[0].params["W"].T)
    x, t = np.ones((2, 4), np.float32), np.array([0, 1])
    model.loss(x, t)
    model.backward()
    assert calls == []
    model.loss(x, t)
    assert model.backward(input_grad=True).shape == (2, 4)
    assert calls == ["input"]


def test_a_frozen_middle_layer_still_passes_exact_gradients_to_earlier_layers(backend64, rng):
    x, t = backend64.asarray(rng.standard_normal((5, 4))), backend64.asarray(rng.integers(0, 3, 5))

    def first_layer_grads(freeze_middle: bool):
        model = xpnn.mlp([4, 6, 5, 3], activation="tanh", backend=backend64, seed=2)
        model[2].trainable = not freeze_middle
        model.loss(x, t)
        model.backward()
        return {k: backend64.to_numpy(v) for k, v in model[0].grads.items()}

    expected, got = first_layer_grads(False), first_layer_grads(True)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_trainable_is_a_constructor_keyword_of_every_layer_and_must_be_a_bool():
    assert not xpnn.Affine(2, 3, trainable=False).trainable
    assert not xpnn.BatchNorm1d(3, trainable=False).trainable
    assert xpnn.Dropout(0.1).trainable
    with pytest.raises(ValueError, match="Affine: trainable must be True or False, got 0"):
        xpnn.Affine(2, 3, trainable=0)
    layer = xpnn.Tanh()
    with pytest.raises(ValueError, match="Tanh: trainable must be True or False"):
        layer.trainable = None


def test_the_flag_is_saved_only_when_false_and_survives_save_and_load(backend, tmp_path):
    model = xpnn.mlp([4, 6, 3], batchnorm=True, backend=backend, seed=0)
    plain = model.config()
    assert all("trainable" not in layer for layer in plain["layers"])  # files of unfrozen models are unchanged
    model.freeze(0, 1)
    config = model.config()
    assert [layer.get("trainable") for layer in config["layers"]] == [False, False, None, None]
    loaded = xpnn.load(model.save(tmp_path / "m.npz"), backend=backend)
    assert [layer.trainable for layer in loaded] == [False, False, True, True]
    assert loaded.n_trainable == model.n_trainable == 6 * 3 + 3
    rebuilt = xpnn.Sequential.from_config(plain)
    assert all(layer.trainable for layer in rebuilt)


def test_resuming_a_checkpoint_keeps_the_layer_frozen(tmp_path):
    model = xpnn.mlp([4, 6, 3], seed=0).freeze(0)
    opt = Adam(model, lr=0.01)
    train(model, opt)
    path = save_checkpoint(tmp_path / "c.npz", model, opt, epoch=1, history=[], settings={})
    frozen_weights = snapshot(model)["0.W"]

    resumed = xpnn.Sequential.from_config(model.config())
    assert not resumed[0].trainable
    opt2 = Adam(resumed, lr=0.01)
    load_checkpoint(path, resumed, opt2)
    train(resumed, opt2)
    np.testing.assert_array_equal(snapshot(resumed)["0.W"], frozen_weights)
    unfrozen = xpnn.mlp([4, 6, 3], seed=0)
    with pytest.raises(xpnn.FormatError, match="different architecture"):
        load_checkpoint(path, unfrozen, Adam(unfrozen, lr=0.01))
