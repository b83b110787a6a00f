"""``.npz`` files with a JSON header: written atomically, read back without pickle and without trusting them.

A file is untrusted until proven otherwise. :func:`open_npz` checks, before any array is allocated:

- the zip structure: no duplicate or encrypted members, only stored or deflated members, compressed sizes
  that fit in the file, and uncompressed sizes deflate could really produce from them (at most 1032:1),
  so a 3 KB file cannot claim gigabytes;
- each member's ``.npy`` header (at most 10 KB): a plain floating-point or integer dtype, and a shape whose byte
  count is exactly what the zip entry holds;
- the JSON header (at most 16 MiB) against a small schema per kind: the type of every field, non-negative
  counts, nesting at most a few levels deep.

Only the members the caller asks for are read, each exactly up to its declared size. Every problem is a
:class:`FormatError` whose message starts with the file's path.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.memory import physical_memory
from .files import write_file

__all__ = ["FormatError", "NpzFile", "atomic_write", "open_npz", "read_arrays", "read_npz", "validate_header",
           "write_npz"]

_HEADER = "__xpnn__"
MAX_HEADER_BYTES = 16 << 20
_MAX_NPY_HEADER = 10_000
_DEFLATE_MAX_RATIO = 1032  # the most deflate can expand: 258 bytes from a 2-bit code, plus block overhead
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError, OSError, ValueError,
               NotImplementedError, RuntimeError, OverflowError, UnicodeDecodeError, KeyError, IndexError)


class FormatError(ValueError):
    """A file is not what xpnn expected (wrong kind, corrupted, crafted, or from another model)."""


atomic_write = write_file  # the old name; every writer goes through xpnn.io.files.write_file


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> Path:
    """Write NumPy ``arrays`` and a JSON-serializable ``header`` to one ``.npz`` file, atomically."""
    payload = {name: np.asarray(value) for name, value in arrays.items()}
    payload[_HEADER] = np.asarray(json.dumps(header))
    return write_file(path, lambda file: np.savez(file, **payload))


# ---------------------------------------------------------------------- reading
class NpzFile:
    """An xpnn ``.npz`` whose structure and header are checked and whose arrays are not read yet.

    Use :func:`open_npz` to make one. ``header`` is the validated JSON header; ``shapes`` maps each array
    name to its declared shape; :meth:`read` reads the named arrays only.
    """

    def __init__(self, path: Path, archive: zipfile.ZipFile, members: dict[str, tuple[zipfile.ZipInfo, Any]]):
        self.path, self._archive, self._members = path, archive, members
        self.header: dict[str, Any] = {}
        self.shapes = {name: layout[0] for name, (_, layout) in members.items() if name != _HEADER}

    def read(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """Read the arrays called ``names`` (each must be in :attr:`shapes`)."""
        return {name: self._read(name) for name in names}

    def _read(self, name: str) -> np.ndarray:
        info, (shape, fortran, dtype, offset) = self._members[name]
        array = np.empty(math.prod(shape), dtype)
        buffer = memoryview(array.view(np.uint8).reshape(-1))
        try:
            with self._archive.open(info) as member:
                member.seek(offset)
                filled = 0
                while filled < len(buffer):
                    count = member.readinto(buffer[filled:])
                    if not count:
                        raise FormatError(f"{self.path}: member {name!r} ends early (truncated file)")
                    filled += count
                member.read(1)  # reaching the end makes zipfile check the CRC
        except _ZIP_ERRORS as error:
            raise FormatError(f"{self.path}: member {name!r} is corrupted ({type(error).__name__}: {error})") from None
        return array.reshape(shape, order="F" if fortran else "C")

    def __enter__(self) -> NpzFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._archive.close()


def open_npz(path: str | os.PathLike, kind: str | tuple[str, ...]) -> NpzFile:
    """Open an xpnn ``.npz`` of ``kind`` (``"model"``, ``"checkpoint"``, or a tuple of the kinds accepted),
    checking everything but the array data.

    Returns
    -------
    NpzFile
        Use it as a context manager; read the arrays you expect with :meth:`NpzFile.read`.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist or is not a regular file.
    FormatError
        Naming the file, for anything else: not a zip, a crafted size, a bad member, a header that does
        not fit the schema of ``kind``.
    """
    path = Path(path)
    archive = _open_zip(path)
    try:
        members = _check_members(path, archive)
        npz = NpzFile(path, archive, members)
        npz.header = _read_header(npz, kind)
    except BaseException:
        archive.close()
        raise
    return npz


def read_npz(path: str | os.PathLike, kind: str | tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read every array and the header of a file written by :func:`write_npz` (see :func:`open_npz`)."""
    with open_npz(path, kind) as npz:
        return npz.read(npz.shapes), npz.header


