"""The one place where xpnn writes files: checkpoints, models, metrics, plots and downloads all come here.

What a path points at is never damaged:

- A **regular file** (or a path that does not exist yet) is replaced atomically: the data goes to a
  temporary ``.part`` file beside the real target, is flushed to disk, then renamed over it, so a reader
  (or a run killed at any moment) sees the old file or the new one, never half of either. The replaced
  file keeps its permission bits.
- A **symbolic link** is followed to its real target, which is replaced as above; the link stays a link.
- A **character device** (``/dev/null``, a terminal) is written to directly: it cannot be replaced and
  needs no atomicity. A device that refuses the data (``/dev/full``) is reported naming the path.
- **FIFOs, sockets, block devices and directories are refused** with :class:`OutputError`: a FIFO would
  block until someone reads it and could not be rewritten each epoch, and replacing or writing a disk or
  a directory is never what a training run means. So are read-only files and folders (someone protected
  them: no write permission bit is set, which xpnn respects even when it runs as root), paths that end
  with ``/`` (a folder, not a file name), and
  ``/dev/stdout``-like paths unless they lead to a terminal: redirected to a log file, replacing it would
  unlink the log the shell is writing.

Temporary files are named ``.<name>.<host>.<pid>.<random>.part``. A run killed by ``kill -9`` cannot
delete its own; the next write to the same target deletes every such file whose host is this machine and
whose process no longer exists. Files of live processes, and of other machines sharing the folder (MPI
ranks on a network file system), are left alone.

:func:`check_outputs` is the preflight a command runs before any work: every output path is checked as
above, outputs must differ from each other and from every input (compared by real path and inode, so
symlinks and hard links count as the same file), with named exceptions such as ``--save`` = ``--resume``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["OutputError", "check_output", "check_outputs", "clean_stale_parts", "write_file"]


class OutputError(ValueError):
    """An output path that xpnn refuses to write (a FIFO, a directory, an input of the same run, ...)."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _kind(mode: int) -> str | None:
    """A name for a file type xpnn refuses to write, or None for regular files and character devices."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return None


def _resolve(path: str | os.PathLike, flag: str | None = None) -> tuple[Path, os.stat_result | None]:
    """The real target of ``path`` (symlinks followed) and its status, None when it does not exist yet."""
    label = f"{flag} {path}" if flag else str(path)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # a missing file, or one below a file: see check_output
        info = None
    except OSError as error:  # a symlink loop, no permission
        raise OutputError(f"{label}: cannot be written ({error.strerror})") from None
    return Path(os.path.realpath(path)), info


def check_output(path: str | os.PathLike, flag: str | None = None) -> Path:
    """Check that ``path`` can be written by :func:`write_file` without damaging anything; return its real target.

    Parameters
    ----------
    path : path-like
        The output path as the user gave it.
    flag : str, optional
        The command-line flag that named it, used in the message (``"--save"``).

    Raises
    ------
    OutputError
        One line naming the path (and flag), the problem and what to do instead.
    """
    label = f"{flag} {path}" if flag else str(path)
    if str(path) == "":
        raise OutputError(f"{flag or 'output path'}: empty path; give a file name")
    real, info = _resolve(path, flag)
    if _names_a_stream(path) and (info is None or not stat.S_ISCHR(info.st_mode)):
        raise OutputError(f"{label} names an open stream of this process (now {real}), not a file; replacing it "
                          f"would unlink what the stream writes to, so give a file path")
    if info is not None:
        kind = _kind(info.st_mode)
        if kind is not None:
            raise OutputError(f"{label} is {kind}; xpnn writes regular files (and character devices such as "
                              f"/dev/null), so give a file path")
        if stat.S_ISCHR(info.st_mode):
            if not _writable(real, info, os.W_OK):
                raise OutputError(f"{label}: the device is not writable")
            return real
        if not _writable(real, info, os.W_OK):
            raise OutputError(f"{label}: the file is read-only; make it writable (chmod u+w) or choose another path")
    elif str(path).endswith(("/", os.sep)):
        raise OutputError(f"{label} ends with '/', so it names a folder; give a file name inside it "
                          f"(such as {str(path).rstrip('/' + os.sep) or '.'}/out)")
    if info is None and os.path.islink(path) and not real.parent.is_dir():
        raise OutputError(f"{label} is a symbolic link to {real}, whose folder does not exist; create the folder "
                          "or choose another path")
    ancestor = real.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{label}: {ancestor} is not a directory, so nothing can be written below it")
    if not _writable(ancestor, os.stat(ancestor), os.W_OK | os.X_OK):
        raise OutputError(f"{label}: the folder {ancestor} is not writable; make it writable (chmod u+w) or "
                          "choose another path")
    return real


def _writable(path: Path, info: os.stat_result, mode: int) -> bool:
    """Whether ``path`` may be written: its permission bits allow it, for root too.

    ``os.access`` answers for the calling user, and root passes every check; a file or folder without
    any write bit (``chmod 444``, ``chmod 555``) has been protected by someone, so xpnn treats it as
    read-only whoever runs it. ``os.access`` still catches read-only file systems and a plain user's rights.
    """
    return bool(stat.S_IMODE(info.st_mode) & 0o222) and os.access(path, mode)


def _names_a_stream(path: str | os.PathLike) -> bool:
    """Whether ``path`` (or a symlink on its way) is /dev/stdout, /dev/fd/N, /proc/.../fd/N and the like."""
    current = os.path.abspath(path)
    for _ in range(40):
        if current.startswith(("/proc/", "/dev/fd/")) or current in ("/dev/stdin", "/dev/stdout", "/dev/stderr"):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return False


def _identity(path: str | os.PathLike) -> tuple[Any, ...]:
    """Two paths with the same identity are the same file (same inode, or the same real path if absent)."""
    try:
        info = os.stat(path)
        return ("inode", info.st_dev, info.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def check_outputs(
    outputs: Mapping[str, str | os.PathLike | None],
    inputs: Mapping[str, str | os.PathLike | Iterable[str | os.PathLike] | None] | None = None,
    allow_same: Iterable[tuple[str, str]] = (),
) -> None:
    """Preflight for a command: every output writable, distinct from the others and from every input.

    Parameters
    ----------
    outputs : mapping
        Flag (``"--save"``) -> path, or None when the flag was not given.
    inputs : mapping, optional
        Flag (``"--resume"``, ``"--data-dir"``) -> a path, several paths, or None. Paths that do not exist
        yet still count (a dataset about to be downloaded there).
    allow_same : iterable of (output flag, input flag)
        Pairs that may name the same file, e.g. ``("--save", "--resume")`` to continue a run in place.

    Raises
    ------
    OutputError
        One line naming the flags involved and the path.
    """
    allowed = {frozenset(pair) for pair in allow_same}
    given = {flag: path for flag, path in outputs.items() if path is not None}
    seen: dict[tuple[Any, ...], str] = {}
    for flag, path in given.items():
        check_output(path, flag)
        identity = _identity(path)
        is_device = identity[0] == "inode" and stat.S_ISCHR(os.stat(path).st_mode)
        if identity in seen and not is_device and frozenset((flag, seen[identity])) not in allowed:
            raise OutputError(f"{seen[identity]} and {flag} both write {path}; one would destroy the other, "
                              f"so give each its own path")
        seen.setdefault(identity, flag)
    for input_flag, value in (inputs or {}).items():
        if value is None:
            continue
        paths = [value] if isinstance(value, str | os.PathLike) else list(value)
        for path in paths:
            identity = _identity(path)
            if identity in seen and frozenset((seen[identity], input_flag)) not in allowed:
                output_flag = seen[identity]
                raise OutputError(f"{output_flag} {given[output_flag]} is the same file as {input_flag} {path}; "
                                  f"writing it would destroy that input, so choose another output path")


def clean_stale_parts(target: str | os.PathLike) -> list[Path]:
    """Delete the ``.part`` files that killed writers of ``target`` left beside it; return what was deleted.

    A temporary file is ours and dead when its name is ``.<target name>.<this host>.<pid>.<random>.part``
    and no process ``pid`` exists on this host. Everything else is left alone.
    """
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}.{_host()}.") + r"(\d+)\.[0-9a-f]+\.part")
    removed = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            (target.parent / name).unlink()
            removed.append(target.parent / name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # a number no pid can be
        return False
    return True


def write_file(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` to produce the contents of ``path``, safely for whatever ``path`` points at.

    Regular files and new paths are replaced atomically (symlinks followed to their real target);
    character devices are written directly; other special files are refused. See the module docstring.

    Parameters
    ----------
    path : path-like
        Where the data goes; missing parent folders are created.
    write : callable
        Receives a binary file object and writes the whole contents to it.

    Returns
    -------
    Path
        The real path that was written.

    Raises
    ------
    OutputError
        When ``path`` is a FIFO, socket, block device or directory, or cannot be written.
    OSError
        When writing fails (a full disk, an I/O error); the message names the path.
    """
    real = check_output(path)
    try:
        info = os.stat(real)
    except FileNotFoundError:
        info = None
    try:
        if info is not None and stat.S_ISCHR(info.st_mode):
            with open(real, "wb") as file:
                write(_Stream(file))
                file.flush()
            return real
        real.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_parts(real)
        _replace(real, write, None if info is None else stat.S_IMODE(info.st_mode))
    except OSError as error:
        if error.errno is None or str(path) in str(error):
            raise
        raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from error
    return real


class _Stream(io.RawIOBase):
    """A device opened for writing, shown as a stream that cannot seek (writers such as zipfile then never try).

    ``/dev/null`` accepts a seek and reports position 0 ever after, which would corrupt a zip writer's offsets.
    """

    def __init__(self, file: IO[bytes]):
        super().__init__()
        self._file, self._position = file, 0

    def write(self, data: Any) -> int:
        self._file.write(data)
        size = memoryview(data).nbytes
        self._position += size
        return size

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        self._file.flush()

    def writable(self) -> bool:
        return True


def _replace(real: Path, write: Callable[[IO[bytes]], None], mode: int | None) -> None:
    while True:
        temporary = real.parent / f".{real.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.part"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
            break
        except FileExistsError:
            continue
    try:
        if mode is not None:
            os.chmod(temporary, mode)
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, real)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _sync_folder(real.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: some file systems cannot sync a folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
