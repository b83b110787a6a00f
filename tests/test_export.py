"""ONNX export: every built-in layer, run in onnxruntime against predict / predict_proba, the CLI and bad inputs."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import xpnn
from xpnn.cli.export import main
from xpnn.model.onnx import ExportError, register_onnx_rule
from xpnn.nn.layers import (
    ELU,
    Affine,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Standardize,
    Tanh,
)
from xpnn.nn.losses import BCEWithLogits, MeanSquaredError

onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install onnx onnxruntime)")
ort = pytest.importorskip("onnxruntime", reason="running exported models needs onnxruntime")

TOLERANCE = 1e-5  # max abs difference in float32


def with_random_state(model, seed=0):
    """Every parameter and running statistic drawn at random (variances positive), so that no exported weight
    can hide behind an initial value of 0 or 1."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, value in model.state_dict().items():
        if not model.backend.xp.isdtype(value.dtype, "real floating"):
            continue  # Dropout's seed and step
        shape = tuple(value.shape)
        positive = name.endswith(("running_var", ".std"))
        state[name] = rng.uniform(0.5, 2.0, shape) if positive else rng.normal(0, 0.5, shape)
    model.load_state_dict(state, strict=False)
    return model


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def assert_matches(model, path, shape, expected="predict_proba", seed=1):
    """One file, batch sizes 1 and 7: onnxruntime gives what the model gives (dynamic batch axis)."""
    x = np.random.default_rng(seed).standard_normal((7, *shape)).astype(np.float32)
    for n in (1, 7):
        got = run(path, x[:n])
        want = model.backend.to_numpy(getattr(model, expected)(x[:n]))
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) <= TOLERANCE


MLPS = {
    "relu": lambda: xpnn.mlp([6, 8, 5], activation="relu"),
    "leaky_relu": lambda: xpnn.Sequential([Affine(6, 8), LeakyReLU(0.2), Affine(8, 5)]),
    "sigmoid": lambda: xpnn.mlp([6, 8, 5], activation="sigmoid"),
    "tanh": lambda: xpnn.mlp([6, 8, 5], activation="tanh"),
    "elu": lambda: xpnn.Sequential([Affine(6, 8), ELU(0.7), Affine(8, 5)]),
    "dropout": lambda: xpnn.mlp([6, 8, 7, 5], dropout=0.4),
    "batchnorm": lambda: xpnn.mlp([6, 8, 7, 5], batchnorm=True),
    "no-bias": lambda: xpnn.Sequential([Affine(6, 8, bias=False), ReLU(), Affine(8, 5, bias=False)]),
    "standardize": lambda: xpnn.Sequential([Standardize((6,)), Affine(6, 8), ReLU(), Affine(8, 5)], input_shape=(6,)),
    "bce": lambda: xpnn.mlp([6, 8, 3], loss=BCEWithLogits()),
    "bce-one-output": lambda: xpnn.mlp([6, 8, 1], loss=BCEWithLogits()),
}


@pytest.mark.parametrize("name", MLPS)
@pytest.mark.parametrize("output", ["probabilities", "logits"])
def test_mlp_runs_in_onnxruntime_as_in_xpnn(tmp_path, name, output):
    model = with_random_state(MLPS[name]())
    path = model.to_onnx(tmp_path / "model.onnx", output=output)
    assert_matches(model, path, (6,), "predict_proba" if output == "probabilities" else "predict")


def test_probabilities_are_the_default_for_a_classifier(tmp_path):
    model = with_random_state(xpnn.mlp([6, 8, 5]))
    path = xpnn.export_onnx(model, tmp_path / "model.onnx")
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["probabilities"]
    assert_matches(model, path, (6,), "predict_proba")
    assert np.allclose(run(path, np.ones((3, 6), np.float32)).sum(axis=1), 1.0)


