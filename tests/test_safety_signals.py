"""Signals, resources and messages: Ctrl-C anywhere, out of memory and bad numbers end in one line."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import xpnn
from tests.cli_helpers import checkpoint_state, cli, interruptible, one_error_line, pythonpath
from tests.idx import make_dataset
from xpnn.cli import train as cli_module

FAST = ["--batch-size", "50", "--hidden", "16", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["load_dataset", "get_backend", "plot_history", "read_npz"])
def test_ctrl_c_outside_the_epoch_loop_is_one_line_and_exit_130(dataset, tmp_path, monkeypatch, capsys, where):
    monkeypatch.setattr(cli_module, where, _interrupt)
    save = tmp_path / "ck.npz"
    if where == "read_npz":
        assert cli_module.main(["--data-dir", str(dataset), *FAST, "--epochs", "1", "--save", str(save)]) == 0
        capsys.readouterr()
    argv = ["--data-dir", str(dataset), *FAST, "--epochs", "1", "--plot", str(tmp_path / "p.png")]
    if where == "read_npz":
        argv += ["--resume", str(save)]
    assert cli_module.main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err and len(err) <= 2 and "interrupted" in err[0] and "Traceback" not in "".join(err)


@pytest.mark.parametrize("workers", ["auto", "2"])
@pytest.mark.parametrize("delay", [0.05, 0.4, 0.8, 1.2, 1.6, 2.5])
def test_sigint_at_a_random_moment_leaves_a_resumable_checkpoint(dataset, tmp_path, delay, workers):
    """Two workers: the signal may land while the calling thread waits for the other one."""
    if workers != "auto" and int(workers) > len(os.sched_getaffinity(0)):
        pytest.skip("--workers 2 needs two cores")
    save = tmp_path / "ck.npz"
    env = {"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin"}
    with interruptible():
        process = subprocess.Popen([sys.executable, "-m", "xpnn.train", "--data-dir", str(dataset), "--hidden", "16",
                                    "--epochs", "100000", "--full-batch", "--save", str(save), "--workers", workers],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().startswith("xpnn:")  # past Python's own start-up and the data loading
    time.sleep(delay * random.uniform(0.8, 1.2))
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and 1 <= len(err.strip().splitlines()) <= 3
    if save.exists():  # written before epoch 1 unless the signal came first
        _, header = checkpoint_state(save)
        assert f"checkpoint after epoch {header['epoch']} is in {save}" in err
        resumed = cli("--data-dir", dataset, "--hidden", "16", "--quiet", "--resume", save,
                      "--epochs", str(header["epoch"] + 1))
        assert resumed.returncode == 0, resumed.stderr
    assert not list(tmp_path.glob(".*.part"))


def test_memory_error_anywhere_is_one_line(dataset, monkeypatch, capsys):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(cli_module.Trainer, "fit", exhausted)
    assert cli_module.main(["--data-dir", str(dataset), *FAST, "--epochs", "1"]) == 1
    assert capsys.readouterr().err.strip() == (
        "python -m xpnn.train: error: out of memory; try a smaller --batch-size (or --hidden), or --full-batch off")


def test_library_warnings_are_one_line_from_the_cli(dataset, monkeypatch, capsys):
    """E.g. a training step that CUDA graphs could not capture: one line, no file name or source line."""
    import warnings

    fit = cli_module.Trainer.fit

    def warn_then_fit(self, *args, **kwargs):
        warnings.warn("cuda graphs: a library warning", stacklevel=2)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(cli_module.Trainer, "fit", warn_then_fit)
    assert cli_module.main(["--data-dir", str(dataset), *FAST, "--epochs", "1", "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["python -m xpnn.train: warning: cuda graphs: a library warning"]


@pytest.mark.parametrize("value", ["0", "0.0", "0.00", "0e0", "-0.0"])
def test_zero_weight_decay_is_accepted_in_any_spelling(dataset, value):
    assert cli("--data-dir", dataset, *FAST, "--epochs", "1", "--weight-decay", value).returncode == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seed", "-1"], "argument --seed: must be a whole number >= 0, got -1"),
        (["--seed", "1.5"], "argument --seed: expected a whole number >= 0, got '1.5'"),
        (["--weight-decay", "-0.1"], "argument --weight-decay: must be a finite number >= 0, got -0.1"),
        (["--weight-decay", "inf"], "argument --weight-decay: must be a finite number >= 0, got inf"),
        (["--weight-decay", "nan"], "argument --weight-decay: must be a finite number >= 0, got nan"),
        (["--weight-decay", "x"], "argument --weight-decay: expected a number, got 'x'"),
        (["--lr", "inf"], "argument --lr: must be a positive finite number, got inf"),
        (["--momentum", "1"], "argument --momentum: must be in [0, 1), got 1"),
        (["--val", "-5"], "argument --val: must be a whole number >= 0, got -5"),
        (["--epochs", "1e3"], "argument --epochs: expected a positive integer, got '1e3'"),
        (["--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
        (["--batch"], "unrecognized arguments: --batch"),
    ],
)
def test_bad_numbers_name_the_flag(dataset, flags, message):
    result = cli("--data-dir", dataset, *FAST, *flags)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_the_library_version_is_importable():
    assert xpnn.__version__


def test_torch_cuda_without_cuda_is_one_line_and_exit_2(dataset):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    result = cli("--data-dir", dataset, *FAST, "--epochs", "1", "--device", "torch:cuda")
    assert result.returncode == 2 and "this torch has no usable CUDA device" in one_error_line(result)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "foo"], "--device: unknown device 'foo'"),
        (["--model", "cnn", "--hidden", "8"], "--hidden sets the MLP's layers"),
        (["--cuda-graphs", "on"], "cuda"),
        (["--momentum", "0.5"], "--momentum is the coefficient of --optimizer momentum, and adam would ignore it"),
        (["--optimizer", "sgd", "--momentum", "0.5"], "and sgd would ignore it: add --optimizer momentum"),
        (["--resume", ""], "--resume: empty path"),
        (["--data-dir", ""], "--data-dir: empty path"),
        (["--val", "600"], "--val 600: must be between 1 and 599 (the training set has 600 samples)"),
    ],
)
def test_flags_found_wrong_after_parsing_exit_2_with_one_line(dataset, flags, message):
    result = cli("--data-dir", dataset, *FAST, "--epochs", "1", *flags)
    assert result.returncode == 2 and message in one_error_line(result)


def test_a_cnn_that_does_not_fit_the_images_is_a_flag_error(tmp_path):
    tiny = make_dataset(tmp_path / "tiny", side=3, n_train=60, n_test=20)
    result = cli("--data-dir", tiny, "--model", "cnn", "--epochs", "1", "--batch-size", "10", "--quiet")
    assert result.returncode == 2 and "--model cnn does not fit" in one_error_line(result)


def test_the_cnn_takes_the_activation_flag(dataset, tmp_path):
    save = tmp_path / "cnn.npz"
    assert cli("--data-dir", dataset, "--model", "cnn", "--activation", "tanh", "--epochs", "1", "--quiet",
               "--save", save).returncode == 0
    config = checkpoint_state(save)[1]["config"]
    assert [layer["type"] for layer in config["layers"]].count("Tanh") == 3


def test_layers_larger_than_the_machine_are_refused_before_allocating(monkeypatch):
    """Where the kernel overcommits, a huge allocation succeeds and the process dies drawing the weights."""
    from xpnn.nn.layers import base

    with pytest.raises(MemoryError, match=r"Affine\(n_in=1000000, n_out=10000000.*GiB, more than this machine's"):
        xpnn.layers.Affine(10**6, 10**7).build("cpu")  # 40 TB of weights
    monkeypatch.setattr(base, "physical_memory", lambda: 1000)
    with pytest.raises(MemoryError, match="make the layer smaller"):
        xpnn.layers.Affine(10, 20).build("cpu")  # 2 x 220 float32 = 1760 bytes
    xpnn.layers.Affine(10, 10).build("cpu")  # 880 bytes fit
    monkeypatch.setattr(base, "physical_memory", lambda: None)  # unknown: no check
    xpnn.layers.Affine(10, 20).build("cpu")


@pytest.mark.parametrize("hidden", ["2000000000", "100000000000"])
def test_a_layer_too_large_for_the_machine_is_a_flag_error_naming_it(dataset, hidden):
    """Refused before allocating (an overcommitting kernel would let the allocation succeed and the process
    die drawing the weights). Batch size and --full-batch cannot help: the message is the layer's, exit 2."""
    result = cli("--data-dir", dataset, "--hidden", hidden, "--epochs", "1", "--quiet")
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"Affine(n_in=64, n_out={hidden}" in line and "make the layer smaller" in line
    assert "--batch-size" not in line


