"""workers > 1: threads that share each batch on the NumPy backend (xpnn.runtime.parallel)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import xpnn
from tests.cli_helpers import cli, interruptible, one_error_line, pythonpath
from tests.idx import make_dataset
from xpnn.nn.layers import Affine, BatchNorm1d, Layer, ReLU
from xpnn.runtime.parallel import replica, shard_bounds
from xpnn.training.trainer import Trainer

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


@pytest.mark.parametrize(("n", "parts"), [(128, 2), (7, 3), (1, 2), (5, 5), (2, 4), (3, 2), (5, 3), (2, 2)])
def test_shard_bounds_cover_every_row_once(n, parts):
    bounds = shard_bounds(n, parts)
    assert len(bounds) == max(1, min(parts, n // 2))
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert min(sizes) >= min(n, 2)  # BatchNorm cannot train on a shard of one sample


@pytest.fixture(autouse=True)
def four_cores(monkeypatch):
    """In-process tests of 2 and 3 workers run on machines with fewer cores too (more workers than cores is
    refused); the CLI tests, in subprocesses, need 2 cores."""
    monkeypatch.setattr(xpnn.runtime.parallel, "usable_cores", lambda: 4)


needs_two_cores = pytest.mark.skipif(xpnn.runtime.parallel.usable_cores() < 2, reason="the CLI tests run 2 workers")


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


STEPS_UNDER_SIGNALS = """
import signal, sys, time
import numpy as np
import xpnn
from xpnn.runtime.parallel import ThreadWorkers

model = xpnn.cnn((1, 3, 4), (6, 3), image_size=8, dropout=0.0, backend="cpu", seed=3)
workers = ThreadWorkers(model, 2)
rng = np.random.default_rng(0)
x = model.backend.asarray(rng.normal(size=(16, 1, 8, 8)))
labels = model.backend.asarray(rng.integers(0, 3, 16))
targets = model.backend.asarray(np.eye(3)[rng.integers(0, 3, 16)])
steps = interrupts = 0
inside = False


def interrupt(signum, frame):  # Ctrl-C inside a step only: the loop's own bookkeeping is not under test
    if inside:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, interrupt)
with workers.epoch():
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        try:
            inside = True
            workers.step(x, targets, labels)
            inside = False
            steps += 1
        except KeyboardInterrupt:
            inside = False  # no call or backward jump before this: Python runs no handler in between
            interrupts += 1
    for _ in range(3):  # the signals have stopped: every step must still run to its end
        workers.step(x, targets, labels)
