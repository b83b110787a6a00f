"""Your own data in one file: arrays in a ``.npz`` or a table in a ``.csv``, checked like the IDX datasets.

``.npz`` (``numpy.savez``): ``x_train`` and ``y_train``, optionally ``x_test`` and ``y_test``. ``x`` is
(N, D) rows of features, or images (N, H, W) or (N, C, H, W); numbers of any real dtype (unsigned-byte
images are pixels and are scaled to [0, 1], as IDX images are; everything else is taken as it is). ``y`` is
(N,) integer labels 0..K-1 or class names (strings). The file is read without pickle and without trusting
it (:func:`xpnn.io.serialization.read_arrays`).

``.csv``: a header row naming the columns, then one sample per line; the label column is ``target`` (by
default the column named ``label``, else the last column), every other column is a numeric feature.
Labels are integers 0..K-1 or class names; names are numbered in sorted order and kept as
:attr:`Dataset.class_names`. Classification only: a label column of fractional numbers is refused.

Every problem is a :class:`~xpnn.data.DataError` of one line that names the file, and for a CSV the line
and the column. Without a test set in the file, a stratified ``test_size`` fraction of the samples is held
out, the same rows whatever the seed.
"""

from __future__ import annotations

import array
import csv
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core.validation import check_real
from .data import DataError, Dataset, _classes, _few, _split_validation
from .serialization import FormatError, read_arrays

__all__ = ["DEFAULT_TEST_SIZE", "load_data_file"]

#: Fraction of the samples held out as the test set when the file has none.
DEFAULT_TEST_SIZE = 0.2

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_BLOCK = 4096  # CSV rows converted to one float32 array at a time
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_NPZ_ARRAYS = {
    "x_train": ("fiub", "numbers (features or pixels)"),
    "y_train": ("iubUf", "integer labels or class names (strings)"),
    "x_test": ("fiub", "numbers (features or pixels)"),
    "y_test": ("iubUf", "integer labels or class names (strings)"),
}


def load_data_file(path: str | os.PathLike, *, target: str | None = None, test_size: float | None = None,
                   val: int = 0, seed: int = 0) -> Dataset:
    """Load a ``.npz`` or ``.csv`` file of your own (see the module docstring for the formats).

    Parameters
    ----------
    path : path-like
        The file; its suffix (``.npz`` or ``.csv``) says which format.
    target : str, optional
        CSV only: the label column (default: the column named ``label``, else the last one).
    test_size : float in (0, 1), optional
        Fraction held out as the test set when the file has none (default :data:`DEFAULT_TEST_SIZE`);
        a file with its own test set refuses it.
    val : int
        Training samples held out for validation (after the test split), as ``--val``.
    seed : int
        Seeds the validation split.

    Returns
    -------
    Dataset
        Float32 rows (N, D) (images flattened in C order, with ``image_shape`` and ``channels`` set),
        int64 labels.

    Raises
    ------
    DataError
        One line naming the file (and, for a CSV, the line and column) and what to do.
    ValueError
        For ``target`` with an .npz, or ``test_size`` with a file that has its own test set.
    """
    path = Path(path)
    _check_regular(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if target is not None:
            raise ValueError(f"--target names a CSV column; {path} is an .npz, which holds x_train and y_train: "
                             "drop --target")
        arrays, class_names, image_shape, channels = _from_npz(path)
    elif suffix == ".csv":
        arrays, class_names, target = _from_csv(path, target)
        image_shape, channels = None, 1
    else:
        raise DataError(f"{path}: unknown data format {path.suffix or '(no suffix)'!r}; --data takes a .npz "
                        "(x_train, y_train, optional x_test, y_test) or a .csv with a header row")
    labels_of = f"{path} (column {target!r})" if suffix == ".csv" else f"{path} (y_train)"
    if class_names is None:
        present = np.unique(arrays["y_train"])
        if present.size > 1 and present[0] == 1 and present[-1] == present.size:
            raise DataError(f"{labels_of}: the labels are 1..{present.size}; classes are numbered from 0, so "
                            f"subtract 1 from every label (or write the classes as names)")
    n_classes = len(class_names) if class_names is not None else _classes(arrays["y_train"], labels_of, {}, "")
    if "x_test" in arrays:
        if test_size is not None:
            raise ValueError(f"--test-size {test_size}: the file has its own test set (x_test, y_test) in {path}; "
                             "drop --test-size")
        test_labels = arrays["y_test"]
        if test_labels.size and int(test_labels.max()) >= n_classes:
            outside = np.unique(test_labels[test_labels >= n_classes])
            raise DataError(f"{path}: y_test holds labels {_few(outside)} that are not among the {n_classes} "
                            f"training classes 0..{n_classes - 1}")
    else:
        fraction = DEFAULT_TEST_SIZE if test_size is None else check_real(
            "load_data_file", "test_size", test_size, low=0.0, high=1.0, low_open=True, high_open=True)
        _hold_out(arrays, fraction, path)
    name = path.name if suffix == ".npz" else f"{path.name} (label column {target!r})"
    dataset = Dataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], name=name,
                      directory=path.parent, image_shape=image_shape, class_count=n_classes, channels=channels,
                      class_names=class_names)
    if val:
        _split_validation(dataset, val, seed)
    return dataset