def read_arrays(path: str | os.PathLike, expected: dict[str, tuple[str, str]], required: Iterable[str] = ()
                ) -> dict[str, np.ndarray]:
    """Read a plain ``.npz`` of NumPy arrays (``numpy.savez``) as untrusted as :func:`open_npz` reads xpnn files.

    The zip structure and every member's ``.npy`` header are checked before anything is allocated (no
    pickle, no object arrays, sizes that the file can really hold), and the declared total must fit in the
    machine's memory. Then every member is read, exactly up to its declared size.

    Parameters
    ----------
    expected : dict of str to (str, str)
        Array name -> (NumPy dtype kinds it may have, e.g. ``"fiub"``, and how errors describe them).
        Members of any other name are refused.
    required : iterable of str
        Names that must be present.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist or is not a regular file.
    FormatError
        Naming the file and the member, for anything else.
    """
    path = Path(path)
    archive = _open_zip(path)
    with archive:
        members = _check_members(path, archive, expected)
        missing = [name for name in required if name not in members]
        if missing:
            raise FormatError(f"{path}: has no array {' or '.join(map(repr, missing))} (it holds "
                              f"{', '.join(sorted(members)) or 'nothing'})")

        total, memory = sum(info.file_size for info, _ in members.values()), physical_memory()
        if memory and total > memory:
            raise FormatError(f"{path}: its arrays claim {total / 2**30:,.1f} GiB, more than this machine's "
                              f"{memory / 2**30:,.1f} GiB of memory")
        npz = NpzFile(path, archive, members)
        return npz.read(members)


def _open_zip(path: Path) -> zipfile.ZipFile:
    """``path`` opened as a zip archive; FileNotFoundError unless it is a regular file, FormatError unless a zip."""
    if not path.is_file():
        reason = "is a directory" if path.is_dir() else "no such file" if not path.exists() else "not a regular file"
        raise FileNotFoundError(f"{path}: {reason}")
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as error:
        raise FormatError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None


def _check_members(path: Path, archive: zipfile.ZipFile, expected: dict[str, tuple[str, str]] | None = None
                   ) -> dict[str, tuple[zipfile.ZipInfo, Any]]:
    """Each member's zip entry and .npy header checked; ``expected`` as for :func:`read_arrays` (None: an
    xpnn file, floating-point arrays and its JSON header)."""
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise FormatError(f"{path}: the archive has duplicate members; it was not written by xpnn")
    if sum(info.compress_size for info in infos) > path.stat().st_size:
        raise FormatError(f"{path}: the archive claims more data than the file holds (truncated or crafted)")
    members = {}
    for info in infos:
        name = info.filename
        if not name.endswith(".npy"):
            raise FormatError(f"{path}: unexpected member {name!r}; an xpnn file holds only .npy arrays")
        if info.flag_bits & 0x1:
            raise FormatError(f"{path}: member {name!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            plausible = info.file_size == info.compress_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            plausible = info.file_size <= info.compress_size * _DEFLATE_MAX_RATIO + 1024
        else:
            raise FormatError(f"{path}: member {name!r} uses compression method {info.compress_type}; "
                              f"xpnn reads stored or deflated members only")
        if not plausible:
            raise FormatError(f"{path}: member {name!r} claims {info.file_size} bytes from {info.compress_size} "
                              f"stored (crafted or corrupted)")
        if expected is not None and name[:-4] not in expected:
            raise FormatError(f"{path}: unexpected array {name[:-4]!r}; expected {', '.join(expected)}")
        members[name[:-4]] = (info, _npy_layout(path, archive, info, expected))
    if expected is None and _HEADER not in members:
        raise FormatError(f"{path}: not an xpnn file (it has no {_HEADER} header)")
    return members


def _npy_layout(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                expected: dict[str, tuple[str, str]] | None = None) -> tuple[tuple, bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset from a member's ``.npy`` header, checked against its size."""
    name = info.filename[:-4]
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member, max_header_size=_MAX_NPY_HEADER)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member, max_header_size=_MAX_NPY_HEADER)
            else:
                raise ValueError(f"unknown .npy version {version}")
            offset = member.tell()
    except _ZIP_ERRORS as error:
        raise FormatError(f"{path}: member {name!r} is not a readable .npy array ({type(error).__name__}: "
                          f"{error})") from None
    if expected is not None:
        wanted, described = expected[name]
    elif name == _HEADER:
        wanted, described = "U", "a text header"
    else:
        wanted, described = "fi", "floating-point numbers or integers"  # integers: counters such as Dropout's step
    if dtype.kind not in wanted or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise FormatError(f"{path}: member {name!r} has dtype {dtype}; expected {described}")
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise FormatError(f"{path}: member {name!r} has an invalid shape {shape}")
    size = math.prod(shape) * dtype.itemsize
    if size != info.file_size - offset:
        raise FormatError(f"{path}: member {name!r} declares shape {shape} ({size} bytes) but holds "
                          f"{info.file_size - offset} bytes (truncated or crafted)")
    return tuple(shape), bool(fortran), dtype, offset


