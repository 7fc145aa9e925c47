"""Datasets: the embedded 8x8 digits, and a reader for the MNIST IDX files a user has.

``load_digits()`` needs no download: the data ship inside the package as
``gpunet/datasets/digits.npz`` (45 kB; ``images`` uint8 ``(1797, 64)`` with pixels
0..16, ``labels`` uint8 ``(1797,)``, in the order of the source file).

Credit. The digits are the "Optical Recognition of Handwritten Digits" data set by
E. Alpaydin and C. Kaynak (1998), UCI Machine Learning Repository
(https://archive.ics.uci.edu/dataset/80), licensed CC BY 4.0; gpunet ships the 1,797-image copy
that scikit-learn bundles (``sklearn/datasets/data/digits.csv.gz``), converted to npz.

``make_mnist1d(n_train, n_test, length, seed)`` generates an MNIST-1D-style data set in
memory (1-D signals of 10 classes, after the idea of Greydanus' MNIST-1D; gpunet's own
generator), deterministic from its seed: a quick benchmark that a small model learns in
seconds.

``load_mnist(directory, split)`` reads MNIST or Fashion-MNIST from the IDX files
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, raw or ``.gz``) that the user already has; gpunet downloads
nothing.
"""
from __future__ import annotations

import gzip
import os
import zlib
from importlib import resources

import numpy

from .. import _args

__all__ = ["load_digits", "load_mnist", "make_mnist1d"]

DIGITS_FILE = "digits.npz"
DIGITS_COUNT = 1797
DIGITS_TRAIN = 1437


def load_digits():
    """The UCI 8x8 handwritten digits, split into training and test sets.

    Returns ``(X_train, y_train), (X_test, y_test)``: ``X`` float32 ``(N, 64)`` equal to
    ``pixel / 16`` (so in [0, 1]), row-major 8x8 images (a CNN reshapes to
    ``(N, 1, 8, 8)``); ``y`` int64 ``(N,)`` with the digit 0..9. With
    ``p = numpy.random.default_rng(0).permutation(1797)``, the training set is the images
    ``p[:1437]`` (in that order) and the test set ``p[1437:]`` (360 images).
    NumPy arrays on the host; fresh copies on every call.
    """
    with resources.files(__name__).joinpath(DIGITS_FILE).open("rb") as f:
        with numpy.load(f, allow_pickle=False) as data:
            images = data["images"]
            labels = data["labels"]
    if images.shape != (DIGITS_COUNT, 64) or labels.shape != (DIGITS_COUNT,):
        raise RuntimeError(f"load_digits: the embedded {DIGITS_FILE} is damaged: expected "
                           f"images (1797, 64) and labels (1797,), got {images.shape} and "
                           f"{labels.shape}; reinstall gpunet")
    X = images.astype(numpy.float32) / numpy.float32(16.0)
    y = labels.astype(numpy.int64)
    p = numpy.random.default_rng(0).permutation(DIGITS_COUNT)
    train, test = p[:DIGITS_TRAIN], p[DIGITS_TRAIN:]
    return (X[train], y[train]), (X[test], y[test])


# IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian header, then the data.
#   bytes 0-1: zero; byte 2: element type (0x08 = unsigned byte); byte 3: number of dims;
#   then one big-endian uint32 per dimension; then prod(dims) elements, row-major.
IDX_IMAGES_MAGIC = 0x00000803   # ubyte, 3 dims (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801   # ubyte, 1 dim (N,)

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def _find(directory, stem):
    """The path of ``stem`` in ``directory``: raw first, then ``.gz``; the file names of
    the original distribution (``train-images-idx3-ubyte``) and of common re-uploads
    (``train-images.idx3-ubyte``) are both accepted."""
    dotted = stem.replace("-idx", ".idx", 1)
    candidates = [os.path.join(directory, name + ext)
                  for name in (stem, dotted) for ext in ("", ".gz")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise ValueError(f"load_mnist: file not found: {candidates[0]} (also tried "
                     f"{', '.join(os.path.basename(c) for c in candidates[1:])} in "
                     f"{directory})")


def _read_idx(path, magic, what):
    """Parse one IDX file; return its data as a uint8 array of the shape in its header.
    Any problem raises ``ValueError`` naming ``path``."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"load_mnist: cannot read {path}: {type(e).__name__}: {e}") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise ValueError(f"load_mnist: {path} is truncated: {len(raw)} bytes, expected an "
                         f"IDX {what} file")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"load_mnist: {path} is not an IDX {what} file: magic number "
                         f"0x{got:08x}, expected 0x{magic:08x}")
    if len(raw) < header:
        raise ValueError(f"load_mnist: {path} is truncated: {len(raw)} bytes, shorter than "
                         f"its {header}-byte header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = 1
    for d in shape:
        size *= d
    if len(raw) != header + size:
        problem = "truncated" if len(raw) < header + size else "longer than its header says"
        raise ValueError(f"load_mnist: {path} is {problem}: header says shape {shape}, "
                         f"expected {header + size} bytes, got {len(raw)}")
    return numpy.frombuffer(raw, dtype=numpy.uint8, count=size, offset=header).reshape(shape)


def load_mnist(directory, split="train"):
    """Read MNIST or Fashion-MNIST from IDX files in ``directory``.

    ``split``: ``"train"`` reads ``train-images-idx3-ubyte`` and
    ``train-labels-idx1-ubyte``; ``"test"`` reads ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``. Each may be raw or gzipped (``<name>.gz``; the raw file
    wins when both exist); ``train-images.idx3-ubyte`` spellings are accepted too.

    Returns ``(X, y)``: ``X`` float32 ``(N, rows*cols)`` = ``pixel / 255`` in [0, 1]
    (``(N, 784)`` for MNIST's 28x28 images, row-major; a CNN reshapes to
    ``(N, 1, 28, 28)``), ``y`` int64 ``(N,)``. NumPy arrays on the host.

    Raises ``ValueError`` naming the file for a missing file, a bad magic number
    (images 0x00000803, labels 0x00000801), a size that disagrees with the header
    (truncated or padded), an unreadable gzip stream, or image and label counts that
    differ; and for a ``split`` other than ``"train"``/``"test"``.
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"load_mnist: expected split 'train' or 'test', got {split!r}")
    try:
        directory = os.fspath(directory)
    except TypeError:
        raise TypeError(f"load_mnist: expected directory to be a str or os.PathLike, got "
                        f"{type(directory).__name__}") from None
    if not os.path.isdir(directory):
        raise ValueError(f"load_mnist: expected a directory holding the MNIST IDX files, "
                         f"got {directory!r} (not a directory)")
    prefix = _SPLIT_PREFIX[split]
    images_path = _find(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_path, IDX_IMAGES_MAGIC, "images")
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC, "labels")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"load_mnist: {images_path} holds {images.shape[0]} images but "
                         f"{labels_path} holds {labels.shape[0]} labels")
    X = images.reshape(images.shape[0], -1).astype(numpy.float32) / numpy.float32(255.0)
    y = labels.astype(numpy.int64)
    return X, y


