"""workers > 1: threads that share each batch on the NumPy backend (xpnn.parallel)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xpnn
from tests.cli_helpers import cli, one_error_line
from tests.idx import make_dataset
from xpnn.layers import Affine, BatchNorm1d, Layer
from xpnn.parallel import replica, shard_bounds
from xpnn.trainer import Trainer

pytest.importorskip("threadpoolctl")


@pytest.fixture(scope="module")
def tiny_idx(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=120, n_test=40)


def images(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 8, 8)), rng.integers(0, 3, n)


def small_cnn(backend: xpnn.Backend, dropout: float = 0.0, seed: int = 3) -> xpnn.Sequential:
    return xpnn.cnn((1, 3, 4), (6, 3), image_size=8, dropout=dropout, backend=backend, seed=seed)


def train(model: xpnn.Sequential, x: np.ndarray, y: np.ndarray, workers: int, epochs: int = 2,
          batch_size: int = 16) -> Trainer:
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=batch_size, seed=0, workers=workers)
    data = trainer.device_data(x, y)
    for epoch in range(epochs):
        trainer.train_epoch(data, epoch)
    return trainer


def params(model: xpnn.Sequential) -> dict[str, np.ndarray]:
    return {k: model.backend.to_numpy(v) for k, v in model.named_parameters().items()}


@pytest.mark.parametrize(("n", "parts"), [(128, 2), (7, 3), (1, 2), (5, 5), (2, 4)])
def test_shard_bounds_cover_every_row_once(n, parts):
    bounds = shard_bounds(n, parts)
    assert len(bounds) == min(n, parts)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(lo < hi for lo, hi in bounds)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("batch_size", [16, 7])  # 40 = 2·16 + 8 and 5·7 + 5: last batches of other sizes
def test_workers_train_the_same_model_up_to_rounding(workers, batch_size):
    """float64: the combined gradient is the whole batch's, so the weights after two epochs agree to 1e-12."""
    be = xpnn.get_backend("cpu", "float64")
    x, y = images()
    one, many = small_cnn(be), small_cnn(be)
    losses = {}
    for model, w in ((one, 1), (many, workers)):
        trainer = train(model, x, y, w, batch_size=batch_size)
        losses[w] = trainer.model.evaluate(be.asarray(x), be.asarray(y))[0]
    for key, value in params(one).items():
        np.testing.assert_allclose(params(many)[key], value, rtol=1e-12, atol=1e-14, err_msg=key)
    assert float(losses[1]) == pytest.approx(float(losses[workers]), rel=1e-12)


def test_epoch_sums_match_one_worker():
    """The reported loss and correct count of an epoch are the whole batch's, not the first shard's."""
    be = xpnn.get_backend("cpu", "float64")
    x, y = images(33)
    sums = {}
    for w in (1, 2):
        model = small_cnn(be)
        trainer = Trainer(model, xpnn.optim.SGD(model, lr=1e-12), batch_size=11, seed=0, workers=w)
        sums[w] = trainer.train_epoch(trainer.device_data(x, y), 0)
    assert float(sums[2]["loss"]) == pytest.approx(float(sums[1]["loss"]), rel=1e-12)
    assert int(sums[2]["correct"]) == int(sums[1]["correct"])
    assert sums[2]["n"] == sums[1]["n"] == 33


def test_evaluation_over_workers_matches_one_worker():
    """Trainer.evaluate splits each evaluation batch too; BatchNorm then uses the model's running averages."""
    be = xpnn.get_backend("cpu", "float64")
    x, y = images(30)
    results = {}
    for w in (1, 3):
        model = xpnn.cnn((1, 3, 4), (6, 3), image_size=8, dropout=0.0, batchnorm=True, backend=be, seed=3)
        trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=30, seed=0, workers=w,
                          eval_batch_size=7)
        data = trainer.device_data(x, y)
        for layer in model.layers:  # running averages far from a fresh replica's, so stale ones would show
            for key in layer.buffers:
                layer.buffers[key] = layer.buffers[key] + 0.5
        results[w] = trainer.evaluate(data)
    assert float(results[3][0]) == pytest.approx(float(results[1][0]), rel=1e-12)
    assert int(results[3][1]) == int(results[1][1])


def test_mlp_regression_with_workers():
    be = xpnn.get_backend("cpu", "float64")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4))
    y = x @ rng.normal(size=(4, 2))
    models = [xpnn.mlp([4, 8, 2], loss=xpnn.losses.MeanSquaredError(), backend=be, seed=0) for _ in range(2)]
    for model, w in zip(models, (1, 2), strict=True):
        train(model, x, y, w, batch_size=10)
    for key, value in params(models[0]).items():
        np.testing.assert_allclose(params(models[1])[key], value, rtol=1e-12, atol=1e-14, err_msg=key)


def test_float32_workers_stay_close_and_reproducible():
    be = xpnn.get_backend("cpu")
    x, y = images()
    runs = [params(train(small_cnn(be, dropout=0.3), x, y, 2).model) for _ in range(2)]
    for key in runs[0]:
        np.testing.assert_array_equal(runs[0][key], runs[1][key], err_msg=key)  # same workers: bit-identical
    one = params(train(small_cnn(be), x, y, 1).model)
    two = params(train(small_cnn(be), x, y, 2).model)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_replicas_share_weights_but_not_gradients_or_buffers():
    be = xpnn.get_backend("cpu")
    model = xpnn.Sequential([BatchNorm1d(4), Affine(4, 3)], backend=be, seed=0)
    twin = replica(model)
    for mine, theirs in zip(twin.layers, model.layers, strict=True):
        assert mine.params is theirs.params
        assert mine.grads is not theirs.grads
        assert all(mine.grads[k] is not theirs.grads.get(k) for k in mine.grads)
        assert mine.buffers is not theirs.buffers
    assert twin.loss_fn is not model.loss_fn
    x = be.asarray(np.random.default_rng(0).normal(3.0, 1.0, size=(8, 4)).astype(np.float32))
    before = be.to_numpy(model.layers[0].buffers["running_mean"])
    twin.loss(x, be.asarray(np.zeros(8, dtype=np.int64)))
    np.testing.assert_array_equal(be.to_numpy(model.layers[0].buffers["running_mean"]), before)