def test_a_regression_exports_its_outputs_and_refuses_probabilities(tmp_path):
    model = with_random_state(xpnn.mlp([6, 8, 2], loss=MeanSquaredError()))
    path = model.to_onnx(tmp_path / "model.onnx")
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits"]
    assert_matches(model, path, (6,), "predict")
    with pytest.raises(ExportError, match="regression loss.*output='logits'"):
        model.to_onnx(tmp_path / "other.onnx", output="probabilities")
    assert not (tmp_path / "other.onnx").exists()


def cnn_model(*layers, input_shape):
    return xpnn.Sequential(layers, input_shape=input_shape)


CNNS = {
    "builder": lambda: xpnn.cnn([1, 4, 6], [16, 10], image_size=12, dropout=0.3),
    "builder-batchnorm": lambda: xpnn.cnn([2, 4], [5], image_size=(9, 7), batchnorm=True, activation="elu"),
    "stride-padding": lambda: cnn_model(Conv2d(3, 4, 3, stride=2, padding=1), ReLU(), Flatten(), Affine(4 * 5 * 4, 3),
                                        input_shape=(3, 9, 8)),
    "rectangular": lambda: cnn_model(Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(0, 1)), Tanh(), Flatten(),
                                     Affine(3 * 4 * 9, 4), input_shape=(2, 9, 8)),
    "no-bias": lambda: cnn_model(Conv2d(2, 3, 3, bias=False), Sigmoid(), Flatten(), Affine(3 * 5 * 4, 3),
                                 input_shape=(2, 7, 6)),
    "maxpool-overlapping": lambda: cnn_model(Conv2d(1, 3, 3, padding=1), MaxPool2d(3, stride=2), Flatten(),
                                             Affine(3 * 4 * 3, 4), input_shape=(1, 9, 8)),
    "avgpool": lambda: cnn_model(Conv2d(1, 3, 3), ReLU(), AvgPool2d(2), Flatten(), Affine(3 * 3 * 3, 4),
                                 input_shape=(1, 8, 8)),
    "avgpool-overlapping-edge": lambda: cnn_model(AvgPool2d((3, 2), stride=(2, 3)), Flatten(), Affine(2 * 3 * 3, 4),
                                                  input_shape=(2, 7, 8)),
    "standardize-channels": lambda: cnn_model(Standardize((2, 1, 1)), Conv2d(2, 3, 3), ReLU(), Flatten(),
                                              Affine(3 * 4 * 5, 3), input_shape=(2, 6, 7)),
    "batchnorm2d": lambda: cnn_model(Conv2d(2, 4, 3, padding=1), BatchNorm2d(4), LeakyReLU(0.1), MaxPool2d(2),
                                     Dropout(0.5), Flatten(), Affine(4 * 3 * 3, 3), input_shape=(2, 6, 7)),
}


@pytest.mark.parametrize("name", CNNS)
@pytest.mark.parametrize("output", ["probabilities", "logits"])
def test_cnn_runs_in_onnxruntime_as_in_xpnn(tmp_path, name, output):
    model = with_random_state(CNNS[name]())
    path = model.to_onnx(tmp_path / "model.onnx", output=output)
    assert_matches(model, path, model.input_shape, "predict_proba" if output == "probabilities" else "predict")


def test_batch_axis_is_dynamic_and_named(tmp_path):
    model = xpnn.cnn([1, 4], [10], image_size=8)
    graph = onnx.load(str(model.to_onnx(tmp_path / "m.onnx"))).graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*graph.input, *graph.output)]
    assert dims == [["N", 1, 8, 8], ["N", 10]]


def test_opset_is_current_and_selectable(tmp_path):
    model = xpnn.mlp([4, 3])
    assert onnx.load(str(model.to_onnx(tmp_path / "a.onnx"))).opset_import[0].version == 17
    path = model.to_onnx(tmp_path / "b.onnx", opset=19)
    assert onnx.load(str(path)).opset_import[0].version == 19
    assert_matches(model, path, (4,))
    with pytest.raises(ExportError, match="opset must be an integer >= 13"):
        model.to_onnx(tmp_path / "c.onnx", opset=9)
    with pytest.raises(ExportError, match="opset 999 is newer than this onnx"):
        model.to_onnx(tmp_path / "c.onnx", opset=999)


