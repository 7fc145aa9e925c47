"""Dropout: mask statistics and reproducibility, the two modes' expectations, backward."""
import numpy
import pytest

import gpunet
from gpunet import Dropout, gradcheck, to_numpy
from gpunet import random as R
from gpunet.functional import dropout as F


def host_mask(shape, p, seed, counter):
    """The rule of the issue, written out independently: keep i iff bits >> 8 >= threshold."""
    bits = R.random_bits(seed, counter, shape, numpy)
    return (bits >> numpy.uint32(8)) >= R.keep_threshold(p)


@pytest.mark.parametrize("mode", ["inverted", "classic"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_forward_matches_host_mask(xp, rng, mode, dtype):
    p, seed = 0.3, 12345
    x_host = rng.standard_normal((16, 40)).astype(dtype)
    layer = Dropout(p, mode=mode, seed=seed).to(gpunet.backend.device_of(xp.empty(0)))
    for counter in range(3):
        y = layer(xp.asarray(x_host))
        assert y.dtype == dtype and y.shape == x_host.shape
        scale = 1.0 / (1.0 - p) if mode == "inverted" else 1.0
        want = numpy.where(host_mask(x_host.shape, p, seed, counter), x_host * dtype(scale), 0)
        numpy.testing.assert_allclose(to_numpy(y), want, rtol=1e-6 if dtype == numpy.float32 else 1e-12)
    assert layer.counter == 3


def test_keep_fraction(xp):
    n = 200_000
    for p in (0.1, 0.5, 0.8):
        y = Dropout(p, seed=3)(xp.ones(n, dtype=xp.float32))
        kept = float((y != 0).mean())
        sigma = (p * (1 - p) / n) ** 0.5        # binomial standard error of the fraction
        assert abs(kept - (1 - p)) < 5 * sigma, (p, kept)


def test_threshold_is_exact_uniform_comparison():
    # keep iff uniform >= p, with uniform = (bits >> 8) * 2**-24: the integer rule matches.
    shape, p = (5000,), 0.37
    u = R.uniform(5, 9, shape)
    numpy.testing.assert_array_equal(F.keep_mask(shape, p, 5, 9), u >= numpy.float32(p))
    numpy.testing.assert_array_equal(F.keep_mask(shape, p, 5, 9), host_mask(shape, p, 5, 9))


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_train_expectation_equals_eval(xp, rng, mode):
    """Monte-Carlo mean of T training outputs vs the eval output, element by element.

    Per element, the training output is x·s·Bernoulli(1-p) (s = 1/(1-p) or 1), with
    standard deviation |x|·s·sqrt(p(1-p)); the mean of T draws has standard error
    sd/sqrt(T). The tolerance is 5 standard errors per element (for 512 elements the
    chance that any exceeds it is about 3e-4); the overall mean must agree to 5 standard
    errors of the grand mean as well.
    """
    p, T = 0.4, 2000
    x_host = rng.uniform(0.5, 2.0, size=512).astype(numpy.float64)
    layer = Dropout(p, mode=mode, seed=77)
    x = xp.asarray(x_host)
    acc = numpy.zeros_like(x_host)
    for _ in range(T):
        acc += to_numpy(layer(x))
    mc = acc / T
    layer.eval()
    ev = to_numpy(layer(x))
    s = 1.0 / (1.0 - p) if mode == "inverted" else 1.0
    numpy.testing.assert_allclose(ev, x_host if mode == "inverted" else x_host * (1 - p), rtol=1e-15)
    se = numpy.abs(x_host) * s * numpy.sqrt(p * (1 - p) / T)
    assert numpy.all(numpy.abs(mc - ev) < 5 * se), numpy.max(numpy.abs(mc - ev) / se)
    se_all = numpy.sqrt(numpy.sum(se ** 2)) / x_host.size
    assert abs(mc.mean() - ev.mean()) < 5 * se_all


def test_eval_modes(xp, rng):
    x = xp.asarray(rng.standard_normal((4, 6)).astype(numpy.float32))
    inv = Dropout(0.25, seed=1).eval()
    cla = Dropout(0.25, mode="classic", seed=1).eval()
    numpy.testing.assert_array_equal(to_numpy(inv(x)), to_numpy(x))
    yc = cla(x)
    assert yc.dtype == numpy.float32
    numpy.testing.assert_allclose(to_numpy(yc), to_numpy(x) * numpy.float32(0.75), rtol=1e-7)
    assert inv.counter == 0 and cla.counter == 0       # eval draws nothing


def test_same_seed_same_sequence_and_counters_differ(xp):
    x = xp.ones((64, 64), dtype=xp.float32)
    a, b = Dropout(0.5, seed=42), Dropout(0.5, seed=42)
    masks_a = [to_numpy(a(x)) != 0 for _ in range(4)]
    masks_b = [to_numpy(b(x)) != 0 for _ in range(4)]
    for ma, mb in zip(masks_a, masks_b):
        numpy.testing.assert_array_equal(ma, mb)
    # a fresh mask every step: consecutive draws differ in about half the elements
    for m0, m1 in zip(masks_a, masks_a[1:]):
        assert 0.4 < float((m0 != m1).mean()) < 0.6
    m_other = to_numpy(Dropout(0.5, seed=43)(x)) != 0     # another seed, same counter
    assert 0.4 < float((m_other != masks_a[0]).mean()) < 0.6


def test_default_seed_follows_manual_seed():
    gpunet.manual_seed(5)
    s1 = [Dropout().seed for _ in range(3)]
    gpunet.manual_seed(5)
    s2 = [Dropout().seed for _ in range(3)]
    assert s1 == s2 and len(set(s1)) == 3
    gpunet.manual_seed(0)


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_backward_uses_forward_mask(xp, rng, mode):
    p = 0.5
    layer = Dropout(p, mode=mode, seed=9)
    x = xp.asarray(rng.uniform(1.0, 2.0, size=(32, 32)).astype(numpy.float32))   # no zeros
    layer(x)                      # draw 0, discarded
    y = layer(x)                  # draw 1
    dy_host = rng.standard_normal((32, 32)).astype(numpy.float32)
    dx = to_numpy(layer.backward(xp.asarray(dy_host)))
    kept = to_numpy(y) != 0
    s = numpy.float32(2.0 if mode == "inverted" else 1.0)
    numpy.testing.assert_allclose(dx, numpy.where(kept, dy_host * s, 0), rtol=1e-7)
    assert layer.counter == 2     # backward draws nothing


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_gradcheck(xp, rng, mode):
    layer = Dropout(0.3, mode=mode, seed=11)
    layer(xp.ones((2, 2)))        # advance the counter: the check must rewind it, not rely on 0
    x = xp.asarray(rng.standard_normal((3, 7)))
    assert gradcheck(layer, x)


def test_state_dict_resumes_mask_sequence(xp):
    x = xp.ones((8, 8), dtype=xp.float32)
    a = Dropout(0.5, seed=1234)
    for _ in range(3):
        a(x)
    sd = a.state_dict()
    assert int(sd["counter"]) == 3 and int(sd["seed"]) == 1234
    b = Dropout(0.5, seed=1).load_state_dict(sd)
    assert b.seed == 1234 and b.counter == 3 and isinstance(b.counter, int)
    for _ in range(2):
        numpy.testing.assert_array_equal(to_numpy(a(x)), to_numpy(b(x)))


def test_bad_arguments(xp):
    for p in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="Dropout"):
            Dropout(p)
    with pytest.raises(TypeError, match="Dropout"):
        Dropout("0.5")
    with pytest.raises(ValueError, match="mode"):
        Dropout(0.5, mode="scaled")
    with pytest.raises(ValueError, match="seed"):
        Dropout(0.5, seed=-1)
    with pytest.raises(ValueError, match="Dropout.*floating"):
        Dropout(0.5)(xp.ones(3, dtype=xp.int32))
    with pytest.raises(RuntimeError, match="before a training-mode forward"):
        Dropout(0.5).backward(xp.ones(3))


def test_p_zero_is_identity_in_both_modes(xp, rng):
    x = xp.asarray(rng.standard_normal((5, 5)).astype(numpy.float32))
    for mode in ("inverted", "classic"):
        layer = Dropout(0.0, mode=mode, seed=0)
        numpy.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(x))
        numpy.testing.assert_array_equal(to_numpy(layer.backward(x)), to_numpy(x))


