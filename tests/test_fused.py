"""The fast paths against the generic array-API path, which stays the reference.

The in-place optimizers (flat buffers, views per parameter) and their capturable form (learning rate and
step count as 0-d device arrays) must give bit-for-bit the parameters and state of the generic rebinding
path over several steps with a learning-rate change; libraries without in-place updates keep the generic
path and refuse to be forced onto the other one.
"""

from __future__ import annotations

import numpy as np
import pytest

import xpnn
from tests.conftest import make_backend
from xpnn.core.backend import Backend
from xpnn.optim import SGD, Adam, FlatLayout, Momentum

CONFIGS = {
    "sgd": lambda m, **k: SGD(m, lr=0.1, **k),
    "sgd-l2": lambda m, **k: SGD(m, lr=0.1, weight_decay=0.01, **k),
    "sgd-decoupled": lambda m, **k: SGD(m, lr=0.1, weight_decay=0.05, decoupled=True, **k),
    "momentum": lambda m, **k: Momentum(m, lr=0.05, momentum=0.9, **k),
    "nesterov-l2": lambda m, **k: Momentum(m, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01, **k),
    "adam": lambda m, **k: Adam(m, lr=0.01, **k),
    "adamw": lambda m, **k: Adam(m, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, decoupled=True, **k),
}
INPLACE_BACKENDS = ["numpy", "torch", "cupy", "torch-cuda"]


def batches(backend, n_steps=6, n=7):
    rng = np.random.default_rng(1)
    return [(backend.asarray(rng.standard_normal((n, 5))), backend.asarray(rng.integers(0, 3, n)))
            for _ in range(n_steps)]


def train(backend, make_optimizer, steps=6, *, freeze_at=None, lr_change_at=3, **kwargs):
    """Train a small MLP step by step; the learning rate halves before step ``lr_change_at``."""
    model = xpnn.mlp([5, 8, 6, 3], backend=backend, seed=0)
    optimizer = make_optimizer(model, **kwargs)
    for index, (x, t) in enumerate(batches(backend, steps)):
        if index == lr_change_at:
            optimizer.lr = optimizer.lr * 0.5
        if index == freeze_at:
            model.freeze(0)
        model.loss(x, t)
        model.backward()
        optimizer.step()
    return model, optimizer


def host_state(model, optimizer):
    be = model.backend
    arrays = {f"param.{k}": be.to_numpy(v) for k, v in model.named_parameters().items()}
    arrays.update({f"state.{k}": be.to_numpy(v) for k, v in optimizer.state.items()})
    return arrays


def assert_identical(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key, strict=True)


@pytest.fixture(params=[False, True], ids=["per-view", "one-flat-update"])
def launch_bound(request, monkeypatch):
    """Both forms of the in-place update on every backend: per parameter view (CPU) and once on the flat buffer
    (what GPUs get, where each operation is a launch)."""
    monkeypatch.setattr(Backend, "launch_bound", property(lambda self: request.param))
    return request.param


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("capturable", [False, True], ids=["eager", "capturable"])
@pytest.mark.parametrize("backend_name", INPLACE_BACKENDS)
def test_inplace_path_is_bit_identical_to_the_generic_path(backend_name, name, capturable, launch_bound):
    backend = make_backend(backend_name)
    assert backend.launch_bound is launch_bound
    generic = train(backend, CONFIGS[name], inplace=False)
    fast_model, fast = train(backend, CONFIGS[name], capturable=capturable)
    assert fast._flat is not None and generic[1]._flat is None
    assert fast.steps == generic[1].steps == 6 and fast.lr == generic[1].lr
    assert_identical(host_state(fast_model, fast), host_state(*generic))