def test_batch_size_with_full_batch_is_one_warning_not_silence(dataset):
    result = cli("--data-dir", dataset, "--hidden", "16", "--quiet", "--epochs", "1", "--full-batch",
                 "--batch-size", "5")
    assert result.returncode == 0
    assert result.stderr.strip() == ("python -m xpnn.train: warning: --batch-size 5 is ignored: --full-batch takes "
                                     "the whole training set in every step")


def test_momentum_and_full_batch_alone_still_train(dataset):
    momentum = ["--optimizer", "momentum", "--momentum", "0.5"]
    assert cli("--data-dir", dataset, *FAST, "--epochs", "1", *momentum).returncode == 0
    assert cli("--data-dir", dataset, "--hidden", "16", "--quiet", "--epochs", "1", "--full-batch").returncode == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_ends_like_ctrl_c_with_exit_143_and_no_lock_left(dataset, tmp_path, workers):
    """kill, a batch scheduler or docker stop send SIGTERM: the run says where its checkpoint is and cleans up."""
    if int(workers) > len(os.sched_getaffinity(0)):
        pytest.skip("--workers 2 needs two cores")
    save = tmp_path / "ck.npz"
    env = {"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen([sys.executable, "-m", "xpnn.train", "--data-dir", str(dataset), "--hidden", "16",
                                "--epochs", "100000", "--full-batch", "--save", str(save), "--workers", workers],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().startswith("xpnn:")
    deadline = time.monotonic() + 60
    while not save.exists() and time.monotonic() < deadline:  # a loaded machine can take seconds to epoch 1
        time.sleep(0.05)
    time.sleep(0.2)  # and a few epochs more
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[0].startswith("terminated in epoch") and len(lines) == 2
    _, header = checkpoint_state(save)
    assert lines[1] == f"checkpoint after epoch {header['epoch']} is in {save}; continue with --resume {save}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]  # no lock file, no .part


