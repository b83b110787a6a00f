"""Outputs never damage what a path points at (and a full disk names the path).

The library's one writer (xpnn.io.files.write_file) and the command line's preflight (check_outputs), against
devices, FIFOs, sockets, directories, symlinks, hard links, inputs of the same run and killed writers.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import xpnn
from tests.cli_helpers import pythonpath
from tests.idx import make_dataset
from xpnn.cli import train as cli
from xpnn.io import files
from xpnn.io.files import OutputError, check_outputs, clean_stale_parts, write_file
from xpnn.io.serialization import read_npz

FAST = ["--epochs", "1", "--batch-size", "30", "--hidden", "3"]
OUTPUTS = ["--save", "--metrics", "--plot"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=60, n_test=20)


def run(dataset, *flags):
    return cli.main(["--data-dir", str(dataset), *FAST, *flags])


def one_line_error(capsys, dataset, *flags):
    """Run the CLI expecting exit 2 (a bad output flag) with one line on stderr and nothing on stdout."""
    capsys.readouterr()
    assert run(dataset, *flags) == 2
    out, err = capsys.readouterr()
    assert out == "", f"it started training: {out}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m xpnn.train: error: "), err
    return lines[0]


def write_bytes(data: bytes):
    return lambda file: file.write(data)


def parts_beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".part"))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_socket(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    return server


def special(tmp_path: Path, kind: str) -> Path:
    """A path of the given kind: fifo, dir, socket, under-file (a parent that is a regular file)."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        return tmp_path / "fifo"
    if kind == "dir":
        (tmp_path / "folder").mkdir()
        return tmp_path / "folder"
    if kind == "socket":
        make_socket(tmp_path / "sock").close()  # the socket file stays behind
        return tmp_path / "sock"
    if kind == "under-file":
        (tmp_path / "plain").write_text("x")
        return tmp_path / "plain" / "out"
    if kind == "loop":
        os.symlink(tmp_path / "b", tmp_path / "a")
        os.symlink(tmp_path / "a", tmp_path / "b")
        return tmp_path / "a"
    raise ValueError(kind)


REFUSED = {"fifo": "FIFO", "dir": "a directory", "socket": "a socket", "under-file": "is not a directory",
           "loop": "cannot be written"}


# ---------------------------------------------------------------------- the writer
def test_a_new_file_is_written_whole_with_no_leftovers(tmp_path):
    target = tmp_path / "sub" / "dir" / "out.bin"
    assert write_file(target, write_bytes(b"hello")) == target
    assert target.read_bytes() == b"hello" and parts_beside(target) == []


def test_replacing_keeps_the_permission_bits(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    target.chmod(0o600)
    write_file(target, write_bytes(b"new"))
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_a_symlink_is_followed_and_stays_a_link(tmp_path, relative):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "data.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    os.symlink(os.path.relpath(target, tmp_path) if relative else target, link)
    write_file(link, write_bytes(b"new"))
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert parts_beside(target) == [] and parts_beside(link) == []


def test_a_chain_of_symlinks_and_a_dangling_one(tmp_path):
    target = tmp_path / "end.bin"
    os.symlink(target, tmp_path / "one")
    os.symlink(tmp_path / "one", tmp_path / "two")
    write_file(tmp_path / "two", write_bytes(b"made"))  # dangling: the target is created, links kept
    assert (tmp_path / "two").is_symlink() and (tmp_path / "one").is_symlink() and target.read_bytes() == b"made"



def test_a_dangling_symlink_into_a_missing_folder_is_refused_and_creates_nothing(tmp_path):
    """Writing creates the folders of the path given, never those of a symlink's far target."""
    os.symlink(tmp_path / "absent" / "deeper" / "end.bin", tmp_path / "link")
    with pytest.raises(OutputError, match="is a symbolic link to .*end.bin, whose folder does not exist"):
        write_file(tmp_path / "link", write_bytes(b"x"))
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_special_paths_are_refused_without_blocking(tmp_path, kind):
    path = special(tmp_path, kind)
    before = os.lstat(path) if os.path.lexists(path) else None
    result = {}

    def attempt():
        try:
            write_file(path, write_bytes(b"data"))
        except OutputError as error:
            result["error"] = str(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "writing blocked"
    assert REFUSED[kind] in result["error"] and str(path) in result["error"]
    if before is not None:
        assert stat.S_IFMT(os.lstat(path).st_mode) == stat.S_IFMT(before.st_mode)


def test_stdout_redirected_to_a_file_is_not_replaced(tmp_path):
    log = tmp_path / "log.txt"
    code = ("import sys\nfrom xpnn.io.files import write_file\nprint('first line', flush=True)\n"
            "try:\n    write_file('/dev/stdout', lambda f: f.write(b'metrics'))\n"
            "except ValueError as error:\n    print(error, file=sys.stderr)\nprint('last line', flush=True)\n")
    with open(log, "wb") as out:
        result = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": pythonpath()})
    assert log.read_text() == "first line\nlast line\n"
    assert "names an open stream" in result.stderr and str(log) in result.stderr


def test_dev_null_is_written_to_and_stays_a_device():
    write_file("/dev/null", write_bytes(b"x" * 1000))
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_a_full_device_names_the_path():
    with pytest.raises(OSError) as info:
        write_file("/dev/full", write_bytes(b"x" * 100_000))
    assert info.value.errno == errno.ENOSPC and "/dev/full" in str(info.value)


def test_a_full_disk_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "ck.npz"
    target.write_bytes(b"old checkpoint")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OSError) as info:
        write_file(target, write_bytes(b"new"))
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value) and "No space left" in str(info.value)
    assert target.read_bytes() == b"old checkpoint" and parts_beside(target) == []


