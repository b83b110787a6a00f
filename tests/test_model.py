"""The sequential model: training equality across backends, persistence, and bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

import xpnn
from xpnn.io.serialization import read_npz
from xpnn.optim import Momentum


def small_problem(rng, n=32):
    x = rng.standard_normal((n, 8))
    labels = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, labels


def train_steps(backend, x, labels, steps=5):
    model = xpnn.mlp([8, 16, 3], activation="tanh", dropout=0.0, backend=backend, seed=1)
    opt = Momentum(model, lr=0.1)
    xb, tb = backend.asarray(x), backend.asarray(labels)
    for _ in range(steps):
        model.loss(xb, tb)
        model.backward()
        opt.step()
    return {name: backend.to_numpy(value) for name, value in model.named_parameters().items()}


def test_training_steps_agree_with_numpy(backend, rng):
    x, labels = small_problem(rng)
    expected = train_steps(xpnn.get_backend("cpu"), x, labels)
    got = train_steps(backend, x, labels)
    for name in expected:
        # float32 on different libraries may sum in a different order: allow a few ulps per step.
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_training_reduces_loss_and_reaches_accuracy(backend, rng):
    x, labels = small_problem(rng, 200)
    model = xpnn.mlp([8, 32, 3], backend=backend, seed=0)
    opt = xpnn.optim.Adam(model, lr=0.01)
    xb, tb = backend.asarray(x), backend.asarray(labels)
    first = backend.item(model.loss(xb, tb))
    for _ in range(100):
        model.loss(xb, tb)
        model.backward()
        opt.step()
    assert backend.item(model.loss(xb, tb, train=False)) < first / 3
    assert model.accuracy(xb, tb) > 0.9


def test_save_load_round_trip_is_exact_and_crosses_backends(backend, rng, tmp_path):
    model = xpnn.Sequential(
        [xpnn.Affine(4, 6), xpnn.BatchNorm1d(6), xpnn.LeakyReLU(0.2), xpnn.Dropout(0.1), xpnn.Affine(6, 2)],
        xpnn.MeanSquaredError(half=True), backend=backend, seed=3,
    )
    model.predict(backend.asarray(rng.standard_normal((5, 4))), train=True)  # move the running statistics
    path = model.save(tmp_path / "model.npz")
    for target in ("cpu", backend):
        loaded = xpnn.load(path, backend=target)
        assert loaded.config() == model.config()
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(loaded.backend.to_numpy(loaded.state_dict()[name]), backend.to_numpy(value))
    # saving never moves the model
    assert all(type(v) is type(backend.zeros((1,))) for v in model.state_dict().values())


def test_load_rejects_other_architecture_naming_key_and_shapes(tmp_path):
    path = xpnn.mlp([784, 100, 10]).save(tmp_path / "m.npz")
    model = xpnn.mlp([784, 256, 10])
    arrays, _ = read_npz(path, "model")
    with pytest.raises(xpnn.FormatError, match=r"'0.W' has shape \(784, 100\), the model expects \(784, 256\)"):
        model.load_state_dict(arrays, source=str(path))
    del arrays["2.b"]
    with pytest.raises(xpnn.FormatError, match=r"missing keys \['2.b'\]"):
        xpnn.mlp([784, 100, 10]).load_state_dict(arrays)


def test_load_rejects_files_that_are_not_models(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(xpnn.FormatError, match="junk.npz: not a readable .npz file"):
        xpnn.load(junk)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(xpnn.FormatError, match="plain.npz: not an xpnn file"):
        xpnn.load(plain)
    with pytest.raises(FileNotFoundError, match="missing.npz: no such file"):
        xpnn.load(tmp_path / "missing.npz")


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = xpnn.mlp([3, 2]).save(tmp_path / "m.npz")
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(OSError, match="disk full"):
        xpnn.mlp([3, 2], seed=9).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the permissions a plain open() gives


def test_input_with_nan_is_rejected(backend):
    model = xpnn.mlp([3, 2], backend=backend)
    x = backend.asarray(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match="input contains NaN"):
        model.predict(x)


def test_input_from_another_library_is_rejected(backend):
    """NumPy is host data and gets copied (test_model_api.py); another device library is refused."""
    strict = pytest.importorskip("array_api_strict")
    torch = pytest.importorskip("torch")
    model = xpnn.mlp([3, 2], backend=backend)
    wrong = torch.zeros((2, 3)) if backend._library != "torch" else strict.zeros((2, 3))
    with pytest.raises(TypeError, match=r"expected an array of the .* backend.*backend\.asarray"):
        model.predict(wrong)


def test_input_on_another_device_is_rejected():
    strict = pytest.importorskip("array_api_strict")
    backend = xpnn.Backend.from_namespace(strict, device=strict.Device("device1"))
    model = xpnn.mlp([3, 2], backend=backend)
    with pytest.raises(TypeError, match="is on device .*CPU_DEVICE.*the model is on .*device1"):
        model.predict(strict.zeros((2, 3)))


def test_repr_lists_layers_and_parameter_count():
    text = repr(xpnn.mlp([784, 256, 10]))
    assert "203,530 parameters" in text and "(1) ReLU()" in text
