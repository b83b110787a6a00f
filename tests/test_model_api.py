"""The model as PyTorch, Keras and scikit-learn users expect it: container, predict/predict_proba, evaluation
mode, host inputs, summary and repr, non-strict loading, dtypes, the seeds' initializers by name."""

from __future__ import annotations

import numpy as np
import pytest

import xpnn
from xpnn.nn.initializers import get_initializer
from xpnn.nn.layers import Affine, BatchNorm1d, Dropout, ReLU, Tanh
from xpnn.nn.losses import BCEWithLogits, MeanSquaredError


def host(backend, a):
    return backend.to_numpy(a).astype(np.float64)


def test_len_indexing_slicing_and_iteration():
    layers = [Affine(4, 5), ReLU(), Affine(5, 2)]
    model = xpnn.Sequential(layers)
    assert len(model) == 3
    assert model[0] is layers[0] and model[-1] is layers[2]
    assert model[1:] == layers[1:] and isinstance(model[1:], list)
    assert list(model) == layers
    with pytest.raises(IndexError):
        model[3]


def test_predict_in_batches_equals_one_forward(backend, rng):
    model = xpnn.mlp([5, 7, 3], backend=backend, seed=1)
    x = backend.asarray(rng.standard_normal((10, 5)))
    whole = host(backend, model.predict(x))
    for batch in (1, 3, 10, 64):
        np.testing.assert_allclose(host(backend, model.predict(x, batch_size=batch)), whole, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="predict: batch_size must be a positive integer, got 0"):
        model.predict(x, batch_size=0)
    assert model.predict(np.zeros((0, 5)), batch_size=4).shape == (0, 3)


def test_predict_proba_softmax_and_sigmoid_against_numpy(backend, rng):
    x = rng.standard_normal((6, 4))
    multi = xpnn.mlp([4, 5, 3], backend=backend, seed=0)
    logits = host(backend, multi.predict(x))
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(host(backend, multi.predict_proba(x)), expected, rtol=1e-5)
    binary = xpnn.mlp([4, 5, 2], loss=BCEWithLogits(), backend=backend, seed=0)
    logits = host(backend, binary.predict(x))
    np.testing.assert_allclose(host(backend, binary.predict_proba(x, batch_size=4)), 1 / (1 + np.exp(-logits)),
                               rtol=1e-5)


def test_evaluation_methods_use_evaluation_mode_and_loss_defaults_to_training(backend, rng):
    model = xpnn.mlp([4, 16, 3], dropout=0.5, batchnorm=True, backend=backend, seed=0)
    x, t = rng.standard_normal((32, 4)), rng.integers(0, 3, 32)
    xb, tb = backend.asarray(x), backend.asarray(t)
    eval_loss = backend.item(model.evaluate(x, t)[0])
    assert eval_loss == pytest.approx(backend.item(model.loss(xb, tb, train=False)), rel=1e-6)
    train_loss = backend.item(model.loss(xb, tb))  # default: training mode (dropout, batch statistics)
    assert abs(train_loss - eval_loss) > 1e-3
    # the training forward moved the running statistics; evaluation reads them, never moves them
    stats = host(backend, model[1].buffers["running_mean"])
    assert model.accuracy(x, t) == model.accuracy(x, t)
    np.testing.assert_array_equal(host(backend, model[1].buffers["running_mean"]), stats)


@pytest.mark.parametrize("convert", [
    lambda x: x, lambda x: x.astype(np.float32), lambda x: x.tolist(), lambda x: np.round(x * 10).astype(np.int32),
], ids=["float64", "float32", "list", "int32"])
def test_host_inputs_are_copied_to_the_backend(backend, rng, convert):
    model = xpnn.mlp([3, 4, 2], backend=backend, seed=0)
    x_host = convert(rng.standard_normal((5, 3)))
    reference = host(backend, model.predict(backend.asarray(np.asarray(x_host, dtype=np.float64))))
    y = model.predict(x_host)
    assert type(y) is type(backend.zeros(())) and y.dtype == backend.dtype
    np.testing.assert_array_equal(host(backend, y), reference)
    labels = [0, 1, 1, 0, 1]
    assert model.accuracy(x_host, labels) == pytest.approx(np.mean(reference.argmax(axis=1) == labels))
    assert backend.item(model.evaluate(x_host, np.array(labels))[1]) == np.sum(reference.argmax(axis=1) == labels)
    assert model.predict_proba(x_host).shape == (5, 2)


