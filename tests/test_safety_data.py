"""Data is validated against what the dataset is.

Classes are 0..K-1 with every class present in the training labels (never max(label) + 1 taken on
faith), test labels lie among them, labels are integers, train and test images have one shape, and MNIST
and Fashion-MNIST are 10 classes of 28x28 images.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from tests.idx import make_dataset, write_idx
from xpnn import data
from xpnn.cli import train as cli
from xpnn.io.data import DataError, Dataset, load_dataset

IDX_CODES = {"uint8": 0x08, "int8": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}
FAST = ["--epochs", "1", "--batch-size", "20", "--hidden", "3"]


def write_typed(path: Path, array, dtype: str) -> Path:
    """An IDX file of any element type (tests/idx.py writes unsigned bytes only)."""
    array = np.asarray(array).astype(dtype)
    header = bytes([0, 0, IDX_CODES[dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.tobytes()))
    return path


def folder(tmp_path, train_labels, test_labels, train_shape=(6, 6), test_shape=None, name="d"):
    """A dataset folder with the given labels (unsigned bytes) and image shapes."""
    directory = tmp_path / name
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = (("train", train_labels, train_shape), ("t10k", test_labels, test_shape or train_shape))
    for split, labels, shape in splits:
        labels = np.asarray(labels)
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (len(labels), *shape)))
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels)
    return directory


def refused(directory, *match, name="mine"):
    with pytest.raises(DataError) as info:
        load_dataset(name, directory)
    message = str(info.value)
    for part in match:
        assert part in message, message
    return message


TEN = list(range(10)) * 3


# ---------------------------------------------------------------------- classes
@pytest.mark.parametrize(
    ("train", "stray"),
    [([*TEN, 200], "200"), ([*TEN, 11], "11"), (TEN + [255] * 4, "255"), ([0, 1, 3] * 5, "3"),
     ([1, 2, 3] * 5, "1, 2, 3"), ([0, 0, 5, 5], "5"), ([*TEN, 12, 40, 77, 90, 91, 92, 93], "... (7 distinct)")],
    ids=["200-among-0..9", "11-among-0..9", "many-255", "gap-at-2", "no-class-0", "two-far-apart", "many-strays"],
)
def test_training_labels_must_number_every_class(tmp_path, train, stray):
    message = refused(folder(tmp_path, train, [0, 1]), "train-labels-idx1-ubyte.gz", "every class present", stray)
    assert "absent" in message


def test_a_stray_label_does_not_build_a_201_way_model(tmp_path, capsys):
    directory = folder(tmp_path, [*TEN, 200], TEN)
    capsys.readouterr()
    assert cli.main(["--data-dir", str(directory), *FAST]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "classes 10..199 are absent while labels 200 occur (1 samples)" in err


@pytest.mark.parametrize(
    ("test", "shown"),
    [(list(range(10, 20)), "10, 11, 12, 13, 14, ..."), ([0, 1, 10], "10"), ([9, 255], "255"), ([3, 3, 3, 4], "3, 4")],
    ids=["10..19", "one-10", "255", "3-and-4-of-3-classes"],
)
def test_test_labels_outside_the_training_classes_are_refused(tmp_path, test, shown):
    train = TEN if max(test) >= 10 or shown != "3, 4" else [0, 1, 2] * 5
    message = refused(folder(tmp_path, train, test), "t10k-labels-idx1-ubyte.gz", shown, "are not among the")
    assert "samples" in message


def test_test_labels_10_to_19_stop_the_cli_before_training(tmp_path, capsys):
    directory = folder(tmp_path, TEN, list(range(10, 20)))
    capsys.readouterr()
    assert cli.main(["--data-dir", str(directory), *FAST]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "not among the 10 training classes 0..9" in err


def test_a_single_class_is_not_a_classification_problem(tmp_path):
    refused(folder(tmp_path, [0] * 10, [0, 0]), "at least 2 classes")


def test_classes_come_from_the_training_labels(tmp_path):
    ds = load_dataset("mine", folder(tmp_path, [0, 1, 2, 3] * 4, [1, 1]))
    assert ds.n_classes == 4 and ds.image_shape == (6, 6)  # the test set need not hold every class
    ds = load_dataset("mine", make_dataset(tmp_path / "gen", n_train=60, n_test=20, classes=3))
    assert ds.n_classes == 3 and ds.class_count == 3


def test_a_hand_made_dataset_still_counts_its_classes():
    ds = Dataset(np.zeros((3, 2), np.float32), np.array([0, 2, 1]), np.zeros((1, 2), np.float32), np.array([1]),
                 name="hand", directory=Path("."))
    assert ds.n_classes == 3


# ---------------------------------------------------------------------- label and image types
@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_float_labels_are_refused_not_truncated(tmp_path, dtype):
    directory = folder(tmp_path, TEN, TEN)
    write_typed(directory / "train-labels-idx1-ubyte.gz", np.array(TEN) + 0.7, dtype)
    refused(directory, "labels must be integers", "train-labels-idx1-ubyte.gz")


@pytest.mark.parametrize("dtype", ["int8", ">i2", ">i4"])
def test_wider_integer_labels_are_read(tmp_path, dtype):
    directory = folder(tmp_path, TEN, TEN)
    write_typed(directory / "t10k-labels-idx1-ubyte.gz", TEN, dtype)
    ds = load_dataset("mine", directory)
    assert ds.y_test.tolist() == TEN and ds.n_classes == 10


@pytest.mark.parametrize(("dtype", "value"), [("int8", -1), (">i2", -300), (">i4", -(2**31))])
def test_negative_labels_are_refused(tmp_path, dtype, value):
    directory = folder(tmp_path, TEN, TEN)
    write_typed(directory / "train-labels-idx1-ubyte.gz", [*TEN, value], dtype)
    write_idx(directory / "train-images-idx3-ubyte.gz", np.zeros((31, 6, 6)))
    refused(directory, "negative labels", str(value))


def test_a_huge_label_is_refused_without_a_huge_allocation(tmp_path):
    directory = folder(tmp_path, TEN, TEN)
    write_typed(directory / "train-labels-idx1-ubyte.gz", [*TEN[:-1], 2**31 - 1], ">i4")
    refused(directory, str(2**31 - 1))


@pytest.mark.parametrize("dtype", ["int8", ">i4", ">f4"])
def test_images_must_be_unsigned_bytes(tmp_path, dtype):
    directory = folder(tmp_path, TEN, TEN)
    write_typed(directory / "train-images-idx3-ubyte.gz", np.zeros((30, 6, 6)), dtype)
    refused(directory, "expected unsigned-byte pixels")


@pytest.mark.parametrize(
    ("file", "array", "message"),
    [("train-labels-idx1-ubyte.gz", np.zeros((30, 1)), "expected labels of shape (N,)"),
     ("t10k-images-idx3-ubyte.gz", np.zeros((30, 36)), "expected images of shape (N, rows, cols)"),
     ("t10k-images-idx3-ubyte.gz", np.zeros((30, 6, 6, 1)), "expected images of shape (N, rows, cols)"),
     ("train-images-idx3-ubyte.gz", np.zeros((0, 6, 6)), "holds 0 images but"),
     ("train-images-idx3-ubyte.gz", np.zeros((30, 0, 6)), "holds no data")],
    ids=["2d-labels", "flat-images", "4d-images", "no-images", "zero-rows"],
)
def test_arrays_of_the_wrong_shape(tmp_path, file, array, message):
    directory = folder(tmp_path, TEN, TEN)
    write_idx(directory / file, array)
    refused(directory, message, file)


def test_empty_splits_are_refused(tmp_path):
    directory = folder(tmp_path, TEN, TEN)
    write_idx(directory / "t10k-images-idx3-ubyte.gz", np.zeros((0, 6, 6)))
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.zeros(0))
    refused(directory, "holds no data")


# ---------------------------------------------------------------------- image shapes
@pytest.mark.parametrize("test_shape", [(8, 8), (4, 9), (9, 4), (36, 1), (1, 36), (28, 28)])
def test_train_and_test_images_must_have_one_shape(tmp_path, test_shape):
    message = refused(folder(tmp_path, TEN, TEN, (6, 6), test_shape), "t10k-images-idx3-ubyte.gz",
                      f"test images are {test_shape[0]}x{test_shape[1]}", "training images 6x6")
    assert "one shape" in message


def test_a_different_test_shape_stops_the_cli(tmp_path, capsys):
    directory = folder(tmp_path, TEN, TEN, (6, 6), (4, 9))  # the same 36 pixels, another image
    capsys.readouterr()
    assert cli.main(["--data-dir", str(directory), *FAST]) == 1
    assert "test images are 4x9, training images 6x6" in capsys.readouterr().err


# ---------------------------------------------------------------------- known datasets are what they are
@pytest.fixture
def searched(tmp_path, monkeypatch):
    """Make load_dataset(name) find a folder through $XPNN_DATA (the search, not --data-dir)."""
    monkeypatch.setenv("XPNN_DATA", str(tmp_path / "root"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "SYSTEM_DIRS", ())
    return tmp_path / "root"


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_a_found_mnist_must_be_28x28_with_10_classes(searched, name):
    folder(searched, TEN, TEN, (28, 28), name=name)
    assert load_dataset(name, download_missing=False).n_classes == 10
    folder(searched, TEN, TEN, (8, 8), name=name)
    refused(None, f"{name} images are 28x28, this file holds 8x8", name=name)
    folder(searched, [*TEN, 10, 11], TEN, (28, 28), name=name)
    refused(None, f"{name} has 10 classes (labels 0..9), this file has labels 10, 11", name=name)


def test_a_found_mnist_missing_a_class_is_refused(searched):
    folder(searched, [c for c in TEN if c != 7], TEN[:7], (28, 28), name="mnist")
    refused(None, "class 7 is absent while labels 8, 9 occur (6 samples)", name="mnist")


def test_a_data_dir_is_described_by_its_own_files(tmp_path):
    ds = load_dataset("mnist", make_dataset(tmp_path / "any", n_train=60, n_test=20, side=8, classes=3))
    assert ds.n_classes == 3 and ds.image_shape == (8, 8)


@pytest.mark.slow
def test_real_fashion_mnist_is_what_it_says():
    root = Path("/usr/share/datasets/fashion-mnist")
    if data.find_files(root) is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    ds = data._assemble("fashion-mnist", {k: data.read_idx(p) for k, p in data.find_files(root).items()},
                        data.find_files(root), data.DATASETS["fashion-mnist"])
    assert ds.n_classes == 10 and ds.image_shape == (28, 28) and ds.x_train.shape == (60000, 784)


def _small_csv(path: Path, rows: int = 60) -> Path:
    path.write_text("a,b,label\n" + "\n".join(f"{i % 7 / 7:.3f},{i % 5 / 5:.3f},{i % 3}" for i in range(rows)) + "\n")
    return path


def test_a_file_smaller_than_the_default_batch_trains_in_one_batch_and_resumes(tmp_path, capsys):
    """Iris-sized files (48 training rows here) must not need --batch-size; a size the user gives is still checked."""
    data_file, save = _small_csv(tmp_path / "small.csv"), tmp_path / "ck.npz"
    assert cli.main(["--data", str(data_file), "--epochs", "1", "--hidden", "3", "--save", str(save)]) == 0
    assert "batch 48," in capsys.readouterr().out
    assert cli.main(["--resume", str(save), "--epochs", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["--data", str(data_file), "--epochs", "1", "--hidden", "3", "--batch-size", "49"]) == 2
    assert "--batch-size 49 is larger than the training set (48 samples)" in capsys.readouterr().err


def test_resuming_a_data_file_checkpoint_on_an_idx_folder_names_the_file(tmp_path, capsys):
    data_file, save = _small_csv(tmp_path / "small.csv"), tmp_path / "ck.npz"
    assert cli.main(["--data", str(data_file), "--epochs", "1", "--hidden", "3", "--save", str(save), "--quiet"]) == 0
    folder = make_dataset(tmp_path / "idx")
    for flags, named in ((["--data-dir", str(folder)], "--data-dir"), (["--dataset", "fashion-mnist"], "--dataset")):
        assert cli.main(["--resume", str(save), "--epochs", "2", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"the checkpoint was trained on --data {data_file}, not on an MNIST-layout dataset; "
                            f"drop {named} to train on that file again")


@pytest.mark.parametrize("kind", ["folder", "fifo", "loop", "dangling"])
def test_an_idx_name_that_is_not_a_file_is_named_not_called_missing(tmp_path, kind):
    folder = make_dataset(tmp_path / "d")
    target = folder / "train-images-idx3-ubyte.gz"
    target.unlink()
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "loop":
        os.symlink(target, target)
    else:
        os.symlink(tmp_path / "nowhere", target)
    with pytest.raises(DataError, match=f"{target}: not a regular file"):
        load_dataset("mnist", folder)
