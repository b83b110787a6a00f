"""The library refuses misuse instead of computing garbage; and optimizer state
is checked key by key and shape by shape. References are computed here in NumPy, never by the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xpnn
from xpnn.nn.layers import ELU, Affine, BatchNorm1d, Dropout, LeakyReLU, ReLU
from xpnn.nn.losses import BCEWithLogits, MeanSquaredError, SoftmaxCrossEntropy
from xpnn.optim import SGD, Adam, Momentum


def host(backend, a):
    return backend.to_numpy(a).astype(np.float64)


# ---------------------------------------------------------------------- metrics fit the loss
def test_binary_accuracy_thresholds_logits_instead_of_reporting_100_percent(backend, rng):
    model = xpnn.mlp([4, 8, 1], loss=BCEWithLogits(), backend=backend, seed=0)
    x = rng.standard_normal((64, 4))
    logits = host(backend, model.predict(x))[:, 0]
    # targets that agree with the untrained model on exactly the first 40 samples
    t = np.where(np.arange(64) < 40, logits > 0, logits <= 0).astype(np.float64)[:, None]
    assert model.accuracy(x, t) == pytest.approx(40 / 64)
    loss, correct = model.evaluate(backend.asarray(x), backend.asarray(t))
    assert int(backend.item(correct)) == 40
    expected_loss = np.mean(np.logaddexp(0, logits) - logits * t[:, 0])
    assert backend.item(loss) == pytest.approx(expected_loss, rel=1e-5)


def test_untrained_binary_model_is_not_perfect_on_constant_targets(backend, rng):
    model = xpnn.mlp([3, 1], loss=BCEWithLogits(), backend=backend, seed=0)
    x = rng.standard_normal((50, 3))
    below_zero = float(np.mean(host(backend, model.predict(x))[:, 0] <= 0))
    assert model.accuracy(x, np.zeros((50, 1))) == pytest.approx(below_zero)
    assert 0 < below_zero < 1


def test_regression_has_no_accuracy_and_evaluate_gives_loss_and_none(backend, rng):
    model = xpnn.Sequential([Affine(3, 1)], MeanSquaredError(), backend=backend, seed=0)
    x, t = rng.standard_normal((20, 3)), rng.standard_normal((20, 1))
    with pytest.raises(ValueError, match=r"accuracy\(\) is not defined for a regression \(MeanSquaredError"):
        model.accuracy(x, t)
    loss, correct = model.evaluate(x, t, batch_size=7)
    assert correct is None
    W, b = host(backend, model[0].params["W"]), host(backend, model[0].params["b"])
    assert backend.item(loss) == pytest.approx(np.mean((x @ W + b - t) ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="regression loss, its outputs are not probabilities"):
        model.predict_proba(x)


def test_evaluate_returns_0d_device_arrays(backend, rng):
    model = xpnn.mlp([4, 3], backend=backend)
    x, t = backend.asarray(rng.standard_normal((10, 4))), backend.asarray(rng.integers(0, 3, 10))
    loss, correct = model.evaluate(x, t)
    for value in (loss, correct):
        assert tuple(value.shape) == ()
        assert type(value) is type(backend.zeros(()))
    assert backend.xp.isdtype(correct.dtype, "integral")


def test_softmax_over_one_output_is_refused(backend):
    model = xpnn.mlp([3, 1], backend=backend)
    x = backend.asarray(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"at least 2 classes.*BCEWithLogits"):
        model.loss(x, backend.asarray(np.ones((4, 1))))
    with pytest.raises(ValueError, match="at least 2 classes"):
        model.evaluate(x, backend.asarray(np.ones((4, 1))))


def test_targets_of_the_wrong_shape_are_refused(backend):
    model = xpnn.mlp([3, 4], backend=backend)
    x = np.ones((5, 3))
    with pytest.raises(ValueError, match=r"5 inputs but targets of shape \(4,\)"):
        model.evaluate(x, np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"predictions have shape|targets \(5, 3\)"):
        model.evaluate(x, np.zeros((5, 3)))
    binary = xpnn.mlp([3, 1], loss=BCEWithLogits(), backend=backend)
    with pytest.raises(ValueError, match="predictions have shape|logits have shape"):
        binary.accuracy(x, np.zeros(5))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        binary.evaluate(x, np.full((5, 1), 2.0))


def test_evaluate_refuses_empty_input(backend):
    with pytest.raises(ValueError, match="no samples"):
        xpnn.mlp([3, 2], backend=backend).evaluate(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))


# ---------------------------------------------------------------------- evaluation never corrupts backward
def gradients_after(backend, x, t, between=None):
    model = xpnn.mlp([6, 16, 16, 3], dropout=0.3, batchnorm=True, backend=backend, seed=4)
    model.reseed(7)
    model.loss(x, t)
    if between is not None:
        between(model)
    model.backward()
    return {name: backend.to_numpy(g) for name, g in model.named_gradients().items()}


@pytest.mark.parametrize("between", [
    lambda m, x2: m.predict(x2),
    lambda m, x2: m.predict(x2, batch_size=3),
    lambda m, x2: m(x2),
    lambda m, x2: m.predict_proba(x2),
    lambda m, x2: m.accuracy(x2, np.zeros(len(x2), dtype=np.int64)),
    lambda m, x2: m.evaluate(x2, np.zeros(len(x2), dtype=np.int64)),
    lambda m, x2: m.summary(print_fn=lambda line: None),
], ids=["predict", "predict-batched", "call", "predict_proba", "accuracy", "evaluate", "summary"])
@pytest.mark.parametrize("same_batch", [False, True])
def test_evaluation_between_loss_and_backward_leaves_gradients_exact(backend, rng, between, same_batch):
    x_host = rng.standard_normal((8, 6))
    x, t = backend.asarray(x_host), backend.asarray(rng.integers(0, 3, 8))
    x2 = x_host if same_batch else rng.standard_normal((5, 6))
    expected = gradients_after(backend, x, t)
    got = gradients_after(backend, x, t, lambda m: between(m, x2))
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_evaluation_does_not_move_batchnorm_statistics_or_reuse_dropout(backend, rng):
    model = xpnn.mlp([4, 8, 2], dropout=0.5, batchnorm=True, backend=backend, seed=0)
    x = rng.standard_normal((16, 4)) + 3
    stats = {k: host(backend, v) for k, v in model[1].buffers.items()}
    first = host(backend, model.predict(x))
    model.evaluate(x, np.zeros(16, dtype=np.int64))
    np.testing.assert_array_equal(host(backend, model.predict(x)), first)  # dropout off: deterministic
    for key, value in model[1].buffers.items():
        np.testing.assert_array_equal(host(backend, value), stats[key], err_msg=key)


def test_backward_before_any_loss_is_a_clear_error(backend):
    model = xpnn.mlp([3, 2], backend=backend)
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a loss\(\) first"):
        model.backward()
    model.predict(np.ones((2, 3)))  # evaluation does not arm backward
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a loss\(\) first"):
        model.backward()


def test_backward_twice_is_a_clear_error(backend):
    model = xpnn.mlp([3, 4, 2], backend=backend)
    model.loss(backend.asarray(np.ones((2, 3))), backend.asarray(np.array([0, 1])))
    model.backward()
    with pytest.raises(RuntimeError, match="one backward per loss"):
        model.backward()


def test_backward_after_a_failed_loss_does_not_mix_two_forwards(backend):
    model = xpnn.mlp([3, 4, 2], backend=backend)
    model.loss(backend.asarray(np.ones((2, 3))), backend.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        model.loss(backend.asarray(np.zeros((3, 3))), backend.asarray(np.array([0, 1, 5])))
    with pytest.raises(RuntimeError, match="needs a loss"):
        model.backward()


def test_backward_after_moving_the_model_is_a_clear_error():
    model = xpnn.mlp([3, 2])
    model.loss(model.backend.asarray(np.ones((2, 3))), model.backend.asarray(np.array([0, 1])))
    model.to("cpu")
    with pytest.raises(RuntimeError, match="needs a loss"):
        model.backward()


@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(), MeanSquaredError(), BCEWithLogits()], ids=repr)
def test_loss_backward_without_forward_or_twice_is_a_clear_error(loss):
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a forward first"):
        loss.backward()
    y = np.array([[0.5, -0.2]])
    t = np.array([[1.0, 0.0]])
    loss(y, t)
    loss.backward()
    with pytest.raises(RuntimeError, match="runs once per forward"):
        loss.backward()


def test_training_forward_through_predict_still_backpropagates(backend, rng):
    """The trainer's path: predict(train=True), then the loss, then backward."""
    model = xpnn.mlp([3, 4, 2], backend=backend, seed=0)
    x, t = backend.asarray(rng.standard_normal((5, 3))), backend.asarray(rng.integers(0, 2, 5))
    model.loss(x, t)
    model.backward()
    expected = {k: host(backend, v) for k, v in model.named_gradients().items()}
    model.loss_fn(model.predict(x, train=True), t)
    model.backward()
    for name, value in model.named_gradients().items():
        np.testing.assert_array_equal(host(backend, value), expected[name])
    with pytest.raises(ValueError, match="batch_size cannot be used with train=True"):
        model.predict(x, batch_size=2, train=True)


