"""Nothing the user trained is lost: existing --save files, concurrent runs, read-only outputs (as root too),
odd output paths, and resuming on another device or number of processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpnn
from tests.cli_helpers import checkpoint_state, cli, interruptible, metrics, one_error_line, pythonpath
from tests.idx import make_dataset
from xpnn.io import files
from xpnn.io.files import OutputError, check_outputs, write_file
from xpnn.io.lock import LockError, OutputLock, lock_path

FAST = ["--epochs", "2", "--batch-size", "50", "--hidden", "8", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory) -> Path:
    """A checkpoint of a finished 2-epoch run."""
    save = tmp_path_factory.mktemp("finished") / "ck.npz"
    assert cli("--data-dir", dataset, *FAST, "--save", save).returncode == 0
    return save


def copy_of(path: Path, tmp_path: Path, name: str = "ck.npz") -> Path:
    target = tmp_path / name
    target.write_bytes(path.read_bytes())
    return target


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ---------------------------------------------------------------------- an existing --save file
def test_the_same_command_again_is_refused_and_the_finished_checkpoint_kept(dataset, finished, tmp_path):
    save = copy_of(finished, tmp_path)
    before = save.read_bytes()
    result = cli("--data-dir", dataset, *FAST, "--save", save)
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"--save {save} already holds a checkpoint after epoch 2" in line
    assert f"--resume {save}" in line and "--overwrite" in line
    assert save.read_bytes() == before and not lock_path(save).exists()


def test_resuming_one_file_into_another_existing_one_is_refused(dataset, finished, tmp_path):
    other = copy_of(finished, tmp_path, "other.npz")
    before = other.read_bytes()
    result = cli("--data-dir", dataset, *FAST, "--epochs", "3", "--resume", finished, "--save", other)
    assert result.returncode == 2
    assert "already holds a checkpoint after epoch 2, and this run resumes another file" in one_error_line(result)
    assert other.read_bytes() == before


def test_a_file_that_is_no_checkpoint_is_refused_too_and_an_empty_one_is_used(dataset, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    result = cli("--data-dir", dataset, *FAST, "--save", notes)
    assert result.returncode == 2 and "already holds a file that is not an xpnn checkpoint" in result.stderr
    assert notes.read_text() == "my notes\n"
    empty = tmp_path / "empty.npz"  # e.g. made by mktemp: nothing to lose
    empty.touch()
    assert cli("--data-dir", dataset, *FAST, "--save", empty).returncode == 0
    assert checkpoint_state(empty)[1]["epoch"] == 2


def test_overwrite_keeps_the_old_checkpoint_until_the_first_epoch_is_done(dataset, finished, tmp_path):
    save = copy_of(finished, tmp_path)
    before = save.read_bytes()
    # A new run that diverges in its first epoch: without an epoch to show, the finished run stays.
    result = cli("--data-dir", dataset, *FAST, "--optimizer", "sgd", "--lr", "1e6", "--save", save, "--overwrite")
    assert result.returncode == 1 and "training diverged in epoch 1" in result.stderr
    assert "last good checkpoint" not in result.stderr  # the file is not this run's
    assert save.read_bytes() == before
    # One that trains replaces it.
    result = cli("--data-dir", dataset, *FAST, "--epochs", "1", "--seed", "7", "--save", save, "--overwrite")
    assert result.returncode == 0, result.stderr
    header = checkpoint_state(save)[1]
    assert header["epoch"] == 1 and header["settings"]["seed"] == 7


def test_overwrite_needs_save(dataset):
    result = cli("--data-dir", dataset, *FAST, "--overwrite")
    assert result.returncode == 2 and "--overwrite lets a new run replace the file at --save" in one_error_line(result)


def test_continuing_in_place_and_dev_null_need_no_overwrite(dataset, finished, tmp_path):
    save = copy_of(finished, tmp_path)
    assert cli("--data-dir", dataset, *FAST, "--epochs", "3", "--resume", save, "--save", save).returncode == 0
    assert checkpoint_state(save)[1]["epoch"] == 3
    assert cli("--data-dir", dataset, *FAST, "--epochs", "1", "--save", "/dev/null").returncode == 0
    assert cli("--data-dir", dataset, *FAST, "--epochs", "1", "--save", "/dev/null").returncode == 0


# ---------------------------------------------------------------------- two runs on one --save
def test_a_second_run_on_the_same_save_is_refused_while_the_first_trains(dataset, tmp_path):
    save = tmp_path / "ck.npz"
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    with interruptible():
        first = subprocess.Popen([sys.executable, "-m", "xpnn.train", "--data-dir", str(dataset), "--epochs", "10000",
                                  "--batch-size", "50", "--hidden", "8", "--quiet", "--save", str(save)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not save.exists() and time.monotonic() < deadline:  # the epoch-0 checkpoint: training under way
            time.sleep(0.05)
        assert lock_path(save).exists()
        assert json.loads(lock_path(save).read_text())["pid"] == first.pid
        for flags in (["--save", save], ["--resume", save, "--save", save], ["--save", save, "--overwrite"]):
            second = cli("--data-dir", dataset, *FAST, *flags)
            assert second.returncode == 2
            line = one_error_line(second)
            assert f"--save {save} is being written by another run (process {first.pid})" in line
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert not lock_path(save).exists()  # removed on Ctrl-C
    assert checkpoint_state(save)[1]["epoch"] >= 0


def test_the_lock_is_removed_after_success_and_after_an_error(dataset, tmp_path):
    save = tmp_path / "ck.npz"
    assert cli("--data-dir", dataset, *FAST, "--save", save).returncode == 0
    assert not lock_path(save).exists()
    diverged = tmp_path / "diverged.npz"
    assert cli("--data-dir", dataset, *FAST, "--lr", "1e30", "--optimizer", "sgd", "--save", diverged).returncode == 1
    assert not lock_path(diverged).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_lock_left_by_a_killed_run_is_taken_over(dataset, tmp_path):
    save = tmp_path / "ck.npz"
    lock_path(save).write_text(json.dumps({"pid": dead_pid(), "host": files._host()}))
    result = cli("--data-dir", dataset, *FAST, "--save", save)
    assert result.returncode == 0, result.stderr
    assert not lock_path(save).exists()


@pytest.mark.parametrize("owner", ["other-host", "unreadable"])
def test_a_lock_of_another_machine_or_unreadable_is_respected(dataset, tmp_path, owner):
    save = tmp_path / "ck.npz"
    text = json.dumps({"pid": dead_pid(), "host": "elsewhere"}) if owner == "other-host" else ""
    lock_path(save).write_text(text)
    result = cli("--data-dir", dataset, *FAST, "--save", save)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "is being written by another run" in line and f"delete {lock_path(save)}" in line
    assert ("on elsewhere" in line) == (owner == "other-host")
    assert not save.exists() and lock_path(save).read_text() == text


def test_output_lock_in_the_library(tmp_path):
    target = tmp_path / "out.npz"
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    with OutputLock(target) as held:
        assert held.held and lock_path(target).exists()
        with pytest.raises(LockError, match="is being written by another run"):
            OutputLock(link).acquire()  # a symlink to the same file shares its lock
    assert not lock_path(target).exists()
    lock = OutputLock(target).acquire()
    lock.release()
    lock.release()  # twice is harmless
    lock = OutputLock(target).acquire()
    lock_path(target).write_text(json.dumps({"pid": 1, "host": "x"}))  # someone replaced it: not ours to remove
    lock.release()
    assert lock_path(target).exists()


# ---------------------------------------------------------------------- permissions, as root too
def test_read_only_file_and_folder_are_refused_by_the_writer(tmp_path):
    target = tmp_path / "ro.bin"
    target.write_bytes(b"keep")
    target.chmod(0o444)
    with pytest.raises(OutputError, match="read-only"):
        write_file(target, lambda file: file.write(b"new"))
    assert target.read_bytes() == b"keep"
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_outputs({"--save": folder / "ck.npz"})
        with pytest.raises(OutputError, match="not writable"):
            check_outputs({"--save": folder / "new" / "ck.npz"})  # a folder still to be made below it
        with pytest.raises(OutputError, match="not writable"):
            xpnn.mlp([3, 2]).save(folder / "model.npz")
    finally:
        folder.chmod(0o755)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("flag", ["--save", "--metrics", "--plot"])
@pytest.mark.parametrize("where", ["file", "folder"])
def test_read_only_outputs_are_refused_before_training(dataset, tmp_path, flag, where):
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    if where == "file":
        path = tmp_path / "out"
        path.write_bytes(b"keep")
        path.chmod(0o444)
    else:
        (tmp_path / "ro").mkdir()
        path = tmp_path / "ro" / "out"
        (tmp_path / "ro").chmod(0o555)
    try:
        result = cli("--data-dir", dataset, *FAST, flag, path, *(["--overwrite"] if flag == "--save" else []))
    finally:
        (tmp_path / "ro").exists() and (tmp_path / "ro").chmod(0o755)
    assert result.returncode == 2 and result.stdout == ""
    line = one_error_line(result)
    assert f"{flag} {path}" in line and ("read-only" if where == "file" else "is not writable") in line
    assert (path.read_bytes() == b"keep") if where == "file" else not path.exists()


# ---------------------------------------------------------------------- odd output paths
def test_odd_save_paths(dataset, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    result = cli("--data-dir", dataset, *FAST, "--save", folder)
    assert result.returncode == 2 and "is a directory" in one_error_line(result)
    result = cli("--data-dir", dataset, *FAST, "--save", f"{tmp_path}/new/")
    assert result.returncode == 2 and "ends with '/'" in one_error_line(result)
    assert not (tmp_path / "new").exists()
    # No .npz suffix: written exactly where named (np.savez would add one), and it resumes from there.
    plain = tmp_path / "checkpoint"
    assert cli("--data-dir", dataset, *FAST, "--save", plain).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "runs"]
    assert cli("--data-dir", dataset, *FAST, "--epochs", "3", "--resume", plain, "--save", plain).returncode == 0
    assert checkpoint_state(plain)[1]["epoch"] == 3


def test_a_model_saved_without_suffix_loads_from_that_path(tmp_path):
    model = xpnn.mlp([3, 2], seed=0)
    model.save(tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    loaded = xpnn.load(tmp_path / "model")
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(loaded.backend.to_numpy(loaded.predict(x)), model.backend.to_numpy(model.predict(x)))


# ---------------------------------------------------------------------- resuming elsewhere
def test_resuming_on_another_device_warns_in_one_line(dataset, finished, tmp_path):
    pytest.importorskip("torch")
    result = cli("--data-dir", dataset, *FAST, "--epochs", "3", "--resume", finished, "--device", "torch")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.strip().splitlines() if "--epochs 3" not in line]
    assert "resuming on torch (the checkpoint was trained on numpy)" in line
    assert "agree with an uninterrupted run only to float rounding" in line


def test_device_and_process_count_are_saved_and_an_old_checkpoint_resumes_silently(dataset, finished, tmp_path):
    settings = checkpoint_state(finished)[1]["settings"]
    assert settings["device"] == "numpy" and settings["processes"] == 1
    arrays, header = checkpoint_state(finished)
    for key in ("device", "processes"):
        del header["settings"][key]
    header["settings"]["epochs"] = 3  # so that --epochs 3 is no change either
    old = xpnn.io.serialization.write_npz(tmp_path / "old.npz", arrays, header)
    result = cli("--data-dir", dataset, *FAST, "--epochs", "3", "--resume", old)
    assert result.returncode == 0 and result.stderr == ""


def test_resuming_under_another_number_of_processes_warns(dataset, finished, tmp_path):
    arrays, header = checkpoint_state(finished)
    header["settings"].update(processes=2, epochs=3)
    two = xpnn.io.serialization.write_npz(tmp_path / "two.npz", arrays, header)
    result = cli("--data-dir", dataset, *FAST, "--epochs", "3", "--resume", two)
    assert result.returncode == 0
    (line,) = result.stderr.strip().splitlines()
    assert "resuming with 1 process (the checkpoint was trained with 2 processes)" in line


# ---------------------------------------------------------------------- a library checkpoint in the CLI
def test_a_library_checkpoint_without_test_columns_resumes_in_the_cli(dataset, tmp_path):
    """fit(validation_split=...) rows have val_* and no test_*; the CLI's summary and plot must cope."""
    data = xpnn.data.load_dataset("mnist", str(dataset), quiet=True)
    x, y = data.x_train, data.y_train
    model = xpnn.mlp([x.shape[1], 8, int(y.max()) + 1], dropout=0.1, seed=1)
    optimizer = xpnn.optim.Adam(model, lr=0.001)
    history = xpnn.fit(model, optimizer, x, y, epochs=1, validation_split=0.2, verbose=False)
    save = tmp_path / "lib.npz"
    xpnn.trainer.save_checkpoint(save, model, optimizer, 1, history.rows, {"hidden": [8]})
    log, plot = tmp_path / "m.jsonl", tmp_path / "p.png"
    flags = ["--epochs", "2", "--quiet", "--resume", save, "--save", save, "--metrics", log]
    if _has_matplotlib():
        flags += ["--plot", plot]
    result = cli("--data-dir", dataset, *flags)
    assert result.returncode == 0, result.stderr
    assert "KeyError" not in result.stderr and "done: 2 epochs" in result.stdout
    rows = metrics(log)
    assert "val_loss" in rows[0] and "test_loss" not in rows[0] and "test_loss" in rows[1]
    # Resumed again with nothing left to train: the summary still comes from the rows that have the numbers.
    again = cli("--data-dir", dataset, "--epochs", "2", "--quiet", "--resume", save)
    assert again.returncode == 0 and "done: 2 epochs" in again.stdout, again.stderr


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------- under MPI: rank 0 decides and writes
def test_two_ranks_refuse_an_existing_save_in_one_line_and_warn_about_the_process_count(tmp_path):
    from tests.test_distributed import cli_on_ranks

    data = make_dataset(tmp_path / "data")
    save = tmp_path / "ck.npz"
    assert cli("--data-dir", data, *FAST, "--save", save).returncode == 0
    before = save.read_bytes()
    start = time.monotonic()
    refused = cli_on_ranks(data, tmp_path / "a", *FAST, "--save", str(save))
    assert refused.returncode == 2 and time.monotonic() - start < 60
    ours = [line for line in refused.stderr.splitlines() if line.startswith(("python -m xpnn.train", "[rank"))]
    assert len(ours) == 1 and "already holds a checkpoint after epoch 2" in ours[0], refused.stderr[-2000:]
    assert "MPI_ABORT" not in refused.stderr and save.read_bytes() == before
    resumed = cli_on_ranks(data, tmp_path / "b", *FAST, "--epochs", "3", "--resume", str(save), "--save", str(save))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stderr.count("resuming with 2 processes (the checkpoint was trained with 1 process)") == 1
    assert json.loads((tmp_path / "b" / "writes-rank1.json").read_text()) == []
    header = checkpoint_state(save)[1]
    assert header["epoch"] == 3 and header["settings"]["processes"] == 2
    assert not lock_path(save).exists()
