"""Each fused CUDA kernel against its NumPy reference, on fresh random inputs.

The functional ops dispatch to ``gpunet.cuda`` when given device arrays, so calling the
same op on a NumPy copy and on a device copy of one random input compares the kernel with
the NumPy body, which is the oracle. Shapes include non-multiples of 32 and, for
softmax-CE, both the warp-per-row (C <= 1024) and block-per-row paths. They run on every
GPU-like backend present (``gpu_xp`` in conftest): ``"cuda"`` where CuPy sees a device,
and ``"sim"``, the simulated device that runs the same kernels on the CPU, where a C++
compiler is found; they skip where there is neither.
"""
import numpy
import pytest

from gpunet import to_numpy
from gpunet.functional import batchnorm as FB
from gpunet.functional import dropout as FD
from gpunet.functional import losses as FL

TOL = {numpy.float32: dict(rtol=2e-5, atol=2e-6), numpy.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture
def cp(gpu_xp):
    """The device's array module: ``cupy``, or the sim's (``gpunet.sim.array``)."""
    return gpu_xp


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("n,c", [(1, 10), (37, 10), (129, 33), (64, 1000), (33, 1025), (7, 5000)])
@pytest.mark.parametrize("variant", ["labels", "smoothing", "ignore", "soft", "soft_smoothing"])
def test_softmax_xent_kernel_matches_numpy(cp, dtype, n, c, variant):
    rng = numpy.random.default_rng(n * 7919 + c)
    logits = (rng.standard_normal((n, c)) * 3).astype(dtype)
    eps = 0.1 if "smoothing" in variant else 0.0
    ignore = None
    if variant.startswith("soft"):
        t = rng.random((n, c)).astype(dtype)
        labels = t / t.sum(axis=1, keepdims=True)
    else:
        labels = rng.integers(0, c, size=n)
        if variant == "ignore":
            ignore = -100
            labels[::3] = ignore
    ref_loss, ref_grad = FL.softmax_cross_entropy(logits, labels, eps, ignore)
    loss, grad = FL.softmax_cross_entropy(cp.asarray(logits), cp.asarray(labels), eps, ignore)
    assert isinstance(grad, cp.ndarray) and grad.dtype == dtype and loss.dtype == dtype
    numpy.testing.assert_allclose(float(loss), float(ref_loss), **TOL[dtype])
    numpy.testing.assert_allclose(to_numpy(grad), ref_grad, **TOL[dtype])


def test_softmax_xent_kernel_rejects_bad_labels(cp):
    """The kernel flags the label on the device; reading the loss raises (issue 12)."""
    logits = cp.asarray(numpy.random.default_rng(0).standard_normal((8, 10)).astype(numpy.float32))
    with pytest.raises(ValueError, match="e.g. 10 at row 7"):
        float(FL.softmax_cross_entropy(logits, cp.asarray(numpy.array([0, 1, 2, 3, 4, 5, 6, 10])))[0])


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape", [(37, 3), (256, 100), (5, 7, 9, 11), (16, 64, 14, 14), (3, 33, 1, 1),
                                   (8192, 2), (4, 3, 64, 64)])
