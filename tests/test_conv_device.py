"""Convolution and pooling on a GPU-like device (``kernels/conv.cu``, ``kernels/pooling.cu``)
against the NumPy path, which is the oracle, and what they cost.

Each test calls the same functional op on a NumPy input and on a device copy of it
(``gpu_xp``: CuPy where a GPU is present, the sim device where a C++ compiler is). Shapes
cover kernels 1/3/5 and non-square ones, strides 1/2, paddings 0/1/2, C = 1, N = 1,
1-D ``(1, k)`` kernels, and inputs in other layouts (a transposed view, a strided slice).
On the sim, the launches of a conv layer and of a training step are counted
(``gpunet.sim.counters()``).
"""
import numpy
import pytest

import gpunet
from gpunet import sim, to_numpy
from gpunet.functional import conv as FC
from gpunet.functional import pooling as FP
from pool_checks import assert_device_pooling_equals_numpy

# the GEMM sums in another order than NumPy's BLAS; the other kernels are exact or nearly
# (the conv2d test itself bounds each sum by its rounding: _assert_sums_close)
TOL = {numpy.float32: dict(rtol=2e-5, atol=2e-5), numpy.float64: dict(rtol=1e-12, atol=1e-12)}
DTYPES = [numpy.float32, numpy.float64]

# (N, C, H, W, O, kernel, stride, padding)
CONV_CASES = [
    (2, 3, 7, 6, 4, 3, 1, 1),            # "same" 3x3
    (3, 2, 9, 8, 5, 3, 1, 0),
    (2, 3, 8, 9, 3, 3, 2, 1),            # stride 2
    (1, 1, 6, 6, 2, 1, 1, 0),            # 1x1, N = 1, C = 1
    (2, 2, 5, 7, 3, 1, 2, 0),            # 1x1 stride 2
    (2, 3, 9, 9, 2, 5, 1, 2),            # 5x5 "same"
    (2, 1, 11, 10, 3, 5, 2, 2),          # 5x5 stride 2, C = 1
    (1, 2, 9, 7, 2, (2, 4), (3, 2), (0, 2)),   # non-square everything
    (2, 2, 8, 9, 3, (3, 2), (2, 1), (1, 0)),
    (2, 3, 1, 17, 4, (1, 5), (1, 2), (0, 2)),  # 1-D
    (3, 2, 1, 12, 3, (1, 3), 1, (0, 1)),       # 1-D, stride 1
    (2, 2, 4, 4, 3, 2, 3, 0),                  # stride > kernel: some inputs unread
    (4, 8, 12, 12, 16, 3, 1, 1),               # a few blocks per row
    (4, 16, 16, 16, 16, 3, 1, 1),              # 1024 products in each dW sum
]


def _case_args(case):
    n, c, h, w, o, k, s, p = case
    kh, kw = FC.pair(k, "t", "k", 1)
    return (n, c, h, w), (o, c, kh, kw), FC.pair(s, "t", "s", 1), FC.pair(p, "t", "p", 0)


def _inputs(case, dtype, seed=0):
    rng = numpy.random.default_rng(seed)
    xs, ws, s, p = _case_args(case)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    return x, w, b, s, p


def _sums_of_squares(x, w, b, dy, s, p):
    """For each output of conv2d (y) and conv2d_backward (dx, dw, db): the sum of the squares
    of the products it adds up, ``sum(p_i**2)`` (the same ops on squared inputs, in float64),
    and the number of those products (an upper bound for dx)."""
    x2, w2, dy2 = (numpy.square(a, dtype=numpy.float64) for a in (x, w, dy))
    n, o, oh, ow = dy.shape
    c, kh, kw = w.shape[1:]
    sq_dx, sq_dw, sq_db = FC.conv2d_backward(dy2, x2, w2, s, p)
    return ((FC.conv2d(x2, w2, numpy.square(b, dtype=numpy.float64), s, p), c * kh * kw + 1),
            (sq_dx, o * kh * kw), (sq_dw, n * oh * ow), (sq_db, n * oh * ow))


