"""DataLoader: batching, shuffle reproducibility, drop_last, devices, validation.

The ``xp`` fixture (tests/conftest.py) runs each xp test on NumPy and, where there is a
CUDA device, on CuPy."""
import numpy
import pytest

import gpunet
from gpunet import backend
from gpunet.data import DataLoader


def _data(xp, n=10, features=3):
    X = xp.arange(n * features, dtype=xp.float32).reshape(n, features)
    y = xp.arange(n, dtype=xp.int64) * 7      # y[i] = 7 * i identifies row i
    return X, y


def _rows(xb):
    """Row indices of a batch of ``_data`` (row i starts with 3*i)."""
    return [int(v) // 3 for v in backend.to_numpy(xb[:, 0])]


@pytest.mark.parametrize("n,batch_size,drop_last,sizes", [
    (10, 3, False, [3, 3, 3, 1]),
    (10, 3, True, [3, 3, 3]),
    (10, 5, False, [5, 5]),
    (10, 5, True, [5, 5]),
    (10, 64, False, [10]),
    (10, 64, True, []),
    (1, 1, False, [1]),
])
@pytest.mark.filterwarnings("ignore:DataLoader. drop_last=True with 10 samples")     # (10, 64, True)
def test_batch_sizes_and_len(xp, n, batch_size, drop_last, sizes):
    X, y = _data(xp, n)
    loader = DataLoader(X, y, batch_size=batch_size, drop_last=drop_last)
    got = [(xb.shape[0], yb.shape[0]) for xb, yb in loader]
    assert got == [(s, s) for s in sizes]
    assert len(loader) == len(sizes)


def test_unshuffled_batches_cover_data_in_order(xp):
    X, y = _data(xp, 10)
    batches = list(DataLoader(X, y, batch_size=4))
    assert backend.get_array_module(batches[0][0]) is xp
    assert backend.get_array_module(batches[0][1]) is xp
    numpy.testing.assert_array_equal(backend.to_numpy(xp.concatenate([b[0] for b in batches])),
                                     backend.to_numpy(X))
    numpy.testing.assert_array_equal(backend.to_numpy(xp.concatenate([b[1] for b in batches])),
                                     backend.to_numpy(y))
    assert batches[0][0].dtype == xp.float32 and batches[0][1].dtype == xp.int64


def test_x_only_yields_arrays(xp):
    X, _ = _data(xp, 7)
    batches = list(DataLoader(X, batch_size=3))
    assert all(not isinstance(b, tuple) for b in batches)
    assert [b.shape for b in batches] == [(3, 3), (3, 3), (1, 3)]


def test_shuffle_pairs_stay_together_and_cover_each_sample_once(xp):
    X, y = _data(xp, 23)
    loader = DataLoader(X, y, batch_size=5, shuffle=True, seed=3)
    for _ in range(3):
        seen = []
        for xb, yb in loader:
            rows = _rows(xb)
            assert [int(v) for v in backend.to_numpy(yb)] == [7 * r for r in rows]
            seen += rows
        assert sorted(seen) == list(range(23))


def test_shuffle_order_follows_documented_formula(xp):
    X, y = _data(xp, 17)
    loader = DataLoader(X, y, batch_size=4, shuffle=True, seed=11)
    for epoch in range(3):
        order = sum((_rows(xb) for xb, _ in loader), [])
        expected = numpy.random.default_rng([11, epoch]).permutation(17)
        assert order == expected.tolist()


def test_shuffle_is_reproducible_and_changes_per_epoch(xp):
    X, y = _data(xp, 50)

    def epochs(loader, k):
        return [sum((_rows(xb) for xb, _ in loader), []) for _ in range(k)]

    a = epochs(DataLoader(X, y, batch_size=8, shuffle=True, seed=5), 3)
    b = epochs(DataLoader(X, y, batch_size=8, shuffle=True, seed=5), 3)
    c = epochs(DataLoader(X, y, batch_size=8, shuffle=True, seed=6), 3)
    assert a == b
    assert a[0] != a[1] and a[1] != a[2]           # a fresh order every epoch
    assert a != c                                   # the seed matters
    assert a[0] != list(range(50))                  # it does shuffle


def test_set_epoch_reproduces_a_resumed_run(xp):
    X, y = _data(xp, 30)
    full = DataLoader(X, y, batch_size=7, shuffle=True, seed=9)
    orders = [sum((_rows(xb) for xb, _ in full), []) for _ in range(4)]
    assert full.epoch == 4
    resumed = DataLoader(X, y, batch_size=7, shuffle=True, seed=9)
    resumed.set_epoch(2)
    assert [sum((_rows(xb) for xb, _ in resumed), []) for _ in range(2)] == orders[2:]
    assert resumed.order(1).tolist() == orders[1]


def test_batch_size_does_not_change_the_epoch_order(xp):
    X, y = _data(xp, 20)
    a = sum((_rows(xb) for xb, _ in DataLoader(X, y, batch_size=3, shuffle=True, seed=1)), [])
    b = sum((_rows(xb) for xb, _ in DataLoader(X, y, batch_size=6, shuffle=True, seed=1)), [])
    assert a == b


def test_shuffle_with_drop_last_drops_the_tail_of_the_permutation(xp):
    X, y = _data(xp, 10)
    loader = DataLoader(X, y, batch_size=4, shuffle=True, seed=2, drop_last=True)
    rows = [_rows(xb) for xb, _ in loader]
    assert [len(r) for r in rows] == [4, 4]
    assert sum(rows, []) == numpy.random.default_rng([2, 0]).permutation(10)[:8].tolist()


def test_unseeded_shuffle_draws_and_keeps_a_seed():
    X, y = _data(numpy, 40)
    a = DataLoader(X, y, shuffle=True)
    b = DataLoader(X, y, shuffle=True, seed=a.seed)
    assert isinstance(a.seed, int) and a.seed >= 0
    assert [r.tolist() for _, r in a] == [r.tolist() for _, r in b]
    assert DataLoader(X, y, shuffle=True).seed != a.seed


def test_multidimensional_samples_and_targets(xp):
    X = xp.arange(6 * 2 * 4 * 4, dtype=xp.float64).reshape(6, 2, 4, 4)
    Y = xp.eye(6, dtype=xp.float64)
    loader = DataLoader(X, Y, batch_size=4, shuffle=True, seed=0)
    (xb, yb), (xb2, yb2) = list(loader)
    assert xb.shape == (4, 2, 4, 4) and yb.shape == (4, 6) and xb2.shape == (2, 2, 4, 4)
    assert xb.dtype == xp.float64
    order = numpy.random.default_rng([0, 0]).permutation(6)
    numpy.testing.assert_array_equal(backend.to_numpy(yb).argmax(1), order[:4])


def test_device_cpu_moves_batches_to_numpy(xp):
    X, y = _data(xp, 5)
    loader = DataLoader(X, y, batch_size=2, device="cpu")
    assert loader.device == "cpu"
    for xb, yb in loader:
        assert isinstance(xb, numpy.ndarray) and isinstance(yb, numpy.ndarray)
    assert backend.get_array_module(loader.X) is xp      # the dataset itself stays put
    assert DataLoader(X, y).to("cpu").device == "cpu"
    assert DataLoader(X, y, device="cpu").to(None).device is None


def test_device_moves_host_batches_to_the_gpu(gpu_xp, gpu_device):
    cp = gpu_xp
    X, y = _data(numpy, 9)
    loader = DataLoader(X, y, batch_size=4, shuffle=True, seed=4, device=gpu_device)
    got = [(backend.get_array_module(xb), backend.get_array_module(yb)) for xb, yb in loader]
    assert got == [(cp, cp)] * 3
    assert isinstance(loader.X, numpy.ndarray)


@pytest.mark.skipif(backend.cuda_available(), reason="checks the error on a machine without CUDA")
def test_device_cuda_without_gpu_raises_runtime_error():
    X, y = _data(numpy, 4)
    with pytest.raises(RuntimeError, match="CUDA"):
        DataLoader(X, y, device="cuda")


def test_lists_are_converted():
    loader = DataLoader([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [0, 1, 2], batch_size=2)
    (xb, yb), _ = list(loader)
    assert isinstance(xb, numpy.ndarray) and xb.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert yb.tolist() == [0, 1]
    # Python floats become float32, as torch.tensor makes them, so that the README's loop
    # takes a list (NumPy's float64 was refused by the first Dense; found by the first-hour
    # audit); integers stay int64, arrays keep their dtype
    assert xb.dtype == numpy.float32 and yb.dtype == numpy.int64
    model = gpunet.Sequential(gpunet.Dense(2, 3))
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(model(xb), yb)
    model.backward(loss_fn.backward())
    assert DataLoader(numpy.zeros((3, 2)), batch_size=2).X.dtype == numpy.float64



@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")     # numpy.matrix's own
def test_a_numpy_matrix_is_taken_as_its_array_and_a_masked_array_refused():
    """Found by the data audit: a numpy.matrix (what scipy.sparse's todense() gives) went
    through DataLoader and fit into the loss, which failed inside NumPy ('matrix.max() got an
    unexpected keyword argument keepdims'); a masked array failed inside numpy.ma ('operands
    could not be broadcast together'), and would have dropped its mask. Now the matrix trains
    as the ndarray it holds, in DataLoader, fit, evaluate and predict, and a masked array
    raises TypeError naming the way out."""
    rng = numpy.random.default_rng(0)
    X = rng.standard_normal((12, 4)).astype(numpy.float32)
    y = rng.integers(0, 3, 12)
    xb, _ = next(iter(DataLoader(numpy.asmatrix(X), y, batch_size=5)))
    assert type(xb) is numpy.ndarray and xb.shape == (5, 4)

    def trainer():
        gpunet.manual_seed(0)
        model = gpunet.Sequential(gpunet.Dense(4, 3))
        return gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(model, lr=0.1))
    a, b = trainer(), trainer()
    assert (a.fit((numpy.asmatrix(X), y), epochs=2, batch_size=5, progress=False).history
            == b.fit((X, y), epochs=2, batch_size=5, progress=False).history)
    assert a.evaluate((numpy.asmatrix(X), y)) == b.evaluate((X, y))
    p = a.predict(numpy.asmatrix(X))
    assert type(p) is numpy.ndarray
    numpy.testing.assert_array_equal(p, b.predict(X))

    masked = numpy.ma.masked_array(X, mask=X > 1)
    for call in (lambda: DataLoader(masked, y), lambda: DataLoader(X, numpy.ma.masked_array(y)),
                 lambda: a.fit((masked, y), progress=False), lambda: a.predict(masked)):
        with pytest.raises(TypeError, match=r"expected [Xy] to be a plain array, got a numpy.ma.MaskedArray"):
            call()


def test_an_in_place_edit_of_an_unshuffled_batch_cannot_change_the_data():
    """Found by the data audit: batches without shuffling are views of X, and the README's
    loop with an in-place edit of its batch (xb /= 255) divided X itself, again at every
    epoch, without a word (PyTorch's batches are copies). The views are now read-only: the
    edit raises and X stays as it was; shuffled batches are copies of their own, writable."""
    X = numpy.arange(24, dtype=numpy.float32).reshape(8, 3)
    y = numpy.arange(8)
    for xb, yb in DataLoader(X, y, batch_size=3):
        with pytest.raises(ValueError, match="read-only"):
            xb /= 255
        with pytest.raises(ValueError, match="read-only"):
            yb[0] = 7
    numpy.testing.assert_array_equal(X, numpy.arange(24, dtype=numpy.float32).reshape(8, 3))
    numpy.testing.assert_array_equal(y, numpy.arange(8))
    assert X.flags.writeable and y.flags.writeable
    for xb, yb in DataLoader(X, y, batch_size=3, shuffle=True, seed=0):
        xb /= 255
    numpy.testing.assert_array_equal(X, numpy.arange(24, dtype=numpy.float32).reshape(8, 3))

def test_drop_last_that_drops_every_sample_warns():
    """Found by the data audit: DataLoader(X, y, batch_size=64, drop_last=True) over 10
    samples gave a hand-written loop no batch and no word (the loop trained nothing; PyTorch
    is as silent). Each such pass warns; one batch or more does not."""
    import warnings
    X, y = numpy.zeros((10, 3), numpy.float32), numpy.zeros(10, numpy.int64)
    loader = DataLoader(X, y, batch_size=64, drop_last=True)
    with pytest.warns(UserWarning, match=r"^DataLoader: drop_last=True with 10 samples, fewer than one batch "
                                         r"of 64: this pass yields no batch \(pass drop_last=False, or a "
                                         r"batch_size of at most 10\)$"):
        assert list(loader) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.batch_size = 10
        assert len(list(loader)) == 1
        assert len(list(DataLoader(X, y, batch_size=64))) == 1

@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), r"DataLoader: expected batch_size to be a positive int, got 0"),
    (dict(batch_size=-3), r"DataLoader: expected batch_size.*got -3"),
    (dict(batch_size=2.0), r"DataLoader: expected batch_size.*got 2\.0"),
    (dict(batch_size=True), r"DataLoader: expected batch_size.*got True"),
    (dict(batch_size="8"), r"DataLoader: expected batch_size.*got '8'"),
    (dict(seed=-1), r"DataLoader: expected seed.*got -1"),
    (dict(seed=1.5), r"DataLoader: expected seed.*got 1\.5"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    X, y = _data(numpy, 4)
    with pytest.raises(ValueError, match=match):
        DataLoader(X, y, **kwargs)


def test_numpy_integer_batch_size_is_accepted():
    X, y = _data(numpy, 4)
    assert len(DataLoader(X, y, batch_size=numpy.int64(3))) == 2


def test_length_mismatch_raises_value_error(xp):
    X, y = _data(xp, 5)
    with pytest.raises(ValueError, match=r"DataLoader: expected X and y with the same number "
                                         r"of samples.*got X \(5, 3\) and y \(4,\)"):
        DataLoader(X, y[:4])


def test_empty_and_scalar_inputs_raise_value_error():
    with pytest.raises(ValueError, match=r"DataLoader: expected at least one sample.*\(0, 3\)"):
        DataLoader(numpy.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"DataLoader: expected X with at least one axis"):
        DataLoader(numpy.float32(1.0))
    with pytest.raises(TypeError, match=r"DataLoader: expected X to be a numeric array"):
        DataLoader(numpy.array([object(), object()]))


def test_set_epoch_rejects_negative():
    loader = DataLoader(numpy.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"DataLoader.set_epoch: expected epoch to be an int >= 0, got -1"):
        loader.set_epoch(-1)


def test_numpy_device_mix_raises_type_error(gpu_xp, gpu_device):
    with pytest.raises(TypeError, match=f"cpu.*{gpu_device}"):
        DataLoader(numpy.zeros((4, 2)), gpu_xp.zeros(4))


def test_x_and_y_on_two_devices_are_named_by_the_caller(gpu_xp, gpu_device):
    """DataLoader(sim X, NumPy y), and Trainer.fit/evaluate given such a pair, raised
    'arrays on different devices in one call: sim and cpu' from inside gpunet.backend,
    naming neither the function nor which of X and y was where. Now the loader, or the
    Trainer method and its argument, name both arrays and devices and the move."""
    from gpunet import Dense, SoftmaxCrossEntropy, Trainer, optim
    X, y = numpy.zeros((8, 4), numpy.float32), numpy.arange(8) % 3
    dev = gpunet.backend.device_of(gpu_xp.empty(0))
    fix = r"; X and y must be on one device: move one, e.g. gpunet\.to_device\(y, "
    with pytest.raises(TypeError, match=rf"^DataLoader: X is on {dev} but y on cpu{fix}'{dev}'\)$"):
        DataLoader(gpu_xp.asarray(X), y, batch_size=4, device=gpu_device)
    with pytest.raises(TypeError, match=rf"^DataLoader: X is on cpu but y on {dev}{fix}'cpu'\)$"):
        DataLoader(X, gpu_xp.asarray(y))
    model = Dense(4, 3)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    with pytest.raises(TypeError, match=rf"^Trainer\.fit: train's X is on {dev} but train's y on cpu{fix}"):
        tr.fit((gpu_xp.asarray(X), y), epochs=1, progress=False)
    with pytest.raises(TypeError, match=rf"^Trainer\.fit: val's X is on cpu but val's y on {dev}{fix}"):
        tr.fit((X, y), val=(X, gpu_xp.asarray(y)), epochs=1, progress=False)
    with pytest.raises(TypeError, match=rf"^Trainer\.evaluate: data's X is on {dev} but data's y on cpu{fix}"):
        tr.evaluate((gpu_xp.asarray(X), y))


def test_host_data_is_resident_on_a_gpu_device_when_it_fits(gpu_xp, gpu_device, monkeypatch):
    """device= a GPU: data that fits is copied once (on the first pass) and batches are
    gathered there, the same batches as on the host; too large, it moves batch by batch."""
    from gpunet import data as gdata
    X, y = _data(numpy, 11)
    loader = DataLoader(X, y, batch_size=4, shuffle=True, seed=3, device=gpu_device)
    assert not loader.resident
    got = [(backend.to_numpy(xb), backend.to_numpy(yb)) for xb, yb in loader]
    assert loader.resident and isinstance(loader.X, numpy.ndarray)
    want = list(DataLoader(X, y, batch_size=4, shuffle=True, seed=3))
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        numpy.testing.assert_array_equal(gx, wx)
        numpy.testing.assert_array_equal(gy, wy)
    assert gdata.fits_on_device(10**6, gpu_device)
    monkeypatch.setattr(gdata, "RESIDENT_FRACTION", 0.0)
    small = DataLoader(X, y, batch_size=4, device=gpu_device)
    assert [backend.get_array_module(xb) for xb, _ in small] == [gpu_xp] * 3
    assert not small.resident and not gdata.fits_on_device(1, gpu_device)


def test_sim_residency_rule():
    from gpunet import data as gdata, sim
    if sim.compiler() is None:
        pytest.skip("no sim device")
    limit = int(gdata.RESIDENT_FRACTION * gdata.SIM_FREE_BYTES)
    assert gdata.fits_on_device(limit, "sim") and not gdata.fits_on_device(limit + 1, "sim")
    assert not gdata.fits_on_device(1, "cpu")


@pytest.mark.parametrize("nbytes, exc, text", [
    ("x", TypeError, "expected nbytes to be an int >= 0, got 'x' (str)"),
    (1.5, TypeError, "expected nbytes to be an int >= 0, got 1.5 (float)"),
    (True, TypeError, "expected nbytes to be an int >= 0, got True (bool)"),
    (None, TypeError, "expected nbytes to be an int >= 0, got None"),
    (-1, ValueError, "expected nbytes to be an int >= 0, got -1"),
])
def test_fits_on_device_refuses_bad_nbytes(nbytes, exc, text):
    """A bad ``nbytes`` raises, naming the function, on every device (it answered False on
    the CPU, and ``int("x")`` failed only on a GPU); numpy ints are counts too."""
    from gpunet import data as gdata
    for device in ("cpu", "sim"):
        with pytest.raises(exc) as e:
            gdata.fits_on_device(nbytes, device)
        assert str(e.value) == f"fits_on_device: {text}"
    assert gdata.fits_on_device(numpy.int64(0), "cpu") is False
    with pytest.raises(ValueError, match="^fits_on_device: unknown device 'tpu'"):
        gdata.fits_on_device(1, "tpu")


def test_resident_data_that_fits_once_but_not_twice_is_gathered_batch_by_batch(monkeypatch):
    """Shuffled resident data is gathered a whole epoch at a time only when a second copy
    fits too; otherwise batch by batch. The batches are the host's either way."""
    from gpunet import data as gdata, sim
    if sim.compiler() is None:
        pytest.skip("no sim device")
    X, y = _data(numpy, 11)
    want = list(DataLoader(X, y, batch_size=4, shuffle=True, seed=5))
    for free, permute in ((10**9, True), (X.nbytes + y.nbytes, False)):
        monkeypatch.setattr(gdata, "SIM_FREE_BYTES", free)
        monkeypatch.setattr(gdata, "RESIDENT_FRACTION", 1.0)
        loader = DataLoader(X, y, batch_size=4, shuffle=True, seed=5, device="sim")
        sim.reset_counters()
        got = [(backend.to_numpy(xb), backend.to_numpy(yb)) for xb, yb in loader]
        assert loader.resident and loader._permute is permute
        # takes: X and y once for the epoch, or once per batch
        assert sim.counters()["kernels"].get("take", 0) == (2 if permute else 2 * len(want))
        for (gx, gy), (wx, wy) in zip(got, want, strict=True):
            numpy.testing.assert_array_equal(gx, wx)
            numpy.testing.assert_array_equal(gy, wy)


class _TensorLike:
    """What a CPU torch.Tensor looks like to gpunet, without torch: ``ndim``, ``shape``, a
    dtype that is not NumPy's, ``__array__`` and indexing."""
    __module__ = "torch"

    def __init__(self, a):
        self._a = a
        self.ndim, self.shape, self.dtype = a.ndim, a.shape, f"torch.{a.dtype}"

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)

    def __len__(self):
        return len(self._a)

    def __getitem__(self, i):
        return _TensorLike(self._a[i])


