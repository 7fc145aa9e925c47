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
