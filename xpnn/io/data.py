"""MNIST-layout datasets: read IDX files, find them on disk, download them when missing.

The IDX format (LeCun et al.): a 4-byte magic number ``00 00 <type> <ndim>``, ``ndim`` big-endian
uint32 dimensions, then the data. MNIST, Fashion-MNIST and EMNIST use unsigned bytes (type 0x08):
images are (N, rows, cols), labels (N,).

Files are not trusted. :func:`read_idx` compares the size a header declares with what the file can hold
before allocating (a gzip file can inflate at most 1032-fold), streams exactly that many bytes, and refuses
a file that holds or inflates to more. A dataset is checked against what it is (see :func:`load_dataset`):
the classes are 0..K-1 with every class present in the training labels, test labels are among them,
labels are integers, and train and test images have the same shape.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import stat
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import write_file
from .progress import ProgressBar
from .serialization import FormatError

__all__ = ["DATASETS", "DataError", "Dataset", "download", "find_files", "input_paths", "load_dataset", "read_idx"]

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# MD5 of each published .gz file (the checksums torchvision and TensorFlow verify), and where to get it.
# yann.lecun.com no longer serves MNIST; these are the mirrors torchvision and TensorFlow use.
DATASETS: dict[str, dict] = {
    "mnist": {
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "classes": 10,
        "image_shape": (28, 28),
    },
    "fashion-mnist": {
        "mirrors": [
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ],
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "classes": 10,
        "image_shape": (28, 28),
    },
}

SYSTEM_DIRS = ("/usr/share/datasets", "/usr/local/share/datasets")

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_DEFLATE_MAX_RATIO = 1032  # the most deflate can expand its input


class DataError(FormatError):
    """A dataset file is missing, corrupted or inconsistent; the message names the file."""


class SplitSizeError(DataError):
    """A split the data is too small for (``val`` of a training set that has fewer samples): an argument, not the
    files, is wrong, so the command line reports it as a usage error."""


@dataclass
class Dataset:
    """Samples as float32 rows (images flattened, pixels in [0, 1]) and integer labels, all NumPy arrays on the host.

    :func:`load_dataset` makes one from IDX files, :func:`xpnn.io.datafile.load_data_file` from your own file.

    Attributes
    ----------
    x_train : (N, D) float32
    y_train : (N,) int64
    x_test : (M, D) float32
    y_test : (M,) int64
    x_val, y_val : arrays or None
        Validation split taken from the end of a seeded permutation of the training set.
    name : str
    directory : Path
        Where the files were read from.
    image_shape : (rows, cols) or None
        Shape of one image before flattening; None for tabular data.
    class_count : int or None
        Number of classes established when loading (see :func:`load_dataset`); None for a dataset made by
        hand, whose :attr:`n_classes` is then the largest training label + 1.
    channels : int
        Channels of one image (rows are flattened from (channels, rows, cols) in C order).
    class_names : list of str or None
        What each label stands for (label i is ``class_names[i]``), when the file named its classes.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    directory: Path
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    image_shape: tuple[int, int] | None = None
    class_count: int | None = None
    channels: int = 1
    class_names: list[str] | None = None

    @property
    def n_classes(self) -> int:
        """Number of classes: labels are 0..n_classes-1."""
        return self.class_count if self.class_count is not None else int(self.y_train.max()) + 1

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample as a model takes it: (channels, rows, cols) for images, (features,) otherwise."""
        if self.image_shape is None:
            return (self.n_features,)
        return (self.channels, *self.image_shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzipped or raw (told apart by the gzip magic bytes).

    The size the header declares is checked against what the file can hold before anything is
    allocated, then exactly that many bytes are read: a file that is shorter, longer, or (gzipped)
    inflates past its declared size is refused without being read whole.

    Raises
    ------
    DataError
        Naming the file: not a regular file, bad magic number, unknown element type, truncated or
        oversized data.
    """
    path = Path(path)
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    with os.fdopen(handle, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file")
        try:
            compressed = file.read(2) == b"\x1f\x8b"
            file.seek(0)
            stream = gzip.GzipFile(fileobj=file, mode="rb") if compressed else file
            return _read_idx_stream(path, stream, info.st_size, compressed)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: cannot read ({error})") from None


def _read_idx_stream(path: Path, stream, on_disk: int, compressed: bool) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'})")
    ndim = magic[3]
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    dtype = np.dtype(_IDX_TYPES[magic[2]])
    expected = math.prod(shape) * dtype.itemsize
    header = 4 + 4 * ndim
    room = on_disk * _DEFLATE_MAX_RATIO + 1024 if compressed else on_disk - header
    if expected > room:
        what = f"a {on_disk}-byte gzip file can inflate to at most {room}" if compressed else f"the file has {room}"
        raise DataError(f"{path}: truncated or corrupted: header says {shape} ({expected} bytes of data), {what}")
    data = bytearray(expected)
    view, filled = memoryview(data), 0
    while filled < expected:
        count = stream.readinto(view[filled:])
        if not count:
            break
        filled += count
    if filled < expected:
        raise DataError(f"{path}: truncated or corrupted: header says {shape} ({expected} bytes of data), file has "
                        f"{filled}")
    if stream.read(1):
        grows = "inflates past" if compressed else "holds more than"
        raise DataError(f"{path}: corrupted: the data {grows} the {expected} bytes its header declares {shape}")
    return np.frombuffer(data, dtype).reshape(shape)


def find_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (``.gz`` or raw), or None if any is missing."""
    found = {}
    for key, stem in FILES.items():
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    name: str, directory: Path, mirrors: Sequence[str] | None = None, quiet: bool = False, timeout: float = 30.0
) -> dict[str, Path]:
    """Download the four files of dataset ``name`` into ``directory``, verifying each MD5.

    Each file is tried on every mirror in turn; a failed or corrupted download moves on to the next.
    Files are written to a temporary name and renamed only once their checksum matches, so an
    interrupted download never leaves a file that looks complete. Files already there with the right
    checksum are reused.

    Raises
    ------
    DataError
        When a file could not be had from any mirror; the message lists what was tried.
    """
    import urllib.error  # imported here: it costs a fifth of `import xpnn`

    spec = DATASETS[name]
    mirrors = list(spec["mirrors"] if mirrors is None else mirrors)
    directory.mkdir(parents=True, exist_ok=True)
    for filename, md5 in spec["md5"].items():
        target = directory / filename
        if target.is_file() and _md5(target) == md5:
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + filename
            try:
                _fetch(url, target, md5, quiet, timeout)
                break
            except (OSError, urllib.error.URLError, DataError) as error:
                failures.append(f"{url}: {getattr(error, 'reason', error)}")
        else:
            raise DataError(
                f"could not download {filename} for {name} (tried {'; '.join(failures)}). "
                f"Put the four MNIST-layout files in a folder and pass --data-dir DIR (or set XPNN_DATA)"
            )
    return find_files(directory)  # type: ignore[return-value]


def _fetch(url: str, target: Path, md5: str, quiet: bool, timeout: float) -> None:
    import urllib.request

    digest = hashlib.md5(usedforsecurity=False)

    def write(file) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            with ProgressBar(total, f"download {target.name}", unit="B", enabled=not quiet) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    file.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if digest.hexdigest() != md5:
            raise DataError(f"checksum mismatch (got md5 {digest.hexdigest()}, expected {md5})")

    write_file(target, write)


def _candidate_dirs(name: str, data_dir: str | os.PathLike | None) -> list[tuple[Path, bool]]:
    """Folders to look in, in order, each with whether its files must match the known checksums."""
    if data_dir is not None:
        return [(Path(data_dir), False)]
    dirs = []
    if os.environ.get("XPNN_DATA"):
        dirs.append((Path(os.environ["XPNN_DATA"]) / name, False))
    dirs.append((cache_dir(name), True))
    dirs.extend((Path(root) / name, False) for root in SYSTEM_DIRS)
    return dirs


def input_paths(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every path :func:`load_dataset` could read, or download into, for these arguments.

    Outputs of the same run must not be any of them (see :func:`xpnn.io.files.check_outputs`).
    """
    return [directory / f"{stem}{suffix}" for directory, _ in _candidate_dirs(name, data_dir)
            for stem in FILES.values() for suffix in (".gz", "")]


def cache_dir(name: str) -> Path:
    """``~/.cache/xpnn/<name>`` (``$XDG_CACHE_HOME`` respected)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "xpnn" / name


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    val: int = 0,
    seed: int = 0,
    download_missing: bool = True,
    mirrors: Sequence[str] | None = None,
    quiet: bool = False,
) -> Dataset:
    """Find (or download) an MNIST-layout dataset and return it as float32 rows in [0, 1].

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"} or str
        Dataset name; any name works with ``data_dir``.
    data_dir : path, optional
        Folder holding the four IDX files; when given, nothing else is searched or downloaded.
        Otherwise the search goes ``$XPNN_DATA/<name>``, ``~/.cache/xpnn/<name>``,
        ``/usr/share/datasets/<name>``, then downloads into the cache.
    val : int
        Number of training samples held out as a validation split.
    seed : int
        Seeds the permutation that picks the validation split.

    Notes
    -----
    The class count comes from the training labels: K classes when they are exactly 0..K-1 with every
    class present (a stray label 200 among 0..9 is refused, not read as 201 classes). Test labels must be
    among the training classes, labels must be integers and both splits must have one image shape.
    A known dataset found by the search or download (MNIST, Fashion-MNIST) must also be what it is:
    10 classes of 28x28 images. A ``data_dir`` folder is any MNIST-layout dataset, described by its files.

    Raises
    ------
    DataError
        Naming the file and the problem, or, when nothing was found, where it looked and what it tried.
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"{data_dir}: data directory does not exist")
    if data_dir is None and name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or pass --data-dir DIR")
    looked = []
    files = None
    for directory, verify in _candidate_dirs(name, data_dir):
        looked.append(str(directory))
        files = find_files(directory)
        if files is not None:
            if verify:
                _verify_known(name, files)
            break
    if files is None:
        if data_dir is not None:
            folder = Path(data_dir)
            missing = [s for s in FILES.values() if not (folder / s).is_file() and not (folder / f"{s}.gz").is_file()]
            odd = [folder / n for s in missing for n in (s, f"{s}.gz") if os.path.lexists(folder / n)]
            if odd:  # the name is there, as a folder, FIFO or broken link: "missing" would send the user looking
                raise DataError(f"{odd[0]}: not a regular file (a folder, a FIFO or a broken or looping symbolic "
                                "link); --data-dir needs the four IDX files as files")
            raise DataError(f"{data_dir}: missing MNIST-layout files (need {', '.join(missing)}, .gz or raw)")
        if not download_missing:
            raise DataError(f"{name} not found (looked in {', '.join(looked)}) and downloading is off")
        try:
            files = download(name, cache_dir(name), mirrors, quiet)
        except DataError as error:
            offline = ("; offline, Fashion-MNIST installs with apt-get install dataset-fashion-mnist "
                       "(then --dataset fashion-mnist)" if name == "mnist" else "")
            raise DataError(f"{name} not found in {', '.join(looked)}; {error}{offline}") from None
    arrays = {key: read_idx(path) for key, path in files.items()}
    dataset = _assemble(name, arrays, files, DATASETS.get(name) if data_dir is None else None)
    if val:
        _split_validation(dataset, val, seed)
    return dataset


