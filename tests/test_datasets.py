"""load_digits (the embedded data) and load_mnist (IDX files written by the tests)."""
import gzip
import hashlib
import os
import struct
from importlib import resources

import numpy
import pytest

from gpunet.datasets import load_digits, load_mnist


def _raw_digits():
    with resources.files("gpunet.datasets").joinpath("digits.npz").open("rb") as f:
        with numpy.load(f, allow_pickle=False) as d:
            return d["images"], d["labels"]


# ---------------------------------------------------------------- load_digits

def test_shipped_file_is_the_uci_test_set():
    images, labels = _raw_digits()
    assert images.shape == (1797, 64) and images.dtype == numpy.uint8
    assert labels.shape == (1797,) and labels.dtype == numpy.uint8
    assert images.min() == 0 and images.max() == 16
    # Class distribution of optdigits.tes as documented by the UCI repository.
    assert numpy.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # Content fingerprint of the conversion from scikit-learn's digits.csv.gz (rows in
    # file order), so a damaged or re-ordered file is caught.
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    assert digest == "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def test_load_digits_shapes_dtypes_range():
    (X_train, y_train), (X_test, y_test) = load_digits()
    assert X_train.shape == (1437, 64) and X_test.shape == (360, 64)
    assert y_train.shape == (1437,) and y_test.shape == (360,)
    assert X_train.dtype == numpy.float32 and X_test.dtype == numpy.float32
    assert y_train.dtype == numpy.int64 and y_test.dtype == numpy.int64
    for X in (X_train, X_test):
        assert X.min() == 0.0 and X.max() == 1.0
    assert X_train.flags.c_contiguous and X_test.flags.c_contiguous


def test_load_digits_split_follows_the_stated_permutation():
    images, labels = _raw_digits()
    (X_train, y_train), (X_test, y_test) = load_digits()
    p = numpy.random.default_rng(0).permutation(1797)
    numpy.testing.assert_array_equal(X_train * numpy.float32(16), images[p[:1437]].astype(numpy.float32))
    numpy.testing.assert_array_equal(X_test * numpy.float32(16), images[p[1437:]].astype(numpy.float32))
    numpy.testing.assert_array_equal(y_train, labels[p[:1437]])
    numpy.testing.assert_array_equal(y_test, labels[p[1437:]])
    # Disjoint and complete: every image lands in exactly one split.
    assert sorted(numpy.concatenate([p[:1437], p[1437:]]).tolist()) == list(range(1797))


def test_load_digits_classes_present_and_roughly_balanced():
    (_, y_train), (_, y_test) = load_digits()
    for y, n in ((y_train, 1437), (y_test, 360)):
        counts = numpy.bincount(y, minlength=10)
        assert len(counts) == 10 and counts.sum() == n
        assert counts.min() >= 0.5 * n / 10 and counts.max() <= 1.5 * n / 10


def test_load_digits_returns_fresh_arrays():
    (X_train, _), _ = load_digits()
    X_train[:] = -1.0
    (X_again, _), _ = load_digits()
    assert X_again.min() == 0.0


def test_load_digits_matches_scikit_learn_when_installed():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    d = sklearn_datasets.load_digits()
    images, labels = _raw_digits()
    numpy.testing.assert_array_equal(images, d.data.astype(numpy.uint8))
    numpy.testing.assert_array_equal(labels, d.target)


# ---------------------------------------------------------------- load_mnist

def _idx_bytes(array, magic):
    array = numpy.asarray(array, dtype=numpy.uint8)
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def _write(path, data, gz=False):
    if gz:
        path = path + ".gz"
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return path


def _sample(n, seed=0, rows=28, cols=28):
    rng = numpy.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, rows, cols), dtype=numpy.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255      # both ends of the range present
    labels = rng.integers(0, 10, size=n, dtype=numpy.uint8)
    return images, labels


def _write_split(directory, prefix, images, labels, gz=False):
    img = _write(os.path.join(directory, f"{prefix}-images-idx3-ubyte"),
                 _idx_bytes(images, 0x803), gz)
    lab = _write(os.path.join(directory, f"{prefix}-labels-idx1-ubyte"),
                 _idx_bytes(labels, 0x801), gz)
    return img, lab


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("split,prefix", [("train", "train"), ("test", "t10k")])
def test_load_mnist_reads_idx_files(tmp_path, gz, split, prefix):
    images, labels = _sample(5, seed=len(prefix))
    _write_split(str(tmp_path), prefix, images, labels, gz)
    X, y = load_mnist(tmp_path, split=split)
    assert X.shape == (5, 784) and X.dtype == numpy.float32
    assert y.shape == (5,) and y.dtype == numpy.int64
    numpy.testing.assert_array_equal(X * numpy.float32(255), images.reshape(5, 784).astype(numpy.float32))
    assert X.min() == 0.0 and X.max() == 1.0
    numpy.testing.assert_array_equal(y, labels)


def test_load_mnist_accepts_string_directory_and_dotted_names(tmp_path):
    images, labels = _sample(3)
    with open(tmp_path / "train-images.idx3-ubyte", "wb") as f:
        f.write(_idx_bytes(images, 0x803))
    with open(tmp_path / "train-labels.idx1-ubyte", "wb") as f:
        f.write(_idx_bytes(labels, 0x801))
    X, y = load_mnist(str(tmp_path))
    numpy.testing.assert_array_equal(y, labels)
    assert X.shape == (3, 784)


