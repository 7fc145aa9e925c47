"""Counter-based generator (DESIGN §3) and the host generator behind ``manual_seed`` (§2).

The oracle for the hash is an independent pure-Python transcription of the formula in the
``gpunet.random`` docstring, evaluated element by element with Python ints.
"""
import numpy
import pytest

import gpunet
from gpunet import random as grandom

M32 = 2**32 - 1


def _ref_mix32(x):
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


def _ref_bits(seed, offset, i):
    seed_lo, seed_hi = seed & M32, seed >> 32
    off_lo, off_hi = offset & M32, offset >> 32
    k1 = _ref_mix32(seed_lo ^ _ref_mix32((seed_hi + 0x9E3779B9) & M32))
    k2 = _ref_mix32(k1 ^ _ref_mix32(off_lo ^ _ref_mix32((off_hi + 0x3C6EF372) & M32)))
    return _ref_mix32(_ref_mix32((i + k1) & M32) ^ k2)


def _ref_uniform(seed, offset, i):
    return (_ref_bits(seed, offset, i) >> 8) * 2.0**-24


SEEDS_OFFSETS = [(0, 0), (1, 0), (0, 1), (12345, 678), (2**32 + 7, 2**40 + 3), (2**64 - 1, 2**64 - 1)]


@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS)
def test_bits_match_reference_formula(xp, seed, offset):
    shape = (3, 5)
    bits = gpunet.to_numpy(grandom.random_bits(seed, offset, shape, xp))
    assert bits.dtype == numpy.uint32 and bits.shape == shape
    expected = numpy.array([_ref_bits(seed, offset, i) for i in range(15)], numpy.uint32).reshape(shape)
    numpy.testing.assert_array_equal(bits, expected)


@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS[:4])
def test_uniform_matches_reference_formula(xp, seed, offset):
    u = grandom.uniform(seed, offset, (2, 2, 3), xp)
    assert grandom.get_array_module(u) is xp
    u = gpunet.to_numpy(u)
    assert u.dtype == numpy.float32 and u.shape == (2, 2, 3)
    expected = numpy.array([_ref_uniform(seed, offset, i) for i in range(12)]).reshape(2, 2, 3)
    numpy.testing.assert_array_equal(u.astype(numpy.float64), expected)   # exactly representable


def test_uniform_range_and_rough_uniformity(xp):
    n = 200_000
    u = gpunet.to_numpy(grandom.uniform(7, 3, (n,), xp))
    assert u.dtype == numpy.float32
    assert u.min() >= 0.0 and u.max() < 1.0
    # chi-square over 20 equal bins: 19 degrees of freedom, mean 19, sd ~6.2; a bound of 80
    # is ~10 sd away, yet a biased or constant generator lands in the thousands.
    counts = numpy.bincount((u * 20).astype(numpy.int64), minlength=20)
    expected = n / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80, chi2
    assert abs(float(u.mean()) - 0.5) < 0.005
    # neighbours are not correlated (a hash of i, not a counter)
    c = numpy.corrcoef(u[:-1].astype(numpy.float64), u[1:].astype(numpy.float64))[0, 1]
    assert abs(c) < 0.02


def test_seeds_and_offsets_give_different_streams(xp):
    shape = (1000,)
    a = gpunet.to_numpy(grandom.uniform(1, 0, shape, xp))
    for seed, offset in [(2, 0), (1, 1), (0, 1), (1, 2**32)]:
        b = gpunet.to_numpy(grandom.uniform(seed, offset, shape, xp))
        # independent streams agree on about 1000 * 2**-24 elements: essentially none
        assert (a == b).mean() < 0.01, (seed, offset)
    # the same (seed, offset) is the same stream, and a prefix of a longer draw
    again = gpunet.to_numpy(grandom.uniform(1, 0, (10, 100), xp)).reshape(-1)
    numpy.testing.assert_array_equal(again, a)
    longer = gpunet.to_numpy(grandom.uniform(1, 0, (1500,), xp))
    numpy.testing.assert_array_equal(longer[:1000], a)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 0.999, 1.0 / 3.0])