@pytest.mark.parametrize("backend_name", INPLACE_BACKENDS)
def test_parameters_become_views_updated_in_place(backend_name):
    backend = make_backend(backend_name)
    model, optimizer = train(backend, CONFIGS["adam"], steps=1)
    W = model[0].params["W"]
    before = backend.to_numpy(W).copy()
    x, t = batches(backend, 1)[0]
    model.loss(x, t)
    model.backward()
    optimizer.step()
    assert model[0].params["W"] is W  # the same view, new values
    assert not np.array_equal(backend.to_numpy(W), before)
    layout = optimizer._flat
    total = sum(int(np.prod(p.shape)) for p in model.named_parameters().values())
    assert tuple(layout.params.shape) == (total,) and set(layout.state) == {"m", "v"}
    np.testing.assert_array_equal(backend.to_numpy(layout.params)[:before.size].reshape(before.shape),
                                  backend.to_numpy(W))


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_freezing_mid_training_rebuilds_the_layout_and_keeps_frozen_weights(backend_name):
    backend = make_backend(backend_name)
    model, optimizer = train(backend, CONFIGS["momentum"], freeze_at=2, steps=4)
    reference, _ = train(backend, CONFIGS["momentum"], freeze_at=2, steps=4, inplace=False)
    assert [name for name, _, _ in optimizer._flat.slots] == ["2.W", "2.b", "4.W", "4.b"]
    assert_identical({k: backend.to_numpy(v) for k, v in model.named_parameters().items()},
                     {k: backend.to_numpy(v) for k, v in reference.named_parameters().items()})


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
@pytest.mark.parametrize("capturable", [False, True], ids=["eager", "capturable"])
def test_rebound_parameters_and_loaded_state_are_noticed(backend_name, capturable, launch_bound):
    """load_state_dict (model and optimizer) between steps: the next step starts from what was loaded."""
    backend = make_backend(backend_name)
    results = []
    for kwargs in ({"inplace": False}, {"capturable": capturable}):
        model, optimizer = train(backend, CONFIGS["adamw"], steps=3, **kwargs)
        saved_model = {k: backend.to_numpy(v).copy() for k, v in model.state_dict().items()}
        saved_optimizer = {k: (backend.to_numpy(v).copy() if hasattr(v, "shape") else v)
                           for k, v in optimizer.state_dict().items()}
        for x, t in batches(backend, 2):  # two more steps, then back to the saved point
            model.loss(x, t)
            model.backward()
            optimizer.step()
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        for x, t in batches(backend, 2)[::-1]:
            model.loss(x, t)
            model.backward()
            optimizer.step()
        results.append(host_state(model, optimizer))
    assert_identical(*results)


def test_a_resumed_optimizer_continues_exactly(rng):
    """State saved from the in-place path and loaded into a fresh optimizer: same result as never stopping."""
    backend = make_backend("numpy")
    straight_model, straight = train(backend, CONFIGS["adam"], steps=6, capturable=True)
    model, optimizer = train(backend, CONFIGS["adam"], steps=3, capturable=True, lr_change_at=99)
    state = {k: (backend.to_numpy(v).copy() if hasattr(v, "shape") else v) for k, v in optimizer.state_dict().items()}
    resumed = Adam(model, lr=1.0, capturable=True)
    resumed.load_state_dict(state)
    for x, t in batches(backend, 6)[3:]:
        resumed.lr = 0.005  # the schedule of train(): halved from step 3 on
        model.loss(x, t)
        model.backward()
        resumed.step()
    assert_identical(host_state(model, resumed), host_state(straight_model, straight))


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_capturable_learning_rate_lives_on_the_device_and_follows_assignments(backend_name):
    backend = make_backend(backend_name)
    _, optimizer = train(backend, CONFIGS["sgd"], steps=4, capturable=True)
    layout = optimizer._flat
    assert float(backend.to_numpy(layout.lr)) == pytest.approx(0.05)
    optimizer.lr = 0.125
    assert float(backend.to_numpy(layout.lr)) == 0.125 and float(backend.to_numpy(layout.lr64)) == 0.125
    assert float(backend.to_numpy(layout.step)) == 4.0


def test_moving_the_model_between_libraries_keeps_the_results():
    """numpy (in place) -> array-api-strict (generic) -> numpy again, against the generic path throughout."""
    results = []
    for kwargs in ({"inplace": False}, {}):
        model, optimizer = train(make_backend("numpy"), CONFIGS["momentum"], steps=2, **kwargs)
        for backend_name in ("strict", "numpy"):
            backend = make_backend(backend_name)
            model.to(backend)
            for x, t in batches(backend, 2):
                model.loss(x, t)
                model.backward()
                optimizer.step()
        results.append(host_state(model, optimizer))
    assert_identical(*results)


@pytest.mark.parametrize("backend_name", ["strict", "strict-device1"])
def test_libraries_without_inplace_updates_keep_the_generic_path(backend_name):
    backend = make_backend(backend_name)
    assert not backend.inplace
    model, optimizer = train(backend, CONFIGS["adam"], steps=2)
    assert optimizer._flat is None
    with pytest.raises(ValueError, match="inplace=True needs a library"):
        Adam(model, inplace=True)
    with pytest.raises(ValueError, match="capturable=True"):
        SGD(model, lr=0.1, capturable=True)


def test_capturable_without_inplace_is_refused():
    model = xpnn.mlp([2, 2], seed=0)
    with pytest.raises(ValueError, match="capturable=True"):
        SGD(model, lr=0.1, inplace=False, capturable=True)
    with pytest.raises(ValueError, match="inplace must be"):
        SGD(model, lr=0.1, inplace="yes")


def test_mixed_dtypes_fall_back_to_the_generic_path():
    model = xpnn.mlp([3, 4, 2], seed=0)
    model[0].params["W"] = np.asarray(model[0].params["W"], dtype=np.float64)
    assert FlatLayout.build(SGD(model, lr=0.1), list(model.parameter_slots())) is None
