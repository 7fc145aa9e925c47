"""Conv2D and the conv2d op: forward against a direct loop convolution and against PyTorch,
backward against gradcheck (float64) and PyTorch, validation, init, checkpoints, and the
digits CNN's accuracy."""
import numpy
import pytest

import gpunet
from gpunet import to_numpy
from gpunet.functional import conv as FC
from gpunet.layers import Conv2D, Dense, Flatten, Sequential


def conv_loop(x, w, b, stride, padding):
    """Direct convolution: one dot product per output element (float64, NumPy)."""
    sh, sw = stride
    ph, pw = padding
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xpad = numpy.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xpad[:, :, ph:ph + h, pw:pw + wd] = x
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (wd + 2 * pw - kw) // sw + 1
    y = numpy.zeros((n, o, oh, ow))
    for i in range(n):
        for k in range(o):
            for p in range(oh):
                for q in range(ow):
                    y[i, k, p, q] = (xpad[i, :, p * sh:p * sh + kh, q * sw:q * sw + kw] * w[k]).sum()
            if b is not None:
                y[i, k] += b[k]
    return y


# (N, C, H, W, O, kernel, stride, padding): square and non-square kernels, strides,
# paddings, a 1x1 kernel and 1-D convolutions ((1, k) kernels on (N, C, 1, L)).
CASES = [
    (2, 3, 7, 6, 4, 3, 1, 0),
    (2, 3, 7, 6, 4, 3, 1, 1),
    (2, 2, 8, 9, 3, (3, 2), (2, 1), (1, 0)),
    (1, 2, 9, 7, 2, (2, 4), (3, 2), (0, 2)),
    (2, 4, 5, 5, 3, 1, 1, 0),
    (3, 2, 6, 6, 2, 2, 2, 0),
    (2, 3, 1, 17, 4, (1, 5), (1, 2), (0, 2)),    # 1-D
    (2, 1, 1, 12, 3, (1, 3), 1, (0, 1)),          # 1-D, stride 1
]


@pytest.fixture(params=["strided", "gemm"])
def path(request, monkeypatch):
    """Run a test through both im2col/col2im implementations: strided copies and adds, and
    GEMMs with the gather matrix (normally chosen by image size)."""
    limit = 0 if request.param == "strided" else 10 ** 9
    monkeypatch.setattr(FC, "IM2COL_GEMM_MAX_PIXELS", limit)
    monkeypatch.setattr(FC, "COL2IM_GEMM_MAX_PIXELS", limit)
    return request.param


def make_layer(xp, case, dtype=numpy.float64, bias=True, activation=None, seed=0):
    n, c, h, w, o, k, s, p = case
    gpunet.manual_seed(seed)
    layer = Conv2D(c, o, k, stride=s, padding=p, bias=bias, activation=activation)
    layer.weight.data = layer.weight.data.astype(dtype)
    if bias:  # non-zero biases, so that the check can fail
        layer.bias.data = numpy.random.default_rng(seed).standard_normal(o).astype(dtype)
    return layer.to(gpunet.backend.device_of(xp.empty(0)))


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_loop(xp, rng, path, case):
    layer = make_layer(xp, case)
    x = rng.standard_normal(case[:4])
    y = to_numpy(layer(xp.asarray(x)))
    ref = conv_loop(x, to_numpy(layer.weight.data), to_numpy(layer.bias.data), layer.stride, layer.padding)
    assert y.shape == ref.shape
    numpy.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_gradcheck(xp, rng, path, case):
    layer = make_layer(xp, case)
    gpunet.gradcheck(layer, xp.asarray(rng.standard_normal(case[:4])))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu"])
def test_gradcheck_fused_activation(xp, rng, activation):
    case = (2, 2, 5, 6, 3, (3, 2), (1, 2), 1)
    layer = make_layer(xp, case, activation=activation)
    gpunet.gradcheck(layer, xp.asarray(rng.standard_normal(case[:4])))


