"""xpnn.fit as a Keras or PyTorch user expects it: host arrays in, a history out, any task, callbacks."""

from __future__ import annotations

import numpy as np
import pytest

import xpnn
from xpnn.training.callbacks import EarlyStopping, History, LambdaCallback


def blobs(n=240, classes=3, features=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((n, features)) + 3.0 * np.eye(classes, features)[labels]
    return x.astype(np.float32), labels


def test_fit_trains_a_classifier_on_every_backend(backend):
    x, y = blobs()
    model = xpnn.mlp([6, 16, 3], backend=backend, seed=0)
    history = xpnn.fit(model, xpnn.optim.Adam(model, lr=0.02), x, y, epochs=6, batch_size=32, verbose=False,
                       validation_split=0.25)
    assert isinstance(history, History) and [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    assert history["train_loss"][-1] < history["train_loss"][0] / 2
    assert history[-1]["val_accuracy"] > 0.9
    assert set(history.history) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"}


def test_integer_and_one_hot_labels_train_identically():
    x, y = blobs()
    results = []
    for target in (y, np.eye(3)[y]):
        model = xpnn.mlp([6, 8, 3], backend=xpnn.get_backend("cpu", "float64"), seed=1)
        history = xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, target, epochs=2, batch_size=50, verbose=False)
        results.append((history.rows, model.state_dict()))
    (rows_a, state_a), (rows_b, state_b) = results
    for a, b in zip(rows_a, rows_b, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)
        assert a["train_accuracy"] == b["train_accuracy"]
    for name in state_a:
        np.testing.assert_allclose(state_a[name], state_b[name], rtol=1e-12, atol=1e-12)


def test_binary_classification_reports_thresholded_accuracy(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 2)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.float32)  # (N,) targets become (N, 1)
    model = xpnn.mlp([2, 8, 1], loss=xpnn.BCEWithLogits(), backend=backend, seed=0)
    history = xpnn.fit(model, xpnn.optim.Adam(model, lr=0.05), x, y, epochs=1, batch_size=300, verbose=False)
    first = history[0]["train_accuracy"]
    assert 0.2 < first < 0.9  # an untrained model is not "100 % right" on (N, 1) targets
    history = xpnn.fit(model, xpnn.optim.Adam(model, lr=0.05), x, y, epochs=30, batch_size=50, verbose=False)
    assert history[-1]["train_accuracy"] > 0.95


def test_regression_has_a_loss_and_no_accuracy(backend):
    rng = np.random.default_rng(0)
    x = rng.random((400, 2)).astype(np.float32)
    y = 3 * x[:, 0] + 2 * x[:, 1]  # (N,) targets become (N, 1)
    model = xpnn.mlp([2, 10, 1], loss=xpnn.MeanSquaredError(), backend=backend, seed=0)
    history = xpnn.fit(model, xpnn.optim.Adam(model, lr=0.02), x, y, epochs=20, batch_size=20, verbose=False,
                       validation_data=(x[:50], y[:50]))
    assert "train_accuracy" not in history[0] and "val_accuracy" not in history[0]
    assert history["val_loss"][-1] < history["val_loss"][0] / 10


def test_every_named_evaluation_set_is_reported():
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    history = xpnn.fit(model, xpnn.optim.Adam(model, lr=0.01), x, y, epochs=1, verbose=False,
                       eval_sets={"holdout": (x[:40], y[:40]), "test": (x[40:80], y[40:80])})
    assert {"holdout_loss", "holdout_accuracy", "test_loss", "test_accuracy"} <= set(history[0])


def test_early_stopping_stops_and_restores_the_best_weights():
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    seen = {}
    record = LambdaCallback(lambda trainer, row: seen.setdefault(row["epoch"], trainer.snapshot()))
    # Training loss only falls, so with mode="max" epoch 1 stays the best and patience runs out.
    stop = EarlyStopping(monitor="train_loss", mode="max", patience=2)
    history = xpnn.fit(model, xpnn.optim.Adam(model, lr=0.01), x, y, epochs=10, verbose=False,
                       callbacks=[record, stop])
    assert len(history) == 3 and stop.stopped_epoch == 3 and stop.best_epoch == 1  # 2 epochs without improvement
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, seen[1][name])
    assert not np.array_equal(seen[3]["0.W"], seen[1]["0.W"])


def test_early_stopping_on_validation_loss_without_validation_data_says_what_to_pass():
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    with pytest.raises(ValueError, match="has no 'val_loss'.*validation_data= or validation_split="):
        xpnn.fit(model, xpnn.optim.Adam(model), x, y, epochs=2, verbose=False, callbacks=[EarlyStopping()])


def test_a_callback_can_stop_training():
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)

    def stop_after_two(trainer, row):
        trainer.stop_training = row["epoch"] == 2

    history = xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, epochs=9, verbose=False,
                       callbacks=[LambdaCallback(stop_after_two)])
    assert len(history) == 2