# The ten class templates of make_mnist1d: control values, linearly interpolated to the
# pattern's width. Distinct shapes (a bump up or down, ramps, steps, waves), chosen by hand.
MNIST1D_TEMPLATES = (
    (0.0, 0.5, 1.0, 1.0, 0.5, 0.0),       # 0 bump up
    (0.0, -0.5, -1.0, -1.0, -0.5, 0.0),   # 1 bump down
    (-1.0, -0.6, -0.2, 0.2, 0.6, 1.0),    # 2 ramp up
    (1.0, 0.6, 0.2, -0.2, -0.6, -1.0),    # 3 ramp down
    (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0),    # 4 step up
    (1.0, 1.0, 1.0, -1.0, -1.0, -1.0),    # 5 step down
    (0.0, 1.0, 0.0, 0.0, 1.0, 0.0),       # 6 two bumps
    (0.0, 1.0, 0.0, -1.0, 0.0, 0.0),      # 7 peak, then trough
    (0.0, -1.0, 0.0, 1.0, 0.0, 0.0),      # 8 trough, then peak
    (1.0, -1.0, 1.0, -1.0, 1.0, -1.0),    # 9 zigzag
)


def make_mnist1d(n_train=4000, n_test=4000, length=40, seed=0):
    """An MNIST-1D-style classification set, generated (nothing is downloaded or stored).

    After the idea of S. Greydanus' MNIST-1D (2020: small 1-D signals whose classes a
    linear model separates badly and a small MLP or CNN well); the templates and the
    transformations here are gpunet's own. Each example: the template of its class
    (``MNIST1D_TEMPLATES``, 10 shapes), interpolated to a random width of 10 to 18 samples
    (scale in x), times a random amplitude in [0.7, 1.3], placed at a random shift inside
    ``length`` samples, plus a random linear trend (slope within +-0.5 over the signal),
    correlated noise (white noise smoothed by a 5-tap moving average, std about 0.15) and
    white noise (std 0.1).

    Returns ``(X_train, y_train), (X_test, y_test)``: ``X`` float32 ``(n, length)``, ``y``
    int64 ``(n,)`` with classes 0..9 drawn uniformly. Deterministic: the same arguments
    give the same arrays (``numpy.random.default_rng(seed)``); the test examples come from
    the same stream after the training ones.
    """
    for name, v in (("n_train", n_train), ("n_test", n_test), ("length", length)):
        if isinstance(v, bool) or not isinstance(v, (int, numpy.integer)) or v < (20 if name == "length" else 1):
            raise ValueError(f"make_mnist1d: {name} must be an int >= {20 if name == 'length' else 1}, "
                             f"got {v!r}")
    rng = numpy.random.default_rng(_args.integer("make_mnist1d", "seed", seed, low=0))
    n = n_train + n_test
    y = rng.integers(0, 10, n)
    X = numpy.empty((n, length), numpy.float64)
    t = numpy.arange(length)
    templates = numpy.asarray(MNIST1D_TEMPLATES)
    width = rng.integers(10, 19, n)
    amp = rng.uniform(0.7, 1.3, n)
    shift = rng.random(n)
    slope = rng.uniform(-0.5, 0.5, n)
    white = rng.standard_normal((n, length)) * 0.1
    raw = rng.standard_normal((n, length + 4)) * 0.35
    smooth = sum(raw[:, k:k + length] for k in range(5)) / 5.0      # moving average of 5
    for i in range(n):
        w = int(width[i])
        pattern = numpy.interp(numpy.linspace(0.0, 5.0, w), numpy.arange(6.0), templates[y[i]])
        start = int(shift[i] * (length - w + 1))
        X[i] = 0.0
        X[i, start:start + w] = amp[i] * pattern
    X += slope[:, None] * (t / (length - 1) - 0.5)
    X += smooth + white
    X = X.astype(numpy.float32)
    y = y.astype(numpy.int64)
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])