def _assert_sums_close(got, ref, sq, terms, name):
    """``got`` and ``ref`` add the same ``terms`` products in other orders (the device's GEMM
    over its own layout, NumPy's BLAS with the blocking of the host's kernels), so they differ
    by rounding alone. Those rounding errors add up like a random walk: about
    ``u * sqrt(terms) * sqrt(sum(p_i**2))`` (u = eps / 2); the bound is 8 times that. Observed
    (float32 and float64, every case, OpenBLAS Haswell and SkylakeX kernels, 1 and 2 threads,
    AMD EPYC): at most 0.24 of the bound. A product left out or taken twice moves an output by
    about ``sqrt(sum(p_i**2) / terms)``, above the bound while ``terms < 1 / (8 u)`` (2e6 in
    float32). A fixed rtol=2e-5, atol=2e-5 in float32, used before, does not grow with
    ``terms``: case 12's dW (576 products) reached 0.9 of it with OpenBLAS's Haswell kernels
    on one thread, and the 1024-product case 13 fails it on Haswell and SkylakeX kernels."""
    u = numpy.finfo(ref.dtype).eps / 2
    bound = 8 * u * numpy.sqrt(terms) * numpy.sqrt(sq)
    err = numpy.abs(got.astype(numpy.float64) - ref)
    assert numpy.all(err <= bound), (
        f"{name}: off by {err.max():.3g}, up to {numpy.max(err / bound):.3g} times the rounding bound")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_forward_backward_match_numpy(gpu_xp, case, dtype, relu):
    x, w, b, s, p = _inputs(case, dtype)
    act = "relu" if relu else None
    y_ref, cols_ref = FC.conv2d(x, w, b, s, p, return_cols=True, activation=act)
    dx_, dw_, db_ = (gpu_xp.asarray(a) for a in (x, w, b))
    y, cols = FC.conv2d(dx_, dw_, db_, s, p, return_cols=True, activation=act)
    assert isinstance(y, gpu_xp.ndarray) and y.dtype == dtype and y.shape == y_ref.shape
    assert y.flags.c_contiguous                          # NCHW memory: no copy downstream

    dy = numpy.random.default_rng(1).standard_normal(y_ref.shape).astype(dtype)
    ref = FC.conv2d_backward(dy, x, w, s, p, cols=cols_ref, y=y_ref, activation=act)
    # the reference's y on both sides: where z is within rounding of 0, the two y's could
    # disagree about ReLU's mask, which is not what is tested here
    got = FC.conv2d_backward(gpu_xp.asarray(dy), dx_, dw_, s, p, cols=cols, y=gpu_xp.asarray(y_ref),
                             activation=act)
    for g, r, name in zip(got, ref, ("dx", "dw", "db")):
        assert g.shape == r.shape and g.dtype == dtype, name
    assert got[0].flags.c_contiguous and got[1].flags.c_contiguous
    squares = _sums_of_squares(x, w, b, dy * (y_ref > 0) if relu else dy, s, p)
    for g, r, (sq, terms), name in zip((y,) + got, (y_ref,) + ref, squares, ("y", "dx", "dw", "db")):
        _assert_sums_close(to_numpy(g), r, sq, terms, name)