def test_fit_prints_one_line_per_epoch(capsys):
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, epochs=2, validation_split=0.2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  train loss") and "val loss" in lines[0]


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((10, 5), np.float32), np.zeros(10, int), "does not fit the model"),
        (np.zeros((10, 6), np.float32), np.zeros(9, int), "x has 10 samples but y has shape"),
        (np.zeros((10, 6), np.float32), np.full(10, 3), r"labels must lie in \[0, 3\)"),
        (np.zeros((10, 6), np.float32), np.full(10, -1), r"labels must lie in \[0, 3\)"),
        (np.zeros((10, 6), np.float32), np.zeros(10, np.float32), "class labels must be integers"),
        (np.zeros((10, 6), np.float32), np.zeros((10, 4), np.float32), r"one-hot targets must be floats of shape"),
        (np.full((10, 6), np.nan, np.float32), np.zeros(10, int), "NaN or infinite"),
        (np.zeros((0, 6), np.float32), np.zeros(0, int), "N >= 1"),
        (np.zeros(6, np.float32), np.zeros(1, int), r"shape \(N, features"),
        (np.array([["a"] * 6] * 2), np.zeros(2, int), "must hold numbers"),
    ],
)
def test_data_that_does_not_fit_is_refused_before_any_training(x, y, message):
    model = xpnn.mlp([6, 8, 3], seed=0)
    before = {k: np.copy(v) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, epochs=1, verbose=False)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"validation_split": 1.0}, r"validation_split must be in \[0, 1\)"),
        ({"validation_split": 0.1, "validation_data": ([[0.0] * 6], [0])}, "not both"),
        ({"validation_data": ([[0.0] * 6],)}, "must be a pair"),
        ({"eval_sets": {"val": ([[0.0] * 6], [0])}, "validation_split": 0.2}, "is taken"),
        ({"eval_sets": {"my set": ([[0.0] * 6], [0])}}, "not a plain name"),
        ({"validation_data": (np.zeros((2, 7), np.float32), [0, 1])}, "val data does not fit the model"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    with pytest.raises(ValueError, match=message):
        xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, verbose=False, **{"epochs": 1, **kwargs})


def test_device_arrays_are_refused_with_the_way_to_copy_them():
    torch = pytest.importorskip("torch")
    model = xpnn.mlp([6, 8, 3], seed=0)
    with pytest.raises(TypeError, match=r"takes host data .*copy it to NumPy first"):
        xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), torch.zeros(4, 6), [0, 1, 2, 0], verbose=False)


def test_lists_are_accepted_like_arrays():
    model = xpnn.mlp([2, 4, 2], seed=0)
    history = xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), [[0.0, 1.0], [1.0, 0.0]] * 8, [1, 0] * 8,
                       epochs=2, batch_size=4, verbose=False)
    assert len(history) == 2


def test_history_column_of_an_unknown_key_names_the_known_ones():
    history = History([{"epoch": 1, "train_loss": 1.0}])
    with pytest.raises(KeyError, match=r"no 'val_loss'; it has \['epoch', 'train_loss'\]"):
        history["val_loss"]


def test_early_stopping_puts_back_the_best_weights_when_training_diverges():
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    seen = {}
    record = LambdaCallback(lambda trainer, row: seen.setdefault(row["epoch"], trainer.snapshot()))

    def explode(trainer, row):
        if row["epoch"] == 2:
            trainer.base_lr = 1e12

    stop = EarlyStopping(monitor="train_loss", patience=100)
    trainer = xpnn.Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=20, schedule=lambda epoch: 1.0)
    with np.errstate(all="ignore"), pytest.raises(xpnn.DivergenceError):
        trainer.fit(x, y, epochs=10, verbose=False, callbacks=[record, LambdaCallback(explode), stop])
    best = seen[stop.best_epoch]
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, best[name])


def test_eval_sets_must_be_a_dict():
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    with pytest.raises(ValueError, match="eval_sets must be a dict"):
        xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, verbose=False, eval_sets=[("a", (x, y))])


def test_integer_inputs_are_converted_like_floats():
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    history = xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), np.round(x * 10).astype(np.int32), y, epochs=1,
                       verbose=False)
    assert np.isfinite(history[0]["train_loss"])


def test_early_stopping_patience_counts_epochs_without_improvement_as_keras_does():
    stop = EarlyStopping(monitor="val_loss", patience=1)

    class Fake:
        stop_training = False

        def snapshot(self):
            return {}

    trainer = Fake()
    stop.on_train_begin(trainer)
    for epoch, loss in enumerate([1.2, 1.1, 0.8, 1.2], start=1):
        stop.on_epoch_end(trainer, {"epoch": epoch, "val_loss": loss})
    assert trainer.stop_training and stop.stopped_epoch == 4