def test_gradcheck_no_bias(xp, rng):
    case = (2, 2, 5, 5, 3, 3, 2, 1)
    layer = make_layer(xp, case, bias=False)
    assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"]
    gpunet.gradcheck(layer, xp.asarray(rng.standard_normal(case[:4])))


def test_relu_fused_equals_separate(xp, rng):
    case = (2, 3, 6, 6, 4, 3, 1, 1)
    fused = make_layer(xp, case, activation="relu")
    plain = make_layer(xp, case)
    plain.weight.data = fused.weight.data.copy()
    x = xp.asarray(rng.standard_normal(case[:4]))
    z = plain(x)
    y = fused(x)
    numpy.testing.assert_array_equal(to_numpy(y), numpy.maximum(to_numpy(z), 0))
    assert (to_numpy(y) == 0).any() and (to_numpy(y) > 0).any()
    dy = xp.asarray(rng.standard_normal(y.shape))
    dx_fused = fused.backward(dy)
    dx_plain = plain.backward(dy * (z > 0))
    numpy.testing.assert_allclose(to_numpy(dx_fused), to_numpy(dx_plain), rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(to_numpy(fused.weight.grad), to_numpy(plain.weight.grad), rtol=1e-12)


def test_gradients_accumulate(xp, rng):
    case = (2, 2, 5, 5, 3, 3, 1, 1)
    layer = make_layer(xp, case)
    x = xp.asarray(rng.standard_normal(case[:4]))
    dy = xp.asarray(rng.standard_normal(layer(x).shape))
    layer.backward(dy)
    g1 = to_numpy(layer.weight.grad).copy()
    layer(x)
    layer.backward(dy)
    numpy.testing.assert_allclose(to_numpy(layer.weight.grad), 2 * g1, rtol=1e-12)


def test_input_grad_false_skips_dx_keeps_parameter_grads(xp, rng):
    case = (2, 3, 9, 9, 4, 3, 2, 1)
    a = make_layer(xp, case, activation="tanh")
    b = make_layer(xp, case, activation="tanh")
    b.input_grad = False
    assert "input_grad=False" in repr(b)
    x = xp.asarray(rng.standard_normal(case[:4]))
    dy = xp.asarray(rng.standard_normal(a(x).shape))
    b(x)
    assert a.backward(dy) is not None and b.backward(dy) is None
    for p, q in zip(a.parameters(), b.parameters()):
        numpy.testing.assert_array_equal(to_numpy(p.grad), to_numpy(q.grad))


def test_float32_stays_float32(xp, rng):
    case = (2, 3, 6, 6, 4, 3, 2, 1)
    layer = make_layer(xp, case, dtype=numpy.float32, activation="relu")
    x = xp.asarray(rng.standard_normal(case[:4]).astype(numpy.float32))
    y = layer(x)
    dx = layer.backward(xp.ones_like(y))
    assert y.dtype == dx.dtype == layer.weight.grad.dtype == layer.bias.grad.dtype == numpy.float32


def test_eval_mode_keeps_no_cache(xp, rng):
    case = (2, 3, 6, 6, 4, 3, 1, 1)
    layer = make_layer(xp, case).eval()
    layer(xp.asarray(rng.standard_normal(case[:4])))
    assert layer._x is None and layer._cols is None
    with pytest.raises(RuntimeError, match="Conv2D.backward"):
        layer.backward(xp.zeros((2, 4, 6, 6)))


# -- against PyTorch ---------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_against_torch(rng, path, case):
    torch = pytest.importorskip("torch")
    layer = make_layer(numpy, case)
    x = rng.standard_normal(case[:4])
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.weight.data, requires_grad=True)
    bt = torch.tensor(layer.bias.data, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=layer.stride, padding=layer.padding)
    yt.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(layer.weight.grad, wt.grad.numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(layer.bias.grad, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


# -- the op and its helpers ------------------------------------------------------------
def test_im2col_col2im_adjoint(xp, rng, path):
    # <im2col(x), c> == <x, col2im(c)>: col2im is the transpose of im2col
    shape, kernel, stride, padding = (2, 3, 7, 8), (3, 2), (2, 3), (1, 2)
    x = rng.standard_normal(shape)
    cols = FC.im2col(xp.asarray(x), kernel, stride, padding)
    c = rng.standard_normal(cols.shape)
    back = FC.col2im(xp.asarray(c), shape, kernel, stride, padding)
    assert back.shape == shape
    numpy.testing.assert_allclose(float((to_numpy(cols) * c).sum()), float((x * to_numpy(back)).sum()),
                                  rtol=1e-12)


def test_functional_backward_without_cols(xp, rng, path):
    case = (2, 2, 6, 7, 3, (3, 2), (2, 1), (1, 1))
    layer = make_layer(xp, case)
    x = xp.asarray(rng.standard_normal(case[:4]))
    w, b = layer.weight.data, layer.bias.data
    y, cols = FC.conv2d(x, w, b, layer.stride, layer.padding, return_cols=True)
    dy = xp.asarray(rng.standard_normal(y.shape))
    a = FC.conv2d_backward(dy, x, w, layer.stride, layer.padding, cols=cols)
    r = FC.conv2d_backward(dy, x, w, layer.stride, layer.padding)
    for u, v in zip(a, r):
        numpy.testing.assert_array_equal(to_numpy(u), to_numpy(v))
    dx, dw, db = FC.conv2d_backward(dy, x, w, layer.stride, layer.padding, need_dx=False, need_bias=False)
    assert dx is None and db is None and dw.shape == w.shape


def test_non_contiguous_input(xp, rng, path):
    case = (2, 3, 6, 5, 4, 3, 1, 1)
    layer = make_layer(xp, case)
    base = rng.standard_normal((2, 3, 5, 6))
    x = xp.asarray(base).transpose(0, 1, 3, 2)          # (2, 3, 6, 5), not contiguous
    assert not x.flags.c_contiguous
    y = to_numpy(layer(x))
    ref = conv_loop(base.transpose(0, 1, 3, 2), to_numpy(layer.weight.data), to_numpy(layer.bias.data),
                    layer.stride, layer.padding)
    numpy.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


# -- validation -----------------------------------------------------------------------
def test_rejects_wrong_rank(xp):
    layer = Conv2D(3, 4, 3)
    with pytest.raises(ValueError, match=r"Conv2D: expected a 4-D input \(N, 3, H, W\), got shape \(3, 8, 8\)"):
        layer(xp.zeros((3, 8, 8), numpy.float32))


def test_rejects_wrong_channels(xp):
    layer = Conv2D(3, 4, 3)
    with pytest.raises(ValueError, match=r"Conv2D: expected 3 input channels .*got shape \(2, 1, 8, 8\)"):
        layer(xp.zeros((2, 1, 8, 8), numpy.float32))


def test_rejects_kernel_larger_than_padded_input(xp):
    layer = Conv2D(1, 2, (3, 5), padding=(0, 1))
    with pytest.raises(ValueError, match=r"Conv2D: kernel 3x5 is larger than the padded input 2x5"):
        layer(xp.zeros((2, 1, 2, 3), numpy.float32))
    with pytest.raises(ValueError, match=r"Conv2D: kernel 3x5 is larger than the padded input 3x4"):
        layer(xp.zeros((2, 1, 3, 2), numpy.float32))
    layer.to(gpunet.backend.device_of(xp.empty(0)))
    assert layer(xp.zeros((2, 1, 3, 3), numpy.float32)).shape == (2, 2, 1, 1)   # 3x5 padded: fits


def test_rejects_dtype_mismatch(xp):
    layer = Conv2D(1, 2, 3)
    with pytest.raises(ValueError, match="Conv2D: expected dtype float32 .*got float64"):
        layer(xp.zeros((2, 1, 5, 5), numpy.float64))
    with pytest.raises(ValueError, match="conv2d: input dtype float64 differs from the weight dtype float32"):
        FC.conv2d(xp.zeros((2, 1, 5, 5)), layer.weight.data if xp is numpy else xp.asarray(layer.weight.data))


def test_rejects_non_array():
    with pytest.raises(TypeError, match="Conv2D: expected a NumPy or CuPy array, got list"):
        Conv2D(1, 2, 3)([[1.0]])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(kernel_size=0), ValueError, "kernel_size must be >= 1"),
    (dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size must be an int or an"),
    (dict(kernel_size=2.5), TypeError, "kernel_size must be an int"),
    (dict(kernel_size=3, stride=0), ValueError, "stride must be >= 1"),
    (dict(kernel_size=3, padding=-1), ValueError, "padding must be >= 0"),
    (dict(kernel_size=True), TypeError, "kernel_size"),
])
def test_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match="Conv2D: " + match):
        Conv2D(1, 2, **kwargs)