def test_host_inputs_of_other_kinds_and_training_inputs_stay_strict(backend):
    model = xpnn.mlp([2, 2], backend=backend)
    with pytest.raises(TypeError, match="expected real numbers, got a NumPy array of dtype <U1"):
        model.predict(np.array([["a", "b"]]))
    if backend._library != "numpy":
        with pytest.raises(TypeError, match=r"expected an array of the .* backend.*backend\.asarray"):
            model.loss(np.ones((2, 2)), backend.asarray(np.array([0, 1])))


def test_summary_with_input_shape_lists_output_shapes_and_counts(backend):
    model = xpnn.Sequential([Affine(8, 16), BatchNorm1d(16), ReLU(), Dropout(0.1), Affine(16, 3)], backend=backend)
    model.freeze(1)
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    rows = {line.split()[0]: line for line in lines if line[:1].isdigit()}
    assert "Output shape" in text and "input (N, 8)" in lines[0]
    assert "(N, 16)" in rows["0"] and "(N, 3)" in rows["4"]
    assert rows["0"].split()[-2:] == [f"{8 * 16 + 16:,}", "yes"]
    assert rows["1"].split()[-2:] == ["32", "no"]
    assert rows["2"].split()[-2:] == ["0", "-"]
    total = 8 * 16 + 16 + 2 * 16 + 16 * 3 + 3
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {total - 32:,}" in text and "Non-trainable params: 32" in text


def test_summary_without_a_known_input_shape_shows_parameters_only():
    model = xpnn.Sequential([Tanh(), Affine(4, 2)])
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    assert "Output shape" not in "\n".join(lines) and "Total params: 10" in lines
    model.summary((4,), print_fn=lines.append)
    assert any("(N, 2)" in line for line in lines)
    with pytest.raises(ValueError, match=r"layer 1: Affine\(n_in=4.*expects samples of shape \(4,\), got \(5,\)"):
        model.summary((5,))


def test_summary_prints_by_default(capsys):
    xpnn.mlp([3, 2]).summary()
    assert "Total params: 8" in capsys.readouterr().out


def test_repr_shows_output_shapes_only_when_the_input_shape_is_known():
    text = repr(xpnn.mlp([784, 256, 10]).freeze(0))
    assert "input (N, 784)" in text and "(0) Affine(n_in=784, n_out=256, init='he') -> (N, 256)  [frozen]" in text
    assert "203,530 parameters (200,960 frozen)" in text
    assert "->" not in repr(xpnn.Sequential([ReLU(), Affine(3, 2)]))


def test_output_shape_of_layers():
    assert Affine(3, 5).output_shape((3,)) == (5,)
    assert BatchNorm1d(4).output_shape((4,)) == (4,)
    assert ReLU().output_shape((2, 7, 7)) == (2, 7, 7)
    with pytest.raises(ValueError, match=r"expects samples of shape \(3,\), got \(1, 28, 28\)"):
        Affine(3, 5).output_shape((1, 28, 28))


def test_non_strict_load_reports_missing_and_unexpected_keys(backend, rng):
    source = xpnn.mlp([3, 4, 2], backend=backend, seed=1)
    target = xpnn.mlp([3, 4, 5], backend=backend, seed=2)
    state = {k: v for k, v in source.state_dict().items() if k.startswith("0.")}
    state["9.W"] = np.zeros((2, 2))
    result = target.load_state_dict(state, strict=False)
    assert result.missing_keys == ["2.W", "2.b"] and result.unexpected_keys == ["9.W"]
    np.testing.assert_array_equal(host(backend, target[0].params["W"]), host(backend, source[0].params["W"]))
    with pytest.raises(xpnn.FormatError, match=r"'2.W' has shape \(4, 2\), the model expects \(4, 5\)"):
        target.load_state_dict(source.state_dict(), strict=False)
    with pytest.raises(xpnn.FormatError, match=r"missing keys \['2.W', '2.b'\], unexpected keys \['9.W'\]"):
        target.load_state_dict(state)
    assert tuple(source.load_state_dict(source.state_dict())) == ([], [])