def _check_regular(path: Path) -> None:
    try:
        info = os.stat(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read --data ({error.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{path}: is a directory; --data takes one .npz or .csv file (a folder of IDX files "
                        "goes to --data-dir)")
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise DataError(f"{path}: is empty")


# ---------------------------------------------------------------------- .npz
def _from_npz(path: Path) -> tuple[dict[str, np.ndarray], list[str] | None, tuple[int, int] | None, int]:
    try:
        raw = read_arrays(path, _NPZ_ARRAYS, required=("x_train", "y_train"))
    except FileNotFoundError as error:
        raise DataError(str(error)) from None
    except FormatError as error:
        raise DataError(str(error)) from None
    if ("x_test" in raw) != ("y_test" in raw):
        have, lack = ("x_test", "y_test") if "x_test" in raw else ("y_test", "x_test")
        raise DataError(f"{path}: has {have} but no {lack}; give both, or neither to hold out a test fraction")
    x = raw["x_train"]
    if x.ndim not in (2, 3, 4):
        hint = "; one feature per sample is still a column: x.reshape(-1, 1)" if x.ndim == 1 else ""
        raise DataError(f"{path}: x_train has shape {x.shape}; expected rows (N, D), images (N, H, W) or "
                        f"(N, C, H, W){hint}")
    if x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] > 4:
        raise DataError(f"{path}: x_train has shape {x.shape}, which looks channels-last (N, H, W, C); xpnn takes "
                        "(N, C, H, W): save x.transpose(0, 3, 1, 2)")
    if x.shape[0] == 0 or any(n == 0 for n in x.shape[1:]):
        raise DataError(f"{path}: x_train holds no data (shape {x.shape})")
    splits = ("train", "test") if "x_test" in raw else ("train",)
    for split in splits:
        xs, ys = raw[f"x_{split}"], raw[f"y_{split}"]
        if xs.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_{split} has samples of shape {xs.shape[1:]}, x_train {x.shape[1:]}; both "
                            "splits must have one shape")
        if ys.ndim == 2 and ys.shape[1] == 1:
            ys = raw[f"y_{split}"] = ys.reshape(-1)
        if ys.ndim != 1:
            hint = " (one-hot rows? save y.argmax(axis=1))" if ys.ndim == 2 else ""
            raise DataError(f"{path}: y_{split} has shape {ys.shape}; expected one label per sample (N,){hint}")
        if ys.shape[0] != xs.shape[0]:
            raise DataError(f"{path}: x_{split} holds {xs.shape[0]} samples but y_{split} {ys.shape[0]} labels")
        if split == "test" and xs.shape[0] == 0:
            raise DataError(f"{path}: x_test holds no samples; leave x_test and y_test out to hold out a fraction")
    arrays = {}
    for split in splits:
        arrays[f"x_{split}"] = _features(raw[f"x_{split}"], path, f"x_{split}")
    names = _npz_labels(raw, path, splits, arrays)
    image_shape = None if x.ndim == 2 else tuple(int(n) for n in x.shape[-2:])
    channels = int(x.shape[1]) if x.ndim == 4 else 1
    return arrays, names, image_shape, channels  # type: ignore[return-value]


def _features(x: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Float32 rows (N, D): unsigned-byte images scaled to [0, 1], anything else as it is, all finite."""
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below with their position
        rows = x.reshape(x.shape[0], -1).astype(np.float32)
    if x.dtype == np.uint8 and x.ndim > 2:
        rows /= np.float32(255)
    if x.dtype.kind == "f":
        bad = ~np.isfinite(rows)
        if bad.any():
            where = np.unravel_index(int(np.argmax(bad)), x.shape)
            value = x[where]
            problem = (f"{value} is too large for float32" if np.isfinite(value)
                       else f"is {value}: NaN and infinity are not data (fill or drop those samples)")
            raise DataError(f"{path}: {what}[{', '.join(map(str, where))}] {problem}")
    return rows


def _npz_labels(raw: dict[str, np.ndarray], path: Path, splits: tuple[str, ...],
                arrays: dict[str, np.ndarray]) -> list[str] | None:
    kinds = {raw[f"y_{split}"].dtype.kind for split in splits}
    if "f" in kinds or "c" in kinds:
        split = next(s for s in splits if raw[f"y_{s}"].dtype.kind in "fc")
        raise DataError(f"{path}: y_{split} holds {raw[f'y_{split}'].dtype} numbers; --data trains classifiers, "
                        "whose labels are integers 0..K-1 or class names: save whole-number labels as "
                        "y.astype(int)")
    if "U" in kinds and len(kinds) > 1:
        raise DataError(f"{path}: y_train and y_test must both be integers or both class names (strings)")
    if "U" not in kinds:
        for split in splits:
            arrays[f"y_{split}"] = raw[f"y_{split}"].astype(np.int64)
            if arrays[f"y_{split}"].min() < 0:
                raise DataError(f"{path}: y_{split} holds negative labels ({int(arrays[f'y_{split}'].min())}); "
                                "classes are numbered from 0")
        return None
    names = sorted(set(raw["y_train"].tolist()))
    if len(names) < 2:
        raise DataError(f"{path}: every training label is {names[0]!r}; a classifier needs at least 2 classes")
    index = {name: i for i, name in enumerate(names)}
    arrays["y_train"] = np.array([index[n] for n in raw["y_train"].tolist()], dtype=np.int64)
    if "test" in splits:
        unknown = sorted(set(raw["y_test"].tolist()) - set(names))
        if unknown:
            raise DataError(f"{path}: y_test holds classes {', '.join(map(repr, unknown[:5]))} that y_train "
                            "never has")
        arrays["y_test"] = np.array([index[n] for n in raw["y_test"].tolist()], dtype=np.int64)
    return names


# ---------------------------------------------------------------------- .csv
def _from_csv(path: Path, target: str | None) -> tuple[dict[str, np.ndarray], list[str] | None, str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            return _read_csv(path, csv.reader(file), target)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start} of a block cannot be decoded); save the "
                        "CSV as UTF-8") from None
    except csv.Error as error:
        raise DataError(f"{path}: not a readable CSV ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None


def _read_csv(path: Path, reader, target: str | None) -> tuple[dict[str, np.ndarray], list[str] | None, str]:
    header = next((row for row in reader if row), None)
    if header is None:
        raise DataError(f"{path}: holds no rows; expected a header row naming the columns, then one sample per line")
    header_line = reader.line_num
    columns = [name.strip() for name in header]
    _check_header(path, columns, header_line)
    if target is None:
        label_index = columns.index("label") if "label" in columns else len(columns) - 1
    elif target in columns:
        label_index = columns.index(target)
    else:
        raise DataError(f"{path}: --target {target!r}: no such column (the header has {_names(columns)})")
    target = columns[label_index]
    feature_index = [i for i in range(len(columns)) if i != label_index]
    blocks: list[np.ndarray] = []  # float32 (rows, features), one per _BLOCK rows: no Python object per cell
    rows: list[np.ndarray] = []
    codes = array.array("q")  # per row: the index of its label among the distinct labels (in order of first use)
    distinct: dict[str, int] = {}
    first_line: list[int] = []  # per distinct label: the line where it first occurs
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank lines
        line = reader.line_num
        if len(row) != len(columns):
            raise DataError(f"{path}: line {line} has {len(row)} fields, the header has {len(columns)} columns")
        cells = [row[i] for i in feature_index]
        try:
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            values = None
        if values is None or not np.all(np.isfinite(values)) or np.any(np.abs(values) > _FLOAT32_MAX):
            _explain_row(path, line, cells, [columns[i] for i in feature_index])
        rows.append(values)
        if len(rows) == _BLOCK:
            blocks.append(np.array(rows, dtype=np.float32))
            rows = []
        label = row[label_index].strip()
        if not label:
            raise DataError(f"{path}: line {line}, column {target!r}: the label is empty (fill or drop the row)")
        code = distinct.setdefault(label, len(distinct))
        if code == len(first_line):
            first_line.append(line)
        codes.append(code)
    if rows:
        blocks.append(np.array(rows, dtype=np.float32))
    if not blocks:
        raise DataError(f"{path}: has a header but no data rows")
    y, names = _csv_labels(path, np.frombuffer(codes, dtype=np.int64), list(distinct), first_line, target)
    return {"x_train": np.concatenate(blocks), "y_train": y}, names, target


def _check_header(path: Path, columns: list[str], line: int) -> None:
    if len(columns) < 2:
        raise DataError(f"{path}: line {line}: the header names {len(columns)} column; a CSV for --data needs at "
                        "least one feature column and the label column, separated by commas")
    for index, name in enumerate(columns):
        if not name:
            raise DataError(f"{path}: line {line}: column {index + 1} of the header has no name")
        first = columns.index(name)
        if first != index:
            raise DataError(f"{path}: line {line}: column name {name!r} appears twice (columns {first + 1} and "
                            f"{index + 1}); name every column once")
    if all(_is_number(name) for name in columns):
        raise DataError(f"{path}: line {line} holds numbers ({', '.join(columns[:3])}, ...), not column names; "
                        "the first line must be a header naming the columns")


def _explain_row(path: Path, line: int, cells: list[str], names: list[str]) -> None:
    """Raise for the first cell of a row that is not a finite float32 number."""
    for cell, name in zip(cells, names, strict=True):
        text = cell.strip()
        where = f"{path}: line {line}, column {name!r}"
        if not text:
            raise DataError(f"{where} is empty; missing values are not supported (fill or drop them)")
        try:
            value = float(text)
        except ValueError:
            raise DataError(f"{where}: {_shown(text)} is not a number; feature columns must be numeric (use "
                            "--target to choose the label column)") from None
        if not np.isfinite(value):
            raise DataError(f"{where}: {_short(text)} is not a finite number; missing values are not supported "
                            "(fill or drop them)")
        if abs(value) > _FLOAT32_MAX:
            raise DataError(f"{where}: {_short(text)} is too large for float32")
    raise DataError(f"{path}: line {line} cannot be read as numbers")  # float() and NumPy disagreed


def _csv_labels(path: Path, codes: np.ndarray, distinct: list[str], lines: list[int], target: str
                ) -> tuple[np.ndarray, list[str] | None]:
    """Labels from each row's index ``codes`` into the ``distinct`` label texts (first seen on ``lines``):
    integers as they are (0..K-1 is checked by the caller), names numbered in sorted order."""
    def first(where: Callable[[str], bool]) -> int:
        return min((i for i, label in enumerate(distinct) if where(label)), key=lines.__getitem__)

    if all(_INTEGER.fullmatch(label) for label in distinct):
        values = [int(label) for label in distinct]
        if any(abs(v) >= 2**62 for v in values):
            at = first(lambda label: abs(int(label)) >= 2**62)
            raise DataError(f"{path}: line {lines[at]}, column {target!r}: label {_short(distinct[at])} is far too "
                            "large; classes are numbered 0..K-1")
        if min(values) < 0:
            at = first(lambda label: int(label) < 0)
            raise DataError(f"{path}: line {lines[at]}, column {target!r}: negative label {_short(distinct[at])}; "
                            "classes are numbered from 0")
        y, names = np.array(values, dtype=np.int64)[codes], None
    elif all(_is_number(label) for label in distinct):
        at = first(lambda label: not _INTEGER.fullmatch(label))
        raise DataError(f"{path}: line {lines[at]}, column {target!r}: label {_short(distinct[at])} is not a whole "
                        "number; --data trains classifiers (labels are integers 0..K-1 or class names), not "
                        "regressions; --target NAME chooses the label column")
    else:
        names = sorted(distinct)
        if len(names) < 2:
            raise DataError(f"{path}: column {target!r}: every label is {names[0]!r}; a classifier needs at least 2 "
                            "classes")
        rank = np.empty(len(distinct), dtype=np.int64)
        rank[np.argsort(np.array(distinct, dtype=object), kind="stable")] = np.arange(len(distinct))
        y = rank[codes]
    classes = len(np.unique(y))
    if classes > 20 and classes > codes.size // 2:
        raise DataError(f"{path}: column {target!r} has {classes} different labels for {codes.size} rows, about one "
                        "sample per class: is it the label column? (--target NAME chooses it)")
    return y, names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _names(columns: list[str]) -> str:
    shown = ", ".join(map(repr, columns[:8]))
    return shown + (f", ... ({len(columns)} columns)" if len(columns) > 8 else "")


def _shown(text: str) -> str:
    return repr(_short(text))


def _short(text: str) -> str:
    """A cell as a message shows it: long ones (a 300-digit number) cut to 40 characters."""
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------- the test split
def _hold_out(arrays: dict[str, np.ndarray], fraction: float, path: Path) -> None:
    """Move a stratified ``fraction`` of the samples to the test set: each class keeps at least one
    training sample, and the rows held out do not depend on the seed (runs with other seeds compare)."""
    y = arrays["y_train"]
    order = np.random.default_rng([0, 4]).permutation(y.shape[0])
    classes, sizes = np.unique(y, return_counts=True)
    share = sizes * fraction  # round(N * fraction) in all, split over the classes by largest remainder
    counts = np.floor(share).astype(np.int64)
    extra = round(y.shape[0] * fraction) - int(counts.sum())
    counts[np.argsort(counts - share, kind="stable")[:max(extra, 0)]] += 1
    counts = np.minimum(counts, sizes - 1)  # every class keeps a training sample
    held = [order[y[order] == label][:count] for label, count in zip(classes, counts, strict=True)]
    test = np.sort(np.concatenate(held))
    if test.size == 0:
        raise DataError(f"{path}: {y.shape[0]} samples are too few to hold out a test set of {fraction:.0%} "
                        "(--test-size); add samples or give a larger --test-size")
    keep = np.ones(y.shape[0], dtype=bool)
    keep[test] = False
    x = arrays["x_train"]
    arrays["x_test"], arrays["y_test"] = x[test], y[test]
    arrays["x_train"], arrays["y_train"] = x[keep], y[keep]
