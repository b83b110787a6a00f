"""Optimizer updates against the textbook formulas, written out in NumPy."""

from __future__ import annotations

import numpy as np
import pytest

import xpnn
from tests.conftest import make_backend
from xpnn.optim import SGD, Adam, Momentum, get_optimizer, get_schedule


def model_with_grads(backend, rng):
    model = xpnn.mlp([3, 4, 2], backend=backend, seed=0)
    x = backend.asarray(rng.standard_normal((5, 3)))
    model.loss(x, backend.asarray(rng.integers(0, 2, 5)))
    model.backward()
    return model


def host(backend, named):
    return {k: backend.to_numpy(v).astype(np.float64) for k, v in named.items()}


def run_steps(backend, rng, optimizer_factory, steps=3):
    model = model_with_grads(backend, rng)
    opt = optimizer_factory(model)
    history = []
    for _ in range(steps):
        before = host(backend, model.named_parameters())
        grads = host(backend, model.named_gradients())
        opt.step()
        history.append((before, grads, host(backend, model.named_parameters())))
    return history


def test_sgd_with_l2_weight_decay(backend64, rng):
    for before, grads, after in run_steps(backend64, rng, lambda m: SGD(m, lr=0.1, weight_decay=0.01)):
        for name in before:
            expected = before[name] - 0.1 * (grads[name] + 0.01 * before[name])
            np.testing.assert_allclose(after[name], expected, rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_pytorch_formula(backend64, rng, nesterov):
    velocity = {}
    def make(model):
        return Momentum(model, lr=0.1, momentum=0.9, nesterov=nesterov)

    for before, grads, after in run_steps(backend64, rng, make):
        for name in before:
            velocity[name] = 0.9 * velocity.get(name, 0.0) + grads[name]
            step = grads[name] + 0.9 * velocity[name] if nesterov else velocity[name]
            np.testing.assert_allclose(after[name], before[name] - 0.1 * step, rtol=1e-12)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_matches_reference(backend64, rng, decoupled):
    m, v = {}, {}
    histories = run_steps(backend64, rng, lambda mod: Adam(mod, lr=0.01, weight_decay=0.1, decoupled=decoupled))
    for t, (before, grads, after) in enumerate(histories, start=1):
        for name in before:
            g = grads[name] if decoupled else grads[name] + 0.1 * before[name]
            m[name] = 0.9 * m.get(name, 0.0) + 0.1 * g
            v[name] = 0.999 * v.get(name, 0.0) + 0.001 * g * g
            update = 0.01 * (m[name] / (1 - 0.9**t)) / (np.sqrt(v[name] / (1 - 0.999**t)) + 1e-8)
            expected = before[name] - update - (0.01 * 0.1 * before[name] if decoupled else 0)
            np.testing.assert_allclose(after[name], expected, rtol=1e-10)


def test_optimizer_state_round_trip(backend, rng):
    model = model_with_grads(backend, rng)
    opt = Adam(model, lr=0.01)
    opt.step()
    state = {k: (backend.to_numpy(v) if hasattr(v, "shape") else v) for k, v in opt.state_dict().items()}
    again = Adam(model, lr=0.5)
    again.load_state_dict(state)
    assert again.steps == 1 and again.lr == 0.01
    assert set(again.state) == {f"{kind}.{name}" for kind in "mv" for name in model.named_parameters()}


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_learning_rate_is_rejected(bad):
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        SGD(xpnn.mlp([2, 2]), lr=bad)


def test_get_optimizer_names():
    model = xpnn.mlp([2, 2])
    assert isinstance(get_optimizer("momentum", model, 0.1), Momentum)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        get_optimizer("rmsprop", model, 0.1)


def test_schedules():
    step = get_schedule("step", epochs=30, step_size=10, gamma=0.5)
    assert [step(e) for e in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    cosine = get_schedule("cosine", epochs=10)
    assert cosine(0) == 1.0 and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    assert get_schedule("constant", 3)(2) == 1.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make", [
    lambda m: SGD(m, lr=0.1), lambda m: Momentum(m, lr=0.1), lambda m: Momentum(m, lr=0.1, nesterov=True),
    lambda m: Adam(m, lr=0.01), lambda m: Adam(m, lr=0.01, weight_decay=0.1, decoupled=True),
], ids=["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_fused_gpu_updates_equal_the_generic_formulas_bit_for_bit(make, dtype, monkeypatch):
    backend = make_backend("cupy", dtype)
    assert backend.fused is not None
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((16, 3)), rng.integers(0, 2, 16)

    def train(fused: bool):
        if not fused:
            monkeypatch.setattr(type(backend), "fused", property(lambda self: None))
        model = xpnn.mlp([3, 8, 2], backend=backend, seed=0)
        opt = make(model)
        for _ in range(4):
            model.loss(backend.asarray(x), backend.asarray(t))
            model.backward()
            opt.step()
        monkeypatch.undo()
        return {k: backend.to_numpy(v) for k, v in model.named_parameters().items()}

    fused, generic = train(True), train(False)
    for name in generic:
        np.testing.assert_array_equal(fused[name], generic[name], err_msg=name)


# ---------------------------------------------------------------- SGD stepping inside backward
SIZES = [160, 128, 128, 6]  # two weights large enough to fuse (Backend.matmul_add), one too small


def sgd_runs(backend, steps=4, prepare=None, **options):
    """The same MLP trained by backward_step() and by backward() + step(): the two models and optimizers."""
    rng = np.random.default_rng(1)
    x = backend.asarray(rng.standard_normal((96, 160)))
    y = backend.asarray(rng.integers(0, 6, 96))
    runs = []
    for fused in (True, False):
        model = xpnn.mlp(SIZES, backend=backend, seed=0)
        if prepare is not None:
            prepare(model)
        opt = SGD(model, lr=0.05, **options)
        for _ in range(steps):
            model.loss(x, y)
            if fused:
                opt.backward_step()
            else:
                model.backward()
                opt.step()
        runs.append((model, opt))
    return runs


def test_sgd_backward_step_matches_backward_then_step_to_rounding():
    backend = xpnn.get_backend("cpu")
    (fused, fused_opt), (plain, plain_opt) = sgd_runs(backend)
    assert fused_opt.steps == plain_opt.steps == 4
    for name, value in fused.named_parameters().items():
        reference = plain.named_parameters()[name]
        np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-6, err_msg=name)
    # the large dense weights moved inside their products: no gradient formed; the rest kept theirs
    gradients = fused.named_gradients()
    assert [name for name, g in gradients.items() if g is None] == ["0.W", "2.W"]
    for name in ("0.b", "2.b", "4.W", "4.b"):  # of weights that differ by rounding
        np.testing.assert_allclose(gradients[name], plain.named_gradients()[name], rtol=1e-4, atol=1e-7)


def test_sgd_backward_step_moves_weights_by_the_gradient_in_float64():
    """In float64 the weights after one fused step are W - lr·(xᵀ·dy) of the plain run, to rounding."""
    (fused, _), (plain, _) = sgd_runs(xpnn.get_backend("cpu", "float64"), steps=1)
    for name, value in fused.named_parameters().items():
        np.testing.assert_allclose(value, plain.named_parameters()[name], rtol=1e-13, atol=1e-15, err_msg=name)


def test_sgd_backward_step_leaves_frozen_and_untrained_weights_alone():
    backend = xpnn.get_backend("cpu")
    start = xpnn.mlp(SIZES, backend=backend, seed=0).state_dict()

    def freeze_first(model):
        model.freeze(0)

    (fused, _), (plain, _) = sgd_runs(backend, prepare=freeze_first, params=["2.W", "2.b", "4.b"])
    for name in ("0.W", "0.b", "4.W"):
        np.testing.assert_array_equal(fused.named_parameters()[name], start[name])
    assert fused.named_gradients()["4.W"] is not None  # computed as usual, left to the step (which skips it)
    assert fused.named_gradients()["2.W"] is None
    np.testing.assert_allclose(fused.named_parameters()["2.W"], plain.named_parameters()["2.W"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{"weight_decay": 0.01}, {"inplace": False}], ids=["weight_decay", "generic"])
def test_sgd_backward_step_is_backward_then_step_where_it_cannot_fuse(options):
    (fused, _), (plain, _) = sgd_runs(xpnn.get_backend("cpu"), **options)
    for name, value in fused.named_parameters().items():
        np.testing.assert_array_equal(value, plain.named_parameters()[name], err_msg=name)
    assert all(g is not None for g in fused.named_gradients().values())


def test_sgd_backward_step_on_other_libraries_is_backward_then_step(backend):
    (fused, _), (plain, _) = sgd_runs(backend, steps=2)
    if backend.name == "numpy":
        pytest.skip("NumPy fuses (tested above)")
    for name, value in fused.named_parameters().items():
        np.testing.assert_array_equal(backend.to_numpy(value), backend.to_numpy(plain.named_parameters()[name]))


def test_backward_step_without_a_loss_changes_nothing():
    model = xpnn.mlp([4, 3, 2], backend="cpu", seed=0)
    opt = SGD(model, lr=0.1)
    before = {k: np.array(v, copy=True) for k, v in model.named_parameters().items()}
    with pytest.raises(RuntimeError, match="backward\\(\\) needs a loss"):
        opt.backward_step()
    assert opt.steps == 0
    for name, value in model.named_parameters().items():
        np.testing.assert_array_equal(value, before[name])


def test_set_grad_product_outside_a_step_is_the_product(rng):
    layer = xpnn.layers.Affine(5, 3).build("cpu")
    a, b = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((7, 3)).astype(np.float32)
    layer.set_grad_product("W", a, b)
    np.testing.assert_array_equal(layer.grads["W"], a @ b)


def test_step_after_backward_step_says_the_gradient_was_applied():
    backend = xpnn.get_backend("cpu")
    (model, opt), _ = sgd_runs(backend, steps=1)
    before = {k: np.array(v, copy=True) for k, v in model.named_parameters().items()}
    with pytest.raises(RuntimeError, match=r"no gradient for 0\.W, 2\.W: backward_step\(\) already applied it"):
        opt.step()
    assert opt.steps == 1
    for name, value in model.named_parameters().items():
        np.testing.assert_array_equal(value, before[name])
    generic = SGD(model, lr=0.05, inplace=False)
    with pytest.raises(RuntimeError, match="already applied it"):
        generic.step()


def test_an_sgd_subclass_that_changes_the_step_is_not_bypassed():
    class SignSGD(SGD):
        def update_views(self, layout, grads):
            for p, g in zip(layout.views, grads, strict=True):
                p -= self.lr * self.model.backend.xp.sign(g)

    backend = xpnn.get_backend("cpu")
    rng = np.random.default_rng(1)
    x, y = backend.asarray(rng.standard_normal((96, 160))), backend.asarray(rng.integers(0, 6, 96))
    model = xpnn.mlp(SIZES, backend=backend, seed=0)
    start = {k: np.array(v, copy=True) for k, v in model.named_parameters().items()}
    opt = SignSGD(model, lr=0.05)
    model.loss(x, y)
    opt.backward_step()
    moved = np.abs(model.named_parameters()["0.W"] - start["0.W"])
    np.testing.assert_allclose(moved[moved > 0], 0.05, rtol=1e-5)  # sign steps, not gradient steps
    assert model.named_gradients()["0.W"] is not None


def test_a_model_moves_to_another_backend_after_fused_steps():
    (model, opt), _ = sgd_runs(xpnn.get_backend("cpu"), steps=2)
    model.to(xpnn.get_backend("cpu", "float64"))
    assert all(value.dtype == np.float64 for value in model.named_parameters().values())
    rng = np.random.default_rng(1)
    model.loss(model.backend.asarray(rng.standard_normal((96, 160))), model.backend.asarray(rng.integers(0, 6, 96)))
    opt.backward_step()  # the optimizer follows the model
    assert opt.steps == 3