def test_rejects_bad_channels_and_names():
    with pytest.raises(ValueError, match="Conv2D: expected in_channels to be a positive int, got 0"):
        Conv2D(0, 2, 3)
    with pytest.raises(ValueError, match="Conv2D: unknown activation 'relux'"):
        Conv2D(1, 2, 3, activation="relux")
    with pytest.raises(ValueError, match="Conv2D: unknown init 'hee'"):
        Conv2D(1, 2, 3, init="hee")


# -- init ---------------------------------------------------------------------------------
def test_default_init_he_for_relu_family():
    gpunet.manual_seed(0)
    w = Conv2D(64, 64, 3, activation="relu").weight.data
    fan_in = 64 * 3 * 3
    assert w.shape == (64, 64, 3, 3) and w.dtype == numpy.float32
    assert abs(w.std() / numpy.sqrt(2.0 / fan_in) - 1) < 0.03
    assert abs(w.mean()) < 0.05 * w.std()


def test_default_init_xavier_uniform_otherwise():
    gpunet.manual_seed(0)
    w = Conv2D(32, 16, (3, 5)).weight.data
    fan_in, fan_out = 32 * 15, 16 * 15
    a = numpy.sqrt(6.0 / (fan_in + fan_out))
    assert numpy.abs(w).max() <= a and numpy.abs(w).max() > 0.98 * a


