"""Inputs and comparisons shared by tests/test_hostkernels.py and tools/host_sanitize.py:
the compiled CPU kernels (gpunet.hostkernels) against the NumPy passes they replace."""
import numpy


def nan_bits(a):
    """The bit patterns of ``a``, every NaN as one pattern: NaN stays NaN in the same places,
    but which NaN's sign and payload an add or ``inf * 0`` passes on is the instruction
    order's business, in NumPy's loops as in the kernels."""
    a = numpy.asarray(a)
    a = numpy.where(numpy.isnan(a), numpy.nan, a).astype(a.dtype)
    return a.view(numpy.uint32 if a.dtype == numpy.float32 else
                  numpy.uint64 if a.dtype == numpy.float64 else numpy.uint16)


def awkward(rng, shape, dtype):
    """Values with many ties (a few integers), signed zeros, infinities and NaN."""
    x = rng.integers(-3, 4, shape).astype(dtype)
    zero = x == 0
    x[zero] = numpy.where(rng.random(int(zero.sum())) < 0.5, -0.0, 0.0).astype(dtype)
    u = rng.random(shape)
    x[u < 0.03] = numpy.inf
    x[(u >= 0.03) & (u < 0.06)] = -numpy.inf
    x[(u >= 0.06) & (u < 0.08)] = numpy.nan
    return x


def in_layout(x, layout):
    """``x (N, C, H, W)``'s values in CHWN, CNHW or NCHW memory."""
    if layout == "chwn":
        return numpy.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    if layout == "cnhw":
        return numpy.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    return numpy.ascontiguousarray(x)


def x_at_arg_positive(x, arg, kernel, stride, padding):
    """NumPy's ``x[n, c, p*sh - ph + arg // kw, q*sw - pw + arg % kw] > 0`` for every window
    ``(n, c, p, q)`` of max pooling (an ``arg`` in the padding: False), ``arg`` from
    ``max_pool2d``; the pairs normalized (``pool_args``)."""
    (_, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-numpy.inf)
    n, c, oh, ow = arg.shape
    pi, qi = numpy.meshgrid(numpy.arange(oh), numpy.arange(ow), indexing="ij")
    rows = pi[None, None] * sh + arg // kw
    cols = qi[None, None] * sw + arg % kw
    return xp[numpy.arange(n)[:, None, None, None], numpy.arange(c)[None, :, None, None], rows, cols] > 0