print(steps, interrupts, flush=True)
"""


def test_ctrl_c_at_any_moment_of_a_threaded_step_leaves_the_workers_usable(tmp_path):
    """Ctrl-C lands wherever this thread is, also while it waits for the workers. Waiting inside the
    Python-level locks of concurrent.futures, it could leave a future's lock held, after which the worker could
    not start its next task: the next step, or the interpreter's exit, waited for ever. Hundreds of signals at
    random moments; the steps after them must still finish, and the process exit."""

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two workers need two cores")
    script = tmp_path / "steps.py"
    script.write_text(STEPS_UNDER_SIGNALS)
    with interruptible():
        child = subprocess.Popen([sys.executable, str(script), "7"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env={**os.environ, "PYTHONPATH": pythonpath()})
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 6
        rng = random.Random()
        while time.monotonic() < deadline and child.poll() is None:
            child.send_signal(signal.SIGINT)
            time.sleep(rng.uniform(0.0005, 0.01))
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    steps, interrupts = map(int, out.split())
    assert interrupts > 100 and steps > 0


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


@pytest.mark.parametrize("workers", [10**6, 2**63])
def test_more_workers_than_cores_are_refused(workers):
    model = small_cnn(xpnn.get_backend("cpu"))
    with pytest.raises(ValueError, match=rf"workers={workers} is more than the \d+ cores this process may use"):
        Trainer(model, xpnn.optim.SGD(model, lr=0.1), workers=workers)


def test_replicas_are_made_as_shards_need_them(monkeypatch):
    """8 workers on a batch of 6 (3 shards) make 2 replicas, and reach the same weights as 3 workers."""
    monkeypatch.setattr(xpnn.runtime.parallel, "usable_cores", lambda: 8)
    be = xpnn.get_backend("cpu", "float64")
    x, y = images(24)
    made = []
    real = xpnn.runtime.parallel.replica
    monkeypatch.setattr(xpnn.runtime.parallel, "replica", lambda model: made.append(1) or real(model))
    runs = {w: params(train(small_cnn(be, dropout=0.3), x, y, w, epochs=1, batch_size=6).model) for w in (3, 8)}
    assert len(made) == 4  # 2 per run: one epoch each, no evaluation
    for key in runs[3]:
        np.testing.assert_array_equal(runs[8][key], runs[3][key], err_msg=key)


def test_numpy_integer_workers_are_taken():
    model = small_cnn(xpnn.get_backend("cpu"))
    assert Trainer(model, xpnn.optim.SGD(model, lr=0.1), workers=np.int64(2)).workers == 2


def test_workers_on_a_library_that_parallelizes_itself_are_refused():
    pytest.importorskip("torch")
    model = small_cnn(xpnn.get_backend("torch"))
    with pytest.raises(ValueError, match="pays only on NumPy"):
        Trainer(model, xpnn.optim.SGD(model, lr=0.1), workers=2)


def test_array_api_strict_takes_workers_too():
    pytest.importorskip("array_api_strict")
    be = xpnn.get_backend("array_api_strict")
    x, y = images(12)
    assert params(train(small_cnn(be), x, y, 2, epochs=1, batch_size=6).model)


@needs_two_cores
def test_cli_workers(tmp_path, tiny_idx):
    checkpoint = tmp_path / "w.npz"
    result = cli("--data-dir", tiny_idx, "--model", "cnn", "--epochs", "1", "--workers", "2", "--batch-size", "32",
                     "--save", checkpoint)
    assert result.returncode == 0, result.stderr
    changed = cli("--data-dir", tiny_idx, "--resume", checkpoint, "--epochs", "2", "--workers", "1",
                  "--save", tmp_path / "changed.npz")
    assert changed.returncode == 0, changed.stderr  # a machine's setting, like --device: allowed, with a warning
    (warning,) = [line for line in changed.stderr.splitlines() if "worker" in line]
    assert "resuming with 1 worker (the checkpoint was trained with 2 workers)" in warning
    assert "only to float rounding" in warning
    resumed = cli("--data-dir", tiny_idx, "--resume", checkpoint, "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr


@needs_two_cores
def test_cli_workers_default_to_the_usable_cores(tmp_path, tiny_idx):
    """No --workers: one per core on NumPy, and the checkpoint keeps that number (not "auto"), so a resume on
    a machine with other cores draws the same dropout streams or says why not."""
    checkpoint = tmp_path / "auto.npz"
    result = cli("--data-dir", tiny_idx, "--model", "cnn", "--epochs", "1", "--batch-size", "32", "--save", checkpoint)
    assert result.returncode == 0, result.stderr
    _, header = xpnn.io.serialization.read_npz(checkpoint, "checkpoint")
    model = xpnn.load(checkpoint)
    expected = xpnn.runtime.parallel.auto_workers(model.backend, 1, model, 32)
    assert header["settings"]["workers"] == expected and isinstance(expected, int)
    assert (f"x {expected} workers" in result.stdout) == (expected > 1)
    same = cli("--data-dir", tiny_idx, "--resume", checkpoint, "--epochs", "2", "--workers", "auto")
    assert same.returncode == 0 and "worker" not in same.stderr, same.stderr
    torch_run = cli("--data-dir", tiny_idx, "--epochs", "1", "--batch-size", "32", "--device", "torch")
    if "not installed" not in torch_run.stderr:
        assert torch_run.returncode == 0 and "workers" not in torch_run.stdout, torch_run.stderr
        # The checkpoint's 2 workers do not fit torch: resumed there, the run takes torch's auto (1) and says so
        # in the one warning line about the device, instead of refusing a number the user never typed.
        on_torch = cli("--data-dir", tiny_idx, "--resume", checkpoint, "--epochs", "2", "--device", "torch",
                       "--save", tmp_path / "torch.npz")
        assert on_torch.returncode == 0, on_torch.stderr
        (warning,) = [line for line in on_torch.stderr.splitlines() if "resuming on torch" in line]
        assert "resuming on torch (the checkpoint was trained on numpy)" in warning
        assert ("and with 1 worker" in warning) == (expected > 1)
        explicit = cli("--data-dir", tiny_idx, "--resume", checkpoint, "--epochs", "2", "--device", "torch",
                       "--workers", "2", "--save", tmp_path / "torch2.npz")
        assert explicit.returncode == 2 and "use --workers 1" in explicit.stderr  # typed by the user: refused


def test_auto_workers_share_only_steps_large_enough(monkeypatch):
    """auto: the CNN at batch 128 and any full batch are shared; the MLP at batch 128 is too short a step."""
    monkeypatch.setattr(xpnn.runtime.parallel, "usable_cores", lambda: 2)
    be = xpnn.get_backend("cpu")
    net, conv = xpnn.mlp([784, 256, 128, 10], backend=be), xpnn.cnn(backend=be)
    assert xpnn.runtime.parallel.auto_workers(be, 1, net, 128) == 1
    assert xpnn.runtime.parallel.auto_workers(be, 1, net, None) == 2  # full batch
    assert xpnn.runtime.parallel.auto_workers(be, 1, net, 2048) == 2
    assert xpnn.runtime.parallel.auto_workers(be, 1, conv, 128) == 2
    assert xpnn.runtime.parallel.auto_workers(be, 2, conv, 128) == 1  # MPI ranks share the cores already
    assert Trainer(net, xpnn.optim.SGD(net, lr=0.1), batch_size=128).workers == 1
    assert Trainer(conv, xpnn.optim.SGD(conv, lr=0.1), batch_size=128).workers == 2


def test_auto_workers_follow_backend_cores_and_processes(monkeypatch):
    numpy_model = small_cnn(xpnn.get_backend("cpu"))
    assert Trainer(numpy_model, xpnn.optim.SGD(numpy_model, lr=0.1), batch_size=None).workers == 4  # four_cores
    assert xpnn.fit.__kwdefaults__["workers"] == "auto"
    assert xpnn.runtime.parallel.auto_workers(numpy_model.backend, processes=2) == 1  # MPI ranks share the cores
    monkeypatch.setattr(xpnn.runtime.parallel, "usable_cores", lambda: 1)
    assert Trainer(numpy_model, xpnn.optim.SGD(numpy_model, lr=0.1), workers="auto").parallel is None
    if importlib.util.find_spec("torch") is not None:
        monkeypatch.setattr(xpnn.runtime.parallel, "usable_cores", lambda: 4)
        torch_model = small_cnn(xpnn.get_backend("torch"))
        assert Trainer(torch_model, xpnn.optim.SGD(torch_model, lr=0.1)).workers == 1


def test_auto_workers_without_threadpoolctl_train_on_one(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "threadpoolctl" else real(name, *a))
    model = small_cnn(xpnn.get_backend("cpu"))
    assert Trainer(model, xpnn.optim.SGD(model, lr=0.1)).workers == 1  # no error: auto falls back


@pytest.mark.parametrize("workers", ["AUTO", "auto ", "", "2"])
def test_strings_other_than_auto_are_refused(workers):
    model = small_cnn(xpnn.get_backend("cpu"))
    with pytest.raises(ValueError, match="workers must be a positive integer or 'auto', got"):
        Trainer(model, xpnn.optim.SGD(model, lr=0.1), workers=workers)


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "0"], "argument --workers: must be a positive integer or 'auto', got 0"),
    (["--workers", "two"], "argument --workers: expected a positive integer or 'auto', got 'two'"),
    (["--workers", "abc"], "argument --workers: expected a positive integer or 'auto', got 'abc'"),
    (["--workers", "-1"], "argument --workers: must be a positive integer or 'auto', got -1"),
])
def test_cli_bad_workers(tiny_idx, args, message):
    result = cli("--data-dir", tiny_idx, "--epochs", "1", "--batch-size", "32", *args)
    assert result.returncode == 2
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(message)  # argparse's usage, then one error line


def test_missing_threadpoolctl_is_one_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "threadpoolctl" else real(name, *a))
    model = small_cnn(xpnn.get_backend("cpu"))
    with pytest.raises(ImportError, match=r"needs threadpoolctl.*pip install threadpoolctl, or use workers=1"):
        Trainer(model, xpnn.optim.SGD(model, lr=0.1), workers=2)
    assert Trainer(model, xpnn.optim.SGD(model, lr=0.1), workers=1).parallel is None


@needs_two_cores
def test_cli_checks_workers_before_loading_data(tmp_path):
    """--device torch --workers 2 fails at once, naming the flag, even where there is no data at all."""
    pytest.importorskip("torch")
    result = cli("--data-dir", tmp_path, "--device", "torch", "--workers", "2", "--epochs", "1")
    assert result.returncode == 2
    assert one_error_line(result).endswith("--workers 2 splits batches over threads, which pays only on NumPy "
                                          "(and array-api-strict); torch already uses every core in each "
                                          "operation: use --workers 1")


@needs_two_cores
def test_cli_workers_with_torch_is_one_line(tiny_idx):
    pytest.importorskip("torch")
    result = cli("--data-dir", tiny_idx, "--device", "torch", "--workers", "2", "--epochs", "1", "--batch-size", "32")
    assert result.returncode == 2
    assert one_error_line(result).endswith("use --workers 1")


# ------------------------------------------------- custom layers and odd batches (from an adversarial review)
F64 = xpnn.get_backend("cpu", "float64")


def state(model: xpnn.Sequential) -> dict[str, np.ndarray]:
    return {k: np.array(model.backend.to_numpy(v)) for k, v in model.state_dict().items()}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-14, err_msg=key)


def fit_state(make, x, y, workers, **kwargs) -> dict[str, np.ndarray]:
    model = make()
    xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, verbose=False, progress=False, workers=workers, **kwargs)
    return state(model)


# ---------------------------------------------------------------------- 1. BatchNorm: a shard of one sample
def test_batchnorm_batch_of_two_trains_with_two_workers():
    """34 samples at batch 16 leave a last batch of 2: it trains with one worker, so it must with two (no
    shard of a single sample, which BatchNorm1d refuses)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(34, 4)), rng.integers(0, 2, 34)

    def make():
        return xpnn.mlp([4, 8, 2], batchnorm=True, backend=F64, seed=0)

    fit_state(make, x, y, 1, epochs=1, batch_size=16)
    fit_state(make, x, y, 2, epochs=1, batch_size=16)


