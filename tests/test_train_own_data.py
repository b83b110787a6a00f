"""``python -m xpnn.train --data FILE``: your own .npz or .csv from the command line, then ``xpnn.load`` of what it
saved, ready to predict; and the flags that cannot go together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import xpnn
from tests.cli_helpers import cli, metrics, one_error_line
from tests.idx import make_dataset
from xpnn.cli import train as run_cli
from xpnn.io.datafile import load_data_file
from xpnn.nn.layers import Standardize

FAST = ["--epochs", "1", "--batch-size", "32", "--hidden", "16", "--quiet"]


@pytest.fixture(scope="module")
def iris(tmp_path_factory) -> Path:
    """Three named classes that two of four features on very different scales separate."""
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 4))
    x[:, 0] += 3 * y
    x[:, 1] = 1000 * (x[:, 1] + 2 * (y == 1))
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    path = tmp_path_factory.mktemp("csv") / "iris.csv"
    lines = ["petal,sepal,width,height,species"]
    lines += [",".join([*(f"{v:.6g}" for v in row), name]) for row, name in zip(x, names, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Two-channel 8x8 unsigned-byte images, class 1 bright in the top rows of channel 1."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 120, (240, 2, 8, 8)).astype(np.uint8)
    y = np.arange(240) % 2
    x[y == 1, 1, :3, :] += 120
    path = tmp_path_factory.mktemp("npz") / "images.npz"
    np.savez(path, x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    return path


def main(*flags: str) -> int:
    try:
        return run_cli.main([*map(str, flags)])
    except SystemExit as error:  # argparse refuses a flag's value
        return int(error.code)


# ---------------------------------------------------------------------- train, save, load, predict
def test_csv_trains_the_mlp_and_the_checkpoint_predicts_named_classes(iris, tmp_path, capsys):
    save, log = tmp_path / "ck.npz", tmp_path / "m.jsonl"
    assert main("--data", iris, "--epochs", "8", "--batch-size", "16", "--hidden", "16", "--lr", "0.01",
                "--standardize", "--save", save, "--metrics", log) == 0
    out = capsys.readouterr().out
    assert "4-16-16-3" not in out and "4-16-3 relu MLP (standardized inputs)" in out
    assert "on iris.csv (label column 'species') (240 train / 60 test)" in out
    assert metrics(log)[-1]["test_accuracy"] > 0.85

    # The README's "load and predict", on what the command line saved:
    model = xpnn.load(save, backend="cpu")
    data = load_data_file(iris)
    assert model.class_names == data.class_names == ["setosa", "versicolor", "virginica"]
    assert isinstance(model[0], Standardize)
    predicted = np.asarray(model.predict(data.x_test)).argmax(axis=1)
    assert (predicted == data.y_test).mean() == pytest.approx(metrics(log)[-1]["test_accuracy"])
    named = [model.class_names[i] for i in predicted]
    assert set(named) <= set(model.class_names)


def test_standardization_uses_the_training_rows_only_and_predict_applies_it(iris, tmp_path):
    save = tmp_path / "ck.npz"
    assert main("--data", iris, *FAST, "--standardize", "--val", "30", "--save", save) == 0
    model = xpnn.load(save)
    data = load_data_file(iris, val=30, seed=1)  # the run's --seed 1 picks the validation rows
    np.testing.assert_allclose(model[0].buffers["mean"], data.x_train.mean(axis=0, dtype=np.float64), rtol=1e-5)
    np.testing.assert_allclose(model[0].buffers["std"], data.x_train.std(axis=0, dtype=np.float64), rtol=1e-5)
    scaled = (data.x_test - model[0].buffers["mean"]) / model[0].buffers["std"]
    rest = xpnn.Sequential(model.layers[1:], backend="cpu")
    np.testing.assert_allclose(model.predict(data.x_test), rest.predict(scaled.astype(np.float32)), atol=1e-5)


def test_npz_images_train_the_cnn_and_the_checkpoint_takes_images_or_flat_rows(images, tmp_path, capsys):
    save = tmp_path / "cnn.npz"
    assert main("--data", images, "--model", "cnn", "--epochs", "2", "--batch-size", "20", "--standardize",
                "--save", save, "--quiet") == 0
    assert "test accuracy" in capsys.readouterr().out
    model = xpnn.load(save)
    assert model.input_shape == (2, 8, 8) and model[0].shape == (2, 1, 1)
    raw = np.load(images)
    x = raw["x_test"].astype(np.float32) / 255
    by_image = np.asarray(model.predict(x))
    by_row = np.asarray(model.predict(x.reshape(len(x), -1)))  # what load_data_file and load_dataset give
    np.testing.assert_array_equal(by_image, by_row)
    assert model.accuracy(x, raw["y_test"]) > 0.9


def test_the_mlp_trains_on_npz_images_as_rows(images, capsys):
    assert main("--data", images, *FAST) == 0
    assert "done: 1 epochs" in capsys.readouterr().out


def test_a_cnn_checkpoint_of_an_idx_dataset_predicts_the_loaders_flat_rows(tmp_path):
    folder = make_dataset(tmp_path / "idx", n_train=120, n_test=40)
    save = tmp_path / "cnn.npz"
    assert main("--data-dir", folder, "--model", "cnn", "--epochs", "1", "--batch-size", "40", "--quiet",
                "--save", save) == 0
    model = xpnn.load(save)
    data = xpnn.data.load_dataset("mine", folder)
    assert data.x_test.shape == (40, 64) and model.input_shape == (1, 8, 8)
    assert model.predict(data.x_test).shape == (40, 3)
    assert 0 <= model.accuracy(data.x_test, data.y_test) <= 1


def test_resume_takes_the_data_file_and_its_settings_from_the_checkpoint(iris, tmp_path, capsys):
    save = tmp_path / "ck.npz"
    assert main("--data", iris, *FAST, "--standardize", "--test-size", "0.3", "--save", save) == 0
    assert main("--resume", save, "--save", save, "--epochs", "2", "--quiet") == 0
    header = xpnn.io.serialization.read_npz(save, "checkpoint")[1]
    assert header["epoch"] == 2 and header["settings"]["standardize"] is True
    assert header["settings"]["test_size"] == 0.3
    capsys.readouterr()
    other = tmp_path / "other.csv"
    other.write_text(iris.read_text().replace("setosa", "Setosa"))
    assert main("--data", other, "--resume", save, "--epochs", "3", "--quiet") == 2
    assert "trained on other data than --data" in capsys.readouterr().err
    assert main("--data", iris, "--resume", save, "--epochs", "3", "--quiet", "--test-size", "0.2") == 2
    assert "--test-size 0.2 differs from the checkpoint's 0.3" in capsys.readouterr().err
    assert main("--resume", save, "--epochs", "3", "--quiet", "--target", "petal") == 2  # --data from the checkpoint
    assert "--target petal differs from the checkpoint's" in capsys.readouterr().err


def test_val_and_test_size_split_the_file(iris, tmp_path):
    log = tmp_path / "m.jsonl"
    assert main("--data", iris, *FAST, "--val", "50", "--test-size", "0.1", "--metrics", log) == 0
    assert "val_accuracy" in metrics(log)[0]
    data = load_data_file(iris, val=50, test_size=0.1)
    assert (data.x_train.shape[0], data.x_val.shape[0], data.x_test.shape[0]) == (220, 50, 30)


# ---------------------------------------------------------------------- refused: flags
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset", "fashion-mnist"], "--data and --dataset cannot be used together"),
        (["--data-dir", "x"], "--data and --data-dir cannot be used together"),
        (["--model", "cnn"], "--model cnn does not fit iris.csv"),
        (["--test-size", "1.5"], "--test-size: must be between 0 and 1"),
        (["--target", "price"], None),
    ],
    ids=["with-dataset", "with-data-dir", "cnn-on-rows", "test-size-range", "unknown-target"],
)
def test_flags_that_do_not_fit_the_data(iris, flags, message, capsys):
    code = main("--data", iris, "--epochs", "1", "--batch-size", "32", "--quiet", *flags)
    err = capsys.readouterr().err.strip()
    if err.startswith("usage:"):  # argparse refused the value: its usage, then one error line
        err = err.splitlines()[-1]
    assert len(err.splitlines()) == 1, err
    if message is None:  # a data problem: one line, exit 1, as for IDX files
        assert code == 1 and "--target 'price': no such column" in err
    else:
        assert code == 2 and message in err, err


@pytest.mark.parametrize(("flag", "value"), [("--target", "species"), ("--test-size", "0.3")])
def test_csv_flags_without_data_are_usage_errors(tmp_path, flag, value, capsys):
    assert main("--data-dir", tmp_path, *FAST, flag, value) == 2
    assert f"{flag} applies to a --data file" in capsys.readouterr().err


def test_flags_that_the_file_contradicts(images, iris, capsys):
    assert main("--data", images, *FAST, "--test-size", "0.3") == 2
    assert "has its own test set" in capsys.readouterr().err
    assert main("--data", images, *FAST, "--target", "label") == 2
    assert "--target names a CSV column" in capsys.readouterr().err


def test_save_over_the_data_file_is_refused(iris, capsys):
    before = iris.read_bytes()
    assert main("--data", iris, *FAST, "--save", iris) == 2
    assert "--save" in capsys.readouterr().err and iris.read_bytes() == before


# ---------------------------------------------------------------------- refused: files, from a real process
@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.csv", "a,b,label\n1,2,0\n3,oops,1\n", "line 3, column 'b': 'oops' is not a number"),
        ("bad.csv", "a,b,label\n1,2,0\n3,4\n", "line 3 has 2 fields, the header has 3 columns"),
        ("bad.csv", "a,b,label\n1,2,0\n3,nan,1\n", "line 3, column 'b': nan is not a finite number"),
        ("bad.csv", "a,b,label\n1,2,0.5\n3,4,1\n", "label 0.5 is not a whole number"),
        ("bad.csv", "", "is empty"),
        ("bad.npz", "not a zip", "not a readable .npz file"),
        ("missing.csv", None, "cannot read --data"),
        ("folder.csv", "dir", "is a directory"),
    ],
    ids=["text", "short-row", "nan", "float-label", "empty", "not-npz", "missing", "directory"],
)
def test_bad_data_files_end_the_command_with_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    result = cli("--data", path, *FAST)
    line = one_error_line(result)
    assert result.returncode == 1 and result.stdout == ""
    assert line.startswith("python -m xpnn.train: error: ") and message in line and str(path) in line


def test_an_npz_of_idx_images_trains_exactly_as_the_idx_folder(tmp_path):
    folder = make_dataset(tmp_path / "idx", n_train=200, n_test=60)
    read = {key: xpnn.data.read_idx(path) for key, path in xpnn.data.find_files(folder).items()}
    np.savez_compressed(tmp_path / "same.npz", x_train=read["train_images"], y_train=read["train_labels"],
                        x_test=read["test_images"], y_test=read["test_labels"])
    logs = tmp_path / "idx.jsonl", tmp_path / "npz.jsonl"
    assert main("--data-dir", folder, *FAST, "--epochs", "2", "--metrics", logs[0]) == 0
    assert main("--data", tmp_path / "same.npz", *FAST, "--epochs", "2", "--metrics", logs[1]) == 0
    for a, b in zip(metrics(logs[0]), metrics(logs[1]), strict=True):
        assert (a["train_loss"], a["test_loss"], a["test_accuracy"]) == (b["train_loss"], b["test_loss"],
                                                                         b["test_accuracy"])
