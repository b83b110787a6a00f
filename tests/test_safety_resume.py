"""Resume is exact or it says why not.

A checkpoint stores the run's settings. On --resume, flags not given are taken from it; a flag given with
another value is refused (exit 2) naming both values, except --epochs, which may grow with a warning, and the
settings fine-tuning may change (--lr, --schedule, --batch-size, --weight-decay), with one warning.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.cli_helpers import checkpoint_state, cli, metrics, one_error_line
from tests.idx import make_dataset
from xpnn.io.serialization import read_npz, write_npz

BASE = ["--epochs", "2", "--batch-size", "50", "--hidden", "16", "--lr", "0.05", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory):
    save = tmp_path_factory.mktemp("ck") / "ck.npz"
    assert cli("--data-dir", dataset, *BASE, "--save", save).returncode == 0
    return save


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seed", "2"], "--seed 2 differs from the checkpoint's 1"),
        (["--optimizer", "sgd"], "--optimizer sgd differs from the checkpoint's adam"),
        (["--dropout", "0.3"], "--dropout 0.3 differs from the checkpoint's 0.1"),
        (["--hidden", "8"], "--hidden 8 differs from the checkpoint's 16"),
        (["--hidden", "16,16"], "--hidden 16,16 differs from the checkpoint's 16"),
        (["--activation", "tanh"], "--activation tanh differs from the checkpoint's relu"),
        (["--val", "50"], "--val 50 differs from the checkpoint's 0"),
        (["--full-batch"], "--full-batch (on) differs from the checkpoint's (off)"),
        (["--model", "cnn"], "--model cnn differs from the checkpoint's mlp"),
        (["--init", "xavier"], "--init xavier differs from the checkpoint's he"),
        (["--dataset", "fashion-mnist"], "--dataset fashion-mnist differs from the checkpoint's mnist"),
        (["--seed=2"], "--seed 2 differs from the checkpoint's 1"),
        (["--lr", "0.2", "--hidden", "8"], "--hidden 8 differs from the checkpoint's 16"),
    ],
)
def test_a_changed_setting_is_refused_naming_the_flag_and_both_values(dataset, checkpoint, flags, message):
    before = checkpoint.read_bytes()
    result = cli("--data-dir", dataset, *BASE, *flags, "--resume", checkpoint, "--save", checkpoint)
    assert result.returncode == 2
    line = one_error_line(result)
    assert message in line and "drop --" in line and "fine-tuning may change only --lr" in line
    assert checkpoint.read_bytes() == before  # nothing written


@pytest.mark.parametrize(
    "flags",
    [["--lr", "0.01"], ["--lr=0.01"], ["--batch-size", "25"], ["--schedule", "constant"], ["--weight-decay", "0.01"],
     ["--lr", "0.01", "--batch-size", "25", "--schedule", "step", "--weight-decay", "0.001", "--epochs", "3"]],
)
def test_fine_tuning_continues_from_the_checkpoint_with_one_warning_and_saves_the_new_settings(
        dataset, checkpoint, tmp_path, flags):
    save = tmp_path / "tuned.npz"
    save.write_bytes(checkpoint.read_bytes())
    before = checkpoint_state(save)[1]
    result = cli("--data-dir", dataset, *BASE, "--epochs", "3", *flags, "--resume", save, "--save", save)
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("python -m xpnn.train: warning: fine-tuning with --")
    assert "no longer an exact continuation" in warning
    after = checkpoint_state(save)[1]
    assert after["epoch"] == 3 and after["history"][:2] == before["history"]
    steps_per_epoch = before["optimizer"]["steps"] // 2 * (2 if "25" in flags else 1)  # batches of 50, or of 25
    assert after["optimizer"]["steps"] == before["optimizer"]["steps"] + steps_per_epoch  # the state went on
    for flag, value in zip(flags[::2], flags[1::2], strict=False):
        if "=" in flag:
            flag, value = flag.split("=")
        key = flag[2:].replace("-", "_")
        assert str(after["settings"][key]) in (value, str(float(value)) if key != "schedule" else value), key
    # Resumed again without the flags: the new settings are the checkpoint's now, so nothing is "changed".
    again = cli("--data-dir", dataset, *BASE[:2], "--epochs", "3", "--hidden", "16", "--quiet", "--resume", save)
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_fine_tuning_starts_from_the_saved_weights(dataset, checkpoint, tmp_path):
    """A resumed run at a tiny learning rate ends next to the checkpoint's weights, not at a fresh model's."""
    save = tmp_path / "tuned.npz"
    result = cli("--data-dir", dataset, *BASE, "--epochs", "3", "--lr", "1e-9", "--resume", checkpoint, "--save", save)
    assert result.returncode == 0, result.stderr
    old, new = checkpoint_state(checkpoint)[0], checkpoint_state(save)[0]
    for name in ("model.0.W", "model.0.b"):
        np.testing.assert_allclose(new[name], old[name], atol=1e-6, err_msg=name)


def test_other_data_is_refused(checkpoint, tmp_path):
    other = make_dataset(tmp_path / "other", seed=5)
    result = cli("--data-dir", other, *BASE, "--resume", checkpoint)
    assert result.returncode == 2 and "the checkpoint was trained on other data" in result.stderr


def test_flags_left_out_are_taken_from_the_checkpoint_and_the_result_is_exact(dataset, tmp_path):
    flags = ["--data-dir", dataset, "--batch-size", "40", "--hidden", "12", "--lr", "0.05", "--seed", "3",
             "--optimizer", "momentum", "--schedule", "constant", "--dropout", "0.2", "--quiet"]
    straight, resumed, save = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "ck.npz"
    assert cli(*flags, "--epochs", "4", "--metrics", straight).returncode == 0
    assert cli(*flags, "--epochs", "2", "--save", save).returncode == 0
    result = cli("--data-dir", dataset, "--resume", save, "--epochs", "4", "--save", save, "--metrics", resumed,
                 "--quiet")
    assert result.returncode == 0, result.stderr
    assert "--epochs 4 differs from the checkpoint's 2: training continues to epoch 4" in result.stderr
    assert "cosine" not in result.stderr
    a, b = metrics(straight), metrics(resumed)
    assert [row["epoch"] for row in b] == [1, 2, 3, 4]
    for row_a, row_b in zip(a, b, strict=True):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
            assert row_a[key] == row_b[key], key


def test_more_epochs_with_a_cosine_schedule_warns_what_changes(dataset, checkpoint, tmp_path):
    result = cli("--data-dir", dataset, *BASE[2:], "--epochs", "3", "--resume", checkpoint)
    assert result.returncode == 0, result.stderr
    assert "the cosine schedule now spans 3 epochs" in result.stderr


def test_fewer_epochs_than_the_checkpoint_holds_is_refused(dataset, checkpoint):
    result = cli("--data-dir", dataset, *BASE[2:], "--epochs", "1", "--resume", checkpoint)
    assert result.returncode == 2 and "has already trained 2 epochs" in result.stderr


def test_resuming_a_finished_run_trains_nothing_and_says_so(dataset, checkpoint):
    result = cli("--data-dir", dataset, *BASE, "--resume", checkpoint)
    assert result.returncode == 0 and result.stderr == ""


def _tampered(checkpoint, tmp_path, change):
    arrays, header = checkpoint_state(checkpoint)
    change(arrays, header)
    return write_npz(tmp_path / "tampered.npz", arrays, header)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, h: a.pop("optim.m.0.W"), "m.0.W"),
        (lambda a, h: a.__setitem__("optim.v.2.b", np.float32(0.5)), "v.2.b"),
        (lambda a, h: a.__setitem__("optim.m.0.b", np.zeros(7, np.float32)), "m.0.b"),
        (lambda a, h: a.__setitem__("optim.m.9.W", np.zeros(3, np.float32)), "m.9.W"),
    ],
    ids=["missing-moment", "scalar-moment", "wrong-shape", "extra-key"],
)
def test_optimizer_state_is_checked_key_by_key_and_shape_by_shape(dataset, checkpoint, tmp_path, change, message):
    tampered = _tampered(checkpoint, tmp_path, change)
    result = cli("--data-dir", dataset, *BASE, "--resume", tampered)
    assert result.returncode == 1
    line = one_error_line(result)
    assert str(tampered) in line and message in line


def test_resuming_a_finished_run_into_another_save_writes_what_it_announces(dataset, checkpoint, tmp_path):
    other, log = tmp_path / "other.npz", tmp_path / "other.jsonl"
    result = cli("--data-dir", dataset, *BASE, "--resume", checkpoint, "--save", other, "--metrics", log)
    assert result.returncode == 0, result.stderr
    assert checkpoint_state(other)[1]["epoch"] == 2 and len(metrics(log)) == 2


@pytest.mark.parametrize(
    ("key", "value"),
    [("model", "rnn"), ("batch_size", "x"), ("batch_size", -3), ("epochs", "x"), ("full_batch", "yes"),
     ("hidden", [16, "a"]), ("lr", -1.0), ("optimizer", "lbfgs"), ("seed", 1.5), ("data", 7)],
)
def test_a_checkpoint_with_bad_settings_is_one_line_naming_the_setting(dataset, checkpoint, tmp_path, key, value):
    tampered = _tampered(checkpoint, tmp_path, lambda a, h: h["settings"].__setitem__(key, value))
    result = cli("--data-dir", dataset, *BASE, "--resume", tampered)
    assert result.returncode == 1
    line = one_error_line(result)
    assert str(tampered) in line and f"setting {key!r}" in line


def test_a_flag_equal_to_the_default_the_checkpoint_used_is_not_a_change(dataset, checkpoint):
    result = cli("--data-dir", dataset, *BASE, "--init", "he", "--resume", checkpoint)
    assert result.returncode == 0, result.stderr


def test_a_cnn_checkpoint_with_relu_before_pooling_still_resumes(dataset, tmp_path):
    """cnn() used to build Conv2d, ReLU, MaxPool2d blocks; it now pools first (the same numbers). A
    checkpoint written in the old order resumes: names, shapes and optimizer state are unchanged."""
    flags = ["--data-dir", dataset, "--model", "cnn", "--batch-size", "30", "--quiet"]
    new = tmp_path / "new.npz"
    assert cli(*flags, "--epochs", "1", "--save", new).returncode == 0
    arrays, header = read_npz(new, "checkpoint")
    layers = header["config"]["layers"]
    assert [layer["type"] for layer in layers[:6]] == ["Conv2d", "MaxPool2d", "ReLU"] * 2
    for i in (1, 4):
        layers[i], layers[i + 1] = layers[i + 1], layers[i]
    old = tmp_path / "old.npz"
    write_npz(old, arrays, header)
    resumed, reference = tmp_path / "resumed.npz", tmp_path / "reference.npz"
    result = cli(*flags, "--epochs", "2", "--resume", old, "--save", resumed)
    assert result.returncode == 0, result.stderr
    assert cli(*flags, "--epochs", "2", "--resume", new, "--save", reference).returncode == 0
    got, expected = checkpoint_state(resumed)[0], checkpoint_state(reference)[0]
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_fine_tuning_a_finished_run_without_more_epochs_says_it_would_change_nothing(dataset, checkpoint):
    result = cli("--data-dir", dataset, *BASE, "--lr", "0.01", "--resume", checkpoint)
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"--resume {checkpoint} has trained all 2 epochs, so --lr would change nothing" in line
    assert "pass --epochs larger than 2" in line


def test_momentum_on_a_checkpoint_without_it_is_refused_as_having_no_effect(dataset, checkpoint):
    result = cli("--data-dir", dataset, *BASE, "--momentum", "0.5", "--resume", checkpoint)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "adam would ignore it: drop --momentum" in line and "differs" not in line


def test_a_refused_resume_prints_no_warning_before_its_error(dataset, checkpoint, tmp_path):
    """--epochs 5 would warn; the data check that refuses the run comes alone."""
    other = make_dataset(tmp_path / "other", seed=7)
    result = cli("--data-dir", other, *BASE, "--epochs", "5", "--resume", checkpoint)
    assert result.returncode == 2
    assert "trained on other data" in one_error_line(result)


@pytest.mark.parametrize(("key", "value"), [("processes", -3), ("processes", "2"), ("device", "x" * 1000),
                                            ("device", ""), ("device", 5)])
def test_a_crafted_machine_setting_is_refused_in_one_short_line(dataset, checkpoint, tmp_path, key, value):
    arrays, header = checkpoint_state(checkpoint)
    header["settings"][key] = value
    crafted = tmp_path / "crafted.npz"
    write_npz(crafted, arrays, header)
    result = cli("--data-dir", dataset, *BASE, "--resume", crafted)
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"the checkpoint's setting '{key}'" in line and len(line) < 300


def test_a_flag_the_checkpoint_left_to_its_default_is_named_so(tmp_path):
    rows = "\n".join(f"{i % 7 / 7:.3f},{i % 5 / 5:.3f},{i % 3}" for i in range(120))
    data = tmp_path / "t.csv"
    data.write_text("a,b,label\n" + rows + "\n")
    save = tmp_path / "ck.npz"
    assert cli("--data", data, *BASE, "--save", save).returncode == 0
    result = cli("--data", data, *BASE, "--resume", save, "--target", "a")
    assert result.returncode == 2
    assert "--target a differs from the checkpoint's (default)" in one_error_line(result)


def test_a_checkpoint_of_every_cpu_device_resumes(dataset, tmp_path):
    """Device kinds such as array-api-strict's long name are valid settings, not crafted ones."""
    pytest.importorskip("array_api_strict")
    save = tmp_path / "strict.npz"
    assert cli("--data-dir", dataset, *BASE, "--epochs", "1", "--device", "array_api_strict",
               "--save", save).returncode == 0
    result = cli("--data-dir", dataset, *BASE, "--resume", save, "--device", "array_api_strict", "--save", save)
    assert result.returncode == 0, result.stderr


def test_a_checkpoint_of_more_workers_than_this_machine_has_resumes_with_its_own(dataset, checkpoint, tmp_path):
    """--workers is a machine's setting, like --device: not given, it adapts (with one warning); given, it is
    checked as always."""
    arrays, header = checkpoint_state(checkpoint)
    header["settings"]["workers"] = 64
    crafted = tmp_path / "big-machine.npz"
    write_npz(crafted, arrays, header)
    result = cli("--data-dir", dataset, *BASE, "--epochs", "3", "--resume", crafted, "--save", crafted)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "--epochs 3" not in line]
    assert len(lines) == 1 and "(the checkpoint was trained with 64 workers)" in lines[0]
    result = cli("--data-dir", dataset, *BASE, "--epochs", "4", "--resume", crafted, "--workers", "64")
    assert result.returncode == 2 and "--workers 64" in one_error_line(result)