# ---------------------------------------------------------------------- 2. custom layer updating a buffer in place
class InplaceMean(xpnn.Layer):
    """Identity that tracks the running mean of its inputs, updating its buffer in place (allowed by the Layer
    contract, which only says optimizers rebind)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def initialize(self, rng):
        self.buffers["mean"] = self.backend.zeros((self.n,))

    def forward(self, x, *, train=False):
        if train:
            self.buffers["mean"] *= 0.9
            self.buffers["mean"] += 0.1 * self.xp.mean(x, axis=0)
        return x

    def backward(self, dy):
        return dy

    def config(self):
        return {"n": self.n}


class RebindMean(InplaceMean):
    """The same layer, rebinding its buffer instead (as BatchNorm does)."""

    def forward(self, x, *, train=False):
        if train:
            self.buffers["mean"] = 0.9 * self.buffers["mean"] + 0.1 * self.xp.mean(x, axis=0)
        return x


def test_inplace_buffer_update_follows_the_first_shard_like_a_rebinding_one():
    """A buffer updated in place follows the first shard, as one that is rebound does: replicas own copies."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)), rng.integers(0, 3, 64)
    runs = {}
    for cls in (InplaceMean, RebindMean):
        for workers in (1, 2):
            runs[cls.__name__, workers] = fit_state(
                lambda cls=cls: xpnn.Sequential([Affine(5, 6), cls(6), ReLU(), Affine(6, 3)], backend=F64, seed=0),
                x, y, workers, epochs=2, batch_size=16)
    assert_same(runs["RebindMean", 1], runs["InplaceMean", 1])  # the two layers are the same with one worker
    assert_same(runs["RebindMean", 2], runs["InplaceMean", 2])


