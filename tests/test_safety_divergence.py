"""Divergence is caught for every optimizer, and what is kept (checkpoint and model) is good.

Diverged means: a non-finite training or evaluation loss, a non-finite weight, or an epoch's training loss
more than 100 times the loss of the first batch trained. Checked once per epoch, from one read-back.
"""

from __future__ import annotations

import shlex

import numpy as np
import pytest

import xpnn
from tests.cli_helpers import checkpoint_state, cli, metrics, one_error_line
from tests.idx import make_dataset
from xpnn.training.callbacks import LambdaCallback
from xpnn.training.trainer import DivergenceError, Trainer

FAST = ["--epochs", "3", "--batch-size", "50", "--hidden", "16", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("lr", ["1e6", "1e30", "1e300"])
def test_a_huge_learning_rate_stops_with_one_line_and_keeps_the_last_good_checkpoint(dataset, tmp_path, optimizer,
                                                                                     lr):
    save, log = tmp_path / "ck.npz", tmp_path / "m.jsonl"
    result = cli("--data-dir", dataset, *FAST, "--optimizer", optimizer, "--lr", lr, "--save", save,
                 "--metrics", log)
    assert result.returncode == 1
    line = one_error_line(result)  # no RuntimeWarning (they are errors in cli()) and no traceback
    assert "training diverged in epoch 1" in line and f"try a smaller --lr (now {float(lr)})" in line
    assert f"the last good checkpoint (epoch 0) is in {save}" in line
    arrays, header = checkpoint_state(save)
    assert header["epoch"] == 0 and header["history"] == []
    weights = [a for a in arrays.values() if a.dtype.kind == "f"]  # not dropout's integer seed and step
    assert weights and all(np.all(np.isfinite(a)) and np.abs(a).max() < 10 for a in weights)
    assert not log.exists()  # no metrics for an epoch that diverged


def test_the_advice_after_a_divergence_works_when_followed_literally(dataset, tmp_path):
    save, log = tmp_path / "ck.npz", tmp_path / "m.jsonl"
    command = ["--data-dir", dataset, *FAST, "--optimizer", "sgd", "--lr", "1e6", "--save", save]
    line = one_error_line(cli(*command))
    advice = line.split("continue from it with ", 1)[1]
    assert advice == f"--resume {save} --lr 100000"
    # The same command with the advice appended is accepted: a fine-tuning run, one warning, no refusal.
    again = cli(*command, *shlex.split(advice))
    assert again.returncode == 1 and "differs from the checkpoint" not in again.stderr
    warning, error = again.stderr.strip().splitlines()
    assert "fine-tuning with --lr 100000.0 (checkpoint: 1000000.0)" in warning and "training diverged" in error
    # Smaller still: it trains from the kept checkpoint and the checkpoint then holds the new learning rate.
    result = cli(*command, "--resume", save, "--lr", "0.05", "--metrics", log)
    assert result.returncode == 0, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "no longer an exact continuation" in result.stderr
    assert metrics(log)[-1]["test_accuracy"] > 0.9
    header = checkpoint_state(save)[1]
    assert header["epoch"] == 3 and header["settings"]["lr"] == 0.05


def test_the_advice_without_a_checkpoint_names_a_smaller_lr(dataset):
    line = one_error_line(cli("--data-dir", dataset, *FAST, "--optimizer", "sgd", "--lr", "1e6"))
    assert line.endswith("try a smaller --lr (now 1000000.0), e.g. --lr 100000")


def test_after_a_divergence_the_optimizer_state_is_the_last_good_one_too():
    """The moments are put back with the weights: a second fit() at a sane rate trains instead of diverging."""
    x, y = _blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    optimizer = xpnn.optim.Momentum(model, lr=0.05)
    trainer = Trainer(model, optimizer, batch_size=20, schedule=lambda epoch: 1.0)
    kept = {}

    def sabotage(trainer, row):
        kept.update(trainer.optimizer_snapshot())
        if row["epoch"] == 2:
            trainer.base_lr = 1e12

    with pytest.raises(DivergenceError):
        trainer.fit(x, y, epochs=4, verbose=False, callbacks=[LambdaCallback(sabotage)])
    state = optimizer.state_dict()
    assert state["steps"] == kept["steps"] == 20 and state["lr"] == kept["lr"] == 0.05
    for key, value in kept.items():
        if hasattr(value, "shape"):
            np.testing.assert_array_equal(state[key], value, err_msg=key)
    trainer.base_lr = 0.05
    history = trainer.fit(x, y, epochs=4, initial_epoch=2, verbose=False)
    assert history[-1]["train_loss"] < history[1]["train_loss"]


def _blobs(n=200):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    return (rng.standard_normal((n, 6)) + 3 * np.eye(3, 6)[y]).astype(np.float32), y


def test_divergence_in_a_later_epoch_puts_back_the_last_good_weights():
    x, y = _blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    kept = {}

    def sabotage(trainer, row):
        kept.update(trainer.snapshot())
        if row["epoch"] == 2:  # a learning rate that explodes from epoch 3 on
            trainer.base_lr = 1e12

    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=20, schedule=lambda epoch: 1.0)
    with pytest.raises(DivergenceError, match="training diverged in epoch 3"):
        trainer.fit(x, y, epochs=5, verbose=False, callbacks=[LambdaCallback(sabotage)])
    assert len(trainer.history) == 2
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, kept[name])


def test_non_finite_weights_are_divergence_even_when_the_loss_is_finite():
    x, y = _blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    # A hidden unit with bias -inf is cut off by ReLU: the loss stays finite, the weights do not.
    b = np.array(model.layers[0].params["b"])
    b[0] = -np.inf
    model.layers[0].params["b"] = model.backend.asarray(b)
    trainer = Trainer(model, xpnn.optim.SGD(model, lr=0.1), batch_size=50)
    with np.errstate(all="ignore"), pytest.raises(DivergenceError, match="parameter arrays hold NaN or infinite"):
        trainer.run_epoch(trainer.device_data(x, y), 0)


def test_a_loss_far_above_its_start_is_divergence_and_the_factor_can_be_switched_off():
    x, y = _blobs()
    for factor, diverges in ((100.0, True), (None, False)):
        model = xpnn.mlp([6, 8, 3], seed=0)
        trainer = Trainer(model, xpnn.optim.Adam(model, lr=50.0), batch_size=20, divergence_factor=factor)
        data = trainer.device_data(x, y)
        with np.errstate(all="ignore"):
            if diverges:
                with pytest.raises(DivergenceError, match="more than 100 times the"):
                    for index in range(5):
                        trainer.run_epoch(data, index)
            else:
                rows = [trainer.run_epoch(data, index) for index in range(2)]
                assert np.isfinite(rows[-1]["train_loss"])


@pytest.mark.parametrize("factor", [1.0, 0.5, -3.0, float("nan")])
def test_the_divergence_factor_must_exceed_one(factor):
    model = xpnn.mlp([2, 2])
    with pytest.raises(ValueError, match="divergence_factor must be > 1"):
        Trainer(model, xpnn.optim.SGD(model, lr=0.1), divergence_factor=factor)


def test_a_non_finite_test_loss_is_divergence():
    x, y = _blobs()
    model = xpnn.mlp([6, 8, 3], seed=0)
    huge = np.full((10, 6), 3e38, np.float32)  # finite inputs whose products overflow float32
    with np.errstate(all="ignore"), pytest.raises(DivergenceError, match="test loss"):
        xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, epochs=1, verbose=False,
                 eval_sets={"test": (huge, y[:10])})