# ---------------------------------------------------------------------- constructors check their numbers
NAN, INF = math.nan, math.inf
BAD_ARGUMENTS = [
    (lambda: xpnn.mlp([4, 3, 2], dropout=-0.5), r"mlp: dropout must be a number in \[0, 1\), got -0.5"),
    (lambda: xpnn.mlp([4, 3, 2], dropout=1.0), r"mlp: dropout must be a number in \[0, 1\)"),
    (lambda: xpnn.mlp([4, 3, 2], dropout=NAN), r"mlp: dropout must be .*got nan"),
    (lambda: xpnn.mlp([4, 3, 2], dropout="0.1"), r"mlp: dropout must be .*got '0.1'"),
    (lambda: xpnn.mlp([4, 2], init="normal", std=-0.01), r"mlp: std must be a finite number >= 0, got -0.01"),
    (lambda: xpnn.mlp([4, 2], init="normal", std=NAN), r"mlp: std must be a finite number >= 0, got nan"),
    (lambda: xpnn.mlp([4, 2], init="normal", std=INF), r"mlp: std must be a finite number >= 0, got inf"),
    (lambda: xpnn.mlp([4, 2], init="he", std=0.1), r"std is only used by init='normal'"),
    (lambda: xpnn.mlp([784]), r"mlp: sizes must list at least the input and output sizes"),
    (lambda: xpnn.mlp("784"), r"mlp: sizes must list"),
    (lambda: xpnn.mlp([784, 0, 10]), r"mlp: sizes\[1\] must be a positive integer, got 0"),
    (lambda: xpnn.mlp([784, 2.5, 10]), r"mlp: sizes\[1\] must be a positive integer, got 2.5"),
    (lambda: xpnn.mlp([True, 10]), r"mlp: sizes\[0\] must be a positive integer, got True"),
    (lambda: xpnn.mlp([4, 2], activation="gelu"), r"mlp: unknown activation 'gelu'"),
    (lambda: xpnn.mlp([4, 2], init="glorotish"), r"unknown initializer 'glorotish'"),
    (lambda: xpnn.mlp([4, 2], batchnorm="yes"), r"mlp: batchnorm must be True or False"),
    (lambda: Affine(3, -1), r"Affine: n_out must be a positive integer, got -1"),
    (lambda: Affine(3, 2, bias=1), r"Affine: bias must be True or False"),
    (lambda: LeakyReLU(-0.1), r"LeakyReLU: slope must be a finite number >= 0, got -0.1"),
    (lambda: LeakyReLU(NAN), r"LeakyReLU: slope must be a finite number >= 0"),
    (lambda: LeakyReLU(INF), r"LeakyReLU: slope must be a finite number >= 0"),
    (lambda: ELU(0.0), r"ELU: alpha must be a positive finite number, got 0.0"),
    (lambda: ELU(-1), r"ELU: alpha must be a positive finite number"),
    (lambda: ELU(NAN), r"ELU: alpha must be a positive finite number"),
    (lambda: Dropout(-0.1), r"Dropout: p must be a number in \[0, 1\)"),
    (lambda: Dropout(NAN), r"Dropout: p must be a number in \[0, 1\)"),
    (lambda: BatchNorm1d(4, momentum=1.5), r"BatchNorm1d: momentum must be a number in \[0, 1\], got 1.5"),
    (lambda: BatchNorm1d(4, momentum=NAN), r"BatchNorm1d: momentum must be a number in \[0, 1\]"),
    (lambda: BatchNorm1d(4, eps=0.0), r"BatchNorm1d: eps must be a positive finite number, got 0.0"),
    (lambda: BatchNorm1d(4, eps=-1e-5), r"BatchNorm1d: eps must be a positive finite number"),
    (lambda: BatchNorm1d(0), r"BatchNorm1d: n_features must be a positive integer, got 0"),
    (lambda: ReLU(trainable="no"), r"ReLU: trainable must be True or False, got 'no'"),
    (lambda: xpnn.Sequential([Affine(2, 2)], seed=-1), r"Sequential: seed must be a non-negative integer"),
    (lambda: xpnn.Sequential([]), r"Sequential: needs at least one layer"),
    (lambda: xpnn.Sequential([Affine(2, 2), Affine(3, 2)], input_shape=(2,)), r"layer 1: Affine.*\(3,\), got \(2,\)"),
]
BAD_OPTIMIZER_ARGUMENTS = [
    (lambda m: Adam(m, betas=(1, 1)), r"Adam: betas\[0\] must be a number in \[0, 1\), got 1"),
    (lambda m: Adam(m, betas=(0.9, 1.0)), r"Adam: betas\[1\] must be a number in \[0, 1\), got 1.0"),
    (lambda m: Adam(m, betas=(-0.1, 0.9)), r"Adam: betas\[0\] must be"),
    (lambda m: Adam(m, betas=(0.9, NAN)), r"Adam: betas\[1\] must be"),
    (lambda m: Adam(m, betas=(0.9,)), r"Adam: betas must be a pair of numbers"),
    (lambda m: Adam(m, betas=0.9), r"Adam: betas must be a pair of numbers"),
    (lambda m: Adam(m, eps=-1e-8), r"Adam: eps must be a finite number >= 0, got -1e-08"),
    (lambda m: Adam(m, eps=NAN), r"Adam: eps must be a finite number >= 0"),
    (lambda m: Adam(m, eps=INF), r"Adam: eps must be a finite number >= 0"),
    (lambda m: Adam(m, lr=NAN), r"Adam: lr must be a positive finite number, got nan"),
    (lambda m: SGD(m, lr=INF), r"SGD: lr must be a positive finite number, got inf"),
    (lambda m: SGD(m, lr=0), r"SGD: lr must be a positive finite number, got 0"),
    (lambda m: SGD(m, lr="0.1"), r"SGD: lr must be a positive finite number, got '0.1'"),
    (lambda m: SGD(m, lr=0.1, weight_decay=INF), r"SGD: weight_decay must be a finite number >= 0, got inf"),
    (lambda m: SGD(m, lr=0.1, weight_decay=NAN), r"SGD: weight_decay must be a finite number >= 0"),
    (lambda m: Adam(m, weight_decay=-0.1), r"Adam: weight_decay must be a finite number >= 0"),
    (lambda m: Momentum(m, lr=0.1, momentum=1.0), r"Momentum: momentum must be a number in \[0, 1\), got 1.0"),
    (lambda m: Momentum(m, lr=0.1, momentum=-0.5), r"Momentum: momentum must be a number in \[0, 1\)"),
    (lambda m: Momentum(m, lr=0.1, momentum=NAN), r"Momentum: momentum must be"),
    (lambda m: Momentum(m, lr=0.1, nesterov="yes"), r"Momentum: nesterov must be True or False"),
    (lambda m: SGD(m, lr=0.1, params=["9.W"]), r"SGD: params must name parameters of the model, got \['9.W'\]"),
    (lambda m: SGD(m, lr=0.1, params=[]), r"SGD: params must name parameters"),
    (lambda m: SGD("model", lr=0.1), r"SGD: expected an xpnn Sequential model, got str"),
]


