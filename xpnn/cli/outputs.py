"""The files ``python -m xpnn.train`` writes: checked before any work, and ``--save`` claimed for this run."""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Any, NoReturn

from ..io.data import input_paths
from ..io.files import OutputError, check_outputs
from ..io.lock import OutputLock
from ..io.serialization import FormatError, open_npz
from ..runtime.distributed import Local
from .settings import TrainSettings, UsageError


def claim_outputs(args: TrainSettings, comm: Any, cleanup: contextlib.ExitStack) -> bool:
    """Check every output path against the inputs, then claim ``--save`` (see :func:`claim_save`)."""
    data_inputs = ({"--data": [args.data_file]} if args.data_file is not None
                   else {"--data-dir": input_paths(args.dataset, args.data_dir)})
    check_outputs({"--save": args.save, "--metrics": args.metrics, "--plot": args.plot},
                  inputs={"--resume": args.resume, **data_inputs}, allow_same=[("--save", "--resume")])
    return claim_save(args, comm, cleanup)


def claim_save(args: TrainSettings, comm: Any, cleanup: contextlib.ExitStack) -> bool:
    """Apply the rule for an existing ``--save`` file and lock it for this run (rank 0 decides for every rank).

    A new run never destroys what a path already holds: a ``--save`` file that is not the checkpoint being
    resumed is refused unless ``--overwrite`` is given, and even then it is kept until the new run's first
    epoch has a checkpoint to put there. A second run on the same ``--save`` path is refused while the
    first holds its lock file.

    Returns
    -------
    bool
        Whether ``--save`` holds an earlier file to keep until the first epoch ends (no epoch-0 checkpoint).
    """
    if args.overwrite and not args.save:
        raise UsageError("--overwrite lets a new run replace the file at --save; give --save PATH or drop --overwrite")
    comm = comm or Local()
    if not args.save:
        return False
    problem: OutputError | None = None
    keep = False
    if comm.is_root:
        try:
            if not _is_device(args.save):  # first: a file another run is writing is not "an earlier run's"
                cleanup.enter_context(OutputLock(args.save, "--save"))
            keep = _existing_save(args)
        except OutputError as error:
            problem = error
    if comm.any(problem is not None):  # every rank stops; the others' message is never shown
        raise problem or OutputError("--save: refused by rank 0")
    return keep


def _is_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _existing_save(args: TrainSettings) -> bool:
    """Refuse (or, with --overwrite, keep until the first epoch) a non-empty file at --save; see claim_save."""
    try:
        info = os.stat(args.save)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return False
    if args.resume and os.path.exists(args.resume) and os.path.samefile(args.save, args.resume):
        return False
    if args.overwrite:
        return True
    try:
        with open_npz(args.save, "checkpoint") as npz:
            what = f"a checkpoint after epoch {npz.header['epoch']}"
    except (FormatError, OSError):
        what = "a file that is not an xpnn checkpoint"
    if args.resume:
        return _refuse(f"--save {args.save} already holds {what}, and this run resumes another file; choose "
                       "another --save path, or pass --overwrite to replace it")
    return _refuse(f"--save {args.save} already holds {what}; continue that run with --resume {args.save}, or "
                   "start over with --overwrite (or delete the file)")


def _refuse(message: str) -> NoReturn:
    raise OutputError(message)