def test_an_exception_while_writing_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")

    def fail(file):
        file.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_file(target, fail)
    assert target.read_text() == "old\n" and parts_beside(target) == []


def test_read_only_file_and_folder_are_refused(tmp_path):  # as root too: the permission bits decide
    target = tmp_path / "ro.bin"
    target.write_bytes(b"keep")
    target.chmod(0o444)
    with pytest.raises(OutputError, match="read-only"):
        write_file(target, write_bytes(b"new"))
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(OutputError, match="not writable"):
        check_outputs({"--save": folder / "ck.npz"})


def test_library_savers_go_through_the_writer(tmp_path):
    model = xpnn.mlp([3, 2])
    model.save("/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError, match="FIFO"):
        model.save(tmp_path / "fifo")
    optimizer = xpnn.optim.SGD(model, lr=0.1)
    with pytest.raises(OutputError, match="FIFO"):
        xpnn.trainer.save_checkpoint(tmp_path / "fifo", model, optimizer, 0, [], {})
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


# ---------------------------------------------------------------------- stale .part files
def part_name(target: Path, pid: int, host: str | None = None) -> Path:
    return target.parent / f".{target.name}.{host or files._host()}.{pid}.0123abcd.part"


def test_parts_of_dead_writers_are_cleaned_and_others_kept(tmp_path):
    target = tmp_path / "ck.npz"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = part_name(target, dead_pid())
        kept = [part_name(target, sleeper.pid), part_name(target, os.getpid()),
                part_name(target, dead_pid(), host="other-machine"), tmp_path / ".ck.npz.part",
                tmp_path / ".ck.npz.xyz.part", tmp_path / "ck.npz.123.part", part_name(tmp_path / "other.npz", 1 << 30)]
        for path in [dead, *kept]:
            path.write_bytes(b"partial")
        write_file(target, write_bytes(b"new"))
        assert not dead.exists()
        assert all(path.exists() for path in kept), [p.name for p in kept if not p.exists()]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_clean_stale_parts_reports_what_it_removed(tmp_path):
    target = tmp_path / "m.jsonl"
    stale = [part_name(target, dead_pid()), part_name(target, 10**12)]
    for path in stale:
        path.write_bytes(b"")
    assert sorted(clean_stale_parts(target)) == sorted(stale)
    assert clean_stale_parts(tmp_path / "nowhere" / "x") == []


def test_a_save_killed_midway_leaves_a_part_that_the_next_save_removes(tmp_path):
    target = tmp_path / "ck.npz"
    code = ("import sys, time\nfrom xpnn.io.files import write_file\n"
            "def slow(file):\n    file.write(b'partial')\n    file.flush()\n    print('writing', flush=True)\n"
            "    time.sleep(60)\nwrite_file(sys.argv[1], slow)\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": pythonpath()})
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.kill()  # kill -9: no clean-up code runs
        writer.wait()
        writer.stdout.close()
    assert len(parts_beside(target)) == 1 and not target.exists()
    model = xpnn.mlp([3, 2])
    model.save(target)
    assert parts_beside(target) == []
    assert xpnn.load(target).config() == model.config()


# ---------------------------------------------------------------------- preflight
def test_outputs_must_differ_from_each_other_even_through_links(tmp_path):
    real = tmp_path / "out"
    real.write_text("precious")
    os.symlink(real, tmp_path / "soft")
    os.link(real, tmp_path / "hard")
    for other in (real, tmp_path / "soft", tmp_path / "hard", tmp_path / "." / "out"):
        with pytest.raises(OutputError, match="--save and --metrics both write"):
            check_outputs({"--save": real, "--metrics": other})
    assert real.read_text() == "precious"


def test_devices_may_be_shared_and_allowed_pairs_pass(tmp_path):
    check_outputs({"--save": "/dev/null", "--metrics": "/dev/null", "--plot": "/dev/null"})
    ck = tmp_path / "ck.npz"
    check_outputs({"--save": ck}, inputs={"--resume": ck}, allow_same=[("--save", "--resume")])
    with pytest.raises(OutputError, match="--metrics .* is the same file as --resume"):
        check_outputs({"--metrics": ck}, inputs={"--resume": ck}, allow_same=[("--save", "--resume")])


