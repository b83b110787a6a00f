"""Your own data from one file (xpnn.io.datafile): .npz arrays and .csv tables, every bad file refused in one line."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from xpnn.io.data import DataError
from xpnn.io.datafile import load_data_file


def write_csv(path, text: str):
    path.write_text(text)
    return path


def table(n: int = 40, seed: int = 0, label: str = "label", names=("a", "b", "c")) -> str:
    """A CSV with three features and integer labels 0..2 in a column called ``label``, last."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(names)))
    y = np.arange(n) % 3
    lines = [",".join([*names, label])]
    lines += [",".join([*(f"{v:.5f}" for v in row), str(c)]) for row, c in zip(x, y, strict=True)]
    return "\n".join(lines) + "\n"


def refused(path, *parts, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_data_file(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


# ---------------------------------------------------------------------- .csv that loads
def test_csv_features_labels_and_a_stratified_test_split(tmp_path):
    ds = load_data_file(write_csv(tmp_path / "t.csv", table(50)))
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.shape[1] == 3 and ds.image_shape is None and ds.input_shape == (3,)
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 50 and ds.x_test.shape[0] == 10  # 20 % of each class
    assert sorted(np.bincount(ds.y_test).tolist()) == [3, 3, 4]
    assert ds.n_classes == 3 and ds.class_names is None
    again = load_data_file(tmp_path / "t.csv", seed=5)
    np.testing.assert_array_equal(again.x_test, ds.x_test)  # the same held-out rows whatever the seed
    other = load_data_file(tmp_path / "t.csv", test_size=0.5)
    assert other.x_test.shape[0] == 25


def test_csv_values_are_the_files_values(tmp_path):
    path = write_csv(tmp_path / "t.csv", "x1,x2,label\n1.5,-2,0\n3,4e2,1\n5, 6 ,0\n7,8,1\n9,10,0\n")
    ds = load_data_file(path, test_size=0.4)
    rows = {tuple(r) for r in np.concatenate([ds.x_train, ds.x_test]).tolist()}
    assert rows == {(1.5, -2.0), (3.0, 400.0), (5.0, 6.0), (7.0, 8.0), (9.0, 10.0)}


def test_class_names_are_numbered_in_sorted_order_and_kept(tmp_path):
    text = "petal,sepal,species\n" + "".join(f"{i},{i % 5},{name}\n" for i, name in
                                             enumerate(["virginica", "setosa", "versicolor"] * 10))
    ds = load_data_file(write_csv(tmp_path / "iris.csv", text))
    assert ds.class_names == ["setosa", "versicolor", "virginica"]
    x = np.concatenate([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    for row, label in zip(x, y, strict=True):
        assert ["virginica", "setosa", "versicolor"][int(row[0]) % 3] == ds.class_names[label]


def test_target_column_default_and_choice(tmp_path):
    first = write_csv(tmp_path / "kaggle.csv", "label,p0,p1\n" + "".join(f"{i % 2},{i},{i * 2}\n" for i in range(20)))
    ds = load_data_file(first)
    assert ds.n_features == 2 and "label column 'label'" in ds.name  # a column called label wins
    last = write_csv(tmp_path / "last.csv", "f,g,kind\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    assert load_data_file(last).n_classes == 2  # otherwise the last column
    chosen = load_data_file(last, target="g")
    assert chosen.n_classes == 3 and chosen.n_features == 2


def test_quoted_fields_blank_lines_and_a_byte_order_mark(tmp_path):
    text = '\ufeff"a","b","label"\n"1,5",2,yes\n\n3,4,no\n5,6,yes\n7,8,no\n'
    path = write_csv(tmp_path / "q.csv", text.replace('"1,5"', "1.5"))
    ds = load_data_file(path, test_size=0.5)
    assert ds.class_names == ["no", "yes"] and ds.n_features == 2
    quoted = write_csv(tmp_path / "quoted.csv", text)
    refused(quoted, "line 2, column 'a'", "'1,5' is not a number")


# ---------------------------------------------------------------------- .csv refused
@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("", ["is empty"]),
        ("\n\n", ["holds no rows", "header row"]),
        ("a,b,label\n", ["header but no data rows"]),
        ("a,b,label\n1,2,0\n3,4\n", ["line 3 has 2 fields, the header has 3 columns"]),
        ("a,b,label\n1,2,0\n3,4,1,9\n", ["line 3 has 4 fields"]),
        ("a,b,label\n1,x,0\n", ["line 2, column 'b'", "'x' is not a number"]),
        ("a,b,label\n1,,0\n", ["line 2, column 'b' is empty", "missing values"]),
        ("a,b,label\n1,2,0\n1,nan,1\n", ["line 3, column 'b'", "nan is not a finite number"]),
        ("a,b,label\n1,2,0\n-inf,2,1\n", ["line 3, column 'a'", "-inf is not a finite number"]),
        ("a,b,label\n1,1e39,0\n", ["line 2, column 'b'", "too large for float32"]),
        ("a,b,label\n1,2,0.5\n3,4,1\n", ["line 2, column 'label'", "0.5 is not a whole number", "not regressions"]),
        ("a,b,label\n1,2,1.0\n3,4,0\n", ["line 2, column 'label'", "1.0 is not a whole number"]),
        ("a,b,label\n1,2,\n", ["line 2, column 'label'", "label is empty"]),
        ("a,b,label\n1,2,0\n1,2,-1\n", ["line 3, column 'label'", "negative label -1"]),
        ("a,b,label\n1,2,0\n1,2,99999999999999999999999\n", ["line 3", "far too large"]),
        ("a,b,label\n1,2,0\n1,2,0\n", ["column 'label'", "every training label is 0", "at least 2 classes"]),
        ("a,b,label\n1,2,0\n1,2,2\n", ["column 'label'", "class 1 is absent while labels 2 occur"]),
        ("a,b,label\n1,2,cat\n1,2,cat\n", ["every label is 'cat'"]),
        ("a,b,label\n1,2,1\n1,2,2\n1,2,3\n", ["column 'label'", "labels are 1..3", "subtract 1"]),
        ("a,a,label\n1,2,0\n", ["line 1: column name 'a' appears twice (columns 1 and 2)"]),
        ("a,,label\n1,2,0\n", ["column 2 of the header has no name"]),
        ("1,2,3\n4,5,6\n", ["line 1 holds numbers", "header naming the columns"]),
        ("label\n1\n", ["needs at least one feature column"]),
    ],
    ids=["empty", "blank", "header-only", "short-row", "long-row", "text-cell", "empty-cell", "nan", "inf",
         "float32-overflow", "fractional-label", "float-label", "empty-label", "negative-label", "huge-label",
         "one-class", "label-gap", "one-name", "one-based", "duplicate-column", "unnamed-column", "no-header",
         "one-column"],
)
def test_bad_csv_files_are_one_line_naming_line_and_column(tmp_path, text, parts):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    message = refused(path, *parts)
    assert message.startswith(str(path))


def test_unknown_target_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "t.csv", table())
    refused(path, "--target 'price': no such column", "'a', 'b', 'c', 'label'", target="price")


def test_binary_and_nul_bytes_are_refused(tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes(b"a,b,label\n1,2,\xff\xfe\n")
    refused(path, "not UTF-8 text")
    path.write_bytes(b"a,b,label\n1,\x002,0\n")
    refused(path, str(path))


# ---------------------------------------------------------------------- files that are not data
def test_paths_that_are_not_data_files(tmp_path):
    refused(tmp_path / "missing.csv", "cannot read --data", "No such file")
    folder = tmp_path / "d.csv"
    folder.mkdir()
    refused(folder, "is a directory", "--data-dir")
    other = tmp_path / "data.txt"
    other.write_text("a,b\n1,2\n")
    refused(other, "unknown data format '.txt'", ".npz", ".csv")
    empty = tmp_path / "e.npz"
    empty.write_bytes(b"")
    refused(empty, "is empty")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "f.csv"
    os.mkfifo(fifo)
    refused(fifo, "not a regular file")


# ---------------------------------------------------------------------- .npz that loads
def test_npz_rows_with_their_own_test_set(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 5)), np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
    ds = load_data_file(tmp_path / "d.npz")
    np.testing.assert_array_equal(ds.x_train, x.astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, y[:6])
    assert ds.image_shape is None and ds.n_classes == 3
    with pytest.raises(ValueError, match="--test-size 0.3: the file has its own test set"):
        load_data_file(tmp_path / "d.npz", test_size=0.3)
    with pytest.raises(ValueError, match="--target names a CSV column"):
        load_data_file(tmp_path / "d.npz", target="label")


@pytest.mark.parametrize(("shape", "channels"), [((20, 6, 7), 1), ((20, 3, 6, 7), 3)])
def test_npz_images_keep_their_shape_and_bytes_become_0_to_1(tmp_path, shape, channels):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, shape).astype(np.uint8)
    labels = np.arange(20) % 2
    np.savez(tmp_path / "i.npz", x_train=images, y_train=labels)
    ds = load_data_file(tmp_path / "i.npz", test_size=0.25)
    assert ds.image_shape == (6, 7) and ds.channels == channels and ds.input_shape == (channels, 6, 7)
    assert ds.x_train.shape == (15, channels * 42) and ds.x_test.shape == (5, channels * 42)
    assert ds.x_train.max() <= 1.0 and ds.x_train.dtype == np.float32
    whole = np.concatenate([ds.x_train, ds.x_test])
    assert sorted(map(tuple, whole.tolist())) == sorted(map(tuple, (images.reshape(20, -1) / 255).astype(
        np.float32).tolist()))


def test_npz_string_labels_and_column_labels(tmp_path):
    x = np.arange(40.0).reshape(20, 2)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=np.array(["dog", "cat"] * 10), x_test=x[:2],
             y_test=np.array(["cat", "cat"]))
    ds = load_data_file(tmp_path / "s.npz")
    assert ds.class_names == ["cat", "dog"] and ds.y_train[:2].tolist() == [1, 0] and ds.y_test.tolist() == [0, 0]
    np.savez(tmp_path / "c.npz", x_train=x, y_train=(np.arange(20) % 2).reshape(20, 1))  # Keras' CIFAR layout
    assert load_data_file(tmp_path / "c.npz").y_train.ndim == 1


