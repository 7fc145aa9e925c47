"""MaxPool2D, AvgPool2D, GlobalAvgPool2D: forward against loop references and PyTorch,
backward against gradcheck (float64) and PyTorch, tie-breaking, padding rules, validation."""
import numpy
import pytest

import gpunet
from gpunet import to_numpy
from gpunet.layers import AvgPool2D, GlobalAvgPool2D, MaxPool2D


def pool_loop(x, kernel, stride, padding, mode):
    """Direct pooling, one window at a time (float64, NumPy); max pads with -inf, avg with
    zeros and divides by kh*kw."""
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    n, c, h, w = x.shape
    fill = -numpy.inf if mode == "max" else 0.0
    xpad = numpy.full((n, c, h + 2 * ph, w + 2 * pw), fill)
    xpad[:, :, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = numpy.zeros((n, c, oh, ow))
    for p in range(oh):
        for q in range(ow):
            win = xpad[:, :, p * sh:p * sh + kh, q * sw:q * sw + kw]
            y[:, :, p, q] = win.max(axis=(2, 3)) if mode == "max" else win.sum(axis=(2, 3)) / (kh * kw)
    return y


# (kernel_size, stride, padding): stride None = kernel, overlapping windows, non-square,
# padding, windows that do not tile the input exactly.
CASES = [
    (2, None, 0),
    (3, 2, 1),
    (3, 1, 0),
    ((3, 2), (1, 2), (1, 1)),
    ((2, 3), None, (1, 0)),
    ((1, 3), (1, 2), (0, 1)),   # 1-D
]
LAYERS = {"max": MaxPool2D, "avg": AvgPool2D}


def _norm(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_loop(xp, rng, mode, case):
    k, s, p = case
    layer = LAYERS[mode](k, s, p)
    x = rng.standard_normal((2, 3, 7, 8))
    y = to_numpy(layer(xp.asarray(x)))
    ref = pool_loop(x, _norm(k), _norm(k if s is None else s), _norm(p), mode)
    assert y.shape == ref.shape
    numpy.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", CASES)
def test_gradcheck(xp, rng, mode, case):
    # distinct values, well separated, so no max is within eps of a tie
    x = rng.permutation(2 * 2 * 6 * 7).reshape(2, 2, 6, 7) * 0.01 + rng.standard_normal((2, 2, 6, 7)) * 1e-4
    gpunet.gradcheck(LAYERS[mode](*case), xp.asarray(x))


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", CASES)
def test_against_torch(rng, mode, case):
    torch = pytest.importorskip("torch")
    k, s, p = case
    layer = LAYERS[mode](k, s, p)
    x = rng.standard_normal((2, 3, 7, 8))
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    f = torch.nn.functional.max_pool2d if mode == "max" else torch.nn.functional.avg_pool2d
    yt = f(xt, k, s, p)
    yt.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_max_gradient_goes_to_first_of_ties(xp):
    x = xp.asarray(numpy.array([[[[1.0, 3.0, 2.0, 2.0],
                                  [3.0, 0.0, 2.0, 2.0]]]]))
    layer = MaxPool2D(2)
    y = layer(x)
    numpy.testing.assert_array_equal(to_numpy(y), [[[[3.0, 2.0]]]])
    dx = layer.backward(xp.asarray(numpy.array([[[[10.0, 20.0]]]])))
    numpy.testing.assert_array_equal(to_numpy(dx), [[[[0.0, 10.0, 20.0, 0.0],
                                                      [0.0, 0.0, 0.0, 0.0]]]])


def test_max_overlapping_windows_add(xp):
    # stride 1, kernel 2: the centre element wins all four windows
    x = numpy.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5.0
    layer = MaxPool2D(2, stride=1)
    layer(xp.asarray(x))
    dx = to_numpy(layer.backward(xp.ones((1, 1, 2, 2))))
    expected = numpy.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 4.0
    numpy.testing.assert_array_equal(dx, expected)


def test_max_padding_never_wins(xp):
    x = -numpy.ones((1, 1, 2, 2)) * numpy.arange(1, 5).reshape(1, 1, 2, 2)   # all negative
    y = to_numpy(MaxPool2D(3, stride=1, padding=1)(xp.asarray(x)))
    assert (y < 0).all()
    numpy.testing.assert_array_equal(y, numpy.full((1, 1, 2, 2), -1.0))


def test_avg_counts_padding(xp):
    # count_include_pad=True: a corner window of a 2x2 kernel with padding 1 sees one input
    x = xp.ones((1, 1, 2, 2))
    y = to_numpy(AvgPool2D(2, stride=1, padding=1)(xp.asarray(x)))
    numpy.testing.assert_allclose(y[0, 0], [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])


def test_float32_stays_float32(xp, rng):
    x = xp.asarray(rng.standard_normal((2, 3, 6, 6)).astype(numpy.float32))
    for layer in (MaxPool2D(2), AvgPool2D(3, 1, 1), GlobalAvgPool2D()):
        y = layer(x)
        dx = layer.backward(xp.ones_like(y))
        assert y.dtype == dx.dtype == numpy.float32, type(layer).__name__


def test_global_avg_pool(xp, rng):
    x = rng.standard_normal((3, 4, 5, 6))
    layer = GlobalAvgPool2D()
    y = to_numpy(layer(xp.asarray(x)))
    assert y.shape == (3, 4)
    numpy.testing.assert_allclose(y, x.mean(axis=(2, 3)), rtol=1e-12)
    gpunet.gradcheck(GlobalAvgPool2D(), xp.asarray(x))


def test_global_avg_pool_against_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 4, 5, 6))
    layer = GlobalAvgPool2D()
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, 1).flatten(1)
    yt.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    numpy.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12)