# ---------------------------------------------------------------------------------------
# p at the top of [0, 1) (issue 15): keep_threshold(p) reaches 2**24 for p in
# (1 - 2**-24, 1), where no 24-bit draw is kept; the NumPy reference must agree with the
# kernel (it raised OverflowError computing the uint32 threshold 2**24 * 256).
# ---------------------------------------------------------------------------------------

def _unmix32(x):
    """Inverse of gpunet.random's mix32 (each step of lowbias32 is a bijection on 2**32)."""
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * pow(0x846CA68B, -1, 2**32)) & m
    x ^= (x >> 15) ^ (x >> 30)
    x = (x * pow(0x7FEB352D, -1, 2**32)) & m
    x ^= x >> 16
    return x


def counter_with_draw(seed, index, bits):
    """A counter (below 2**32) whose draw gives element ``index`` exactly ``bits``: the
    hash inverted, so a test can place the largest 24-bit draw where it wants it."""
    k1, _ = R.keys(seed, 0)
    k2 = R._mix32_int((index + k1) & 0xFFFFFFFF) ^ _unmix32(bits)
    # k2 = mix32(k1 ^ mix32(offset_lo ^ mix32(0 + golden2)))  with offset_hi = 0
    return _unmix32(_unmix32(k2) ^ k1) ^ R._mix32_int(R._GOLDEN2)