def test_sigterm_is_put_back_after_an_in_process_run(dataset):
    before = signal.getsignal(signal.SIGTERM)
    assert cli_module.main(["--data-dir", str(dataset), *FAST, "--epochs", "1"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_between_the_checkpoint_and_the_metrics_waits_for_both(dataset, tmp_path, monkeypatch, capsys,
                                                                        signum, code):
    """The checkpoint and the metrics file of an epoch are written in one block that holds Ctrl-C and SIGTERM."""
    written = cli_module.ModelCheckpoint.write

    def write_then_signal(self, trainer, epoch):
        written(self, trainer, epoch)
        if epoch == 1:  # after the checkpoint of epoch 1, before its metrics
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(cli_module.ModelCheckpoint, "write", write_then_signal)
    save, metrics = tmp_path / "ck.npz", tmp_path / "m.jsonl"
    assert cli_module.main(["--data-dir", str(dataset), *FAST, "--epochs", "3", "--save", str(save),
                            "--metrics", str(metrics)]) == code
    _, header = checkpoint_state(save)
    assert header["epoch"] == 1
    assert [row["epoch"] for row in map(json.loads, metrics.read_text().splitlines())] == [1]  # not one epoch behind
    assert f"checkpoint after epoch 1 is in {save}" in capsys.readouterr().err
