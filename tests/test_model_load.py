"""One load for inference: ``xpnn.load`` takes a model file or a checkpoint; a CNN takes flat rows of its input size;
the Standardize layer and class names travel with the model."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import xpnn
from xpnn.io.serialization import FormatError
from xpnn.model import standardized
from xpnn.nn.layers import Standardize
from xpnn.runtime.graphs import capture_refusal
from xpnn.training.checkpoint import save_checkpoint


def trained_mlp():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    model = xpnn.mlp([5, 8, 2], seed=0)
    optimizer = xpnn.optim.Adam(model, lr=0.01)
    xpnn.fit(model, optimizer, x, y, epochs=2, batch_size=16, verbose=False)
    return model, optimizer, x


def test_load_takes_a_checkpoint_written_by_the_library(tmp_path):
    model, optimizer, x = trained_mlp()
    save_checkpoint(tmp_path / "ck.npz", model, optimizer, 2, [], {})
    loaded = xpnn.load(tmp_path / "ck.npz")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.state_dict().keys() == model.state_dict().keys()


def test_a_model_file_is_still_not_a_checkpoint_to_resume(tmp_path):
    model, optimizer, _ = trained_mlp()
    model.save(tmp_path / "m.npz")
    with pytest.raises(FormatError, match="holds an xpnn 'model', expected a 'checkpoint'"):
        xpnn.training.checkpoint.load_checkpoint(tmp_path / "m.npz", model, optimizer)


def test_load_refuses_other_kinds_and_foreign_checkpoint_members(tmp_path):
    model, optimizer, _ = trained_mlp()
    path = save_checkpoint(tmp_path / "ck.npz", model, optimizer, 2, [], {})
    crafted = tmp_path / "crafted.npz"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(crafted, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
        with target.open("extra.npy", "w") as member:
            np.save(member, np.zeros(3))
    with pytest.raises(FormatError, match=r"unexpected arrays \['extra'\] in a checkpoint"):
        xpnn.load(crafted)
    other = tmp_path / "other.npz"
    xpnn.io.serialization.write_npz(other, {}, {"kind": "history"})
    with pytest.raises(FormatError, match="holds an xpnn 'history', expected a 'model' or 'checkpoint'"):
        xpnn.load(other)


def test_a_cnn_takes_flat_rows_of_its_input_size():
    model = xpnn.cnn([2, 4], [3], image_size=(5, 6), seed=0)
    images = np.random.default_rng(0).random((7, 2, 5, 6)).astype(np.float32)
    rows = images.reshape(7, -1)
    np.testing.assert_array_equal(model.predict(rows), model.predict(images))
    np.testing.assert_array_equal(model.predict(model.backend.asarray(rows)), model.predict(images))
    labels = np.arange(7) % 3
    assert model.accuracy(rows, labels) == model.accuracy(images, labels)
    with pytest.raises(ValueError, match="expected input of shape"):
        model.predict(rows[:, :-1])  # not its input size: refused as before, not reshaped
    history = xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), rows, labels, epochs=1, batch_size=7, verbose=False)
    assert len(history) == 1
    part = rows[:, :30]
    assert model.unflatten(part) is part


def test_standardize_layer_gradients_config_and_capture():
    be = xpnn.get_backend("cpu", dtype="float64")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 3)) * [1.0, 50.0, 0.01] + [0.0, 10.0, 5.0]
    model = standardized(xpnn.mlp([3, 4, 2], activation="tanh", backend=be, seed=0), x)
    layer = model[0]
    assert isinstance(layer, Standardize) and layer.shape == (3,)
    np.testing.assert_allclose(layer.buffers["mean"], x.mean(axis=0))
    np.testing.assert_allclose(layer.buffers["std"], x.std(axis=0))
    errors = xpnn.gradcheck(model, be.asarray(x), be.asarray(np.arange(9) % 2))
    assert max(errors.values()) < 1e-6, errors
    assert capture_refusal(model, xpnn.optim.SGD(model, lr=0.1)) is None  # constant statistics: capturable
    constant = Standardize((2,)).build(be)
    constant.adapt(np.ones((4, 2)))
    np.testing.assert_array_equal(constant.buffers["std"], [1.0, 1.0])  # no spread: centred, not divided by 0
    with pytest.raises(ValueError, match="shape must be positive integers"):
        Standardize((0,))


def test_standardize_and_class_names_survive_save_and_load(tmp_path):
    images = np.random.default_rng(1).random((10, 3, 4, 4))
    model = standardized(xpnn.cnn([3, 2], [2], image_size=4, seed=0), images)
    model.class_names = ["cat", "dog"]
    assert model[0].shape == (3, 1, 1)
    model.save(tmp_path / "m.npz")
    loaded = xpnn.load(tmp_path / "m.npz")
    assert loaded.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(loaded.predict(images), model.predict(images))
    assert xpnn.Sequential.from_config(model.config()).class_names == ["cat", "dog"]


@pytest.mark.parametrize("names", [["only"], ["a", "a"], [1, 2], "ab"])
def test_bad_class_names_in_a_file_are_refused(tmp_path, names):
    model = xpnn.mlp([2, 2], seed=0)
    config = {**model.config(), "class_names": names}
    xpnn.io.serialization.write_npz(tmp_path / "m.npz", {k: np.asarray(v) for k, v in model.state_dict().items()},
                                 {"kind": "model", "config": config})
    with pytest.raises(FormatError, match="class_names must be a list of at least 2 distinct strings"):
        xpnn.load(tmp_path / "m.npz")


def test_standardize_on_every_backend(backend64):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2, 3, 3)) * 4 + 1
    model = standardized(xpnn.cnn([2, 3], [2], image_size=3, pool=1, activation="tanh", backend=backend64,
                                  seed=0), x)
    by_channel = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    layer = model[0]
    np.testing.assert_allclose(backend64.to_numpy(layer(backend64.asarray(x))), by_channel, atol=1e-12)
    errors = xpnn.gradcheck(model, backend64.asarray(x), backend64.asarray(np.arange(6) % 2))
    assert max(errors.values()) < 1e-6, errors