def test_counter_with_draw_places_the_draw():
    for seed, index, bits in ((0, 0, 0xFFFFFFFF), (7, 5, 0xFFFFFF00), (2**40 + 3, 999, 12345)):
        c = counter_with_draw(seed, index, bits)
        assert int(R.random_bits(seed, c, (index + 1,))[index]) == bits


TOP_P = [1 - 2.0**-23, 1 - 2.0**-24, 1 - 2.0**-25, 1 - 2.0**-40, float(numpy.nextafter(1.0, 0.0))]


@pytest.mark.parametrize("p", TOP_P)
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_p_at_top_of_range(xp, p, mode):
    """Element 5 draws the largest 24-bit value 2**24 - 1: it is kept iff
    keep_threshold(p) <= 2**24 - 1 (p <= 1 - 2**-24), and every other p drops everything,
    on NumPy and on the device alike (the kernel: forward and backward)."""
    seed = 31
    counter = counter_with_draw(seed, 5, 0xFFFFFF80)
    x_host = numpy.random.default_rng(5).uniform(1.0, 2.0, 4099).astype(numpy.float32)
    want_mask = host_mask(x_host.shape, p, seed, counter)
    assert bool(want_mask[5]) == (R.keep_threshold(p) < 2**24) == (p <= 1 - 2.0**-24)
    assert want_mask.sum() == want_mask[5]          # the rest draw lower values
    numpy.testing.assert_array_equal(F.keep_mask(x_host.shape, p, seed, counter), want_mask)
    scale = F.train_scale(p, mode)
    want = numpy.where(want_mask, x_host * numpy.float32(scale), numpy.float32(0))
    for op in (F.dropout_forward, F.dropout_backward):
        y = op(xp.asarray(x_host), p, seed, counter, mode)
        numpy.testing.assert_array_equal(to_numpy(y), want)