@pytest.mark.parametrize("case", CONV_CASES[:4])
def test_conv2d_backward_without_cols_and_flags(gpu_xp, case):
    x, w, b, s, p = _inputs(case, numpy.float64, seed=3)
    y_ref = FC.conv2d(x, w, b, s, p)
    dy = numpy.random.default_rng(4).standard_normal(y_ref.shape)
    ref = FC.conv2d_backward(dy, x, w, s, p, need_dx=False, need_bias=False)
    got = FC.conv2d_backward(gpu_xp.asarray(dy), gpu_xp.asarray(x), gpu_xp.asarray(w), s, p,
                             need_dx=False, need_bias=False)
    assert got[0] is None and got[2] is None and ref[0] is None
    numpy.testing.assert_allclose(to_numpy(got[1]), ref[1], **TOL[numpy.float64])


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_reads_any_input_layout(gpu_xp, dtype):
    # a transposed view (CNHW memory), a strided slice, and a non-contiguous dy
    rng = numpy.random.default_rng(5)
    base = rng.standard_normal((3, 2, 9, 16)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    for view in (lambda a: a.transpose(1, 0, 2, 3), lambda a: a.transpose(1, 0, 2, 3)[:, :, 1:8, ::2]):
        x = view(base)
        dev = view(gpu_xp.asarray(base))
        assert not dev.flags.c_contiguous
        y_ref = FC.conv2d(x, w, None, 1, 1)
        y = FC.conv2d(dev, gpu_xp.asarray(w), None, 1, 1)
        numpy.testing.assert_allclose(to_numpy(y), y_ref, **TOL[dtype])
        dy_full = rng.standard_normal((y_ref.shape[1], y_ref.shape[0]) + y_ref.shape[2:]).astype(dtype)
        dy = dy_full.transpose(1, 0, 2, 3)
        ref = FC.conv2d_backward(dy, x, w, 1, 1, need_bias=False)
        got = FC.conv2d_backward(gpu_xp.asarray(dy_full).transpose(1, 0, 2, 3), dev,
                                 gpu_xp.asarray(w), 1, 1, need_bias=False)
        numpy.testing.assert_allclose(to_numpy(got[0]), ref[0], **TOL[dtype])
        numpy.testing.assert_allclose(to_numpy(got[1]), ref[1], **TOL[dtype])


def _same_plane(case):
    _, ws, s, p = _case_args(case)
    return FC._same_plane(ws[2:], s, p)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_im2col_col2im_kernels_match_numpy_rows(gpu_xp, case, dtype):
    # im2col_rows' layout is the one conv2d's GEMMs expect; col2im adds in NumPy's offset
    # order, so it is bit-identical to the NumPy path outside that path's "same"-plane
    # shortcut (which starts from the centre offset)
    from gpunet.cuda import conv as CC
    x, w, _, s, p = _inputs(case, dtype, seed=6)
    k = w.shape[2:]
    out_hw = FC.output_size("t", x.shape, k, s, p)
    cols_ref = FC.im2col_rows(x, k, s, p)
    cols = CC.im2col_rows(gpu_xp.asarray(x), k, s, p, out_hw)
    numpy.testing.assert_array_equal(to_numpy(cols), cols_ref)
    dcols = numpy.random.default_rng(7).standard_normal(cols_ref.shape).astype(dtype)
    dx_ref = FC.col2im_rows(dcols, x.shape, k, s, p)
    dx = CC.col2im_rows(gpu_xp.asarray(dcols), x.shape, k, s, p, out_hw)
    assert dx.flags.c_contiguous and dx.shape == x.shape
    if _same_plane(case):
        numpy.testing.assert_allclose(to_numpy(dx), dx_ref, **TOL[dtype])
    else:
        numpy.testing.assert_array_equal(to_numpy(dx), dx_ref)


def test_im2col_reuses_its_buffer(gpu_xp):
    from gpunet.cuda import conv as CC
    x = gpu_xp.asarray(numpy.random.default_rng(8).standard_normal((2, 3, 6, 6)).astype(numpy.float32))
    a = CC.im2col_rows(x, (3, 3), (1, 1), (1, 1), (6, 6))
    b = CC.im2col_rows(x * 2, (3, 3), (1, 1), (1, 1), (6, 6), out=a)
    assert b is a
    numpy.testing.assert_array_equal(to_numpy(b), 2 * to_numpy(CC.im2col_rows(x, (3, 3), (1, 1), (1, 1), (6, 6))))


# -- Conv2D layers on the device: gradients, and no copy into BatchNorm / Dropout -------
def test_conv_bn_dropout_stack_matches_numpy_and_copies_nothing(gpu_xp, gpu_device):
    from gpunet.layers import BatchNorm, Dropout, Sequential, Conv2D

    def build():
        gpunet.manual_seed(3)
        return Sequential(Conv2D(3, 8, 3, padding=1, activation="relu"), BatchNorm(8),
                          Dropout(0.25, seed=5), Conv2D(8, 4, (3, 1), stride=(2, 1), padding=(1, 0)))

    x = numpy.random.default_rng(9).standard_normal((4, 3, 10, 9)).astype(numpy.float64)
    ref, dev = build(), build()
    for m in (ref, dev):
        for prm in m.parameters():
            prm.data = prm.data.astype(numpy.float64)
        for layer in m:
            if hasattr(layer, "running_mean"):
                layer.running_mean = layer.running_mean.astype(numpy.float64)
                layer.running_var = layer.running_var.astype(numpy.float64)
    dev.to(gpu_device)
    y_ref = ref(x)
    xd = gpu_xp.asarray(x)
    if gpu_device == "sim":
        sim.reset_counters()
    h = xd
    for layer in dev:
        h = layer(h)
    dy = numpy.random.default_rng(10).standard_normal(y_ref.shape)
    dx_ref = ref.backward(dy)
    dx = dev.backward(gpu_xp.asarray(dy))
    if gpu_device == "sim":
        kernels = sim.counters()["kernels"]
        assert "copy" not in kernels, kernels       # BN and Dropout took the conv's layout as is
    numpy.testing.assert_allclose(to_numpy(h), y_ref, rtol=1e-10, atol=1e-10)
    numpy.testing.assert_allclose(to_numpy(dx), dx_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(ref.parameters(), dev.parameters()):
        numpy.testing.assert_allclose(to_numpy(b.grad), a.grad, rtol=1e-10, atol=1e-10, err_msg=a.name)


# -- launch budgets on the sim --------------------------------------------------------------
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[6], CONV_CASES[9]])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_conv_layer_launches_on_sim(sim_xp, case, activation):
    from gpunet.layers import Conv2D
    n, c, h, w, o, k, s, p = case
    layer = Conv2D(c, o, k, stride=s, padding=p, activation=activation).to("sim")
    x = sim_xp.asarray(numpy.random.default_rng(0).standard_normal((n, c, h, w)).astype(numpy.float32))
    for _ in range(2):      # the second step reuses the first's cols buffer
        sim.reset_counters()
        y = layer(x)
        fwd = sim.counters()
        dy = sim_xp.ones(y.shape, dtype=y.dtype)
        layer.zero_grad()
        sim.reset_counters()
        layer.backward(dy)
        bwd = sim.counters()
    assert fwd["kernels"] == {"im2col<float>": 1, "matmul": 1, "conv_bias_act<float>": 1}
    assert bwd["kernels"] == {"conv_act_grad<float>": 1, "matmul": 2, "sum": 1, "col2im<float>": 1}
    for c_ in (fwd, bwd):
        assert c_["syncs"] == 0 and c_["h2d_bytes"] == 0 and c_["d2h_bytes"] == 0


