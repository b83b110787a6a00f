"""The epoch loop on every backend, and the promise that it never waits for the GPU inside an epoch."""

from __future__ import annotations

import types

import numpy as np
import pytest

import xpnn
from tests.conftest import make_backend
from xpnn.training.trainer import Trainer


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 6)).astype(np.float32) + 4.0 * np.eye(3, 6)[labels]
    return x, labels


@pytest.mark.parametrize("batch", [32, None], ids=["minibatch", "full-batch"])
def test_epochs_reduce_the_loss_on_every_backend(backend, batch):
    x, y = blobs()
    model = xpnn.mlp([6, 16, 3], backend=backend, seed=0, dropout=0.1)
    trainer = Trainer(model, xpnn.optim.Adam(model, lr=0.01), batch_size=batch)
    data = trainer.device_data(x, y)
    losses = [trainer.run_epoch(data, index)["train_loss"] for index in range(15)]
    assert losses[-1] < losses[0] / 2
    assert model.accuracy(data.x, data.labels) > 0.85


def test_bad_training_data_is_refused_once_up_front():
    model = xpnn.mlp([2, 3])
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1))
    with pytest.raises(ValueError, match="NaN or infinite"):
        trainer.device_data(np.array([[0.0, np.nan]], np.float32), np.array([0]))
    message = r"labels must lie in \[0, 3\) for this 3-output model, got values from 0 to 5"
    with pytest.raises(ValueError, match=message):
        trainer.device_data(np.zeros((2, 2), np.float32), np.array([0, 5]))


@pytest.mark.filterwarnings("ignore:cupyx.allow_synchronize will be removed")
def test_a_gpu_epoch_never_waits_for_the_device():
    backend = make_backend("cupy")
    import cupyx

    x, y = blobs(1000)
    model = xpnn.mlp([6, 16, 3], backend=backend, seed=0, dropout=0.1)
    trainer = Trainer(model, xpnn.optim.Adam(model, lr=0.01), batch_size=64)
    data = trainer.device_data(x, y)
    trainer.train_epoch(data, 0)  # compile the kernels first
    with cupyx.allow_synchronize(False):  # any synchronizing call inside raises DeviceSynchronized
        sums = trainer.train_epoch(data, 1)
    assert backend.item(sums["loss"]) > 0 and 0 < int(backend.item(sums["correct"])) <= 1000


def test_the_trainer_leaves_the_models_value_checks_as_it_found_them():
    x, y = blobs(64)
    model = xpnn.mlp([6, 4, 3])
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=16)
    trainer.train_epoch(trainer.device_data(x, y), 0)
    assert model.check_values is True
    with pytest.raises(ValueError, match="NaN"):
        model.predict(model.backend.asarray(np.full((1, 6), np.nan)))


@pytest.mark.parametrize(("sizes", "batch_size", "expected"), [
    ((784, 100, 10), 128, 1000),  # 3 kB per sample: the cap
    ((784, 100, 10), None, 1000),  # full batch
    ((784, 8192, 10), 32, 256),  # 32 kB per sample: 8 MiB of it
    ((784, 8192, 10), 512, 512),  # never fewer than the training batch, which already fits
    ("cnn", 128, 128),  # 100 kB per sample after the first convolution: 83 would fit, the training batch does
])
def test_evaluation_batches_keep_each_layer_output_under_8_mib(sizes, batch_size, expected):
    model = xpnn.cnn(seed=0) if sizes == "cnn" else xpnn.mlp(list(sizes), seed=0)
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=batch_size)
    shape = (1, 28, 28) if sizes == "cnn" else (784,)
    data = trainer.device_data(np.zeros((2, *shape), np.float32), np.zeros(2, np.int64))
    assert trainer.evaluation_batch(data) == expected


@pytest.mark.parametrize(("ranks", "expected"), [(8, 512), (32, 256)])
def test_under_mpi_the_evaluation_batch_is_bounded_by_each_ranks_share(ranks, expected):
    """4096 over 8 ranks trains 512 rows per rank; evaluating 4096 at once took 1.8 GB for 283 MB of training."""
    model = xpnn.mlp([784, 8192, 10], seed=0)  # 32 kB per sample: 256 fit in 8 MiB
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=4096)
    data = trainer.device_data(np.zeros((2, 784), np.float32), np.zeros(2, np.int64))
    trainer.comm = types.SimpleNamespace(size=ranks)  # only its size sets the share
    assert trainer.evaluation_batch(data) == expected


def test_a_layer_that_cannot_say_its_shape_leaves_evaluation_batches_at_1000():
    model = xpnn.mlp([4, 3], seed=0)
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=32)
    data = trainer.device_data(np.zeros((2, 4), np.float32), np.zeros(2, np.int64))

    def opaque(input_shape):
        raise RuntimeError("a custom layer's bug")

    model.layers[0].output_shape = opaque
    assert trainer.evaluation_batch(data) == 1000


def test_evaluation_runs_in_batches_of_eval_batch_size():
    model = xpnn.mlp([4, 3], seed=0)
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=32, eval_batch_size=7, workers=1)
    seen = []
    model.layers[0].forward = lambda x, train=False, inner=model.layers[0].forward: (seen.append(x.shape[0]),
                                                                                    inner(x, train=train))[1]
    rng = np.random.default_rng(0)
    data = trainer.device_data(rng.standard_normal((70, 4)).astype(np.float32), rng.integers(0, 3, 70))
    seen.clear()  # device_data tries one sample through the model
    trainer.evaluate(data)
    assert seen == [7] * 10


@pytest.mark.parametrize("value", [0, -5, 2.5, True, "64"])
def test_a_bad_evaluation_batch_size_is_refused(value):
    """A negative step once evaluated nothing and reported zero correct; zero failed inside range()."""
    model = xpnn.mlp([4, 3], seed=0)
    with pytest.raises(ValueError, match="Trainer: eval_batch_size must be a positive integer"):
        Trainer(model, xpnn.optim.SGD(model, lr=0.1), eval_batch_size=value)


@pytest.mark.parametrize("make, fused", [(xpnn.optim.SGD, True), (xpnn.optim.Momentum, False)], ids=["sgd", "momentum"])
def test_one_process_steps_through_the_optimizers_backward_step(make, fused):
    """SGD on NumPy moves the dense weights inside backward (no gradient formed); other optimizers step after it."""
    x, y = blobs()
    model = xpnn.mlp([6, 128, 128, 3], backend="cpu", seed=0)  # 2.W is large enough to fuse
    trainer = Trainer(model, make(model, lr=0.05), batch_size=32, workers=1)
    losses = [trainer.run_epoch(trainer.device_data(x, y), index)["train_loss"] for index in range(5)]
    assert losses[-1] < losses[0] / 2
    missing = [name for name, g in model.named_gradients().items() if g is None]
    assert missing == (["2.W"] if fused else [])
    assert trainer.optimizer.steps == 5 * 10


def test_threaded_workers_step_after_the_summed_gradient():
    pytest.importorskip("threadpoolctl")
    x, y = blobs()
    model = xpnn.mlp([6, 16, 3], backend="cpu", seed=0)
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.05), batch_size=32, workers=2)
    trainer.run_epoch(trainer.device_data(x, y), 0)
    assert all(g is not None for g in model.named_gradients().values())