def test_float64_model_exports_in_float64_when_asked(tmp_path):
    model = with_random_state(xpnn.mlp([6, 8, 5], batchnorm=True, backend=xpnn.get_backend("cpu", "float64")))
    path = model.to_onnx(tmp_path / "m.onnx", dtype="float64", output="logits")
    x = np.random.default_rng(0).standard_normal((7, 6))
    assert np.max(np.abs(run(path, x) - model.predict(x))) < 1e-12


def test_a_model_on_another_backend_exports_without_moving(tmp_path):
    pytest.importorskip("array_api_strict")
    model = with_random_state(xpnn.mlp([6, 8, 5], backend="array_api_strict"))
    assert_matches(model, model.to_onnx(tmp_path / "m.onnx"), (6,))
    assert model.backend.name == "array_api_strict"


def test_model_without_input_shape_needs_one(tmp_path):
    model = xpnn.Sequential([Conv2d(1, 2, 3), Flatten(), Affine(2 * 4 * 4, 3)])
    with pytest.raises(ExportError, match=r"does not know its input shape; pass input_shape, e\.g\."):
        model.to_onnx(tmp_path / "m.onnx")
    assert_matches(model, model.to_onnx(tmp_path / "m.onnx", input_shape=(1, 6, 6)), (1, 6, 6))
    with pytest.raises(ExportError, match=r"input_shape \(1, 9, 9\) does not fit the model"):
        model.to_onnx(tmp_path / "m.onnx", input_shape=(1, 9, 9))


# ---------------------------------------------------------------------- custom layers
class Swish(Layer):
    """x·sigmoid(x), with no export rule of its own."""

    def forward(self, x, *, train=False):
        return x * xpnn.layers.activations.sigmoid(self.xp, x)


class Scale(Layer):
    """A layer with a weight, exported through a rule registered in the test."""

    def initialize(self, rng):
        self.params["s"] = self.backend.asarray(rng.uniform(0.5, 2.0, (4,)))

    def forward(self, x, *, train=False):
        return x * self.params["s"]


def test_custom_layer_without_rule_is_one_line_naming_it_and_the_fix(tmp_path):
    model = xpnn.Sequential([Affine(3, 4), Swish(), Affine(4, 2)])
    with pytest.raises(ExportError) as error:
        model.to_onnx(tmp_path / "m.onnx")
    message = str(error.value)
    assert "\n" not in message
    assert "layer 1 (Swish) has no ONNX export rule" in message
    assert "xpnn.register_onnx_rule(Swish, rule)" in message
    assert not (tmp_path / "m.onnx").exists()


def test_a_subclass_of_a_built_in_layer_needs_its_own_rule(tmp_path):
    class DoubledReLU(ReLU):
        def forward(self, x, *, train=False):
            return 2 * super().forward(x, train=train)

    with pytest.raises(ExportError, match="DoubledReLU"):
        xpnn.Sequential([Affine(3, 4), DoubledReLU()]).to_onnx(tmp_path / "m.onnx")


def test_registered_rules_export_custom_layers_with_and_without_weights(tmp_path):
    @register_onnx_rule(Swish)
    def swish(layer, graph, x):
        return graph.node("Mul", [x, graph.node("Sigmoid", [x])])

    def scale(layer, graph, x):
        assert graph.input_shape == (4,)
        return graph.node("Mul", [x, graph.constant("s", layer.params["s"])])

    assert register_onnx_rule(Scale, scale) is scale
    try:
        model = with_random_state(xpnn.Sequential([Affine(3, 4), Swish(), Scale(), Affine(4, 2)]))
        path = model.to_onnx(tmp_path / "m.onnx", output="logits")
        assert_matches(model, path, (3,), "predict")
        names = {t.name for t in onnx.load(str(path)).graph.initializer}
        assert names == {"0.W", "0.b", "2.s", "3.W", "3.b"}  # named as in state_dict
    finally:
        from xpnn.model.onnx import _RULES

        _RULES.pop(Swish, None), _RULES.pop(Scale, None)