def test_init_by_name_and_callable():
    assert (Conv2D(2, 3, 3, init="zeros").weight.data == 0).all()
    seen = []

    def custom(shape, rng):
        seen.append(shape)
        return numpy.full(shape, 0.5)
    layer = Conv2D(2, 3, (1, 4), init=custom)
    assert seen == [(3, 2, 1, 4)] and (layer.weight.data == 0.5).all()
    assert layer.weight.data.dtype == numpy.float32


def test_same_seed_same_weights():
    gpunet.manual_seed(7)
    a = Conv2D(3, 4, 3).weight.data
    gpunet.manual_seed(7)
    b = Conv2D(3, 4, 3).weight.data
    numpy.testing.assert_array_equal(a, b)


# -- checkpoints ------------------------------------------------------------------------
def test_cnn_state_dict_round_trip(xp, rng):
    from gpunet import models
    device = gpunet.backend.device_of(xp.empty(0))
    gpunet.manual_seed(1)
    a = models.cnn_digits().to(device)
    # train one step so that the weights differ from a fresh model's
    x = xp.asarray(rng.random((8, 1, 8, 8)).astype(numpy.float32))
    y = xp.asarray(rng.integers(0, 10, 8))
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(a(x), y)
    a.backward(loss_fn.backward())
    for p in a.parameters():
        p.data -= 0.1 * p.grad
    state = a.state_dict()
    assert {"0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"} == set(state)
    assert state["1.weight"].shape == (32, 16, 3, 3)
    gpunet.manual_seed(2)
    b = models.cnn_digits().to(device)
    a.eval()
    b.eval()
    assert not numpy.array_equal(to_numpy(a(x)), to_numpy(b(x)))
    b.load_state_dict(state)
    numpy.testing.assert_array_equal(to_numpy(a(x)), to_numpy(b(x)))