def test_device_counter_lives_on_the_device():
    """On a device the draw counter is a device buffer: a training forward is the draw
    launch and the mask kernel, no host sync; reading ``counter`` syncs once, setting it
    (and ``seed``) writes the buffer in place; the host takes the counter back. Masks equal
    the host's for the same (seed, counter, shard) throughout."""
    from gpunet import sim
    if sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    sp = gpunet.backend.require_sim()
    x = numpy.random.default_rng(3).standard_normal((6, 50)).astype(numpy.float32)
    dev, ref = Dropout(0.4, seed=2**40 + 9), Dropout(0.4, seed=2**40 + 9)
    dev.shard = ref.shard = 2
    xd = sp.asarray(x)

    def same(n=1):
        for _ in range(n):
            numpy.testing.assert_array_equal(to_numpy(dev(xd)), ref(x))
            numpy.testing.assert_array_equal(to_numpy(dev.backward(xd)), ref.backward(x))

    same()
    state = dev._state
    sim.reset_counters()
    dev(xd)
    ref(x)
    c = sim.counters()
    assert c["kernels"] == {"dropout_next_draw": 1, "dropout_apply_state<float>": 1}, c
    assert (c["syncs"], c["h2d_bytes"], c["d2h_bytes"]) == (0, 0, 0)
    assert dev.counter == ref.counter == 2 and dev._state is state
    dev.counter = ref.counter = 2**32 - 1          # in place: the same buffer
    dev.seed = ref.seed = 77
    same(3)                                        # the counter crosses 2**32 on the device
    assert dev._state is state and dev.counter == ref.counter == 2**32 + 2
    assert dev.state_dict()["counter"] == 2**32 + 2
    ref.load_state_dict(dev.state_dict())
    numpy.testing.assert_array_equal(dev(x), ref(x))   # a host forward takes the counter back
    assert dev._state is None and dev.counter == ref.counter == 2**32 + 3
    same()


def test_device_state_start_is_checked_as_the_host_start_is():
    """``dropout_forward_state``/``dropout_backward_state`` took any ``start`` that ``int()``
    took (a float drew the mask of its truncation, a negative one wrapped modulo 2**32,
    True was 1); now an int >= 0 as ``dropout_forward``'s ``start``. A NumPy int still
    draws the mask of its value."""
    from gpunet import sim
    from gpunet import cuda as gcuda
    if sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    sp = gpunet.backend.require_sim()
    x = numpy.random.default_rng(5).standard_normal(40).astype(numpy.float32)
    st = gcuda.draw_state(sp, 7, 2)
    gcuda.next_draw(st)
    for start in (3, numpy.int64(3)):
        numpy.testing.assert_array_equal(to_numpy(F.dropout_forward_state(sp.asarray(x), 0.5, st, start=start)),
                                         F.dropout_forward(x, 0.5, 7, 2, start=3))
        numpy.testing.assert_array_equal(to_numpy(F.dropout_backward_state(sp.asarray(x), 0.5, st, start=start)),
                                         F.dropout_backward(x, 0.5, 7, 2, start=3))
    for fn in (F.dropout_forward_state, F.dropout_backward_state):
        for start, exc in ((3.0, TypeError), (3.5, TypeError), (True, TypeError), ("3", TypeError),
                           (-1, ValueError)):
            with pytest.raises(exc, match=rf"^{fn.__name__}: expected start to be an int >= 0, got "):
                fn(sp.asarray(x), 0.5, st, start=start)


@pytest.mark.parametrize("training", [True, False])
def test_a_0d_input_is_named(training):
    """A 0-d input came back as a NumPy scalar (the activation layers already refuse it)."""
    d = Dropout(0.5)
    d.train(training)
    with pytest.raises(ValueError, match="Dropout: expected an input with at least one axis, got a 0-d array"):
        d(numpy.array(1.0, numpy.float32))