def test_register_onnx_rule_refuses_what_is_not_a_layer_or_a_rule():
    with pytest.raises(TypeError, match="expected a Layer subclass"):
        register_onnx_rule(int, lambda layer, graph, x: x)
    with pytest.raises(TypeError, match="must be callable"):
        register_onnx_rule(Swish, "Mul")


def test_dropout_only_model_still_has_an_output_node(tmp_path):
    model = xpnn.Sequential([Dropout(0.5)], input_shape=(3,), loss=MeanSquaredError())
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(run(model.to_onnx(tmp_path / "m.onnx"), x), x)


# ---------------------------------------------------------------------- writing and importing
def test_export_replaces_atomically_and_a_failed_export_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ExportError):
        xpnn.Sequential([Affine(3, 4), Swish()]).to_onnx(target)
    assert target.read_bytes() == b"old"
    xpnn.mlp([3, 2]).to_onnx(target)
    assert onnx.load(str(target)).graph.input[0].name == "input"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_output_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(xpnn.io.files.OutputError, match="directory"):
        xpnn.mlp([3, 2]).to_onnx(tmp_path)


def test_import_xpnn_does_not_import_onnx():
    code = "import sys, xpnn; xpnn.export_onnx; print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_missing_onnx_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match="pip install onnx onnxruntime"):
        xpnn.mlp([3, 2]).to_onnx(tmp_path / "m.onnx")


# ---------------------------------------------------------------------- command line
@pytest.fixture
def saved_cnn(tmp_path):
    model = with_random_state(xpnn.cnn([1, 3], [4], image_size=6, batchnorm=True))
    model.save(tmp_path / "model.npz")
    return model, tmp_path / "model.npz"


def test_cli_exports_a_model_file(saved_cnn, tmp_path, capsys):
    model, path = saved_cnn
    assert main([str(path), str(tmp_path / "out.onnx")]) == 0
    assert "out.onnx" in capsys.readouterr().out
    assert_matches(model, tmp_path / "out.onnx", (1, 6, 6))
    assert main([str(path), str(tmp_path / "logits.onnx"), "--output", "logits"]) == 0
    assert_matches(model, tmp_path / "logits.onnx", (1, 6, 6), "predict")


def test_cli_exports_the_model_of_a_training_checkpoint(tmp_path):
    from xpnn.training.checkpoint import save_checkpoint

    model = with_random_state(xpnn.mlp([6, 8, 5], batchnorm=True, dropout=0.2))
    save_checkpoint(tmp_path / "ckpt.npz", model, xpnn.optim.Adam(model, lr=0.01), 3, [], {})
    assert main([str(tmp_path / "ckpt.npz"), str(tmp_path / "out.onnx")]) == 0
    assert_matches(model, tmp_path / "out.onnx", (6,))