@pytest.mark.parametrize(("make", "message"), BAD_ARGUMENTS, ids=[m for _, m in BAD_ARGUMENTS])
def test_constructors_reject_bad_numbers_in_one_line(make, message):
    with pytest.raises(ValueError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("make", "message"), BAD_OPTIMIZER_ARGUMENTS, ids=[m for _, m in BAD_OPTIMIZER_ARGUMENTS])
def test_optimizers_reject_bad_numbers_in_one_line(make, message):
    with pytest.raises((ValueError, TypeError), match=message) as error:
        make(xpnn.mlp([3, 2]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: xpnn.Sequential([Affine(2, 2)], loss="mse"), r"loss must be an xpnn Loss"),
    (lambda: xpnn.Sequential([Affine(2, 2), "relu"]), r"'relu' is not an xpnn Layer"),
])
def test_sequential_rejects_wrong_types(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_the_same_layer_twice_is_refused():
    layer = Affine(2, 2)
    with pytest.raises(ValueError, match="the same layer object appears twice"):
        xpnn.Sequential([layer, ReLU(), layer])


def test_boundary_values_are_accepted():
    model = xpnn.mlp([3, 2], dropout=0.0, init="normal", std=0.0)
    Adam(model, betas=(0.0, 0.0), eps=0.0)
    Momentum(model, lr=1e-12, momentum=0.0)
    SGD(model, lr=1.0, weight_decay=0.0)
    BatchNorm1d(2, momentum=0.0), BatchNorm1d(2, momentum=1.0), LeakyReLU(0.0), Dropout(0.999)
    assert np.all(model.backend.to_numpy(model[0].params["W"]) == 0)


# ---------------------------------------------------------------------- optimizer state, key by key
def trained(backend, make, steps=2, rng=None):
    rng = rng or np.random.default_rng(0)
    model = xpnn.mlp([3, 4, 2], backend=backend, seed=0)
    opt = make(model)
    x, t = backend.asarray(rng.standard_normal((6, 3))), backend.asarray(rng.integers(0, 2, 6))
    for _ in range(steps):
        model.loss(x, t)
        model.backward()
        opt.step()
    return model, opt, (x, t)


def to_host_state(backend, state):
    return {k: (backend.to_numpy(v) if hasattr(v, "shape") else v) for k, v in state.items()}


OPTIMIZERS = {
    "sgd": lambda m: SGD(m, lr=0.1), "momentum": lambda m: Momentum(m, lr=0.1, nesterov=True),
    "adam": lambda m: Adam(m, lr=0.01, weight_decay=0.01, decoupled=True),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizer_state_round_trip_is_exact_and_training_continues_identically(backend, kind):
    model, opt, (x, t) = trained(backend, OPTIMIZERS[kind])
    saved_params = {k: backend.to_numpy(v) for k, v in model.named_parameters().items()}
    saved = to_host_state(backend, opt.state_dict())
    model.loss(x, t)
    model.backward()
    opt.step()
    continued = {k: backend.to_numpy(v) for k, v in model.named_parameters().items()}

    model2 = xpnn.mlp([3, 4, 2], backend=backend, seed=99)
    model2.load_state_dict(saved_params)
    opt2 = OPTIMIZERS[kind](model2)
    opt2.load_state_dict(saved)
    again = to_host_state(backend, opt2.state_dict())
    assert again.keys() == saved.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    model2.loss(x, t)
    model2.backward()
    opt2.step()
    for name, value in model2.named_parameters().items():
        np.testing.assert_array_equal(backend.to_numpy(value), continued[name], err_msg=name)


def adam_state():
    _, opt, _ = trained(xpnn.get_backend("cpu"), lambda m: Adam(m, lr=0.01))
    return {k: (np.array(v) if hasattr(v, "shape") else v) for k, v in opt.state_dict().items()}


def without(state, key):
    state = dict(state)
    del state[key]
    return state


def replaced(state, key, value):
    return {**state, key: value}


BAD_STATES = [
    (lambda s: without(s, "v.0.W"), r"missing 'v.0.W' after 2 steps"),
    (lambda s: {k: v for k, v in s.items() if not k.startswith("m.")}, r"missing 'm.0.W'"),
    (lambda s: replaced(s, "m.9.W", np.zeros((3, 4))), r"unexpected key 'm.9.W'"),
    (lambda s: replaced(s, "velocity.0.W", np.zeros((3, 4))), r"unexpected key 'velocity.0.W' for Adam"),
    (lambda s: replaced(s, "m.0.W", 0.0), r"'m.0.W' is a float, expected an array of shape \(3, 4\)"),
    (lambda s: replaced(s, "m.0.W", np.float64(0.0)), r"'m.0.W' has shape \(\), parameter '0.W' has \(3, 4\)"),
    (lambda s: replaced(s, "m.0.W", np.zeros((4, 3))), r"'m.0.W' has shape \(4, 3\), parameter '0.W' has \(3, 4\)"),
    (lambda s: replaced(s, "v.2.b", np.zeros((1, 2))), r"'v.2.b' has shape \(1, 2\)"),
    (lambda s: replaced(s, "m.0.b", np.zeros(4, dtype=np.int64)), r"'m.0.b' has dtype int64"),
    (lambda s: replaced(s, "m.0.b", np.full(4, np.nan)), r"'m.0.b' holds NaN or infinite values"),
    (lambda s: replaced(s, "v.0.b", -np.ones(4)), r"'v.0.b' \(a second moment\) holds negative values"),
    (lambda s: replaced(s, "steps", -1), r"'steps' must be a non-negative integer, got -1"),
    (lambda s: replaced(s, "steps", "2"), r"'steps' must be a non-negative integer, got '2'"),
    (lambda s: replaced(s, "steps", math.nan), r"'steps' must be a non-negative integer, got nan"),
    (lambda s: replaced(s, "steps", math.inf), r"'steps' must be a non-negative integer, got inf"),
    (lambda s: replaced(s, "steps", 1.5), r"'steps' must be a non-negative integer, got 1.5"),
    (lambda s: replaced(s, "steps", True), r"'steps' must be a non-negative integer, got True"),
    (lambda s: without(s, "steps"), r"'steps' must be a non-negative integer, got None"),
    (lambda s: replaced(s, "lr", 0.0), r"'lr' must be a positive finite number, got 0.0"),
    (lambda s: replaced(s, "lr", math.nan), r"'lr' must be a positive finite number"),
    (lambda s: replaced(s, "lr", "0.1"), r"'lr' must be a positive finite number"),
    (lambda s: without(s, "lr"), r"'lr' must be a positive finite number, got None"),
    (lambda s: [1, 2], r"expected a dict of optimizer state, got list"),
]


@pytest.mark.parametrize(("corrupt", "message"), BAD_STATES, ids=[m for _, m in BAD_STATES])
def test_corrupt_optimizer_state_is_refused_naming_the_key(corrupt, message):
    model = xpnn.mlp([3, 4, 2], seed=0)
    opt = Adam(model, lr=0.5)
    with pytest.raises(xpnn.FormatError, match=f"ckpt.npz: {message}"):
        opt.load_state_dict(corrupt(adam_state()), source="ckpt.npz")
    assert opt.steps == 0 and opt.lr == 0.5 and opt.state == {}  # nothing changed


@pytest.mark.parametrize(("make", "extra"), [
    (lambda m: SGD(m, lr=0.1), "m.0.W"), (lambda m: Momentum(m, lr=0.1), "m.0.W"), (lambda m: Adam(m), "velocity.0.W"),
])
def test_state_of_another_optimizer_is_refused(make, extra):
    opt = make(xpnn.mlp([3, 4, 2]))
    with pytest.raises(xpnn.FormatError, match=f"unexpected key '{extra}'"):
        opt.load_state_dict({"steps": 1, "lr": 0.1, extra: np.zeros((3, 4))})


def test_state_before_the_first_step_needs_no_arrays_and_integral_steps_are_accepted():
    opt = Adam(xpnn.mlp([3, 2]))
    opt.load_state_dict({"steps": 0, "lr": 0.001})
    opt.load_state_dict({"steps": np.int64(0), "lr": np.float64(0.002)})
    assert opt.steps == 0 and opt.lr == 0.002


# ---------------------------------------------------------------------- optimizers follow the model
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizer_follows_its_model_across_to(backend, kind):
    cpu = xpnn.get_backend("cpu")
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)

    def run(move: bool):
        model = xpnn.mlp([3, 4, 2], backend=cpu, seed=0)
        opt = OPTIMIZERS[kind](model)
        for step in range(4):
            if move and step == 2:
                model.to(backend)
            be = model.backend
            model.loss(be.asarray(x), be.asarray(t))
            model.backward()
            opt.step()
        assert all(type(v) is type(model.backend.zeros(())) for v in opt.state.values())
        return {k: model.backend.to_numpy(v) for k, v in model.named_parameters().items()}

    expected, moved = run(False), run(True)
    for name in expected:
        np.testing.assert_allclose(moved[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("factor", [-1.0, float("nan"), float("inf"), "x", None, True])
def test_a_schedule_that_gives_no_usable_factor_is_refused_naming_the_epoch(factor):
    """A negative factor would climb the loss, a NaN would read as a divergence, a string fail deep inside."""
    model = xpnn.mlp([4, 3], seed=0)
    x, y = np.ones((6, 4), np.float32), np.arange(6) % 3
    with pytest.raises(ValueError, match=r"fit: schedule\(0\) returned .*; a schedule gives each 0-based epoch a "
                                         "finite learning-rate factor >= 0"):
        xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, epochs=1, schedule=lambda epoch: factor, verbose=False)


def test_a_schedule_of_numpy_numbers_and_zero_is_accepted():
    model = xpnn.mlp([4, 3], seed=0)
    x, y = np.ones((6, 4), np.float32), np.arange(6) % 3
    history = xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, epochs=2, verbose=False,
                       schedule=lambda epoch: np.float32(0.5) if epoch == 0 else 0)
    assert [row["lr"] for row in history] == [0.05, 0.0]


def test_gradcheck_of_an_unbuilt_layer_or_another_object_says_what_to_do():
    with pytest.raises(ValueError, match=r"has no parameters yet; build it first"):
        xpnn.gradcheck(xpnn.Affine(3, 2), np.ones((2, 3)))
    with pytest.raises(TypeError, match="gradcheck: expected a Layer, Loss or Sequential, got str"):
        xpnn.gradcheck("model", np.ones((2, 3)))


@pytest.mark.parametrize("state", [None, [("0.W", np.ones(2))], 3])
def test_load_state_dict_of_something_other_than_a_dict_is_a_type_error(state):
    model = xpnn.mlp([4, 3], seed=0)
    with pytest.raises(TypeError, match="state: expected a dict of name -> array"):
        model.load_state_dict(state)


@pytest.mark.parametrize("width", [5, 1])
def test_a_standardizing_model_refuses_rows_of_another_width_instead_of_broadcasting(width):
    """(N, 1) rows would broadcast against four statistics into four made-up features."""
    model = xpnn.Sequential([xpnn.layers.Standardize((4,)), Affine(4, 3)])
    with pytest.raises(ValueError, match=r"Standardize.*expected samples of shape \(4,\)"):
        model.predict(np.ones((2, width), np.float32))


@pytest.mark.parametrize("fraction", [0.0, 1.0, 2.0, float("nan"), -0.5])
def test_load_data_file_refuses_a_test_size_outside_0_1(tmp_path, fraction):
    from xpnn.io.datafile import load_data_file

    path = tmp_path / "t.csv"
    path.write_text("a,label\n" + "\n".join(f"{i / 10},{i % 2}" for i in range(20)) + "\n")
    with pytest.raises(ValueError, match="load_data_file: test_size must be"):
        load_data_file(path, test_size=fraction)


def test_checkpoints_refuse_an_optimizer_of_another_model(tmp_path):
    from xpnn.training.checkpoint import load_checkpoint, save_checkpoint

    model, other = xpnn.mlp([4, 3], seed=0), xpnn.mlp([4, 3], seed=1)
    with pytest.raises(ValueError, match="save_checkpoint: the Adam was made for another model"):
        save_checkpoint(tmp_path / "c.npz", model, Adam(other, lr=0.1), 1, [], {})
    assert not (tmp_path / "c.npz").exists()
    save_checkpoint(tmp_path / "c.npz", model, Adam(model, lr=0.1), 1, [], {})
    before = other.state_dict()
    with pytest.raises(ValueError, match="load_checkpoint: the Adam was made for another model"):
        load_checkpoint(tmp_path / "c.npz", model, Adam(other, lr=0.1))
    assert all(np.array_equal(before[k], other.state_dict()[k]) for k in before)


@pytest.mark.parametrize(("epoch", "history", "error", "message"), [
    (-1, [], xpnn.FormatError, "save_checkpoint: epoch must be a whole number >= 0"),
    (1.5, [], xpnn.FormatError, "save_checkpoint: epoch must be a whole number >= 0"),
    (1, [object()], TypeError, "save_checkpoint: history and settings must hold JSON values"),
])
def test_save_checkpoint_never_writes_what_load_checkpoint_refuses(tmp_path, epoch, history, error, message):
    from xpnn.training.checkpoint import save_checkpoint

    model = xpnn.mlp([4, 3], seed=0)
    with pytest.raises(error, match=message):
        save_checkpoint(tmp_path / "c.npz", model, Adam(model, lr=0.1), epoch, history, {})
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("namespace", ["numpy", math, None])
def test_from_namespace_of_something_that_is_no_array_library_is_a_type_error(namespace):
    with pytest.raises(TypeError, match="Backend.from_namespace: expected an array library"):
        xpnn.Backend.from_namespace(namespace)