# ---------------------------------------------------------------------- 3. custom layer writing into a cached array
class BufferedScale(xpnn.Layer):
    """y = x·a, keeping x for backward in a buffer reused from step to step (no allocation per step)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.buf = None

    def initialize(self, rng):
        self.params["a"] = self.backend.ones((self.n,))

    def forward(self, x, *, train=False):
        if self.buf is None or self.buf.shape != x.shape:
            self.buf = self.xp.zeros(x.shape, dtype=x.dtype)
        self.buf[...] = x
        time.sleep(0.02)  # stands for real work between the write and the use: lets the other thread run
        return self.buf * self.params["a"]

    def backward(self, dy):
        self.grads["a"] = self.xp.sum(dy * self.buf, axis=0)
        return dy * self.params["a"]

    def config(self):
        return {"n": self.n}


def test_arrays_a_layer_keeps_are_not_shared_between_worker_threads():
    """A layer that writes into an array it keeps (``buf``, reused from epoch 2 on) gets its own per worker."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 5)), rng.integers(0, 3, 32)

    def make():
        return xpnn.Sequential([Affine(5, 6), BufferedScale(6), ReLU(), Affine(6, 3)], backend=F64, seed=0)

    assert_same(fit_state(make, x, y, 1, epochs=2, batch_size=16), fit_state(make, x, y, 2, epochs=2, batch_size=16))