# ---------------------------------------------------------------------- misuse Keras and PyTorch users make
def test_an_optimizer_of_another_model_is_refused_in_one_line():
    x, y = blobs()
    model_a, model_b = xpnn.mlp([6, 8, 3], seed=0), xpnn.mlp([6, 8, 3], seed=1)
    before = {k: np.copy(v) for k, v in model_a.state_dict().items()}
    with pytest.raises(ValueError, match=r"^fit: the Adam was made for another model") as caught:
        xpnn.fit(model_b, xpnn.optim.Adam(model_a), x, y, epochs=1, verbose=False)
    assert "\n" not in str(caught.value)
    for name, value in model_a.state_dict().items():
        np.testing.assert_array_equal(value, before[name])  # nothing trained behind the user's back
    with pytest.raises(TypeError, match=r"optimizer must be an xpnn optimizer made for the model.*got 'adam'"):
        xpnn.fit(model_b, "adam", x, y, epochs=1, verbose=False)
    with pytest.raises(TypeError, match="model must be an xpnn Sequential"):
        xpnn.fit([model_b], xpnn.optim.Adam(model_b), x, y, epochs=1, verbose=False)


def test_a_model_with_nothing_to_train_is_refused():
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    optimizer = xpnn.optim.Adam(model)
    model.freeze()
    with pytest.raises(ValueError, match="every layer of the model is frozen"):
        xpnn.fit(model, optimizer, x, y, epochs=1, verbose=False)
    model.unfreeze()
    model.freeze(0)
    first_only = xpnn.optim.SGD(model, lr=0.1, params=["0.W", "0.b"])
    with pytest.raises(ValueError, match=r"every parameter the SGD trains \(0.W, 0.b\) is frozen"):
        xpnn.fit(model, first_only, x, y, epochs=1, verbose=False)
    assert len(xpnn.fit(model, optimizer, x, y, epochs=1, verbose=False)) == 1  # one trainable layer is enough
    empty = xpnn.Sequential([xpnn.layers.ReLU()], loss=xpnn.losses.SoftmaxCrossEntropy())
    with pytest.raises(ValueError, match="no parameters to train"):
        xpnn.fit(empty, xpnn.optim.SGD(empty, lr=0.1), x[:, :3], y, epochs=1, verbose=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"epochs": -1}, ValueError, "epochs must be a positive integer"),
        ({"epochs": True}, ValueError, "epochs must be a positive integer"),
        ({"epochs": 2.0}, ValueError, "epochs must be a positive integer"),
        ({"batch_size": True}, ValueError, "batch_size must be a positive integer"),
        ({"batch_size": 32.0}, ValueError, "batch_size must be a positive integer"),
        ({"validation_split": -0.1}, ValueError, r"validation_split must be in \[0, 1\)"),
        ({"validation_split": "0.2"}, ValueError, r"validation_split must be in \[0, 1\)"),
        ({"validation_split": True}, ValueError, r"validation_split must be in \[0, 1\)"),
        ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
        ({"callbacks": EarlyStopping()}, TypeError, r"wrap the one you have: callbacks=\[EarlyStopping"),
        ({"callbacks": [print]}, TypeError, "is not an xpnn.callbacks.Callback; subclass it, or wrap a function"),
        ({"callbacks": 3}, TypeError, "callbacks must be a list"),
        ({"validation_data": (np.zeros((5, 6), np.float32), np.zeros(4, int))}, ValueError,
         "val data: x has 5 samples but y has shape"),
        ({"validation_data": (np.zeros((5, 6), np.float32), np.full(5, 7))}, ValueError,
         r"val data: labels must lie in \[0, 3\)"),
    ],
)
def test_more_misuse_is_one_line_before_training(kwargs, error, message):
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    before = {k: np.copy(v) for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message) as caught:
        xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, verbose=False, **{"epochs": 1, **kwargs})
    assert "\n" not in str(caught.value)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_ragged_lists_are_one_line():
    model = xpnn.mlp([2, 4, 2], seed=0)
    with pytest.raises(ValueError, match=r"fit: x: cannot be made one array .*rows of equal length"):
        xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), [[0.0, 1.0], [1.0]], [0, 1], epochs=1, verbose=False)


def test_none_callbacks_and_a_batch_larger_than_the_data_train_as_in_keras():
    x, y = blobs(n=40)
    model = xpnn.mlp([6, 8, 3], seed=0)
    history = xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, epochs=2, batch_size=1000, callbacks=None,
                       verbose=False)
    assert len(history) == 2  # one full batch per epoch, as Keras clips batch_size to the data


def test_label_columns_and_integer_one_hot_rows_train_like_labels():
    x, y = blobs()
    runs = []
    for targets in (y, y[:, None], np.eye(3, dtype=np.int64)[y], np.eye(3, dtype=bool)[y]):
        model = xpnn.mlp([6, 8, 3], seed=0)
        runs.append(xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, targets, epochs=2, verbose=False))
    for history in runs[1:]:
        assert history["train_loss"] == runs[0]["train_loss"]
        assert history["train_accuracy"] == runs[0]["train_accuracy"]


def test_pandas_frames_are_accepted():
    pd = pytest.importorskip("pandas")
    x, y = blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    history = xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), pd.DataFrame(x), pd.Series(y), epochs=1, verbose=False)
    assert len(history) == 1