def test_load_mnist_keeps_the_header_image_size(tmp_path):
    images, labels = _sample(4, rows=5, cols=3)
    _write_split(str(tmp_path), "train", images, labels)
    X, _ = load_mnist(tmp_path)
    numpy.testing.assert_array_equal(X * numpy.float32(255), images.reshape(4, 15).astype(numpy.float32))


def test_load_mnist_bad_split(tmp_path):
    with pytest.raises(ValueError, match=r"load_mnist: expected split 'train' or 'test', got 'val'"):
        load_mnist(tmp_path, split="val")


def test_load_mnist_missing_directory_and_files(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"file not found: .*train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    images, labels = _sample(2)
    _write(str(tmp_path / "train-images-idx3-ubyte"), _idx_bytes(images, 0x803))
    with pytest.raises(ValueError, match=r"file not found: .*train-labels-idx1-ubyte"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("which", ["images", "labels"])
def test_load_mnist_truncated_file_names_the_path(tmp_path, gz, which):
    images, labels = _sample(4)
    img, lab = _write_split(str(tmp_path), "train", images, labels)
    bad = img if which == "images" else lab
    with open(bad, "rb") as f:
        data = f.read()
    os.remove(bad)
    bad = _write(bad, data[:-3], gz)
    with pytest.raises(ValueError, match="truncated") as info:
        load_mnist(tmp_path)
    assert bad in str(info.value)


@pytest.mark.parametrize("cut", [2, 9])
def test_load_mnist_truncated_header_names_the_path(tmp_path, cut):
    images, labels = _sample(2)
    img, _ = _write_split(str(tmp_path), "train", images, labels)
    with open(img, "rb") as f:
        data = f.read()
    _write(img, data[:cut])
    with pytest.raises(ValueError, match="truncated") as info:
        load_mnist(tmp_path)
    assert img in str(info.value)


def test_load_mnist_trailing_bytes_name_the_path(tmp_path):
    images, labels = _sample(2)
    _, lab = _write_split(str(tmp_path), "train", images, labels)
    with open(lab, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match="longer than its header says") as info:
        load_mnist(tmp_path)
    assert lab in str(info.value)


@pytest.mark.parametrize("which,magic", [("images", 0x801), ("images", 0x08030000),
                                         ("labels", 0x803), ("labels", 0x0D01)])
def test_load_mnist_bad_magic_names_the_path(tmp_path, which, magic):
    images, labels = _sample(3)
    d = str(tmp_path)
    if which == "images":
        img = _write(os.path.join(d, "train-images-idx3-ubyte"), _idx_bytes(images, magic))
        _write(os.path.join(d, "train-labels-idx1-ubyte"), _idx_bytes(labels, 0x801))
        bad = img
    else:
        _write(os.path.join(d, "train-images-idx3-ubyte"), _idx_bytes(images, 0x803))
        bad = _write(os.path.join(d, "train-labels-idx1-ubyte"), _idx_bytes(labels, magic))
    with pytest.raises(ValueError, match=f"magic number 0x{magic:08x}") as info:
        load_mnist(tmp_path)
    assert bad in str(info.value)


def test_load_mnist_count_mismatch_names_both_files(tmp_path):
    images, labels = _sample(5)
    img, lab = _write_split(str(tmp_path), "t10k", images, labels[:4], gz=True)
    with pytest.raises(ValueError, match="5 images but .* 4 labels") as info:
        load_mnist(tmp_path, split="test")
    assert img in str(info.value) and lab in str(info.value)


def test_load_mnist_not_gzip_names_the_path(tmp_path):
    images, labels = _sample(2)
    _write_split(str(tmp_path), "train", images, labels, gz=True)
    bad = str(tmp_path / "train-labels-idx1-ubyte.gz")
    with open(bad, "wb") as f:
        f.write(b"this is not gzip data")
    with pytest.raises(ValueError, match="cannot read") as info:
        load_mnist(tmp_path)
    assert bad in str(info.value)


def test_make_mnist1d_is_deterministic_and_shaped():
    """The MNIST-1D-style generator: float32 (n, length) signals, int64 labels 0..9 all
    present, the same arrays for the same seed, others for another, the class templates
    visible in the class means; bad sizes raise ValueError."""
    from gpunet import datasets
    (a, ya), (b, yb) = datasets.make_mnist1d(300, 200, length=40, seed=3)
    (a2, ya2), (b2, yb2) = datasets.make_mnist1d(300, 200, length=40, seed=3)
    assert a.shape == (300, 40) and b.shape == (200, 40) and a.dtype == numpy.float32
    assert ya.dtype == numpy.int64 and set(numpy.unique(ya)) == set(range(10))
    for u, v in ((a, a2), (ya, ya2), (b, b2), (yb, yb2)):
        numpy.testing.assert_array_equal(u, v)
    (c, _), _ = datasets.make_mnist1d(300, 200, seed=4)
    assert not numpy.array_equal(a, c)
    assert numpy.isfinite(a).all() and 0.3 < float(a.std()) < 1.5
    # the class means differ (the templates show through shift, scale and noise)
    means = numpy.stack([a[ya == k].mean(axis=0) for k in range(10)])
    assert numpy.abs(means[0] - means[1]).max() > 0.2
    for bad in (dict(n_train=0), dict(n_test=-1), dict(length=10), dict(n_train=2.5)):
        with pytest.raises(ValueError, match="make_mnist1d"):
            datasets.make_mnist1d(**bad)


def test_load_mnist_names_a_directory_of_the_wrong_type():
    """Found by fuzzing: None raised os.fspath's TypeError, naming nothing."""
    with pytest.raises(TypeError, match="load_mnist: expected directory to be a str or os.PathLike, got NoneType"):
        load_mnist(None)