# ---------------------------------------------------------------------- .npz refused
def save(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


X, Y = np.zeros((10, 3)), np.arange(10) % 2


@pytest.mark.parametrize(
    ("arrays", "parts"),
    [
        ({"x_train": X}, ["has no array 'y_train'"]),
        ({"y_train": Y}, ["has no array 'x_train'"]),
        ({"X_train": X, "y_train": Y}, ["unexpected array 'X_train'", "x_train, y_train, x_test, y_test"]),
        ({"x_train": X, "y_train": Y, "x_test": X}, ["has x_test but no y_test"]),
        ({"x_train": X, "y_train": Y.astype(float)}, ["y_train holds float64 numbers", "y.astype(int)"]),
        ({"x_train": X, "y_train": np.eye(2)[Y]}, ["y_train has shape (10, 2)", "argmax"]),
        ({"x_train": X, "y_train": Y[:9]}, ["x_train holds 10 samples but y_train 9 labels"]),
        ({"x_train": np.zeros(10), "y_train": Y}, ["x_train has shape (10,)", "reshape(-1, 1)"]),
        ({"x_train": np.zeros((10, 1, 2, 2, 2)), "y_train": Y}, ["x_train has shape (10, 1, 2, 2, 2)"]),
        ({"x_train": np.zeros((10, 28, 28, 3)), "y_train": Y}, ["looks channels-last", "transpose(0, 3, 1, 2)"]),
        ({"x_train": np.zeros((0, 3)), "y_train": Y[:0]}, ["x_train holds no data"]),
        ({"x_train": np.where(np.eye(10, 3) > 0, np.nan, 0), "y_train": Y}, ["x_train[0, 0] is nan"]),
        ({"x_train": np.full((10, 3), 1e300), "y_train": Y}, ["x_train[0, 0] 1e+300 is too large for float32"]),
        ({"x_train": X, "y_train": Y, "x_test": np.zeros((2, 4)), "y_test": Y[:2]},
         ["x_test has samples of shape (4,), x_train (3,)"]),
        ({"x_train": X, "y_train": Y, "x_test": X[:2], "y_test": np.array([0, 5])},
         ["y_test holds labels 5", "not among the 2 training classes"]),
        ({"x_train": X, "y_train": Y - 1}, ["y_train holds negative labels (-1)"]),
        ({"x_train": X, "y_train": Y * 2}, ["(y_train)", "class 1 is absent while labels 2 occur"]),
        ({"x_train": X, "y_train": np.zeros(10, int)}, ["every training label is 0"]),
        ({"x_train": X, "y_train": np.array(["a"] * 10)}, ["every training label is 'a'"]),
        ({"x_train": X, "y_train": np.array(["a", "b"] * 5), "x_test": X[:1], "y_test": np.array(["c"])},
         ["y_test holds classes 'c' that y_train never has"]),
        ({"x_train": X, "y_train": np.array(["a", "b"] * 5), "x_test": X[:1], "y_test": np.array([0])},
         ["both be integers or both class names"]),
        ({"x_train": X.astype(complex), "y_train": Y}, ["member 'x_train' has dtype complex128"]),
        ({"x_train": X, "y_train": np.array([object()] * 10)}, ["member 'y_train' has dtype object"]),
    ],
    ids=["no-y", "no-x", "misnamed", "x-test-alone", "float-labels", "one-hot", "count-mismatch", "1-d", "5-d",
         "channels-last", "no-samples", "nan", "float32-overflow", "test-shape", "test-label-range", "negative",
         "label-gap", "one-class", "one-name", "unknown-test-name", "mixed-label-kinds", "complex", "pickled-object"],
)
def test_bad_npz_files_are_one_line(tmp_path, arrays, parts):
    path = save(tmp_path, **arrays)
    message = refused(path, *parts)
    assert message.startswith(str(path))


def test_npz_that_is_not_a_zip_or_claims_too_much(tmp_path, monkeypatch):
    path = tmp_path / "text.npz"
    path.write_text("x_train,y_train\n")
    refused(path, "not a readable .npz file")
    big = save(tmp_path, x_train=np.zeros((1000, 100)), y_train=np.arange(1000) % 2)
    monkeypatch.setattr("xpnn.io.serialization.physical_memory", lambda: 10_000)
    refused(big, "its arrays claim", "more than this machine's")


def test_npz_member_that_claims_more_than_it_holds_is_not_read(tmp_path):
    path = save(tmp_path, x_train=np.zeros((10, 3)), y_train=Y)
    crafted = tmp_path / "crafted.npz"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(crafted, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "x_train.npy":
                data = data.replace(b"(10, 3)", b"(10000000, 3)")
            target.writestr(info.filename, data)
    refused(crafted, "member 'x_train' declares shape (10000000, 3)", "truncated or crafted")


def test_a_long_csv_reads_every_row_exactly(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9000, 3)).astype(np.float32)
    y = rng.integers(0, 4, 9000)
    text = "a,b,c,label\n" + "".join(f"{r[0]!r},{r[1]!r},{r[2]!r},{c}\n" for r, c in zip(x.tolist(), y, strict=True))
    ds = load_data_file(write_csv(tmp_path / "long.csv", text), test_size=0.1)
    got = np.concatenate([ds.x_train, ds.x_test])
    labels = np.concatenate([ds.y_train, ds.y_test])
    order = np.lexsort(got.T[::-1])
    expected = np.lexsort(x.T[::-1])
    np.testing.assert_array_equal(got[order], x[expected])
    np.testing.assert_array_equal(labels[order], y[expected])


def test_an_identifier_column_is_not_taken_for_labels(tmp_path):
    text = "a,b,id\n" + "".join(f"{i},{i % 7},row{i}\n" for i in range(100))
    refused(write_csv(tmp_path / "ids.csv", text), "column 'id' has 100 different labels for 100 rows",
            "--target NAME")


@pytest.mark.parametrize("cell", ["1" * 400 + ".5", "9" * 400, "-" + "7" * 400])
def test_a_huge_cell_is_cut_short_in_the_message(tmp_path, cell):
    """A 400-digit number overflows float32 (or is a huge label); the one-line message stays short."""
    path = write_csv(tmp_path / "huge.csv", f"a,label\n{cell},0\n1.0,1\n")
    message = refused(path)
    assert "..." in message and len(message) - len(str(path)) < 200
    path = write_csv(tmp_path / "label.csv", f"a,label\n1.0,{cell}\n1.0,1\n")
    message = refused(path)
    assert "..." in message and len(message) - len(str(path)) < 250
