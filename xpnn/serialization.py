"""Saving arrays to ``.npz`` with a JSON header, atomically, and reading them back without pickle."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FormatError", "atomic_write", "read_npz", "write_npz"]

_HEADER = "__xpnn__"


class FormatError(ValueError):
    """A file is not what xpnn expected (wrong kind, corrupted, or from another model)."""


def atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees a half-written file, and an interrupted write leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; give it the permissions open() would
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> Path:
    """Write NumPy ``arrays`` and a JSON-serializable ``header`` to one ``.npz`` file, atomically."""
    payload = {name: np.asarray(value) for name, value in arrays.items()}
    payload[_HEADER] = np.asarray(json.dumps(header))
    return atomic_write(path, lambda file: np.savez(file, **payload))


def read_npz(path: str | os.PathLike, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`write_npz`; its header must say ``"kind": kind``.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    FormatError
        When the file is not an xpnn ``.npz`` of that kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise FormatError(f"{path}: not a readable .npz file ({error})") from None
    if _HEADER not in arrays:
        raise FormatError(f"{path}: not an xpnn file (it has no {_HEADER} header)")
    header = json.loads(str(arrays.pop(_HEADER)))
    if header.get("kind") != kind:
        raise FormatError(f"{path}: holds an xpnn {header.get('kind')!r}, expected a {kind!r}")
    return arrays, header