def test_batchnorm_running_averages_follow_the_first_shard():
    be = xpnn.get_backend("cpu", "float64")
    x = np.random.default_rng(0).normal(size=(8, 4))
    x[4:] += 10.0  # the second shard is far from the first
    model = xpnn.Sequential([BatchNorm1d(4, momentum=0.5), Affine(4, 2)], backend=be, seed=0)
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=1e-12), batch_size=8, seed=0, workers=2)
    trainer.train_epoch(trainer.device_data(x, np.zeros(8, dtype=np.int64)), 0)
    np.testing.assert_allclose(be.to_numpy(model.layers[0].buffers["running_mean"]), 0.5 * x[:4].mean(axis=0),
                               rtol=1e-12)


def test_frozen_layers_stay_bit_identical():
    be = xpnn.get_backend("cpu")
    x, y = images()
    model = small_cnn(be)
    model.freeze(0)
    before = params(model)
    train(model, x, y, 2)
    after = params(model)
    assert [k for k in before if not np.array_equal(before[k], after[k])] == [
        k for k in before if not k.startswith("0.")]


class Exploding(Layer):
    """Raises in forward on any sample larger than 100 (in whichever worker holds it)."""

    def forward(self, x, *, train=False):
        if bool(self.xp.any(x > 100)):
            raise RuntimeError("sample larger than 100")
        return x

    def backward(self, dy):
        return dy


def test_an_error_in_a_worker_thread_reaches_the_caller():
    be = xpnn.get_backend("cpu")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    x[13, 0] = 1e3  # in the second shard of the only batch: raised in the worker thread
    model = xpnn.Sequential([Exploding(), Affine(4, 2)], backend=be, seed=0)
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=16, seed=0, workers=2)
    with pytest.raises(RuntimeError, match="larger than 100"):
        trainer.train_epoch(trainer.device_data(x, np.zeros(16, dtype=np.int64)), 0)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # none may escape from a worker thread
def test_fit_with_workers_detects_divergence():
    be = xpnn.get_backend("cpu")
    x, y = images()
    model = small_cnn(be)
    with pytest.raises(xpnn.DivergenceError):
        xpnn.fit(model, xpnn.optim.SGD(model, lr=1e6), x, y, epochs=3, batch_size=8, verbose=False, workers=2)
    assert all(np.all(np.isfinite(v)) for v in params(model).values())


@pytest.mark.parametrize("workers", [0, -1, True, 2.0, "2", None])
def test_bad_workers_are_refused(workers):
    model = small_cnn(xpnn.get_backend("cpu"))
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        Trainer(model, xpnn.optim.SGD(model, lr=0.1), workers=workers)


def test_numpy_integer_workers_are_taken():
    model = small_cnn(xpnn.get_backend("cpu"))
    assert Trainer(model, xpnn.optim.SGD(model, lr=0.1), workers=np.int64(2)).workers == 2


def test_workers_on_a_library_that_parallelizes_itself_are_refused():
    pytest.importorskip("torch")
    model = small_cnn(xpnn.get_backend("torch"))
    with pytest.raises(ValueError, match="pays only on the NumPy backend"):
        Trainer(model, xpnn.optim.SGD(model, lr=0.1), workers=2)


def test_array_api_strict_takes_workers_too():
    pytest.importorskip("array_api_strict")
    be = xpnn.get_backend("array_api_strict")
    x, y = images(12)
    assert params(train(small_cnn(be), x, y, 2, epochs=1, batch_size=6).model)


def test_cli_workers(tmp_path, tiny_idx):
    checkpoint = tmp_path / "w.npz"
    result = cli("--data-dir", tiny_idx, "--model", "cnn", "--epochs", "1", "--workers", "2", "--batch-size", "32",
                     "--save", checkpoint)
    assert result.returncode == 0, result.stderr
    refused = cli("--data-dir", tiny_idx, "--resume", checkpoint, "--epochs", "2", "--workers", "1")
    assert refused.returncode == 2
    assert "--workers 1 differs from the checkpoint's 2" in one_error_line(refused)
    resumed = cli("--data-dir", tiny_idx, "--resume", checkpoint, "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "0"], "argument --workers: must be a positive integer, got 0"),
    (["--workers", "two"], "argument --workers: expected a positive integer, got 'two'"),
])
def test_cli_bad_workers(tiny_idx, args, message):
    result = cli("--data-dir", tiny_idx, "--epochs", "1", "--batch-size", "32", *args)
    assert result.returncode == 2
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(message)  # argparse's usage, then one error line


def test_cli_workers_with_torch_is_one_line(tiny_idx):
    pytest.importorskip("torch")
    result = cli("--data-dir", tiny_idx, "--device", "torch", "--workers", "2", "--epochs", "1", "--batch-size", "32")
    assert result.returncode == 2
    assert one_error_line(result).endswith("use --workers 1")