def test_missing_inputs_still_count(tmp_path):
    future = tmp_path / "cache" / "train-images-idx3-ubyte.gz"  # where a download would go
    with pytest.raises(OutputError, match="is the same file as --data-dir"):
        check_outputs({"--save": future}, inputs={"--data-dir": [future]})


# ---------------------------------------------------------------------- the command line
@pytest.mark.parametrize("flag", OUTPUTS)
def test_dev_null_output_stays_a_device(dataset, flag):
    assert run(dataset, "--quiet", flag, "/dev/null") == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("flag", OUTPUTS)
def test_special_outputs_fail_before_training(dataset, tmp_path, capsys, flag, kind):
    path = special(tmp_path, kind)
    line = one_line_error(capsys, dataset, flag, str(path))
    assert flag in line and REFUSED[kind] in line


@pytest.mark.parametrize(("first", "second"), [("--save", "--metrics"), ("--save", "--plot"), ("--metrics", "--plot")])
@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_two_outputs_on_one_file_fail_and_leave_it_alone(dataset, tmp_path, capsys, first, second, link):
    path = tmp_path / "x"
    path.write_text("precious")
    other = path
    if link == "symlink":
        os.symlink(path, other := tmp_path / "y")
    elif link == "hardlink":
        os.link(path, other := tmp_path / "y")
    line = one_line_error(capsys, dataset, first, str(path), second, str(other))
    assert first in line and second in line
    assert path.read_text() == "precious"


@pytest.mark.parametrize("flag", OUTPUTS)
@pytest.mark.parametrize("how", ["direct", "symlink", "hardlink", "raw"])
def test_outputs_onto_the_training_data_are_refused(tmp_path, capsys, flag, how):
    data = make_dataset(tmp_path / "d", n_train=60, n_test=20, gz=how != "raw")
    victim = next(data.glob("train-images-idx3-ubyte*"))
    before = victim.read_bytes()
    path = victim
    if how == "symlink":
        os.symlink(victim, path := tmp_path / "alias")
    elif how == "hardlink":
        os.link(victim, path := tmp_path / "alias")
    line = one_line_error(capsys, data, flag, str(path))
    assert flag in line and "--data-dir" in line
    assert victim.read_bytes() == before


@pytest.mark.parametrize("flag", ["--metrics", "--plot"])
def test_outputs_onto_the_resumed_checkpoint_are_refused(dataset, tmp_path, capsys, flag):
    ck = tmp_path / "ck.npz"
    assert run(dataset, "--quiet", "--save", str(ck)) == 0
    before = ck.read_bytes()
    line = one_line_error(capsys, dataset, "--resume", str(ck), flag, str(ck))
    assert flag in line and "--resume" in line and ck.read_bytes() == before


def test_save_onto_resume_is_still_how_a_run_continues(dataset, tmp_path):
    ck = tmp_path / "ck.npz"
    assert run(dataset, "--quiet", "--save", str(ck)) == 0
    assert run(dataset, "--quiet", "--epochs", "2", "--resume", str(ck), "--save", str(ck)) == 0
    assert read_npz(ck, "checkpoint")[1]["epoch"] == 2


def test_save_through_a_symlink_writes_the_target(dataset, tmp_path):
    (tmp_path / "store").mkdir()
    os.symlink(tmp_path / "store" / "ck.npz", tmp_path / "latest.npz")
    assert run(dataset, "--quiet", "--save", str(tmp_path / "latest.npz")) == 0
    assert (tmp_path / "latest.npz").is_symlink()
    assert read_npz(tmp_path / "store" / "ck.npz", "checkpoint")[1]["epoch"] == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_a_full_disk_on_the_command_line_names_the_path(dataset, capsys):
    capsys.readouterr()
    assert run(dataset, "--quiet", "--metrics", "/dev/full") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/dev/full" in err[0] and "No space left on device" in err[0], err


@pytest.mark.parametrize(("flag", "target"), [("--metrics", "/dev/null"), ("--save", "fifo"), ("--plot", "x/y")])
def test_through_a_subprocess(dataset, tmp_path, flag, target):
    if target == "fifo":
        os.mkfifo(target := str(tmp_path / "fifo"))
    elif target == "x/y":
        (tmp_path / "x").write_text("a file, not a folder")
        target = str(tmp_path / "x" / "y")
    result = subprocess.run([sys.executable, "-m", "xpnn.train", "--data-dir", str(dataset), *FAST, "--quiet",
                             flag, target], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": pythonpath()})
    if target == "/dev/null":
        assert result.returncode == 0, result.stderr
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    else:
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert flag in result.stderr


def test_metrics_and_plot_are_complete_files_after_a_run(dataset, tmp_path):
    metrics, plot = tmp_path / "m.jsonl", tmp_path / "p.png"
    assert run(dataset, "--quiet", "--metrics", str(metrics), "--plot", str(plot)) == 0
    assert metrics.read_text().count("\n") == 1 and plot.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl", "p.png"]
    assert np.isfinite(json.loads(metrics.read_text())["train_loss"])
