"""``python -m xpnn.train`` end to end on a small generated dataset, and every bad input it must refuse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpnn
from tests.idx import make_dataset, write_idx
from xpnn.cli import train as cli
from xpnn.training.trainer import Trainer

FAST = ["--epochs", "3", "--batch-size", "50", "--hidden", "16", "--lr", "0.1", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def run(dataset, *flags):
    return cli.main(["--data-dir", str(dataset), *FAST, *flags])


def read_metrics(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_trains_and_writes_metrics_plot_and_checkpoint(dataset, tmp_path, capsys):
    metrics, plot, save = tmp_path / "m.jsonl", tmp_path / "curves.png", tmp_path / "ck.npz"
    assert run(dataset, "--metrics", str(metrics), "--plot", str(plot), "--save", str(save)) == 0
    rows = read_metrics(metrics)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for key in ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "samples_per_second"):
        assert key in rows[0]
    assert rows[-1]["test_accuracy"] > 0.9 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "done: 3 epochs" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "curves.png", "m.jsonl"]  # no temp files


def test_epoch_lines_are_readable(dataset, capsys):
    assert cli.main(["--data-dir", str(dataset), "--epochs", "2", "--batch-size", "100", "--hidden", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("xpnn: 64-8-3 relu MLP")
    assert out[1].startswith("epoch 1/2  train loss") and "samples/s" in out[1] and "test loss" in out[1]
    assert out[-1].startswith("done: 2 epochs")


def test_full_batch_learns(dataset, tmp_path):
    metrics = tmp_path / "m.jsonl"
    # lr 0.05: Adam at 0.5 diverges from epoch 9 here without dropout, and passed only with lucky masks
    flags = ["--data-dir", str(dataset), "--full-batch", "--epochs", "30", "--lr", "0.05", "--hidden", "16", "--quiet"]
    assert cli.main([*flags, "--metrics", str(metrics)]) == 0
    rows = read_metrics(metrics)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 3
    assert rows[-1]["test_accuracy"] > 0.9


def interrupt_at(monkeypatch, stop_epoch):
    """Make the trainer raise KeyboardInterrupt when it reaches 0-based epoch ``stop_epoch`` (Ctrl-C)."""
    original = Trainer.run_epoch

    def run_epoch(self, data, epoch, *args, **kwargs):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return original(self, data, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    return original


@pytest.mark.parametrize(("optimizer", "extra"), [("sgd", []), ("sgd", ["--hidden", "256"]), ("momentum", []),
                                                  ("adam", [])], ids=["sgd", "sgd-fused", "momentum", "adam"])
def test_interrupted_and_resumed_run_equals_uninterrupted_run(dataset, tmp_path, monkeypatch, optimizer, extra):
    """sgd-fused: a first weight of 64x256 (8x8 images), large enough that SGD moves it inside its gradient product."""
    lr = "0.01" if optimizer == "adam" else "0.05"
    common = ["--optimizer", optimizer, "--dropout", "0.3", "--epochs", "4", "--lr", lr, *extra]
    straight, resumed = tmp_path / "straight.jsonl", tmp_path / "resumed.jsonl"
    assert run(dataset, *common, "--metrics", str(straight), "--save", str(tmp_path / "a.npz")) == 0
    original = interrupt_at(monkeypatch, 2)
    assert run(dataset, *common, "--save", str(tmp_path / "b.npz"), "--metrics", str(resumed)) == 130
    monkeypatch.setattr(Trainer, "run_epoch", original)
    assert run(dataset, *common, "--resume", str(tmp_path / "b.npz"), "--save", str(tmp_path / "b.npz"),
               "--metrics", str(resumed)) == 0
    assert read_metrics(resumed) == [
        {**row, "seconds": got["seconds"], "samples_per_second": got["samples_per_second"]}
        for row, got in zip(read_metrics(straight), read_metrics(resumed), strict=True)
    ]
    (a, _), (b, _) = (xpnn.io.serialization.read_npz(tmp_path / name, "checkpoint") for name in ("a.npz", "b.npz"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs: must be a positive integer, got 0"),
        (["--epochs", "-2"], "--epochs: must be a positive integer, got -2"),
        (["--lr", "0"], "--lr: must be a positive finite number"),
        (["--lr", "nan"], "--lr: must be a positive finite number"),
        (["--lr", "-0.1"], "--lr: must be a positive finite number"),
        (["--batch-size", "0"], "--batch-size: must be a positive integer"),
        (["--batch-size", "100000"], "--batch-size 100000 is larger than the training set (600 samples)"),
        (["--hidden", "256,,x"], "--hidden: expected comma-separated positive integers"),
        (["--hidden", "256,0"], "--hidden: layer sizes must be positive"),
        (["--dataset", "cifar"], "--dataset: invalid choice: 'cifar'"),
        (["--dropout", "1"], "--dropout: must be in [0, 1), got 1"),
        (["--dropout", "-0.1"], "--dropout: must be in [0, 1)"),
    ],
)
def test_bad_flags_exit_2_with_argparse_message(dataset, capsys, flags, message):
    try:
        code = cli.main(["--data-dir", str(dataset), "--quiet", *flags])
    except SystemExit as info:  # argparse's own checks print the usage too
        code = info.code
        assert capsys.readouterr().err.startswith("usage:") or pytest.fail("argparse error without usage")
    else:  # flags found wrong once the data is known: one line
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m xpnn.train: error:")
        capsys.readouterr()
        message_seen = message in err
        assert message_seen, err
    assert code == 2


def one_line_error(capsys, argv, code=1):
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("python -m xpnn.train: error:")
    return err


def test_missing_data_directory(tmp_path, capsys):
    err = one_line_error(capsys, ["--data-dir", str(tmp_path / "nope"), "--quiet"])
    assert "nope: data directory does not exist" in err


def test_file_of_the_wrong_kind_is_named(dataset, tmp_path, capsys):
    broken = make_dataset(tmp_path / "broken", n_train=20, n_test=10)
    (broken / "train-images-idx3-ubyte.gz").write_bytes(b"<html>not found</html>")
    err = one_line_error(capsys, ["--data-dir", str(broken), "--quiet"])
    assert "train-images-idx3-ubyte.gz: not an IDX file" in err


def test_labels_file_with_too_few_labels(tmp_path, capsys):
    broken = make_dataset(tmp_path / "short", n_train=20, n_test=10)
    write_idx(broken / "t10k-labels-idx1-ubyte.gz", np.zeros(9))
    err = one_line_error(capsys, ["--data-dir", str(broken), "--quiet"])
    assert "holds 10 images but" in err and "holds 9 labels" in err


def test_resume_with_another_architecture_is_refused_naming_the_flag(dataset, tmp_path, capsys):
    save = tmp_path / "ck.npz"
    assert run(dataset, "--save", str(save)) == 0
    assert cli.main(["--data-dir", str(dataset), *FAST, "--hidden", "32", "--resume", str(save)]) == 2
    assert "--hidden 32 differs from the checkpoint's 16" in capsys.readouterr().err


def test_resume_from_a_file_that_is_not_a_checkpoint(dataset, tmp_path, capsys):
    model_file = xpnn.mlp([64, 16, 3]).save(tmp_path / "model.npz")
    err = one_line_error(capsys, ["--data-dir", str(dataset), *FAST, "--resume", str(model_file)])
    assert "holds an xpnn 'model', expected a 'checkpoint'" in err


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is what this test provokes
def test_divergence_stops_with_advice_and_keeps_last_good_checkpoint(dataset, tmp_path, capsys):
    save = tmp_path / "ck.npz"
    err = one_line_error(capsys, ["--data-dir", str(dataset), *FAST, "--lr", "1e30", "--save", str(save)])
    assert "diverged in epoch 1" in err and "try a smaller --lr (now 1e+30)" in err
    assert "last good checkpoint (epoch 0)" in err
    _, header = xpnn.io.serialization.read_npz(save, "checkpoint")
    assert header["epoch"] == 0


def test_ctrl_c_exits_cleanly_with_a_checkpoint(dataset, tmp_path, capsys, monkeypatch):
    interrupt_at(monkeypatch, 1)
    save = tmp_path / "ck.npz"
    assert run(dataset, "--save", str(save)) == 130
    assert "continue with --resume" in capsys.readouterr().err
    _, header = xpnn.io.serialization.read_npz(save, "checkpoint")
    assert header["epoch"] == 1


def test_gpu_without_cupy_exits_2_without_traceback(dataset):
    code = "import sys; sys.modules['cupy'] = None; from xpnn.cli.train import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, "--device", "gpu", "--data-dir", str(dataset)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'python -m xpnn.train: error: device "gpu" needs CuPy, which is not installed; install it with pip install '
        'cupy-cuda12x (or the cupy-cudaXXx wheel that matches your CUDA), or use --device cpu'
    ]


def test_module_entry_point_help_shows_defaults():
    result = subprocess.run([sys.executable, "-m", "xpnn.train", "--help"], capture_output=True, text=True, check=True)
    assert "--batch-size N" in result.stdout and "(default: 128)" in result.stdout


@pytest.mark.slow
def test_real_fashion_mnist_one_epoch_reaches_80_percent(tmp_path):
    root = Path("/usr/share/datasets/fashion-mnist")
    if xpnn.data.find_files(root) is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    metrics = tmp_path / "m.jsonl"
    assert cli.main(["--dataset", "fashion-mnist", "--data-dir", str(root), "--epochs", "1", "--quiet",
                     "--metrics", str(metrics)]) == 0
    assert read_metrics(metrics)[0]["test_accuracy"] >= 0.80