def test_keep_threshold_is_uniform_ge_p(xp, p):
    bits = grandom.random_bits(5, 11, (50_000,), xp)
    u = gpunet.to_numpy(grandom.uniform(5, 11, (50_000,), xp)).astype(numpy.float64)
    keep = gpunet.to_numpy((bits >> xp.uint32(8)) >= grandom.keep_threshold(p))
    numpy.testing.assert_array_equal(keep, u >= p)
    assert abs(keep.mean() - (1 - p)) < 0.01


def test_keep_threshold_edges():
    assert grandom.keep_threshold(0.0) == 0           # p = 0 keeps everything
    assert grandom.keep_threshold(0.5) == 2**23
    # exactly at a representable uniform value: u == p must be kept
    assert grandom.keep_threshold(3 * 2.0**-24) == 3
    assert grandom.keep_threshold(3.5 * 2.0**-24) == 4


@pytest.mark.parametrize("seed,offset", [(-1, 0), (0, -1), (2**64, 0), (0, 2**64)])
def test_seed_and_offset_range(seed, offset):
    with pytest.raises(ValueError, match="random"):
        grandom.uniform(seed, offset, (3,))


# -- the host generator ---------------------------------------------------------------------------
def test_manual_seed_makes_dense_init_reproducible():
    gpunet.manual_seed(42)
    a = gpunet.Dense(5, 4)
    b = gpunet.Dense(5, 4)
    gpunet.manual_seed(42)
    c = gpunet.Dense(5, 4)
    d = gpunet.Dense(5, 4)
    numpy.testing.assert_array_equal(a.weight.data, c.weight.data)
    numpy.testing.assert_array_equal(b.weight.data, d.weight.data)
    # construction order matters: the second layer draws after the first
    assert not numpy.array_equal(a.weight.data, b.weight.data)
    gpunet.manual_seed(43)
    e = gpunet.Dense(5, 4)
    assert not numpy.array_equal(a.weight.data, e.weight.data)


def test_construction_order_changes_weights():
    gpunet.manual_seed(0)
    first = gpunet.Dense(3, 2)
    second = gpunet.Dense(3, 2)
    gpunet.manual_seed(0)
    gpunet.Dense(4, 4)                  # an extra layer constructed first consumes draws
    shifted = gpunet.Dense(3, 2)
    assert not numpy.array_equal(shifted.weight.data, first.weight.data)
    assert not numpy.array_equal(shifted.weight.data, second.weight.data)


def test_same_seed_same_weights_on_every_device(device):
    gpunet.manual_seed(7)
    host = gpunet.Dense(6, 3, activation="relu")
    gpunet.manual_seed(7)
    moved = gpunet.Dense(6, 3, activation="relu").to(device)
    numpy.testing.assert_array_equal(gpunet.to_numpy(moved.weight.data), host.weight.data)


def test_host_rng_is_reseeded():
    gpunet.manual_seed(3)
    a = grandom.host_rng().standard_normal(4)
    gpunet.manual_seed(3)
    b = grandom.host_rng().standard_normal(4)
    numpy.testing.assert_array_equal(a, b)
    assert numpy.array_equal(numpy.random.default_rng(3).standard_normal(4), a)


def test_host_generator_seeded_with_zero_at_import():
    import subprocess
    import sys
    code = ("import numpy, gpunet\n"
            "w = gpunet.Dense(4, 3).weight.data\n"
            "gpunet.manual_seed(0)\n"
            "print(numpy.array_equal(w, gpunet.Dense(4, 3).weight.data))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("seed", [-1, "a", 1.5, None])
def test_manual_seed_names_a_bad_seed(seed):
    """Found by fuzzing: -1 and 'a' raised NumPy's / int()'s messages, 1.5 became 1 silently."""
    with pytest.raises(ValueError, match="manual_seed: expected seed to be an int >= 0"):
        gpunet.manual_seed(seed)
    gpunet.manual_seed(0)