def test_batchnorm_kernels_match_numpy(cp, dtype, shape):
    """The last two shapes split each channel over several blocks (``_bn_chunks``: at
    least 2048 values per block) on the sim's 2 SMs and on a large GPU alike."""
    if shape in ((8192, 2), (4, 3, 64, 64)):
        from gpunet import cuda as gcuda
        hw = 1 if len(shape) == 2 else shape[2] * shape[3]
        dev = gcuda._device(cp.empty(0))
        assert gcuda._bn_chunks(shape[0], shape[1], hw, numpy.dtype(dtype), dev) > 1
    rng = numpy.random.default_rng(sum(shape))
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + rng.standard_normal((1, C) + (1,) * (len(shape) - 2))).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ref = FB.batch_norm_forward(x, gamma, beta, 1e-5)
    got = FB.batch_norm_forward(cp.asarray(x), cp.asarray(gamma), cp.asarray(beta), 1e-5)
    for r, g in zip(ref, got):
        numpy.testing.assert_allclose(to_numpy(g), r, **TOL[dtype])
    ref_b = FB.batch_norm_backward(dy, x, gamma, ref[1], ref[3])
    got_b = FB.batch_norm_backward(cp.asarray(dy), cp.asarray(x), cp.asarray(gamma), got[1], got[3])
    for r, g in zip(ref_b, got_b):
        numpy.testing.assert_allclose(to_numpy(g), r, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape", [(1,), (31,), (1000, 33), (64, 3, 17, 19)])
@pytest.mark.parametrize("p,mode", [(0.5, "inverted"), (0.1, "classic"), (0.9, "inverted")])
def test_dropout_kernel_is_bit_identical(cp, dtype, shape, p, mode):
    rng = numpy.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(dtype)
    for counter in (0, 1, 2**33 + 5):
        ref = FD.dropout_forward(x, p, 1234, counter, mode)
        got = FD.dropout_forward(cp.asarray(x), p, 1234, counter, mode)
        numpy.testing.assert_array_equal(to_numpy(got), ref)
        ref_b = FD.dropout_backward(x, p, 1234, counter, mode)
        got_b = FD.dropout_backward(cp.asarray(x), p, 1234, counter, mode)
        numpy.testing.assert_array_equal(to_numpy(got_b), ref_b)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_kernels_on_unaligned_views_match_numpy(cp, dtype):
    """A contiguous view one element into its buffer is not 16-byte aligned: the kernels
    must take their scalar paths (never a misaligned vector load) and agree with NumPy."""
    rng = numpy.random.default_rng(7)
    n, c = 24, 16                                  # widths that would take the packed paths
    flat = rng.standard_normal(n * c + 1).astype(dtype)
    z = cp.asarray(flat)[1:].reshape(n, c)
    assert z.data.ptr % 16 != 0
    labels = rng.integers(0, c, n)
    ref = FL.softmax_cross_entropy(flat[1:].reshape(n, c), labels)
    got = FL.softmax_cross_entropy(z, cp.asarray(labels))
    numpy.testing.assert_allclose(float(got[0]), float(ref[0]), **TOL[dtype])
    numpy.testing.assert_allclose(to_numpy(got[1]), ref[1], **TOL[dtype])
    x4 = cp.asarray(flat)[1:].reshape(n, c // 4, 2, 2)
    ref = FB.batch_norm_forward(flat[1:].reshape(n, c // 4, 2, 2), None, None, 1e-5)
    got = FB.batch_norm_forward(x4, None, None, 1e-5)
    for r, g in zip(ref, got):
        numpy.testing.assert_allclose(to_numpy(g), r, **TOL[dtype])
    ref = FD.dropout_forward(flat[1:], 0.3, 99, 5, "inverted")
    numpy.testing.assert_array_equal(to_numpy(FD.dropout_forward(cp.asarray(flat)[1:], 0.3, 99, 5, "inverted")), ref)


# ---------------------------------------------------------------------------------------
# Accuracy at the extremes (issue 15). Rule: against a truth computed in long double
# (float64 and better on x86: 64-bit significand) from the same input values, a kernel's
# error is at most twice the NumPy reference's error in the same dtype, or at most a floor
# of a few ulps (stated per op below: what the kernels guarantee, docs/concepts.md).
# ---------------------------------------------------------------------------------------

LD = numpy.longdouble


def _within_rule(what, kernel_err, numpy_err, floor):
    assert kernel_err <= max(2 * numpy_err, floor), (
        f"{what}: kernel error {kernel_err:.3g} > max(2 x NumPy's {numpy_err:.3g}, floor {floor:.3g})")


def _max_rel(got, truth, scale):
    """max |got - truth| / scale, elementwise scale (broadcast) or one number."""
    return float(numpy.max(numpy.abs(to_numpy(got).astype(LD) - truth) / scale))


# Batch norm. Floors, in eps of the dtype: mean 2 and var 4 (per channel, relative to
# |mean| + std and to var + (eps |mean|)^2, the variance the dtype can resolve), y, dx,
# dgamma, dbeta 8 (relative to the largest true value of each).
BN_FLOOR_ULPS = dict(mean=2, var=4, y=8, dx=8, dgamma=8, dbeta=8)


def _bn_input(kind, shape, rng):
    if kind == "large_mean":
        return 1e4 + rng.standard_normal(shape)
    if kind == "large_mean_small_spread":
        return 1e4 + 0.01 * rng.standard_normal(shape)
    x = rng.standard_normal(shape)
    if kind == "outlier_first":
        x[0] = 1e3                                   # x[0, c] (and x[0, c, :, :]) of every channel
    elif kind == "constant_channel":
        x[:, 1] = 0.1                                # inexact in binary: rounding shows
    return x


def _bn_truth(x, gamma, beta, dy, eps):
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    s = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    xl, g, b, d = (a.astype(LD) for a in (x, gamma, beta, dy))
    mean = xl.mean(axis=axes)
    xc = xl - mean.reshape(s)
    var = (xc * xc).mean(axis=axes)
    inv = 1 / numpy.sqrt(var + LD(eps))
    xh = xc * inv.reshape(s)
    M = x.size // x.shape[1]
    dbeta, dgamma = d.sum(axis=axes), (d * xh).sum(axis=axes)
    dx = (g * inv / M).reshape(s) * (M * d - dbeta.reshape(s) - xh * dgamma.reshape(s))
    return dict(mean=mean, var=var, y=xh * g.reshape(s) + b.reshape(s), dx=dx, dgamma=dgamma,
                dbeta=dbeta)


def _bn_run(x, gamma, beta, dy, eps, asarray):
    y, mean, var, inv = FB.batch_norm_forward(asarray(x), asarray(gamma), asarray(beta), eps)
    dx, dgamma, dbeta = FB.batch_norm_backward(asarray(dy), asarray(x), asarray(gamma), mean, inv)
    return dict(mean=mean, var=var, y=y, dx=dx, dgamma=dgamma, dbeta=dbeta)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape", [(3, 5), (64, 3), (16384, 2), (4, 3, 8, 8)])
@pytest.mark.parametrize("kind", ["large_mean", "large_mean_small_spread", "outlier_first",
                                  "constant_channel"])
def test_batchnorm_accuracy_at_extremes(cp, dtype, shape, kind):
    """(16384, 2) splits each channel over several blocks (the finalize combine)."""
    rng = numpy.random.default_rng([len(kind), *shape])
    C, eps = shape[1], 1e-5
    x = _bn_input(kind, shape, rng).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    truth = _bn_truth(x, gamma, beta, dy, eps)
    ref = _bn_run(x, gamma, beta, dy, eps, lambda a: a)
    got = _bn_run(x, gamma, beta, dy, eps, cp.asarray)
    ulp = float(numpy.finfo(dtype).eps)
    std = numpy.sqrt(truth["var"])
    scale = dict(mean=numpy.abs(truth["mean"]) + std,
                 var=truth["var"] + (ulp * numpy.abs(truth["mean"])) ** 2)
    for k, floor_ulps in BN_FLOOR_ULPS.items():
        sc = scale.get(k, numpy.abs(truth[k]).max())
        _within_rule(f"batch norm {k} ({kind}, {shape}, {dtype.__name__})",
                     _max_rel(got[k], truth[k], sc), _max_rel(ref[k], truth[k], sc),
                     floor_ulps * ulp)
    if kind == "constant_channel":
        # exactly: the channel's mean is its value, its variance 0, and y = beta
        assert to_numpy(got["mean"])[1] == x[(0, 1) + (0,) * (x.ndim - 2)]
        assert to_numpy(got["var"])[1] == 0
        numpy.testing.assert_array_equal(to_numpy(got["y"])[:, 1], numpy.broadcast_to(
            beta[1], x[:, 1].shape))


# Softmax cross-entropy. Floor: 8 eps of the dtype, relative to the largest true row loss
# and to the largest true gradient entry (CUDA's expf/logf are within 2 and 1 ulp).
XENT_FLOOR_ULPS = 8


def _xent_truth(z, labels, eps):
    zl = z.astype(LD)
    n, c = z.shape
    m = zl.max(axis=1, keepdims=True)
    e = numpy.exp(zl - m)
    s = e.sum(axis=1, keepdims=True)
    if labels.ndim == 1:
        t = numpy.zeros((n, c), LD)
        t[numpy.arange(n), labels] = 1
    else:
        t = labels.astype(LD)
    t = (1 - LD(eps)) * t + LD(eps) / c
    row = (t * (m + numpy.log(s) - zl)).sum(axis=1)
    return row, e / s * t.sum(axis=1, keepdims=True) - t       # gradient of the sum


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("c", [100, 1000, 2048, 2051, 9000])     # warp 8 / 32, block packed / not, 512 threads
@pytest.mark.parametrize("variant", ["labels", "smoothing", "soft", "soft_smoothing"])
@pytest.mark.parametrize("kind", ["negative_first_logit", "logits_pm_1e4"])
def test_softmax_xent_accuracy_at_extremes(cp, dtype, c, variant, kind):
    rng = numpy.random.default_rng(c)
    n = 6
    z = rng.standard_normal((n, c)) * 3
    if kind == "negative_first_logit":
        z[:, 0] = -1e4
    else:
        z = numpy.where(rng.random((n, c)) < 0.5, -1e4, 1e4) + rng.standard_normal((n, c))
    z = z.astype(dtype)
    eps = 0.1 if "smoothing" in variant else 0.0
    if variant.startswith("soft"):
        q = rng.random((n, c))
        labels = (q / q.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        labels = rng.integers(0, c, n)
    row_t, grad_t = _xent_truth(z, labels, eps)
    ref = FL.softmax_cross_entropy(z, labels, eps, None, "none")
    got = FL.softmax_cross_entropy(cp.asarray(z), cp.asarray(labels), eps, None, "none")
    floor = XENT_FLOOR_ULPS * float(numpy.finfo(dtype).eps)
    what = f"softmax-CE ({kind}, C={c}, {variant}, {dtype.__name__})"
    for k, (g, r, t) in enumerate(zip(got, ref, (row_t, grad_t))):
        sc = numpy.abs(t).max()
        _within_rule(f"{what} {('row loss', 'gradient')[k]}", _max_rel(g, t, sc), _max_rel(r, t, sc),
                     floor)


# Dropout: bit for bit at the top of p's range, where keep_threshold(p) reaches 2**24 (no
# 24-bit draw is kept) and the NumPy reference once overflowed its uint32 threshold.
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("p", [1 - 2.0**-22, 1 - 2.0**-24, 1 - 2.0**-25, float(numpy.nextafter(1.0, 0.0))])
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_dropout_kernel_bit_identical_at_top_of_p_range(cp, dtype, p, mode):
    x = numpy.random.default_rng(3).standard_normal((4099,)).astype(dtype)
    for counter in range(8):
        ref = FD.dropout_forward(x, p, 77, counter, mode)
        got = FD.dropout_forward(cp.asarray(x), p, 77, counter, mode)
        numpy.testing.assert_array_equal(to_numpy(got), ref)
        numpy.testing.assert_array_equal(to_numpy(FD.dropout_backward(cp.asarray(x), p, 77, counter, mode)),
                                         FD.dropout_backward(x, p, 77, counter, mode))