# ---------------------------------------------------------------------- 4. composite custom layer
class Residual(xpnn.Layer):
    """y = x + inner(x), wrapping an Affine and exposing its parameter and gradient dicts as its own."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.inner = Affine(n, n)

    def initialize(self, rng):
        self.inner.build(self.backend, rng)
        self.params, self.grads = self.inner.params, self.inner.grads

    def forward(self, x, *, train=False):
        return x + self.inner.forward(x, train=train)

    def backward(self, dy):
        return dy + self.inner.backward(dy)

    def config(self):
        return {"n": self.n}


def test_composite_layer_trains_the_same_with_workers():
    """A layer wrapping another and exposing its dicts: replicas share the nested layer's params dict too."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)), rng.integers(0, 3, 64)
    model = xpnn.Sequential([Affine(5, 6), Residual(6), ReLU(), Affine(6, 3)], backend=F64, seed=0)
    assert max(xpnn.gradcheck(model, F64.asarray(x[:5]), F64.asarray(y[:5])).values()) < 1e-6  # a correct layer

    def make():
        return xpnn.Sequential([Affine(5, 6), Residual(6), ReLU(), Affine(6, 3)], backend=F64, seed=0)

    assert_same(fit_state(make, x, y, 1, epochs=2, batch_size=16), fit_state(make, x, y, 2, epochs=2, batch_size=16))