def test_stride_none_means_kernel():
    assert MaxPool2D(3).stride == (3, 3)
    assert AvgPool2D((2, 3)).stride == (2, 3)
    assert MaxPool2D(3, stride=1).stride == (1, 1)


# -- validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_rejects_bad_input(xp, cls):
    name = cls.__name__
    layer = cls(3)
    with pytest.raises(ValueError, match=rf"{name}: expected a 4-D input \(N, C, H, W\), got shape \(2, 8, 8\)"):
        layer(xp.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=rf"{name}: kernel 3x3 is larger than the padded input 2x5"):
        layer(xp.zeros((1, 1, 2, 5)))
    with pytest.raises(ValueError, match=f"{name}: expected a floating-point input"):
        layer(xp.zeros((1, 1, 4, 4), dtype=numpy.int32))


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_rejects_bad_arguments(cls):
    name = cls.__name__
    with pytest.raises(ValueError, match=f"{name}: padding must be at most half the kernel size"):
        cls(2, padding=2)
    with pytest.raises(ValueError, match=f"{name}: kernel_size must be >= 1"):
        cls(0)
    with pytest.raises(ValueError, match=f"{name}: stride must be >= 1"):
        cls(2, stride=0)


def test_global_avg_pool_rejects_wrong_rank(xp):
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D: expected a 4-D input .*got shape \(2, 3\)"):
        GlobalAvgPool2D()(xp.zeros((2, 3)))


def test_backward_before_forward_raises():
    for layer in (MaxPool2D(2), AvgPool2D(2), GlobalAvgPool2D()):
        with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.backward"):
            layer.backward(numpy.zeros((1, 1, 1, 1)))


@pytest.mark.parametrize("order", [(1, 0, 2, 3), (1, 2, 3, 0)], ids=["cnhw", "chwn"])
@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), (2, 1, 0)])
def test_max_pool_on_conv_memory_keeps_layout(rng, order, kernel, stride, padding):
    # a whole-batch convolution's output is a view of (C, H, W, N) memory on the CPU
    # ((C, N, H, W) is kept too); results equal those on a C-contiguous copy
    from gpunet.functional import pooling as FP
    inverse = tuple(numpy.argsort(order))
    base = rng.standard_normal(tuple((4, 3, 7, 6)[i] for i in order))
    base[..., ::2] = 0.5                            # ties
    x = base.transpose(inverse)                     # (4, 3, 7, 6) over that memory
    xc = numpy.ascontiguousarray(x)
    y, arg = FP.max_pool2d(x, kernel, stride, padding)
    yc, argc = FP.max_pool2d(xc, kernel, stride, padding)
    numpy.testing.assert_array_equal(y, yc)
    numpy.testing.assert_array_equal(arg, argc)
    assert y.transpose(order).flags.c_contiguous and arg.transpose(order).flags.c_contiguous
    dy = rng.standard_normal(y.shape)               # C-contiguous: copied into arg's layout
    dx = FP.max_pool2d_backward(dy, arg, x.shape, kernel, stride, padding)
    numpy.testing.assert_array_equal(dx, FP.max_pool2d_backward(dy, argc, x.shape, kernel, stride, padding))
    if padding == 0:
        assert dx.transpose(order).flags.c_contiguous


@pytest.mark.parametrize("order", [(1, 0, 2, 3), (1, 2, 3, 0)], ids=["cnhw", "chwn"])
@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), (2, 1, 0)])
@pytest.mark.parametrize("dy_c_order", [False, True], ids=["dy-same-order", "dy-c-order"])
def test_avg_pools_on_conv_memory_keep_layout(rng, order, kernel, stride, padding, dy_c_order):
    """AvgPool2D and GlobalAvgPool2D on a CPU convolution's (C, H, W, N) memory (or
    (C, N, H, W)) return y and dx in that memory, as max pooling does; dy through Flatten
    comes C-ordered and is taken into it. They returned C-ordered y and dx, so the ReLU or
    batch norm before them crossed layouts in every pass (Conv2D-BatchNorm-ReLU-AvgPool2D x2
    on 64 28x28 images: 39 -> 28 ms a step, one thread). The numbers are those of a
    C-contiguous copy, bit for bit (the global mean's forward up to its sums' order)."""
    inverse = tuple(numpy.argsort(order))
    x = rng.standard_normal(tuple((4, 3, 7, 6)[i] for i in order)).astype(numpy.float32).transpose(inverse)
    xc = numpy.ascontiguousarray(x)
    for make in (lambda: AvgPool2D(kernel, stride, padding), GlobalAvgPool2D):
        layer, ref = make(), make()
        y, yc = layer(x), ref(xc)
        if y.ndim == 4:
            numpy.testing.assert_array_equal(y, yc)
        else:   # the global mean reduces in memory order: its sums are added in another order
            numpy.testing.assert_allclose(y, yc, rtol=1e-6)
        dy = rng.standard_normal(y.shape).astype(numpy.float32)
        if y.ndim == 4:
            assert y.transpose(order).flags.c_contiguous
            if not dy_c_order:
                dy = numpy.ascontiguousarray(dy.transpose(order)).transpose(inverse)
        dx = layer.backward(dy)
        numpy.testing.assert_array_equal(dx, ref.backward(numpy.ascontiguousarray(dy)))
        if padding == 0 or y.ndim == 2:
            assert dx.transpose(order).flags.c_contiguous, type(layer).__name__


def test_avg_pool_backward_order_is_checked():
    from gpunet.functional import pooling as FP
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: expected order in .*got 'nhwc'"):
        FP.avg_pool2d_backward(numpy.ones((1, 1, 2, 2), numpy.float32), (1, 1, 4, 4), 2, order="nhwc")