def _read_header(npz: NpzFile, kind: str | tuple[str, ...]) -> dict[str, Any]:
    path = npz.path
    info, (shape, _, _, offset) = npz._members[_HEADER]
    if shape != () or info.file_size - offset > MAX_HEADER_BYTES:
        raise FormatError(f"{path}: the {_HEADER} header must be one string of at most {MAX_HEADER_BYTES} bytes, "
                          f"got shape {shape} with {info.file_size - offset} bytes")
    text = str(npz._read(_HEADER)[()])
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise FormatError(f"{path}: the {_HEADER} header is not valid JSON ({reason})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the {_HEADER} header must be a JSON object, got {type(header).__name__}")
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if header.get("kind") not in kinds:
        expected = " or ".join(repr(k) for k in kinds)
        raise FormatError(f"{path}: holds an xpnn {header.get('kind')!r}, expected a {expected}")
    validate_header(header, header["kind"], str(path))
    return header


# ---------------------------------------------------------------------- header schemas
class _SchemaError(Exception):
    def __init__(self, where: str, expected: str, value: Any):
        text = json.dumps(value, default=str) if not isinstance(value, dict | list) else type(value).__name__
        super().__init__(f"{where or 'the header'} must be {expected}, got {text[:60]}")


Check = Callable[[Any, str], None]


def _integer(minimum: int | None = None) -> Check:
    def check(value: Any, where: str) -> None:
        if type(value) is not int or (minimum is not None and value < minimum) or abs(value) >= 2**63:
            raise _SchemaError(where, "a whole number" + ("" if minimum is None else f" >= {minimum}"), value)

    return check


def _positive_number(value: Any, where: str) -> None:
    if type(value) not in (int, float) or not (math.isfinite(value) and value > 0):
        raise _SchemaError(where, "a positive finite number", value)


def _text(value: Any, where: str) -> None:
    if type(value) is not str:
        raise _SchemaError(where, "a string", value)


def _json(depth: int) -> Check:
    """Any JSON value nested at most ``depth`` levels (0: a scalar)."""

    def check(value: Any, where: str) -> None:
        if value is None or type(value) in (bool, int, float, str):
            return
        if depth == 0 or not isinstance(value, list | dict):
            raise _SchemaError(where, "a number, string, boolean or null", value)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        inner = _json(depth - 1)
        for key, item in items:
            inner(item, f"{where}[{key!r}]" if isinstance(value, dict) else f"{where}[{key}]")

    return check


def _array(item: Check, minimum: int = 0, maximum: int | None = None) -> Check:
    def check(value: Any, where: str) -> None:
        if type(value) is not list or len(value) < minimum or (maximum is not None and len(value) > maximum):
            size = (f" of {minimum} to {maximum} entries" if maximum is not None
                    else f" of at least {minimum} entries" if minimum else "")
            raise _SchemaError(where, "a list" + size, value if type(value) is not list else f"{len(value)} entries")
        for index, element in enumerate(value):
            item(element, f"{where}[{index}]")

    return check


def _object(required: dict[str, Check], optional: dict[str, Check] | None = None, rest: Check | None = None) -> Check:
    optional = optional or {}

    def check(value: Any, where: str) -> None:
        if type(value) is not dict:
            raise _SchemaError(where, "an object", value)
        for key in required:
            if key not in value:
                raise _SchemaError(f"{where}.{key}".lstrip("."), "present", "missing")
        for key, item in value.items():
            inner = required.get(key) or optional.get(key) or rest
            if inner is None:
                raise _SchemaError(f"{where}.{key}".lstrip("."), "absent (unknown field)", item)
            inner(item, f"{where}.{key}".lstrip("."))

    return check


_SPEC = _object({"type": _text}, rest=_json(3))  # a layer or loss: its type and constructor arguments
MAX_LAYERS = 10_000  # no real network is that deep; a config claiming more is refused before building
CONFIG = _object({"layers": _array(_SPEC, minimum=1, maximum=MAX_LAYERS), "loss": _SPEC}, rest=_json(4))
_OPTIMIZER = _object({"type": _text, "steps": _integer(0), "lr": _positive_number}, rest=_json(3))
_HISTORY_ROW = _object({}, {"epoch": _integer(1)}, rest=_json(1))
HEADER_SCHEMAS: dict[str, Check] = {
    "model": _object({"kind": _text, "config": CONFIG}, {"seed": _integer(0)}, rest=_json(8)),
    "checkpoint": _object(
        {"kind": _text, "config": CONFIG, "epoch": _integer(0), "seed": _integer(0), "optimizer": _OPTIMIZER,
         "history": _array(_HISTORY_ROW), "settings": _object({}, rest=_json(3))},
        rest=_json(8),
    ),
}


def validate_header(header: Any, kind: str, source: str) -> None:
    """Check a header (or, with ``kind="config"``, a model configuration) against its schema.

    Raises
    ------
    FormatError
        ``"<source>: <field> must be <what>, got <value>"``.
    """
    schema = CONFIG if kind == "config" else HEADER_SCHEMAS.get(kind, _json(8))
    try:
        schema(header, "config" if kind == "config" else "")
    except _SchemaError as error:
        raise FormatError(f"{source}: {error}") from None
