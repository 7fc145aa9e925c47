"""Pooling checks shared by example tests and property tests (plain NumPy: no hypothesis,
so the example tests that use them run wherever pytest does)."""
import numpy

from gpunet import to_numpy
from gpunet.functional import pooling as FP


def assert_half_pooling_is_float32_rounded_once(x, k, s, p, make_dy):
    """Max and average pooling of the float16 ``x`` (NumPy path): output, argmax and both
    backwards equal the float32 results rounded once (tolerance 0); ``make_dy(shape)`` gives
    the float16 upstream gradient."""
    h = lambda a: a.astype(numpy.float16)          # noqa: E731
    x32 = x.astype(numpy.float32)
    y, arg = FP.max_pool2d(x, k, s, p)
    y32, arg32 = FP.max_pool2d(x32, k, s, p)
    assert y.dtype == numpy.float16
    numpy.testing.assert_array_equal(y, h(y32))
    numpy.testing.assert_array_equal(arg, arg32)
    dy = make_dy(y.shape)
    dy32 = dy.astype(numpy.float32)
    numpy.testing.assert_array_equal(FP.max_pool2d_backward(dy, arg, x.shape, k, s, p),
                                     h(FP.max_pool2d_backward(dy32, arg32, x.shape, k, s, p)))
    numpy.testing.assert_array_equal(FP.avg_pool2d(x, k, s, p), h(FP.avg_pool2d(x32, k, s, p)))
    numpy.testing.assert_array_equal(FP.avg_pool2d_backward(dy, x.shape, k, s, p),
                                     h(FP.avg_pool2d_backward(dy32, x.shape, k, s, p)))


def assert_device_pooling_equals_numpy(x, xd, k, s, p, make_dy, asarray):
    """Max and average pooling of ``xd`` (``x`` on a device) equal NumPy's of ``x`` bit for bit:
    output, argmax and both backwards. ``make_dy(shape)`` gives the host upstream gradient,
    ``asarray`` moves it to the device. Returns the device's ``(y, argmax)``."""
    shape = x.shape
    y_ref, arg_ref = FP.max_pool2d(x, k, s, p)
    y, arg = FP.max_pool2d(xd, k, s, p)
    numpy.testing.assert_array_equal(to_numpy(y), y_ref)
    numpy.testing.assert_array_equal(to_numpy(arg), arg_ref)
    assert arg.dtype == arg_ref.dtype
    dy = make_dy(y_ref.shape)
    dyd = asarray(dy)
    numpy.testing.assert_array_equal(to_numpy(FP.max_pool2d_backward(dyd, arg, shape, k, s, p)),
                                     FP.max_pool2d_backward(dy, arg_ref, shape, k, s, p))
    numpy.testing.assert_array_equal(to_numpy(FP.avg_pool2d(xd, k, s, p)), FP.avg_pool2d(x, k, s, p))
    numpy.testing.assert_array_equal(to_numpy(FP.avg_pool2d_backward(dyd, shape, k, s, p)),
                                     FP.avg_pool2d_backward(dy, shape, k, s, p))
    return y, arg