def test_first_conv_layer_skips_dx_on_sim(sim_xp):
    from gpunet.layers import Conv2D
    layer = Conv2D(1, 4, 3, padding=1, activation="relu", bias=False).to("sim")
    layer.input_grad = False
    y = layer(sim_xp.asarray(numpy.ones((2, 1, 8, 8), numpy.float32)))
    dy = sim_xp.ones(y.shape, dtype=y.dtype)
    sim.reset_counters()
    layer.backward(dy)
    assert sim.counters()["kernels"] == {"conv_act_grad<float>": 1, "matmul": 1}


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pool_layer_launches_on_sim(sim_xp, pool):
    from gpunet.layers import AvgPool2D, MaxPool2D
    layer = (MaxPool2D if pool == "max" else AvgPool2D)(3, stride=2, padding=1)
    x = sim_xp.asarray(numpy.random.default_rng(0).standard_normal((4, 5, 9, 9)).astype(numpy.float32))
    sim.reset_counters()
    y = layer(x)
    assert sim.counters()["launches"] == 1
    dy = sim_xp.ones(y.shape, dtype=y.dtype)
    sim.reset_counters()
    layer.backward(dy)
    assert sim.counters()["launches"] == 1


def test_cnn_digits_step_launch_budget_on_sim(sim_xp):
    # issue 12: cnn_digits with SGD-momentum in at most 45 launches per step; its conv and
    # pooling layers take 7 forward and 9 backward (the first conv computes no dx)
    from gpunet import optim
    from gpunet.layers import Conv2D, MaxPool2D
    from gpunet.models import cnn_digits
    gpunet.manual_seed(0)
    model = cnn_digits().to("sim")
    rng = numpy.random.default_rng(0)
    xs = sim_xp.asarray(rng.random((64, 1, 8, 8)).astype(numpy.float32))
    ys = sim_xp.asarray(rng.integers(0, 10, 64))
    loader = gpunet.DataLoader(xs, ys, batch_size=64)
    loss_fn = gpunet.SoftmaxCrossEntropy()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    conv_pool = {}

    def counted(layer, fn):
        def run(a):
            before = sim.counters()["launches"]
            out = fn(a)
            conv_pool[id(layer)] = conv_pool.get(id(layer), 0) + sim.counters()["launches"] - before
            return out
        return run

    for layer in model:
        if isinstance(layer, (Conv2D, MaxPool2D)):
            layer.forward = counted(layer, layer.forward)
            layer.backward = counted(layer, layer.backward)
    for step in range(2):
        conv_pool.clear()
        sim.reset_counters()
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
        total = sim.counters()["launches"]
    assert sum(conv_pool.values()) == 7 + 9, conv_pool
    assert total <= 45, sim.counters()["kernels"]
    assert numpy.isfinite(float(loss))