def test_cli_as_a_module_in_a_fresh_process(saved_cnn, tmp_path):
    _, path = saved_cnn
    result = subprocess.run([sys.executable, "-m", "xpnn.export", str(path), str(tmp_path / "o.onnx")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning either
    assert (tmp_path / "o.onnx").stat().st_size > 0


def cli_error(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return code, err[-1]


def test_cli_bad_inputs_are_one_line_errors(saved_cnn, tmp_path, capsys):
    model, path = saved_cnn
    out = tmp_path / "o.onnx"
    code, line = cli_error(capsys, tmp_path / "missing.npz", out)
    assert code == 2 and "missing.npz: no such file" in line
    code, line = cli_error(capsys, tmp_path, out)
    assert code == 2 and "is a directory" in line
    (tmp_path / "notes.txt").write_text("not a model")
    code, line = cli_error(capsys, tmp_path / "notes.txt", out)
    assert code == 1 and "notes.txt" in line and "npz" in line
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    code, line = cli_error(capsys, tmp_path / "plain.npz", out)
    assert code == 1 and "plain.npz" in line
    code, line = cli_error(capsys, path, tmp_path)
    assert code == 2 and "directory" in line
    code, line = cli_error(capsys, path, path)
    assert code == 2 and "same file" in line
    assert xpnn.load(path).n_parameters == model.n_parameters  # the model file is intact
    code, line = cli_error(capsys, path, out, "--output", "proba")
    assert code == 2 and "invalid choice" in line
    code, line = cli_error(capsys, path, out, "--opset", "9")
    assert code == 2 and "13 or later" in line
    code, line = cli_error(capsys, path, out, "--opset", "999")
    assert code == 2 and "this onnx knows opsets up to" in line
    code, line = cli_error(capsys, "", out)
    assert code == 2 and "MODEL: empty path" in line
    code, line = cli_error(capsys, path, out, "--input-shape", "1,x,6")
    assert code == 2 and "positive integers" in line
    code, line = cli_error(capsys, path, out, "--input-shape", "1,9,9")
    assert code == 2 and "does not fit the model" in line
    assert not out.exists()


def test_cli_regression_refuses_probabilities_as_usage(tmp_path, capsys):
    xpnn.mlp([3, 2], loss=MeanSquaredError()).save(tmp_path / "reg.npz")
    code, line = cli_error(capsys, tmp_path / "reg.npz", tmp_path / "o.onnx", "--output", "probabilities")
    assert code == 2 and "regression" in line


def test_cli_custom_layer_without_rule(tmp_path, capsys):
    xpnn.Sequential([Affine(3, 4), Swish(), Affine(4, 2)]).save(tmp_path / "custom.npz")
    code, line = cli_error(capsys, tmp_path / "custom.npz", tmp_path / "o.onnx")
    assert code == 1 and "(Swish) has no ONNX export rule" in line and "register_onnx_rule" in line
    assert not (tmp_path / "o.onnx").exists()


def test_a_float64_graph_onnxruntime_cannot_run_is_written_with_one_warning(tmp_path, capsys):
    """onnxruntime's CPU kernels have no float64 Conv: the file is valid ONNX, but the user hears it at export."""
    pytest.importorskip("onnxruntime")
    model = xpnn.Sequential([Conv2d(1, 2, 3, padding=1), Flatten(), Affine(2 * 6 * 6, 3)])
    with pytest.warns(UserWarning, match=r"onnxruntime cannot run this float64 graph \(.*Conv"):
        model.to_onnx(tmp_path / "c.onnx", input_shape=(1, 6, 6), dtype="float64")
    model.save(tmp_path / "c.npz")
    assert main([str(tmp_path / "c.npz"), str(tmp_path / "cli.onnx"), "--dtype", "float64",
                 "--input-shape", "1,6,6"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m xpnn.export: warning: onnxruntime cannot run this float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32, and float64 graphs it can run, export silently
        model.to_onnx(tmp_path / "c32.onnx", input_shape=(1, 6, 6))
        xpnn.mlp([4, 3]).to_onnx(tmp_path / "m64.onnx", dtype="float64")


def test_input_shape_may_be_one_feature_count(tmp_path):
    model = xpnn.mlp([4, 3])
    with pytest.raises(ExportError, match=r"input_shape \(5,\) does not fit"):
        model.to_onnx(tmp_path / "m.onnx", input_shape=5)
    assert model.to_onnx(tmp_path / "m.onnx", input_shape=4).exists()


@pytest.mark.parametrize("thing", [object(), "model.npz", [xpnn.Affine(2, 2)]])
def test_something_other_than_a_model_is_refused_in_one_line(tmp_path, thing):
    with pytest.raises(TypeError, match=r"^export_onnx: expected an xpnn Sequential, got \w+$"):
        xpnn.export_onnx(thing, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