def _tensor_cases():
    rng = numpy.random.default_rng(0)
    X, y = rng.standard_normal((10, 4)).astype(numpy.float32), rng.integers(0, 3, 10)
    cases = [(_TensorLike(X), _TensorLike(y), _TensorLike(X.astype(numpy.float64)))]
    try:
        import torch
        cases.append((torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(X.astype(numpy.float64))))
    except ImportError:
        pass
    return X, y, cases


def test_torch_tensors_are_named_by_layers_and_losses_and_converted_by_the_loaders():
    """Found by the second first-hour audit: a torch.Tensor given to a layer or a loss failed
    inside with "AttributeError: 'torch.dtype' object has no attribute 'kind'" (it has an
    ndim and a dtype, torch's); DataLoader yielded torch batches that the model then
    refused so. Layers and losses now raise TypeError naming x.numpy(); DataLoader and
    Trainer convert a CPU tensor as they convert a list, keeping its dtype."""
    X, y, cases = _tensor_cases()
    for tX, ty, tX64 in cases:
        model = gpunet.Sequential(gpunet.Dense(4, 3))
        for call in (lambda: model(tX), lambda: gpunet.Conv2D(1, 1, 1)(tX), lambda: gpunet.MaxPool2D(1)(tX),
                     lambda: gpunet.SoftmaxCrossEntropy()(model(X), ty), lambda: gpunet.MSELoss()(tX, X)):
            with pytest.raises(TypeError, match=r"a NumPy or CuPy array, got \w+; a torch\.Tensor becomes a "
                                                r"NumPy array with x\.numpy\(\)"):
                call()
        batches = list(gpunet.DataLoader(tX, ty, batch_size=4))
        assert all(type(a) is numpy.ndarray for b in batches for a in b)
        numpy.testing.assert_array_equal(numpy.concatenate([b[0] for b in batches]), X)
        assert next(iter(gpunet.DataLoader(tX64, ty)))[0].dtype == numpy.float64    # its own dtype kept
        t = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(model.parameters()))
        numpy.testing.assert_array_equal(t.predict(tX), t.predict(X))
        with pytest.raises(ValueError, match="Dense: expected dtype float32"):
            t.predict(tX64)


def test_manual_seed_does_not_seed_an_unseeded_shuffle_and_seed_does():
    """What the DataLoader docstring and the guide say (the leftover audit: a PyTorch user
    expects torch.manual_seed to make the shuffle reproducible): after the same
    gpunet.manual_seed, two DataLoader(shuffle=True, seed=None) draw other seeds from OS
    entropy, hence other orders; a seed= gives one order, and an unseeded loader's .seed
    replays its own."""
    X = numpy.arange(64, dtype=numpy.float32).reshape(32, 2)
    loaders = []
    for _ in range(2):
        gpunet.manual_seed(0)
        loaders.append(gpunet.DataLoader(X, batch_size=8, shuffle=True))
    a, b = loaders
    assert a.seed != b.seed and not numpy.array_equal(a.order(0), b.order(0))   # 1 in 32! alike
    replay = gpunet.DataLoader(X, batch_size=8, shuffle=True, seed=a.seed)
    seeded = [gpunet.DataLoader(X, batch_size=8, shuffle=True, seed=7) for _ in range(2)]
    for k in range(3):
        numpy.testing.assert_array_equal(replay.order(k), a.order(k))
        numpy.testing.assert_array_equal(seeded[0].order(k), seeded[1].order(k))