# -- pooling kernels against the NumPy path: same operations in the same order -------------
POOL_CASES = [
    ((2, 3, 8, 8), 2, None, 0),
    ((1, 1, 7, 9), 3, 2, 1),
    ((2, 2, 9, 7), (3, 2), (2, 1), (1, 0)),
    ((3, 2, 1, 15), (1, 4), (1, 3), (0, 2)),     # 1-D
    ((2, 4, 6, 6), 3, 1, 1),                      # overlapping windows
    ((1, 2, 5, 5), 5, 1, 2),
    ((2, 1, 10, 10), 2, 3, 0),                    # stride > kernel: some inputs in no window
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("layout", ["nchw", "cnhw", "chwn"])
def test_pooling_kernels_equal_numpy(gpu_xp, case, dtype, layout):
    shape, k, s, p = case
    rng = numpy.random.default_rng(11)
    # memory order of the NCHW axes: CHWN is the CPU convolution's output, CNHW an older one
    order = {"nchw": (0, 1, 2, 3), "cnhw": (1, 0, 2, 3), "chwn": (1, 2, 3, 0)}[layout]
    inverse = tuple(numpy.argsort(order))
    base = rng.standard_normal(tuple(shape[i] for i in order)).astype(dtype)
    base[..., ::3] = numpy.round(base[..., ::3])     # ties inside windows
    x, xd = base.transpose(inverse), gpu_xp.asarray(base).transpose(inverse)
    y, _ = assert_device_pooling_equals_numpy(
        x, xd, k, s, p, lambda sh: rng.standard_normal(sh).astype(dtype), gpu_xp.asarray)
    assert y.flags.c_contiguous


def test_max_pool_kernel_nan_inf_and_large_windows(gpu_xp):
    x = numpy.random.default_rng(12).standard_normal((2, 2, 17, 17)).astype(numpy.float32)
    x[0, 0, 3, 4] = numpy.nan
    x[0, 1] = -numpy.inf                          # a plane of -inf: arg stays at offset 0
    x[1, 0, 5, 5] = numpy.inf
    for k, s in ((2, 2), (3, 1), (17, 1)):        # 17x17: 289 offsets, int32 argmax
        y_ref, arg_ref = FP.max_pool2d(x, k, s)
        y, arg = FP.max_pool2d(gpu_xp.asarray(x), k, s)
        numpy.testing.assert_array_equal(to_numpy(y), y_ref)
        numpy.testing.assert_array_equal(to_numpy(arg), arg_ref)
        assert arg.dtype == arg_ref.dtype
    assert arg.dtype == numpy.int32


def test_pool_backward_takes_a_transposed_dy(gpu_xp):
    rng = numpy.random.default_rng(13)
    x = rng.standard_normal((3, 4, 8, 8))
    y_ref, arg_ref = FP.max_pool2d(x, 2)
    dyt = rng.standard_normal((4, 3, 4, 4))
    dy = dyt.transpose(1, 0, 2, 3)
    _, arg = FP.max_pool2d(gpu_xp.asarray(x), 2)
    dyd = gpu_xp.asarray(dyt).transpose(1, 0, 2, 3)
    numpy.testing.assert_array_equal(to_numpy(FP.max_pool2d_backward(dyd, arg, x.shape, 2)),
                                     FP.max_pool2d_backward(dy, arg_ref, x.shape, 2))
    numpy.testing.assert_array_equal(to_numpy(FP.avg_pool2d_backward(dyd, x.shape, 3, 2, 1)),
                                     FP.avg_pool2d_backward(dy, x.shape, 3, 2, 1))


def test_cnn_training_parity_with_numpy(gpu_xp, gpu_device):
    # 10 SGD-momentum steps of a CNN with batch norm, dropout and both poolings, in
    # float64: the device run stays with the NumPy run
    from gpunet import optim
    from gpunet.layers import AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Sequential

    def build():
        gpunet.manual_seed(7)
        m = Sequential(Conv2D(2, 6, 3, padding=1, activation="relu"), BatchNorm(6), Dropout(0.2, seed=3),
                       MaxPool2D(2), Conv2D(6, 8, (3, 1), padding=(1, 0), activation="tanh"),
                       AvgPool2D(2, stride=1), Flatten(), Dense(8 * 4 * 4, 5))
        return m.to(dtype=numpy.float64)

    rng = numpy.random.default_rng(14)
    x = rng.standard_normal((6, 2, 10, 10))
    labels = rng.integers(0, 5, 6)
    ref, dev = build(), build().to(gpu_device)
    runs = []
    for m, xs, ys in ((ref, x, labels), (dev, gpu_xp.asarray(x), gpu_xp.asarray(labels))):
        loss_fn = gpunet.SoftmaxCrossEntropy()
        opt = optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(10):
            losses.append(float(loss_fn(m(xs), ys)))
            m.zero_grad()
            m.backward(loss_fn.backward())
            opt.step()
        runs.append(losses)
    numpy.testing.assert_allclose(runs[1], runs[0], rtol=1e-9)
    assert runs[0][-1] < runs[0][0]
    for a, b in zip(ref.parameters(), dev.parameters()):
        numpy.testing.assert_allclose(to_numpy(b.data), a.data, rtol=1e-8, atol=1e-10, err_msg=a.name)