def _verify_known(name: str, files: dict[str, Path]) -> None:
    known = DATASETS.get(name, {}).get("md5", {})
    for path in files.values():
        expected = known.get(path.name)
        if expected is not None and _md5(path) != expected:
            raise DataError(
                f"{path}: checksum mismatch (corrupted or partial download); delete it to download it again"
            )


def _assemble(name: str, arrays: dict[str, np.ndarray], files: dict[str, Path], known: dict | None = None) -> Dataset:
    """Check the four arrays against each other (and against ``known``'s classes and image shape), then convert."""
    known = known or {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_path, label_path = files[f"{split}_images"], files[f"{split}_labels"]
        if images.ndim != 3:
            raise DataError(f"{image_path}: expected images of shape (N, rows, cols), got {images.shape}")
        if labels.ndim != 1:
            raise DataError(f"{label_path}: expected labels of shape (N,), got {labels.shape}")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{image_path} holds {images.shape[0]} images but {label_path} holds {labels.shape[0]} labels"
            )
        if images.shape[0] == 0 or images.shape[1] * images.shape[2] == 0:
            raise DataError(f"{image_path}: holds no data (shape {images.shape})")
        if images.dtype != np.uint8:
            raise DataError(f"{image_path}: expected unsigned-byte pixels, got {images.dtype}")
        if labels.dtype.kind not in "iu":
            raise DataError(f"{label_path}: labels must be integers (IDX type 0x08, 0x09, 0x0B or 0x0C), "
                            f"got {labels.dtype}")
        if labels.min() < 0:
            raise DataError(f"{label_path}: negative labels ({int(labels.min())}); classes are numbered from 0")
        if known.get("image_shape") is not None and images.shape[1:] != tuple(known["image_shape"]):
            raise DataError(f"{image_path}: {name} images are {known['image_shape'][0]}x{known['image_shape'][1]}, "
                            f"this file holds {images.shape[1]}x{images.shape[2]}")
    train_shape, test_shape = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if train_shape != test_shape:
        raise DataError(f"{files['test_images']}: test images are {test_shape[0]}x{test_shape[1]}, "
                        f"training images {train_shape[0]}x{train_shape[1]}; both splits must have one shape")
    n_classes = _classes(arrays["train_labels"], files["train_labels"], known, name)
    test_labels = arrays["test_labels"]
    if int(test_labels.max()) >= n_classes:
        outside = np.unique(test_labels[test_labels >= n_classes])
        raise DataError(f"{files['test_labels']}: test labels {_few(outside)} ({int(np.sum(test_labels >= n_classes))} "
                        f"samples) are not among the {n_classes} training classes 0..{n_classes - 1}")
    parts = [(a.reshape(a.shape[0], -1).astype(np.float32) / np.float32(255), y.astype(np.int64))
             for a, y in ((arrays["train_images"], arrays["train_labels"]), (arrays["test_images"], test_labels))]
    directory = files["train_images"].parent
    return Dataset(*parts[0], *parts[1], name=name, directory=directory, image_shape=tuple(train_shape),
                   class_count=n_classes)


