"""A training job that waits for orders: one epoch of 784-256-128-10 per ``epoch`` line on stdin.

    python bench/distributed_worker.py BATCH                        # one process
    mpirun -n 2 ... python bench/distributed_worker.py BATCH        # data-parallel over 2 ranks

BATCH is a number or ``full``. Rank 0 reads the orders and answers each with one JSON line: the epoch's
seconds and the seconds spent in the gradient all-reduce, both timed inside the job. An ``allreduce``
line times the all-reduce alone, the ranks in step: 50 calls of ``allreduce_gradients`` (packing,
``Allreduce``, unpacking) and 50 bare ``Allreduce`` calls on the flat buffer, seconds per call. The other ranks wait
for orders without spinning, so an idle job leaves the cores to whatever is being timed. Thread counts
come from OMP_NUM_THREADS and friends, set by whoever starts the job. Used by bench/test_distributed.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from implementations import LR, SIZES, load_data

import xpnn
from xpnn.runtime.distributed import communicator

EPOCH, QUIT, ALLREDUCE = 1, 0, 2
ORDERS = {"epoch": EPOCH, "allreduce": ALLREDUCE}


def order(comm, line: str | None) -> int:
    """Rank 0's order, known to every rank; waits by polling, not in a spinning collective."""
    if comm.size == 1:
        return ORDERS.get(line, QUIT)
    buffer = np.array([ORDERS.get(line, QUIT)], dtype=np.int64)
    request = comm.comm.Ibcast(buffer, root=0)
    while not request.Test():
        time.sleep(0.001)
    return int(buffer[0])


def main() -> None:
    batch = None if sys.argv[1] == "full" else int(sys.argv[1])
    comm = communicator()
    x, y, source = load_data()
    backend = xpnn.get_backend("cpu")
    model = xpnn.mlp(list(SIZES), backend=backend, seed=0)
    model.check_values = False
    trainer = xpnn.trainer.Trainer(model, xpnn.optim.SGD(model, lr=LR), batch_size=batch, seed=0, comm=comm)
    if batch is None and comm.size > 1:  # as fit() does: each rank holds only its shard of the full batch
        lo, hi = comm.shard(0, x.shape[0])
        trainer.full_batch_of, x, y = x.shape[0], x[lo:hi], y[lo:hi]
    data = trainer.device_data(x, y)
    comm.broadcast_parameters(model)
    if comm.is_root:
        print(json.dumps({"ready": True, "ranks": comm.size, "data": source}), flush=True)
    for index in range(10**9):
        line = sys.stdin.readline().strip() if comm.is_root else None
        command = order(comm, line)
        if command == QUIT:
            break
        if command == ALLREDUCE:
            allreduce_alone(comm, model, trainer, data)
            continue
        comm.barrier()
        reduced_before = getattr(comm, "allreduce_seconds", 0.0)
        start = time.perf_counter()
        sums = trainer.train_epoch(data, index)
        backend.item(sums["loss"])  # waits for the device
        comm.barrier()
        seconds = time.perf_counter() - start
        if comm.is_root:
            allreduce = getattr(comm, "allreduce_seconds", 0.0) - reduced_before
            print(json.dumps({"seconds": seconds, "allreduce_seconds": allreduce}), flush=True)


def allreduce_alone(comm, model, trainer, data, calls: int = 50) -> None:
    """Seconds per all-reduce of this model's gradients with the ranks in step (no training between)."""
    if comm.size == 1:
        if comm.is_root:
            print(json.dumps({"per_call_seconds": 0.0, "bare_seconds": 0.0, "bytes": 0}), flush=True)
        return
    model.loss(data.x[:64], data.targets[:64])
    model.backward()
    comm.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        comm.allreduce_gradients(model, 64, 128)
    per_call = (time.perf_counter() - start) / calls
    flat = comm._buffer.host
    comm.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        comm.comm.Allreduce(comm._MPI.IN_PLACE, flat, op=comm._MPI.SUM)
    bare = (time.perf_counter() - start) / calls
    if comm.is_root:
        print(json.dumps({"per_call_seconds": per_call, "bare_seconds": bare, "bytes": flat.nbytes}), flush=True)


if __name__ == "__main__":
    main()