def test_load_state_dict_refuses_non_arrays_and_integer_weights_before_changing_anything():
    model = xpnn.mlp([3, 2])
    before = model.backend.to_numpy(model[0].params["W"]).copy()
    state = {k: model.backend.to_numpy(v) for k, v in model.state_dict().items()}
    with pytest.raises(xpnn.FormatError, match="'0.b' is a float, expected an array of shape"):
        model.load_state_dict({**{k: v + 1 for k, v in state.items()}, "0.b": 0.0})
    with pytest.raises(xpnn.FormatError, match="'0.W' has dtype int64, expected floating point"):
        model.load_state_dict({**state, "0.W": np.zeros((3, 2), dtype=np.int64)})
    np.testing.assert_array_equal(model.backend.to_numpy(model[0].params["W"]), before)


@pytest.mark.parametrize("dtype", ["float64", np.float64, np.dtype("float64"), "float32", np.float32])
def test_get_backend_takes_dtypes_as_well_as_names(dtype):
    expected = np.dtype(dtype).name
    assert xpnn.get_backend("cpu", dtype=dtype).dtype_name == expected
    assert xpnn.mlp([2, 2], backend=xpnn.get_backend("cpu", dtype)).predict([[1, 2]]).dtype == np.dtype(expected)


def test_get_backend_takes_library_dtypes_and_refuses_others():
    torch = pytest.importorskip("torch")
    assert xpnn.get_backend("torch", dtype=torch.float64).dtype_name == "float64"
    for bad in (np.int64, "float16", torch.float16, None):
        with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
            xpnn.get_backend("cpu", dtype=bad)


# ---------------------------------------------------------------------- the seeds' initializers by name
def draw(name, shape=(400, 100), **kwargs):
    return get_initializer(name, **kwargs)(np.random.default_rng(0), shape)


def test_fcn_xavier_is_randn_times_sqrt_2_over_fan_out_not_glorot_or_he():
    w = draw("fcn_xavier")
    assert w.std() == pytest.approx(np.sqrt(2 / 100), rel=0.02)  # fan_out = 100
    assert abs(w.mean()) < 0.005
    assert draw("he").std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert draw("xavier").std() == pytest.approx(np.sqrt(2 / 500), rel=0.02)
    model = xpnn.mlp([784, 256, 128, 10], init="fcn_xavier")
    assert model.backend.to_numpy(model[4].params["W"]).std() == pytest.approx(np.sqrt(2 / 10), rel=0.1)


def test_every_seed_initializer_is_available_by_name():
    uniform = draw("uniform")  # 11 lines: 2 * random - 1
    assert uniform.min() >= -1 and uniform.max() < 1 and uniform.min() < -0.99 and uniform.max() > 0.99
    normal = draw("normal")  # chapter 5 and fcn: 0.01 * randn
    assert normal.std() == pytest.approx(0.01, rel=0.02)
    fcn_uniform = draw("fcn_uniform")  # fcn: rand * 0.01
    assert fcn_uniform.min() >= 0 and fcn_uniform.max() < 0.01 and fcn_uniform.mean() == pytest.approx(0.005, rel=0.02)
    for name in ("uniform", "normal", "fcn_xavier", "fcn_uniform"):
        assert isinstance(xpnn.mlp([3, 2], init=name)[0], Affine)


def test_regression_end_to_end_with_host_data():
    rng = np.random.default_rng(0)
    x = rng.random((256, 2))
    y = (3 * x[:, 0] + 2 * x[:, 1])[:, None]
    model = xpnn.mlp([2, 16, 1], loss=MeanSquaredError(), seed=0)
    opt = xpnn.optim.Adam(model, lr=0.01)
    xb, yb = model.backend.asarray(x), model.backend.asarray(y)
    start = float(model.evaluate(x, y)[0])
    for _ in range(300):
        model.loss(xb, yb)
        model.backward()
        opt.step()
    assert float(model.evaluate(x, y)[0]) < start / 50


def test_caches_a_layer_builds_in_evaluation_persist_between_predictions():
    class Cached(xpnn.Layer):
        builds = 0

        def forward(self, x, *, train=False):
            if getattr(self, "index", None) is None:
                Cached.builds += 1
                self.index = self.xp.arange(x.shape[1])
            return x

        def backward(self, dy):
            return dy

    model = xpnn.Sequential([Affine(3, 2), Cached()])
    for _ in range(3):
        model.predict(np.ones((4, 3)))
    assert Cached.builds == 1