def _classes(labels: np.ndarray, path: Path, known: dict, name: str) -> int:
    """The class count: K when the training labels are exactly 0..K-1, each present at least once."""
    present = np.unique(labels)  # sorted; never allocates by the largest label, unlike bincount
    if known.get("classes") is not None and int(present[-1]) >= known["classes"]:
        outside = present[present >= known["classes"]]
        raise DataError(f"{path}: {name} has {known['classes']} classes (labels 0..{known['classes'] - 1}), "
                        f"this file has labels {_few(outside)}")
    gaps = np.flatnonzero(present != np.arange(present.size))
    if gaps.size:
        k = int(gaps[0])
        stray = present[k:]
        count = int(np.isin(labels, stray).sum())
        absent = f"class {k} is" if k == int(stray[0]) - 1 else f"classes {k}..{int(stray[0]) - 1} are"
        raise DataError(f"{path}: labels must number the classes 0..K-1 with every class present, but {absent} "
                        f"absent while labels {_few(stray)} occur ({count} samples); fix or remove those samples")
    if present.size < 2:
        raise DataError(f"{path}: every training label is {int(present[0])}; a classifier needs at least 2 classes")
    return int(present.size)


def _few(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:5])
    return shown + (f", ... ({values.size} distinct)" if values.size > 5 else "")


def _split_validation(dataset: Dataset, val: int, seed: int) -> None:
    n = dataset.x_train.shape[0]
    if not 0 < val < n:
        raise SplitSizeError(f"--val {val}: must be between 1 and {n - 1} (the training set has {n} samples)")
    order = np.random.default_rng([seed, 3]).permutation(n)
    keep, held = order[:-val], order[-val:]
    dataset.x_val, dataset.y_val = dataset.x_train[held], dataset.y_train[held]
    dataset.x_train, dataset.y_train = dataset.x_train[keep], dataset.y_train[keep]
