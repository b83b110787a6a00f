"""MNIST-layout datasets: read IDX files, find them on disk, download them when missing.

The IDX format (LeCun et al.): a 4-byte magic number ``00 00 <type> <ndim>``, ``ndim`` big-endian
uint32 dimensions, then the data. MNIST, Fashion-MNIST and EMNIST use unsigned bytes (type 0x08):
images are (N, rows, cols), labels (N,).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .progress import ProgressBar
from .serialization import FormatError, atomic_write

__all__ = ["DATASETS", "DataError", "Dataset", "download", "find_files", "load_dataset", "read_idx"]

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
    },
}

SYSTEM_DIRS = ("/usr/share/datasets", "/usr/local/share/datasets")

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(FormatError):
    """A dataset file is missing, corrupted or inconsistent; the message names the file."""


@dataclass
class Dataset:
    """Images flattened to float32 rows in [0, 1] and integer labels, all NumPy arrays on the host.

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
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    directory: Path
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzipped or raw (told apart by the gzip magic bytes).

    Raises
    ------
    DataError
        Naming the file: bad magic number, unknown element type, truncated or oversized data.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            raw = file.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: truncated or corrupted: header says {shape} ({expected} bytes of data), file has "
            f"{len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


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

    atomic_write(target, write)


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
    dataset = _assemble(name, arrays, files)
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


def _assemble(name: str, arrays: dict[str, np.ndarray], files: dict[str, Path]) -> Dataset:
    parts = {}
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
        if images.dtype != np.uint8:
            raise DataError(f"{image_path}: expected unsigned-byte pixels, got {images.dtype}")
        if labels.size and labels.min() < 0:
            raise DataError(f"{label_path}: negative labels")
        pixels = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)
        parts[split] = (pixels, labels.astype(np.int64))
    if parts["train"][0].shape[1] != parts["test"][0].shape[1]:
        raise DataError(
            f"{files['test_images']}: test images have {parts['test'][0].shape[1]} pixels, "
            f"training images {parts['train'][0].shape[1]}"
        )
    directory = files["train_images"].parent
    return Dataset(*parts["train"], *parts["test"], name=name, directory=directory)


def _split_validation(dataset: Dataset, val: int, seed: int) -> None:
    n = dataset.x_train.shape[0]
    if not 0 < val < n:
        raise DataError(f"--val {val}: must be between 1 and {n - 1} (the training set has {n} samples)")
    order = np.random.default_rng([seed, 3]).permutation(n)
    keep, held = order[:-val], order[-val:]
    dataset.x_val, dataset.y_val = dataset.x_train[held], dataset.y_train[held]
    dataset.x_train, dataset.y_train = dataset.x_train[keep], dataset.y_train[keep]
