"""The custom-layer contract: the example in docs/user_guide/custom_layers.md runs, checks its gradients on every
backend, saves and loads; a layer that cannot be rebuilt is refused at save time instead of reloading wrong."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import xpnn

DOC = Path(__file__).resolve().parent.parent / "docs" / "user_guide" / "custom_layers.md"


def doc_namespace() -> dict:
    """Run the doc's first code block, the Scale layer (its own gradcheck assertion included), and return what it
    defines."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert "class Scale(xpnn.Layer)" in blocks[0]
    namespace: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    return namespace


def test_doc_example_runs_and_is_about_20_lines():
    namespace = doc_namespace()
    source = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)[0]
    layer_lines = source.split("class Scale")[1].split("\n\n\nbackend")[0].strip().splitlines()
    assert len(layer_lines) <= 22
    assert issubclass(namespace["Scale"], xpnn.Layer)


def test_custom_layer_gradients_on_every_backend(backend64, rng):
    Scale = doc_namespace()["Scale"]
    model = xpnn.Sequential([xpnn.Affine(3, 4), Scale(4), xpnn.Tanh(), xpnn.Affine(4, 2)], backend=backend64)
    # A factor away from 1 so that a backward ignoring it would be caught.
    model[1].params["a"] = backend64.asarray(np.array([0.5, -2.0, 1.5, 3.0]))
    x = backend64.asarray(rng.standard_normal((6, 3)))
    errors = xpnn.gradcheck(model, x, backend64.asarray(rng.integers(0, 2, 6)))
    assert set(errors) == {"0.W", "0.b", "1.a", "3.W", "3.b", "input"}
    assert max(errors.values()) < 1e-6, errors


def test_a_wrong_backward_is_caught_by_gradcheck(backend64, rng):
    Scale = doc_namespace()["Scale"]

    class WrongScale(Scale):
        def backward(self, dy):
            self.grads["a"] = self.xp.sum(dy, axis=0)  # forgot the x factor
            return dy * self.params["a"]

    model = xpnn.Sequential([xpnn.Affine(3, 4), WrongScale(4), xpnn.Affine(4, 2)], backend=backend64)
    errors = xpnn.gradcheck(model, backend64.asarray(rng.standard_normal((6, 3))),
                            backend64.asarray(rng.integers(0, 2, 6)))
    assert errors["1.a"] > 1e-2


def test_custom_layer_saves_loads_and_keeps_its_arguments(backend, rng, tmp_path):
    Scale = doc_namespace()["Scale"]
    model = xpnn.Sequential([xpnn.Affine(3, 5), Scale(5), xpnn.Affine(5, 2)], backend=backend)
    model[1].params["a"] = backend.asarray(rng.standard_normal(5))
    loaded = xpnn.load(model.save(tmp_path / "m.npz"), backend=backend)
    assert isinstance(loaded[1], Scale) and loaded[1].n == 5
    x = rng.standard_normal((4, 3))
    np.testing.assert_array_equal(backend.to_numpy(loaded.predict(x)), backend.to_numpy(model.predict(x)))


def test_layer_with_arguments_but_no_config_cannot_be_saved(tmp_path):
    class Shift(xpnn.Layer):
        def __init__(self, amount: float = 1.0):
            super().__init__()
            self.amount = amount

        def forward(self, x, *, train=False):
            return x + self.amount

        def backward(self, dy):
            return dy

    model = xpnn.Sequential([xpnn.Affine(2, 2), Shift(3.0)])
    with pytest.raises(TypeError, match=r"Shift takes constructor arguments \(amount\) but does not define "
                                        r"config\(\).*def config\(self\): return \{\"amount\": self.amount\}"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_layer_without_arguments_needs_no_config():
    class Double(xpnn.Layer):
        def forward(self, x, *, train=False):
            return 2 * x

        def backward(self, dy):
            return 2 * dy

    config = xpnn.Sequential([xpnn.Affine(2, 2), Double()]).config()
    assert config["layers"][1] == {"type": "Double"}


def test_loading_an_unknown_custom_layer_says_to_define_or_import_it(tmp_path, monkeypatch):
    Scale = doc_namespace()["Scale"]
    path = xpnn.Sequential([xpnn.Affine(3, 5), Scale(5), xpnn.Affine(5, 2)]).save(tmp_path / "custom.npz")
    monkeypatch.delitem(xpnn.Layer.registry, "Scale")  # as in a fresh process that never defined it
    message = r"unknown layer 1 type 'Scale'.*custom layer, define or import its class before"
    with pytest.raises(xpnn.FormatError, match=message):
        xpnn.load(path)