# ---------------------------------------------------------------------- 5. a layer attribute deepcopy cannot copy
class WithLock(xpnn.Layer):
    """A parameter-free layer holding a lock (any object deepcopy refuses: locks, generators, handles)."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()

    def forward(self, x, *, train=False):
        return x

    def backward(self, dy):
        return dy


def test_layer_that_cannot_be_deep_copied_gets_a_clear_error_or_trains():
    """workers=2 deep-copies the model per epoch: a layer that cannot be copied is named, with the fix."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 5)), rng.integers(0, 3, 32)
    model = xpnn.Sequential([Affine(5, 6), WithLock(), Affine(6, 3)], backend=F64, seed=0)
    with pytest.raises(TypeError, match=r"layer 1 \(WithLock.*use workers=1"):
        xpnn.fit(model, xpnn.optim.SGD(model, lr=0.1), x, y, epochs=1, batch_size=16, verbose=False,
                 progress=False, workers=2)


# ---------------------------------------------------------------------- 6. CLI: a --workers 2 checkpoint and --device
@needs_two_cores
def test_cli_checkpoint_trained_with_workers_resumes_on_another_device(tmp_path):
    """A --workers 2 checkpoint resumes on torch: the saved 2, a machine's setting like --device, gives way to
    torch's one worker with the device warning; --workers 2 typed on torch is refused with the fix named."""
    pytest.importorskip("torch")
    data = make_dataset(tmp_path / "data", n_train=120, n_test=40)
    checkpoint = tmp_path / "w.npz"
    first = cli("--data-dir", data, "--epochs", "1", "--batch-size", "32", "--workers", "2", "--save", checkpoint,
                "--quiet")
    assert first.returncode == 0, first.stderr
    plain = cli("--data-dir", data, "--resume", checkpoint, "--epochs", "1", "--device", "torch", "--quiet")
    one = cli("--data-dir", data, "--resume", checkpoint, "--epochs", "1", "--device", "torch", "--workers", "1",
              "--quiet")
    typed = cli("--data-dir", data, "--resume", checkpoint, "--epochs", "1", "--device", "torch", "--workers", "2",
                "--quiet")
    assert plain.returncode == 0 and "and with 1 worker (the checkpoint was trained with 2 workers)" in plain.stderr
    assert one.returncode == 0 and one.stderr == plain.stderr
    assert typed.returncode == 2 and one_error_line(typed).endswith("use --workers 1")


@pytest.mark.parametrize("inplace", [True, False])
def test_two_equal_shards_combine_to_the_weighted_sum_bit_for_bit(inplace):
    """(g0 + g1)·½, the fast form for shards of one size, is exactly ½·g0 + ½·g1; unequal shards weigh each."""
    be = xpnn.get_backend("cpu")
    model = small_cnn(be)
    twin, third = replica(model), replica(model)
    rng = np.random.default_rng(5)
    for m in (model, twin, third):
        for layer in m.layers:
            layer.grads = {k: be.asarray(rng.standard_normal(v.shape)) for k, v in layer.params.items()}
    expected = {(i, k): 0.5 * model.layers[i].grads[k] + 0.5 * twin.layers[i].grads[k]
                for i, layer in enumerate(model.layers) for k in layer.params}
    uneven = {(i, k): 0.25 * twin.layers[i].grads[k] + 0.75 * third.layers[i].grads[k] for i, k in expected}
    xpnn.runtime.parallel.ThreadWorkers._combine([model, twin], [0.5, 0.5], inplace)
    for (i, k), value in expected.items():
        np.testing.assert_array_equal(model.layers[i].grads[k], value)
    xpnn.runtime.parallel.ThreadWorkers._combine([twin, third], [0.25, 0.75], inplace)
    for (i, k), value in uneven.items():
        np.testing.assert_array_equal(twin.layers[i].grads[k], value)