def test_cnn_save_load_round_trip(tmp_path, rng):
    from gpunet import models
    gpunet.manual_seed(3)
    a = models.cnn_digits().eval()
    gpunet.manual_seed(4)
    b = models.cnn_digits().eval()
    x = rng.random((5, 1, 8, 8)).astype(numpy.float32)
    gpunet.save(tmp_path / "cnn.npz", a)
    gpunet.load(tmp_path / "cnn.npz", b)
    numpy.testing.assert_array_equal(a(x), b(x))


# -- a network ------------------------------------------------------------------------------
def test_1d_cnn_gradcheck(xp, rng, path):
    gpunet.manual_seed(0)
    k = dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1), activation="tanh")
    model = Sequential(Conv2D(2, 3, **k), Conv2D(3, 2, **k), Flatten(), Dense(2 * 3, 4))
    model.to(gpunet.backend.device_of(xp.empty(0)))
    gpunet.gradcheck(model, xp.asarray(rng.standard_normal((2, 2, 1, 10))))


def test_cnn_digits_accuracy():
    """The digits CNN with the ``gpunet train --model cnn`` recipe (Adam lr 1e-3, batch 64)
    reaches 0.97 test accuracy; a hand-written loop, so that it does not depend on the
    Trainer."""
    from gpunet import models, optim
    from gpunet.datasets import load_digits
    (xtr, ytr), (xte, yte) = load_digits()
    xtr, xte = xtr.reshape(-1, 1, 8, 8), xte.reshape(-1, 1, 8, 8)
    gpunet.manual_seed(0)
    model = models.cnn_digits()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = gpunet.SoftmaxCrossEntropy()
    order = numpy.random.default_rng(0)
    for epoch in range(12):
        perm = order.permutation(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss_fn(model(xtr[idx]), ytr[idx])
            model.backward(loss_fn.backward())
            opt.step()
    model.eval()
    acc = float((model(xte).argmax(axis=1) == yte).mean())
    assert acc >= 0.97, acc


# -- whole-batch rows: CHWN memory, reused buffers ----------------------------
def test_rows_output_is_chwn_view_and_backward_takes_any_layout(rng, monkeypatch):
    monkeypatch.setattr(FC, "IM2COL_GEMM_MAX_PIXELS", 0)
    case = (3, 2, 6, 6, 4, 3, 1, 1)
    layer = make_layer(numpy, case)
    x = rng.standard_normal(case[:4])
    y = layer(x)
    assert FC.whole_batch_rows(y) is not None      # (O, OH*OW*N) memory, shown as NCHW
    assert y.transpose(1, 2, 3, 0).flags.c_contiguous
    dy = rng.standard_normal(y.shape)               # C-contiguous NCHW gradient
    dx = layer.backward(dy)
    assert dx.transpose(1, 2, 3, 0).flags.c_contiguous
    ref = make_layer(numpy, case)
    ref(x)
    dx_ref = ref.backward(numpy.ascontiguousarray(dy.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2))
    numpy.testing.assert_array_equal(dx, dx_ref)
    numpy.testing.assert_array_equal(layer.weight.grad, ref.weight.grad)


@pytest.mark.parametrize("case", CASES)
def test_batch_last_rows_are_the_same_columns_reordered(rng, case):
    """im2col_rows(batch_last=True) holds the default's columns in (p, q, n) order instead of
    (n, p, q), and col2im_rows(batch_last=True) of the reordered dcols is the same dx."""
    n, c, h, w, o, k, s, p = case
    kernel, stride, padding = (FC.pair(v, "t", "t", m) for v, m in ((k, 1), (s, 1), (p, 0)))
    x = rng.standard_normal((n, c, h, w))
    oh, ow = FC.output_size("t", x.shape, kernel, stride, padding)
    ref = FC.im2col_rows(x, kernel, stride, padding, ones_row=True)
    got = FC.im2col_rows(x, kernel, stride, padding, ones_row=True, batch_last=True)
    reorder = lambda a: a.reshape(-1, n, oh, ow).transpose(0, 2, 3, 1).reshape(a.shape[0], -1)  # noqa: E731
    numpy.testing.assert_array_equal(got, reorder(ref))
    dcols = rng.standard_normal(ref[:-1].shape)
    dx = FC.col2im_rows(reorder(dcols), x.shape, kernel, stride, padding, batch_last=True)
    numpy.testing.assert_array_equal(dx, FC.col2im_rows(dcols, x.shape, kernel, stride, padding))
    assert dx.transpose(1, 2, 3, 0).flags.c_contiguous


def test_reused_cols_never_alias_live_arrays(rng, monkeypatch):
    # cols is refilled each step; outputs kept by the caller stay intact
    monkeypatch.setattr(FC, "IM2COL_GEMM_MAX_PIXELS", 0)
    case = (2, 3, 7, 6, 4, 3, 1, 1)
    layer = make_layer(numpy, case)
    x1, x2 = rng.standard_normal(case[:4]), rng.standard_normal(case[:4])
    y1 = layer(x1)
    kept = y1.copy()
    dx1 = layer.backward(numpy.ones_like(y1))
    dx1_kept = dx1.copy()
    y2 = layer(x2)
    dx2 = layer.backward(numpy.ones_like(y2))
    numpy.testing.assert_array_equal(y1, kept)
    numpy.testing.assert_array_equal(dx1, dx1_kept)
    ref = conv_loop(x2, layer.weight.data, layer.bias.data, layer.stride, layer.padding)
    numpy.testing.assert_allclose(y2, ref, rtol=1e-12, atol=1e-12)
    assert not numpy.shares_memory(y1, y2) and not numpy.shares_memory(dx1, dx2)


def test_eval_forward_keeps_training_cache(rng, monkeypatch):
    # an eval-mode forward between a training forward and its backward must not overwrite
    # the cached cols that the backward uses
    monkeypatch.setattr(FC, "IM2COL_GEMM_MAX_PIXELS", 0)
    case = (2, 3, 6, 6, 4, 3, 1, 1)
    a, b = make_layer(numpy, case), make_layer(numpy, case)
    x = rng.standard_normal(case[:4])
    dy = rng.standard_normal(a(x).shape)
    b(x)
    b.eval()
    b(rng.standard_normal(case[:4]))
    b.train()
    numpy.testing.assert_array_equal(a.backward(dy), b.backward(dy))
    numpy.testing.assert_array_equal(a.weight.grad, b.weight.grad)



def test_conv2d_names_an_empty_batch():
    """Found by fuzzing: N = 0 used to fail inside im2col's reshape, naming no layer."""
    with pytest.raises(ValueError, match=r"Conv2D: expected a non-empty batch, got shape \(0, 2, 5, 5\)"):
        gpunet.Conv2D(2, 3, 3)(numpy.zeros((0, 2, 5, 5), numpy.float32))


def test_fused_softmax_must_normalize_over_the_channels():
    """Conv2D(activation="softmax") normalized over the image width (Softmax()'s axis -1 of
    NCHW), silently; it names the channel softmax instead, which works."""
    for act, cls in (("softmax", "Softmax"), ("log_softmax", "LogSoftmax"), (gpunet.Softmax(axis=3), "Softmax")):
        with pytest.raises(ValueError, match=rf"^Conv2D: a fused \w+ over axis -?\d would normalize over the "
                                             rf"image width of the \(N, C, H, W\) output, not the channels; "
                                             rf"for probabilities per pixel, pass activation={cls}\(axis=1\)$"):
            gpunet.Conv2D(2, 3, 1, activation=act)
    conv = gpunet.Conv2D(2, 3, 1)
    with pytest.raises(ValueError, match="not the channels"):
        conv.activation = "softmax"
    assert conv.activation is None
    conv = gpunet.Conv2D(2, 3, 1, activation=gpunet.Softmax(axis=1))
    y = conv(numpy.random.default_rng(0).standard_normal((2, 2, 3, 4)).astype(numpy.float32))
    numpy.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    assert gpunet.Dense(3, 2, activation="softmax").activation.axis == -1     # Dense: the classes' axis
