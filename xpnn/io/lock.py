"""A lock file beside an output, so that two runs never write one checkpoint at the same time.

The lock of ``runs/ck.npz`` is ``runs/.ck.npz.lock``, created atomically (``O_CREAT | O_EXCL``) and holding
the process id and host name of its owner as JSON. It is removed when the owner is done, also after an
error or a Ctrl-C. A lock left by a process that was killed (``kill -9``, a power cut) is taken over by
the next run on the same machine once that process no longer exists; a lock of a live process, or of
another machine sharing the folder, makes the second run stop with one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import Any

from .files import OutputError, _alive, _host

__all__ = ["LockError", "OutputLock", "lock_path"]


class LockError(OutputError):
    """The output is being written by another run (its lock file exists and its owner is alive)."""


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of ``target``: a hidden file beside it, ``.<name>.lock``."""
    target = Path(os.path.realpath(target))
    return target.parent / f".{target.name}.lock"


class OutputLock:
    """Hold the lock of one output path while a run writes it.

    Parameters
    ----------
    target : path-like
        The output (symlinks are followed, so two links to one file share its lock).
    flag : str
        The command-line flag that named it, used in messages (``"--save"``).

    Examples
    --------
    >>> with OutputLock(path, "--save"):   # doctest: +SKIP
    ...     train_and_save(path)
    """

    def __init__(self, target: str | os.PathLike, flag: str = "--save"):
        self.target, self.flag = target, flag
        self.path = lock_path(target)
        self._owner = {"pid": os.getpid(), "host": _host(), "token": secrets.token_hex(8)}
        self.held = False

    def acquire(self) -> OutputLock:
        """Create the lock file, taking over a stale one; raise :class:`LockError` if another run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # a stale lock taken over by someone else in between: look again
            try:
                handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._read()
                if owner is None or not self._stale(owner):
                    raise LockError(self._message(owner)) from None
                self._take_over(owner)
                continue
            except OSError as error:
                raise OutputError(f"{self.flag} {self.target}: cannot create the lock file {self.path} "
                                  f"({error.strerror})") from None
            with os.fdopen(handle, "w") as file:
                json.dump(self._owner, file)
            self.held = True
            return self
        raise LockError(self._message(self._read()))

    def release(self) -> None:
        """Remove the lock file if it is still ours (safe to call twice)."""
        if not self.held:
            return
        self.held = False
        if self._read() == self._owner:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    # ------------------------------------------------------------------ helpers
    def _read(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not (isinstance(owner, dict) and isinstance(owner.get("pid"), int) and isinstance(owner.get("host"), str)):
            return None
        return owner

    @staticmethod
    def _stale(owner: dict[str, Any]) -> bool:
        return owner["host"] == _host() and not _alive(owner["pid"])

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Move the stale lock aside and delete it; if what was moved is someone's fresh lock, put it back."""
        aside = self.path.with_name(f"{self.path.name}.{secrets.token_hex(4)}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # someone else took it over first
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if moved is not None and moved != stale:  # a live owner's new lock: give it back if its place is free
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()

    def _message(self, owner: dict[str, Any] | None) -> str:
        if owner is None:
            who = "another run (its lock file cannot be read)"
        elif owner["host"] == _host():
            who = f"another run (process {owner['pid']})"
        else:
            who = f"another run (process {owner['pid']} on {owner['host']})"
        return (f"{self.flag} {self.target} is being written by {who}; wait for it to finish or choose another "
                f"{self.flag} path (if no such run exists, delete {self.path})")
