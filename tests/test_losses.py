"""Losses (DESIGN §5) against torch.nn.functional and against gradcheck in float64."""
import math
import re
import textwrap

import numpy
import pytest

import gpunet
from gpunet import functional as F

DTYPES = [numpy.float32, numpy.float64]


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == numpy.float32 else dict(rtol=1e-10, atol=1e-12)


def _logits(n=6, c=5, seed=0, dtype=numpy.float64, scale=2.0):
    return (numpy.random.default_rng(seed).standard_normal((n, c)) * scale).astype(dtype)


def _soft(n=6, c=5, seed=1, dtype=numpy.float64):
    p = numpy.random.default_rng(seed).random((n, c)) + 0.05
    return (p / p.sum(axis=1, keepdims=True)).astype(dtype)


def _torch_ce(z, target, **kw):
    torch = pytest.importorskip("torch")
    tz = torch.tensor(z, requires_grad=True)
    tt = torch.tensor(target)
    loss = torch.nn.functional.cross_entropy(tz, tt, **kw)
    loss.backward()
    return loss.item(), tz.grad.numpy()


def _ce(xp, z, target, **kw):
    loss_fn = gpunet.SoftmaxCrossEntropy(**kw)
    loss = loss_fn(xp.asarray(z), xp.asarray(target))
    return loss, loss_fn.backward()


# -- SoftmaxCrossEntropy vs torch -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_ce_int_labels_vs_torch(xp, dtype, smoothing):
    z = _logits(dtype=dtype)
    y = numpy.array([0, 4, 2, 2, 1, 3])
    loss, grad = _ce(xp, z, y, label_smoothing=smoothing)
    t_loss, t_grad = _torch_ce(z, y, label_smoothing=smoothing)
    assert loss.shape == () and loss.dtype == dtype
    assert grad.dtype == dtype and grad.shape == z.shape
    assert gpunet.get_array_module(loss) is xp and gpunet.get_array_module(grad) is xp
    numpy.testing.assert_allclose(float(loss), t_loss, **_tol(dtype))
    numpy.testing.assert_allclose(gpunet.to_numpy(grad), t_grad, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ce_ignore_index_vs_torch(xp, dtype, ignore_index, smoothing):
    z = _logits(dtype=dtype, seed=2)
    y = numpy.array([0, ignore_index, 3, ignore_index, 1, 4])
    loss, grad = _ce(xp, z, y, ignore_index=ignore_index, label_smoothing=smoothing)
    t_loss, t_grad = _torch_ce(z, y, ignore_index=ignore_index, label_smoothing=smoothing)
    numpy.testing.assert_allclose(float(loss), t_loss, **_tol(dtype))
    numpy.testing.assert_allclose(gpunet.to_numpy(grad), t_grad, **_tol(dtype))
    g = gpunet.to_numpy(grad)
    assert (g[y == ignore_index] == 0).all()
    # the mean counts only the rows not ignored
    keep = y != ignore_index
    loss_kept, _ = _ce(xp, z[keep], y[keep], label_smoothing=smoothing)
    numpy.testing.assert_allclose(float(loss), float(loss_kept), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_ce_soft_targets_vs_torch(xp, dtype, smoothing):
    z = _logits(dtype=dtype, seed=3)
    t = _soft(dtype=dtype)
    loss, grad = _ce(xp, z, t, label_smoothing=smoothing)
    t_loss, t_grad = _torch_ce(z, t, label_smoothing=smoothing)
    assert loss.dtype == dtype and grad.dtype == dtype
    numpy.testing.assert_allclose(float(loss), t_loss, **_tol(dtype))
    numpy.testing.assert_allclose(gpunet.to_numpy(grad), t_grad, **_tol(dtype))


def test_ce_one_hot_soft_targets_equal_int_labels(xp):
    z = _logits(seed=4)
    y = numpy.array([1, 0, 4, 3, 2, 2])
    a, ga = _ce(xp, z, y, label_smoothing=0.1)
    b, gb = _ce(xp, z, numpy.eye(5)[y], label_smoothing=0.1)
    numpy.testing.assert_allclose(float(a), float(b), rtol=1e-12)
    numpy.testing.assert_allclose(gpunet.to_numpy(ga), gpunet.to_numpy(gb), rtol=1e-12, atol=1e-15)


def test_ce_against_direct_formula(xp):
    z = _logits(seed=5)
    y = numpy.array([0, 1, 2, 3, 4, 0])
    lse = numpy.log(numpy.exp(z).sum(axis=1))
    expected = float(numpy.mean(lse - z[numpy.arange(6), y]))
    p = numpy.exp(z - lse[:, None])
    loss, grad = _ce(xp, z, y)
    numpy.testing.assert_allclose(float(loss), expected, rtol=1e-12)
    numpy.testing.assert_allclose(gpunet.to_numpy(grad), (p - numpy.eye(5)[y]) / 6, rtol=1e-12, atol=1e-15)


def test_ce_functional_matches_object(xp):
    z, y = _logits(seed=6), numpy.array([1, 1, 0, 2, 3, 4])
    loss, grad = F.softmax_cross_entropy(xp.asarray(z), xp.asarray(y), label_smoothing=0.1)
    loss2, grad2 = _ce(xp, z, y, label_smoothing=0.1)
    assert float(loss) == float(loss2)
    numpy.testing.assert_array_equal(gpunet.to_numpy(grad), gpunet.to_numpy(grad2))
    assert gpunet.CrossEntropyLoss is gpunet.SoftmaxCrossEntropy


@pytest.mark.parametrize("dtype", DTYPES)
def test_ce_finite_at_huge_logits(xp, dtype):
    z = numpy.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]], dtype)
    y = numpy.array([1, 0, 2])
    for target in (y, numpy.eye(3, dtype=dtype)[y]):
        loss, grad = _ce(xp, z, target, label_smoothing=0.1)
        assert numpy.isfinite(float(loss))
        assert numpy.isfinite(gpunet.to_numpy(grad)).all()
    loss, grad = _ce(xp, z, y)
    # row 0: 2e4, row 1: 2e4 + log 2, row 2: log 3; mean over 3 rows
    numpy.testing.assert_allclose(float(loss), (4e4 + math.log(2) + math.log(3)) / 3, rtol=1e-6)
    g = gpunet.to_numpy(grad)
    numpy.testing.assert_allclose(g[0], numpy.array([1, -1, 0]) / 3, atol=1e-7)


@pytest.mark.parametrize("labels,match", [
    (numpy.array([0, 1, -1]), "-1"),
    (numpy.array([0, 3, 1]), "3"),
    (numpy.array([0, 1]), "3"),
    (numpy.array([0, 1, 2, 0]), "4"),
    (numpy.array([0.0, 1.0, 2.0]), "float64"),
    (numpy.zeros((3, 4)), r"\(3, 3\)"),
    (numpy.zeros((3, 3, 1)), "shape"),
])
def test_ce_bad_labels(xp, labels, match):
    """NumPy raises at the call; on a GPU a bad label *value* is found on the device and
    raised when the loss is read (shapes and dtypes are still checked at the call)."""
    z = xp.asarray(_logits(3, 3))
    with pytest.raises(ValueError, match=match) as e:
        loss = gpunet.SoftmaxCrossEntropy()(z, xp.asarray(labels))
        assert xp is not numpy, "the NumPy path checks label values at once"
        float(loss)
    assert "softmax_cross_entropy" in str(e.value)


def test_ce_label_equal_to_ignore_index_is_allowed_but_others_are_checked(xp):
    z = xp.asarray(_logits(3, 3))
    float(gpunet.SoftmaxCrossEntropy(ignore_index=-1)(z, xp.asarray(numpy.array([0, -1, 2]))))
    with pytest.raises(ValueError, match="-2"):
        float(gpunet.SoftmaxCrossEntropy(ignore_index=-1)(z, xp.asarray(numpy.array([0, -2, 2]))))


@pytest.mark.parametrize("ignore_index", [None, -1, 0])
def test_ce_uint64_labels_past_int64_are_named_as_given(xp, ignore_index):
    """Found by the data audit: the device path reads labels as int64, so a uint64 label of
    2**63 or more was named negative ('e.g. -9223372036854775803 ... ignore_index=-9223...')
    and 2**64 - 1 with ignore_index=-1 was ignored (its bits are -1's), where NumPy refuses
    it. The kernel's record of a bad label now keeps that the labels were unsigned, and a
    negative ignore_index, which no uint64 label equals, leaves them all to the check."""
    z = xp.asarray(_logits(3, 3))
    fn = gpunet.SoftmaxCrossEntropy(ignore_index=ignore_index)
    for label in (2**63 + 5, 2**64 - 1):
        with pytest.raises(ValueError, match=rf"(e\.g\.|got) {label} at row 1 \(the logits have 3 columns"):
            float(fn(z, xp.asarray(numpy.array([0, label, 2], numpy.uint64))))
    ok = numpy.array([0, 1, 2], numpy.uint64)        # below 2**63 nothing changes
    assert float(fn(z, xp.asarray(ok))) == pytest.approx(float(fn(z, xp.asarray(ok.astype(numpy.int64)))), rel=1e-6)


def test_ce_bad_label_on_a_gpu_is_raised_when_a_loss_is_read(gpu_xp):
    """The device-side label check: no host sync at the call; the bad row's loss is NaN and
    its gradient zero; every later loss reads NaN and raises the error (sticky, as CUDA's
    errors are) until it is raised once; then losses are clean again."""
    from gpunet import sim
    loss_fn = gpunet.SoftmaxCrossEntropy()
    z = gpu_xp.asarray(_logits(4, 3))
    good = gpu_xp.asarray(numpy.array([0, 1, 2, 1]))
    ref = float(loss_fn(z, good))
    sim.reset_counters()
    bad = loss_fn(z, gpu_xp.asarray(numpy.array([0, 7, 2, 1])))
    g = gpunet.to_numpy(loss_fn.backward())
    later = loss_fn(z, good)
    if gpu_xp.__name__ != "cupy":
        assert sim.counters()["syncs"] == 1          # the gradient's read only
    assert not g[1].any() and g[0].any()
    with pytest.raises(ValueError, match=r"1 label\(s\) outside \[0, 3\), e.g. 7 at row 1.*"
                       r"this or an earlier softmax_xent call"):
        f"{later:.4f}"                              # any read: format, float, item, get
    assert math.isnan(float(bad))                   # the flag is cleared: a plain NaN now
    assert float(loss_fn(z, good)) == ref            # cleared once raised
    with pytest.raises(ValueError, match="e.g. 7"):
        float(loss_fn(z, gpu_xp.asarray(numpy.array([0, 7, 2, 1]))))
    with pytest.raises(ValueError, match="e.g. -5 at row 0.*"):
        gpunet.to_numpy(gpunet.SoftmaxCrossEntropy(reduction="none")(
            z, gpu_xp.asarray(numpy.array([-5, 1, 2, 1]))))
    assert float(loss_fn(z, good)) == ref


def test_ce_bad_logits_and_smoothing(xp):
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        gpunet.SoftmaxCrossEntropy()(xp.asarray(numpy.zeros(3)), xp.asarray(numpy.array([0, 1, 2])))
    with pytest.raises(ValueError, match="floating"):
        gpunet.SoftmaxCrossEntropy()(xp.asarray(numpy.zeros((2, 3), numpy.int64)), xp.asarray(numpy.array([0, 1])))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="label_smoothing"):
            gpunet.SoftmaxCrossEntropy(label_smoothing=bad)


def test_ce_all_rows_ignored_gives_zero_loss_and_gradient(xp):
    """Documented choice (SoftmaxCrossEntropy docstring): 0 loss and 0 gradient, where
    PyTorch returns NaN."""
    z = _logits(3, 4, dtype=numpy.float32)
    loss, grad = _ce(xp, z, numpy.array([-100, -100, -100]), ignore_index=-100)
    assert loss.shape == () and loss.dtype == numpy.float32
    assert float(loss) == 0.0
    g = gpunet.to_numpy(grad)
    assert g.shape == z.shape and g.dtype == numpy.float32 and (g == 0).all()


# -- gradcheck of each loss -----------------------------------------------------------------------
def _as_fn(loss_fn, target):
    def f(x):
        loss = loss_fn(x, target)
        return loss, lambda dy: loss_fn.backward() * dy
    f.__name__ = type(loss_fn).__name__
    return f


@pytest.mark.parametrize("kw,target", [
    ({}, "int"), ({"label_smoothing": 0.2}, "int"), ({"ignore_index": 1}, "int"),
    ({}, "soft"), ({"label_smoothing": 0.1}, "soft"),
])
def test_ce_gradcheck(xp, kw, target):
    y = numpy.array([0, 1, 3, 1]) if target == "int" else _soft(4, 4)
    f = _as_fn(gpunet.SoftmaxCrossEntropy(**kw), xp.asarray(y))
    assert gpunet.gradcheck(f, xp.asarray(_logits(4, 4, seed=7)))


def test_bce_gradcheck(xp):
    y = numpy.random.default_rng(8).random((3, 4))
    assert gpunet.gradcheck(_as_fn(gpunet.BCEWithLogits(), xp.asarray(y)), xp.asarray(_logits(3, 4, seed=9)))


def test_mse_gradcheck(xp):
    y = _logits(3, 4, seed=10)
    assert gpunet.gradcheck(_as_fn(gpunet.MSELoss(), xp.asarray(y)), xp.asarray(_logits(3, 4, seed=11)))


def _elementwise_vs_torch(xp, loss_fn, torch_name, x, y, **kw):
    """``(loss, grad)`` of ``loss_fn(x, y)`` and, as NumPy arrays, those of
    ``torch.nn.functional.<torch_name>(x, y, **kw)`` (the gradient with respect to ``x``)."""
    torch = pytest.importorskip("torch")
    loss = loss_fn(xp.asarray(x), xp.asarray(y))
    grad = loss_fn.backward()
    tx = torch.tensor(x, requires_grad=True)
    tl = getattr(torch.nn.functional, torch_name)(tx, torch.tensor(y), **kw)
    _torch_backward(torch, tl)
    return loss, grad, tl.detach().numpy(), tx.grad.numpy()


def _assert_mean_matches_torch(xp, dtype, loss_fn, torch_name, x, y):
    """A mean-reduced elementwise loss: a 0-d loss and a gradient in ``dtype``, both PyTorch's."""
    loss, grad, t_loss, t_grad = _elementwise_vs_torch(xp, loss_fn, torch_name, x, y)
    assert loss.shape == () and loss.dtype == dtype and grad.dtype == dtype
    numpy.testing.assert_allclose(float(loss), float(t_loss), **_tol(dtype))
    numpy.testing.assert_allclose(gpunet.to_numpy(grad), t_grad, **_tol(dtype))


# -- BCEWithLogits ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_vs_torch(xp, dtype):
    z = _logits(4, 3, seed=12, dtype=dtype, scale=4.0)
    y = numpy.random.default_rng(13).random((4, 3)).astype(dtype)
    y[0] = (y[0] > 0.5)
    _assert_mean_matches_torch(xp, dtype, gpunet.BCEWithLogits(), "binary_cross_entropy_with_logits", z, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_finite_at_huge_logits(xp, dtype):
    z = numpy.array([1e4, -1e4, 1e4, -1e4, 0.0], dtype)
    y = numpy.array([1.0, 0.0, 0.0, 1.0, 1.0], dtype)
    loss_fn = gpunet.BCEWithLogits()
    loss = loss_fn(xp.asarray(z), xp.asarray(y))
    grad = gpunet.to_numpy(loss_fn.backward())
    # per element: 0, 0, 1e4, 1e4, log 2
    numpy.testing.assert_allclose(float(loss), (2e4 + math.log(2)) / 5, rtol=1e-6)
    numpy.testing.assert_allclose(grad, numpy.array([0, 0, 1, -1, -0.5]) / 5, atol=1e-7)


def test_bce_shape_mismatch(xp):
    with pytest.raises(ValueError, match="bce_with_logits"):
        gpunet.BCEWithLogits()(xp.asarray(numpy.zeros((2, 3))), xp.asarray(numpy.zeros((3, 2))))


# -- MSELoss --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_vs_torch(xp, dtype):
    x = _logits(3, 4, seed=14, dtype=dtype)
    y = _logits(3, 4, seed=15, dtype=dtype)
    _assert_mean_matches_torch(xp, dtype, gpunet.MSELoss(), "mse_loss", x, y)


def test_mse_shape_mismatch_and_int_input(xp):
    with pytest.raises(ValueError, match="mse"):
        gpunet.MSELoss()(xp.asarray(numpy.zeros((2, 3))), xp.asarray(numpy.zeros(6)))
    with pytest.raises(ValueError, match="mse"):
        gpunet.MSELoss()(xp.asarray(numpy.zeros((2, 3), numpy.int64)), xp.asarray(numpy.zeros((2, 3))))


# -- common contract ------------------------------------------------------------------------------------
def _all_losses():
    z = _logits(4, 3, seed=16, dtype=numpy.float32)
    return [
        (gpunet.SoftmaxCrossEntropy(), z, numpy.array([0, 2, 1, 1])),
        (gpunet.BCEWithLogits(), z, (z > 0).astype(numpy.float32)),
        (gpunet.MSELoss(), z, numpy.zeros_like(z)),
    ]


@pytest.mark.parametrize("i", range(3))
def test_loss_is_0d_in_logits_dtype_and_float_works(xp, i):
    loss_fn, z, y = _all_losses()[i]
    for dtype in DTYPES:
        loss = loss_fn(xp.asarray(z.astype(dtype)), xp.asarray(y))
        assert loss.shape == () and loss.ndim == 0 and loss.dtype == dtype
        assert gpunet.get_array_module(loss) is xp
        assert isinstance(float(loss), float) and math.isfinite(float(loss))
        g = loss_fn.backward()
        assert g.dtype == dtype and g.shape == z.shape


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_elementwise_losses_of_0d_inputs_give_0d_array_gradients(xp, reduction):
    # a 0-d prediction (one regression target): the gradient is a 0-d array of the
    # input's kind and dtype, as PyTorch's is a 0-d tensor; MSELoss gave a NumPy scalar
    for loss_fn, x, y, grad in ((gpunet.MSELoss(reduction=reduction), 1.5, 1.0, 1.0),
                                (gpunet.BCEWithLogits(reduction=reduction), 0.0, 1.0, -0.5)):
        loss = loss_fn(xp.asarray(numpy.float32(x)), xp.asarray(numpy.float32(y)))
        g = loss_fn.backward()
        assert loss.shape == () and g.shape == (), (type(loss_fn).__name__, g)
        assert isinstance(g, xp.ndarray) and g.dtype == numpy.float32, (type(loss_fn).__name__, type(g))
        assert float(g) == grad


@pytest.mark.parametrize("i", range(3))
def test_backward_before_forward_raises(i):
    loss_fn, z, y = _all_losses()[i]
    with pytest.raises(RuntimeError, match=type(loss_fn).__name__):
        loss_fn.backward()


# -- reduction="mean" | "sum" | "none" (PyTorch's meanings) ------------------------------------------
REDUCTIONS = ["mean", "sum", "none"]


def _torch_backward(torch, loss):
    """PyTorch's gradient as gpunet defines it: of the loss, or of Σ loss for "none"."""
    loss.backward(torch.ones_like(loss))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kw,target", [
    ({}, "int"), ({"label_smoothing": 0.2}, "int"),
    ({"ignore_index": 2}, "int"), ({"ignore_index": -100, "label_smoothing": 0.3}, "int"),
    ({}, "soft"), ({"label_smoothing": 0.25}, "soft"),
])
def test_ce_reduction_vs_torch(xp, reduction, kw, target):
    torch = pytest.importorskip("torch")
    z = _logits(7, 5, seed=20)
    if target == "int":
        y = numpy.array([0, 2, 4, 2, 1, 3, 2])
        if kw.get("ignore_index") == -100:
            y[[1, 5]] = -100
    else:
        y = _soft(7, 5, seed=21)
    loss_fn = gpunet.SoftmaxCrossEntropy(reduction=reduction, **kw)
    loss = loss_fn(xp.asarray(z), xp.asarray(y))
    grad = loss_fn.backward()
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y), reduction=reduction, **kw)
    _torch_backward(torch, tl)
    assert loss.shape == tuple(tl.shape) and loss.dtype == numpy.float64
    assert gpunet.get_array_module(loss) is xp and gpunet.get_array_module(grad) is xp
    numpy.testing.assert_allclose(gpunet.to_numpy(loss), tl.detach().numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(gpunet.to_numpy(grad), tz.grad.numpy(), rtol=1e-10, atol=1e-12)
    if "ignore_index" in kw and reduction == "none":   # ignored rows: loss 0, as PyTorch
        assert (gpunet.to_numpy(loss)[y == kw["ignore_index"]] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_ce_reductions_agree_with_each_other(xp, dtype):
    """"none" rows sum to "sum", and "mean" is "sum" / N_valid; the gradients scale alike."""
    z, y = _logits(6, 4, seed=22, dtype=dtype), numpy.array([0, 3, -1, 1, -1, 2])
    out = {r: _ce(xp, z, y, ignore_index=-1, label_smoothing=0.1, reduction=r) for r in REDUCTIONS}
    (mean, gm), (total, gs), (rows, gn) = (tuple(map(gpunet.to_numpy, out[r])) for r in REDUCTIONS)
    assert rows.shape == (6,) and rows.dtype == dtype and total.shape == () == mean.shape
    numpy.testing.assert_allclose(rows.sum(), total, **_tol(dtype))
    numpy.testing.assert_allclose(total / 4, mean, **_tol(dtype))
    numpy.testing.assert_array_equal(gs, gn)
    numpy.testing.assert_allclose(gs / 4, gm, **_tol(dtype))


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("kw,target", [({"label_smoothing": 0.2, "ignore_index": 1}, "int"),
                                       ({"label_smoothing": 0.1}, "soft")])
def test_ce_reduction_gradcheck(xp, reduction, kw, target):
    y = numpy.array([0, 1, 3, 1]) if target == "int" else _soft(4, 4)
    loss_fn = gpunet.SoftmaxCrossEntropy(reduction=reduction, **kw)

    def f(x):  # "none": the gradient returned is that of the sum of the row losses
        loss = loss_fn(x, xp.asarray(y))
        return loss.sum(), lambda dy: loss_fn.backward() * dy
    assert gpunet.gradcheck(f, xp.asarray(_logits(4, 4, seed=23)))


def test_ce_all_rows_ignored_with_each_reduction(xp):
    z = _logits(3, 4, dtype=numpy.float32)
    for reduction, shape in (("mean", ()), ("sum", ()), ("none", (3,))):
        loss, grad = _ce(xp, z, numpy.array([-100, -100, -100]), ignore_index=-100, reduction=reduction)
        assert loss.shape == shape and loss.dtype == numpy.float32
        assert (gpunet.to_numpy(loss) == 0).all() and (gpunet.to_numpy(grad) == 0).all()


@pytest.mark.parametrize("name", ["bce", "mse"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_elementwise_reduction_vs_torch(xp, name, reduction):
    x = _logits(4, 3, seed=24, scale=3.0)
    y = numpy.random.default_rng(25).random((4, 3)) if name == "bce" else _logits(4, 3, seed=26)
    cls, tf = ((gpunet.BCEWithLogits, "binary_cross_entropy_with_logits")
               if name == "bce" else (gpunet.MSELoss, "mse_loss"))
    loss, grad, t_loss, t_grad = _elementwise_vs_torch(xp, cls(reduction=reduction), tf, x, y,
                                                       reduction=reduction)
    assert loss.shape == t_loss.shape and loss.dtype == numpy.float64
    assert gpunet.get_array_module(loss) is xp
    numpy.testing.assert_allclose(gpunet.to_numpy(loss), t_loss, rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(gpunet.to_numpy(grad), t_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [F.softmax_cross_entropy, F.bce_with_logits, F.mse])
def test_functional_reduction_matches_object(xp, fn):
    z = xp.asarray(_logits(5, 3, seed=27))
    y = (xp.asarray(numpy.array([0, 2, 1, 1, 0])) if fn is F.softmax_cross_entropy
         else xp.asarray(numpy.random.default_rng(28).random((5, 3))))
    cls = {F.softmax_cross_entropy: gpunet.SoftmaxCrossEntropy, F.bce_with_logits: gpunet.BCEWithLogits,
           F.mse: gpunet.MSELoss}[fn]
    for reduction in REDUCTIONS:
        loss, grad = fn(z, y, reduction=reduction)
        obj = cls(reduction=reduction)
        loss2 = obj(z, y)
        numpy.testing.assert_array_equal(gpunet.to_numpy(loss), gpunet.to_numpy(loss2))
        numpy.testing.assert_array_equal(gpunet.to_numpy(grad), gpunet.to_numpy(obj.backward()))


@pytest.mark.parametrize("cls", [gpunet.SoftmaxCrossEntropy, gpunet.BCEWithLogits, gpunet.MSELoss])
def test_bad_reduction_names_the_loss(cls):
    for bad in ("avg", "Mean", None, 1):
        with pytest.raises(ValueError, match=f"{cls.__name__}.*'mean', 'sum' or 'none'.*{bad!r}"):
            cls(reduction=bad)
    with pytest.raises(ValueError, match="mse.*reduction"):
        F.mse(numpy.zeros(2), numpy.zeros(2), reduction="batchmean")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("i", range(3))
def test_empty_batch_raises_naming_the_loss_and_shape(xp, i, reduction):
    loss_fn, z, y = _all_losses()[i]
    loss_fn = type(loss_fn)(reduction=reduction)
    with pytest.raises(ValueError, match=rf"{type(loss_fn).__name__}: .*empty batch.*\(0, 3\)"):
        loss_fn(xp.asarray(z[:0]), xp.asarray(y[:0]))


def test_empty_batch_raises_in_the_functional_forms(xp):
    z = xp.asarray(numpy.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: .*empty batch.*\(0, 4\)"):
        F.softmax_cross_entropy(z, xp.asarray(numpy.zeros(0, numpy.int64)))
    with pytest.raises(ValueError, match=r"bce_with_logits: .*empty batch.*\(0, 4\)"):
        F.bce_with_logits(z, z)
    with pytest.raises(ValueError, match=r"mse: .*empty batch.*\(0, 4\)"):
        F.mse(z, z, reduction="sum")


# -- bad hyper-parameters and targets (found by fuzzing) ---------------------------------------

@pytest.mark.parametrize("value", ["a", None, float("nan"), -0.1, 2])
def test_ce_label_smoothing_must_be_a_number_in_unit_interval(value):
    """'a'/None used to raise float()'s message, not naming the loss."""
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: label_smoothing must lie in"):
        gpunet.SoftmaxCrossEntropy(label_smoothing=value)
    z = numpy.zeros((2, 3), numpy.float32)
    with pytest.raises(ValueError, match="softmax_cross_entropy: label_smoothing must lie in"):
        gpunet.functional.softmax_cross_entropy(z, numpy.array([0, 1]), label_smoothing=value)


@pytest.mark.parametrize("value", [1.5, "a", True])
def test_ce_ignore_index_must_be_an_int(value):
    """1.5 used to be truncated to 1 silently (rows labelled 1 then ignored)."""
    with pytest.raises(TypeError, match="SoftmaxCrossEntropy: expected ignore_index to be None or an int"):
        gpunet.SoftmaxCrossEntropy(ignore_index=value)


@pytest.mark.parametrize("loss,name", [(gpunet.MSELoss, "mse"), (gpunet.BCEWithLogits, "bce_with_logits")])
@pytest.mark.parametrize("bad", ["complex64", "object", "<U1"])
def test_elementwise_losses_reject_targets_that_are_not_real_numbers(loss, name, bad):
    """complex targets used to lose their imaginary part silently, object targets were
    accepted, strings failed in NumPy's conversion without naming the loss."""
    x = numpy.zeros((2, 3), numpy.float32)
    y = numpy.ones((2, 3)).astype(bad) if bad != "<U1" else numpy.full((2, 3), "a")
    with pytest.raises(ValueError, match=rf"{name}: expected real-valued .*targets, got"):
        loss()(x, y)


def test_losses_name_a_list_or_number_where_an_array_belongs():
    """Found by the first-hour audit: a list of targets was reported as 'expected targets of
    shape (4, 1), got ()', and list logits as a shape error; they are TypeErrors naming the
    loss and the argument, as PyTorch's losses refuse what is not a tensor."""
    z = numpy.zeros((4, 1), numpy.float32)
    cases = [(gpunet.MSELoss(), z, [[0.0]] * 4, r"mse: expected targets as a NumPy or CuPy array, got list"),
             (gpunet.MSELoss(), z.tolist(), z, r"mse: expected input as a NumPy or CuPy array, got list"),
             (gpunet.BCEWithLogits(), z, 1.0, r"bce_with_logits: expected targets as .* got float"),
             (gpunet.SoftmaxCrossEntropy(), [[0.0, 1.0]], numpy.array([0]),
              r"softmax_cross_entropy: expected logits as a NumPy or CuPy array, got list"),
             (gpunet.SoftmaxCrossEntropy(), numpy.zeros((2, 3), numpy.float32), [0, 1],
              r"softmax_cross_entropy: expected labels as a NumPy or CuPy array, got list")]
    for loss_fn, x, y, match in cases:
        with pytest.raises(TypeError, match=match):
            loss_fn(x, y)


def test_ce_label_error_mentions_ignore_index_only_when_set():
    z = numpy.zeros((2, 3), numpy.float32)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); got 5 at row 1 \(the logits have 3 columns"):
        gpunet.SoftmaxCrossEntropy()(z, numpy.array([0, 5]))
    with pytest.raises(ValueError, match=r"\[0, 3\) \(or equal ignore_index=-100\); got 5 at row 1"):
        gpunet.SoftmaxCrossEntropy(ignore_index=-100)(z, numpy.array([0, 5]))


@pytest.mark.parametrize("loss_fn, name, what, other", [
    (gpunet.SoftmaxCrossEntropy(), "softmax_cross_entropy", "logits", "labels"),
    (gpunet.BCEWithLogits(), "bce_with_logits", "logits", "targets"),
    (gpunet.MSELoss(), "mse", "input", "targets"),
])
def test_targets_on_another_device_name_the_loss_both_devices_and_the_move(loss_fn, name, what, other):
    """Found by the second first-hour audit: labels left on the host beside logits on the
    device raised 'arrays on different devices in one call: sim and cpu', naming no loss
    and no argument."""
    if gpunet.sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    rng = numpy.random.default_rng(0)
    pred = rng.standard_normal((4, 3)).astype(numpy.float32)
    target = (numpy.array([0, 2, 1, 1]) if other == "labels"
              else rng.uniform(size=(4, 3)).astype(numpy.float32))
    with pytest.raises(TypeError, match=rf"^{name}: expected {other} on sim \(the device of the {what}\), "
                                        rf"got them on cpu; move them with gpunet\.to_device\({other}, 'sim'\)$"):
        loss_fn(gpunet.to_device(pred, "sim"), target)
    with pytest.raises(TypeError, match=rf"^{name}: expected {other} on cpu .* got them on sim"):
        loss_fn(pred, gpunet.to_device(target, "sim"))


@pytest.mark.parametrize("labels, hint", [
    (numpy.array([0.0, 1.0, 2.0]), r"got dtype float64; class labels are integer indices: y\.astype\(numpy\.int64\)$"),
    # found by the data audit: bool labels (y = column == "yes") got no hint
    (numpy.array([True, False, True]), r"got dtype bool; class labels are integer indices: y\.astype\(numpy\.int64\)$"),
    (numpy.array(["cat", "dog", "cat"]), r"got dtype str96; map class names to indices 0\.\.C-1 first: "
                                         r"names, y = numpy\.unique\(y, return_inverse=True\)$"),
    (numpy.array([[0], [2], [1]]), r"or integer class labels of shape \(3,\), got \(3, 1\); class indices go "
                                   r"as a 1-D array: y\.ravel\(\)$"),
    (numpy.eye(3, dtype=numpy.int64), r"got int64; pass one-hot rows as floats \(y\.astype\(logits\.dtype\)\) "
                                      r"or class indices \(y\.argmax\(1\)\)$"),
    (numpy.array([1, 3, 2]), r"(got|e\.g\.) 3 at row 1 \(the logits have 3 columns, one per class: labels numbered "
                             r"from 1 need y - 1, more classes need a last layer with more outputs\)"),
    (numpy.array([0, -100, 2]), r"(got|e\.g\.) -100 at row 1 \(if such rows are padding to skip: "
                                r"SoftmaxCrossEntropy\(ignore_index=-100\)\)"),
])
def test_ce_label_mistakes_say_how_to_fix_them(xp, labels, hint):
    """Found by the second first-hour audit: float labels, string labels, Keras' (N, 1)
    sparse labels, integer one-hot rows, labels numbered 1..C and -100 padding were refused
    without a way out ('expected probability targets of shape (3, 3), got (3, 1)' for the
    (N, 1) labels, which are no probability targets). On a device the range is checked
    there and raised at the read, with the same hint."""
    if labels.dtype.kind == "U" and xp is not numpy:
        pytest.skip("CuPy has no string arrays")
    z = xp.asarray(_logits(3, 3))
    with pytest.raises(ValueError, match=hint) as e:
        float(gpunet.SoftmaxCrossEntropy()(z, xp.asarray(labels)))
    assert "softmax_cross_entropy" in str(e.value)


@pytest.mark.parametrize("loss_fn, name", [(gpunet.MSELoss(), "mse"), (gpunet.BCEWithLogits(), "bce_with_logits")])
def test_one_output_per_sample_against_1d_targets_says_how_to_reshape(loss_fn, name):
    """Found by the second first-hour audit: a regression model's (N, 1) output against the
    (N,) targets a dataset gives said 'expected targets of shape (8, 1), got (8,)', with no
    way out (PyTorch broadcasts the pair to (N, N) with a warning)."""
    out = numpy.zeros((8, 1), numpy.float32)
    with pytest.raises(ValueError, match=rf"^{name}: expected targets of shape \(8, 1\), got \(8,\); one target "
                                         r"per sample goes as a column: targets\.reshape\(-1, 1\)$"):
        loss_fn(out, numpy.ones(8, numpy.float32))
    with pytest.raises(ValueError, match=rf"^{name}: expected targets of shape \(8,\), got \(8, 1\); one target "
                                         r"per sample goes as a 1-D array: targets\.ravel\(\)$"):
        loss_fn(out[:, 0], numpy.ones((8, 1), numpy.float32))
    with pytest.raises(ValueError, match=rf"^{name}: expected targets of shape \(8, 1\), got \(8, 2\)$"):
        loss_fn(out, numpy.ones((8, 2), numpy.float32))


@pytest.mark.parametrize("model, loss_fn, act", [
    (lambda: gpunet.Sequential(gpunet.Dense(4, 3, activation="softmax")), gpunet.SoftmaxCrossEntropy, "softmax"),
    (lambda: gpunet.Sequential(gpunet.Dense(4, 3), gpunet.Softmax()), gpunet.SoftmaxCrossEntropy, "softmax"),
    (lambda: gpunet.Sequential(gpunet.Sequential(gpunet.Dense(4, 3)), gpunet.Sequential(gpunet.Softmax())),
     gpunet.SoftmaxCrossEntropy, "softmax"),
    (lambda: gpunet.Dense(4, 1, activation="sigmoid"), gpunet.BCEWithLogits, "sigmoid"),
    (lambda: gpunet.Sequential(gpunet.Dense(4, 1), gpunet.Sigmoid()), gpunet.BCEWithLogits, "sigmoid"),
])
def test_a_model_ending_in_the_losses_own_activation_is_warned_about_once(model, loss_fn, act):
    """Found by the second first-hour audit: Keras' Dense(10, activation="softmax") before
    SoftmaxCrossEntropy trained silently to 0.12 accuracy in 3 epochs where the logits reach
    0.76 (the digits, SGD 0.1); Keras warns there. The loss's first call warns; the loss
    value is the same as without the check."""
    m = model()
    x = numpy.random.default_rng(0).standard_normal((5, 4)).astype(numpy.float32)
    out = m(x)
    target = numpy.array([0, 2, 1, 1, 0]) if act == "softmax" else numpy.ones((5, 1), numpy.float32)
    fn = loss_fn()
    with pytest.warns(UserWarning, match=rf"^{loss_fn.__name__}: the prediction is the output of a {act} \(the "
                                         rf"model's last layer\), but this loss applies the {act} itself and "
                                         rf"expects raw logits; .* Remove the model's output {act} "):
        loss = float(fn(out, target))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # a copy of softmax rows: the numeric check's warning
        assert loss == float(loss_fn()(out.copy(), target))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(m(x), target)                       # once per loss object
        if act != "softmax":                   # (softmax rows that no model returned: the test below)
            loss_fn()(out.copy(), target)      # an array no model returned: no warning
        logits_model = gpunet.Sequential(gpunet.Dense(4, out.shape[1]))
        loss_fn()(logits_model(x), target)     # logits: none
        gpunet.MSELoss()(out, out.copy())      # MSE applies no activation


@pytest.mark.parametrize("make, name", [
    (lambda x, y: gpunet.SoftmaxCrossEntropy(x, y), "SoftmaxCrossEntropy"),
    (lambda x, y: gpunet.CrossEntropyLoss(x), "SoftmaxCrossEntropy"),
    (lambda x, y: gpunet.MSELoss(x), "MSELoss"),
    (lambda x, y: gpunet.BCEWithLogits(x), "BCEWithLogits"),
])
def test_data_given_to_a_loss_constructor_says_a_loss_is_an_object(make, name):
    """Found by the second first-hour audit: SoftmaxCrossEntropy(logits, labels) (PyTorch's
    F.cross_entropy(logits, y) habit) printed the whole logits array in 'label_smoothing must
    lie in [0, 1], got array([[...' and MSELoss(pred) in its reduction error."""
    x, y = numpy.zeros((4, 10), numpy.float32), numpy.zeros(4, numpy.int64)
    with pytest.raises(TypeError, match=rf"^{name}: expected (label_smoothing in \[0, 1\]|reduction 'mean', 'sum' "
                                        rf"or 'none'), got an array of shape \(4, 10\); a loss is an object called "
                                        rf"on the data: {name}\(\)\(prediction, target\)$"):
        make(x, y)
    with pytest.raises(TypeError, match=r"^softmax_cross_entropy: expected label_smoothing in \[0, 1\], got an "
                                        r"array of shape \(4, 10\)$"):
        F.softmax_cross_entropy(x, y, x)
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        gpunet.SoftmaxCrossEntropy(label_smoothing=2.0)


@pytest.mark.filterwarnings("ignore:SoftmaxCrossEntropy. the logits have 1 column")   # the next test's
def test_ce_over_one_output_column_names_bce(xp):
    """Found by the second first-hour audit: a binary problem built as Dense(n, 1) with
    SoftmaxCrossEntropy (a softmax over one column is 1 whatever the logit: nothing to learn)
    got the hint for labels numbered from 1."""
    z = xp.asarray(_logits(3, 1))
    with pytest.raises(ValueError, match=r"\(the logits have 1 column: two classes with one output go with "
                                         r"BCEWithLogits and float 0/1 targets of shape \(N, 1\), or give the last "
                                         r"layer 2 outputs\)"):
        float(gpunet.SoftmaxCrossEntropy()(z, xp.asarray(numpy.array([0, 1, 0]))))


def test_ce_over_one_output_column_warns_that_nothing_trains(xp):
    """Found by the data audit: SoftmaxCrossEntropy over one output column with labels that
    are all 0 (one class present) trained silently with a loss of exactly 0 (PyTorch too: its
    cross_entropy is 0 there). The loss's first call warns, naming BCEWithLogits; the loss
    value is the same."""
    import warnings
    z = xp.asarray(_logits(3, 1))
    y = xp.asarray(numpy.zeros(3, numpy.int64))
    fn = gpunet.SoftmaxCrossEntropy()
    with pytest.warns(UserWarning, match=r"^SoftmaxCrossEntropy: the logits have 1 column: the softmax of one "
                                         r"column is 1 whatever the logit, so the loss and its gradient are 0 "
                                         r"and nothing trains\. Two classes with one output go with "
                                         r"BCEWithLogits\(\)"):
        assert float(fn(z, y)) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(z, y)                                                    # once per loss object
        gpunet.SoftmaxCrossEntropy()(xp.asarray(_logits(3, 2)), y)  # two columns: none


def test_probabilities_that_no_model_layer_made_are_warned_about_once(device):
    """Found by the leftover audit: SoftmaxCrossEntropy()(gpunet.Softmax()(logits), y), a
    softmax applied on the spot (Keras' from_logits=False habit), got no warning: the check
    looked only at the layer that produced the prediction. The first call now also checks the
    numbers (every row in [0, 1], summing to 1 within the dtype's rounding); loss values are
    unchanged, later calls check nothing, and logits, one-hot rows, log-probabilities and a
    model's raw outputs do not warn."""
    import warnings
    rng = numpy.random.default_rng(0)
    logits = rng.standard_normal((16, 5)).astype(numpy.float32)
    y = numpy.arange(16) % 5
    dev = lambda a: gpunet.to_device(a, device)
    say = (r"^SoftmaxCrossEntropy: every row of the prediction is in \[0, 1\] and sums to 1, as a softmax's "
           r"output does, but this loss applies the softmax itself and expects raw logits \(Keras' "
           r"from_logits=True\); .* Pass the logits, the input of the softmax")
    for probs in (gpunet.Softmax().to(device)(dev(logits)),        # a layer built on the spot, gone after
                  gpunet.functional.softmax(dev(logits)),
                  dev(gpunet.functional.softmax(logits.astype(numpy.float64))),
                  dev(gpunet.functional.softmax(rng.standard_normal((3, 1000)).astype(numpy.float32) * 8))):
        fn = gpunet.SoftmaxCrossEntropy()
        with pytest.warns(UserWarning, match=say):
            loss = float(fn(probs, dev(y[:probs.shape[0]])))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert float(fn(probs, dev(y[:probs.shape[0]]))) == loss      # once per loss object, same value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pred in (logits, numpy.eye(5, dtype=numpy.float32)[y],          # one-hot rows: exactly 0/1
                     numpy.abs(logits),                                     # in [0, inf), rows not summing to 1
                     gpunet.functional.log_softmax(logits),                 # log-probabilities: <= 0
                     gpunet.Sequential(gpunet.Dense(5, 5)).to(device)(dev(logits))):
            gpunet.SoftmaxCrossEntropy()(dev(pred), dev(y))


def test_trainer_runs_the_first_call_checks_before_training(device):
    """The probability check of the loss's first call runs in Trainer.fit before the first
    step, on one sample's output (a custom last layer that returns a softmax: no layer of
    gpunet's to recognise), so it warns once, and the first step syncs no more than the
    others (test_sim_budgets holds that count)."""
    import warnings

    class Probs(gpunet.Layer):                  # a head that returns probabilities
        def forward(self, x):
            return gpunet.functional.softmax(x)

        def backward(self, dy):
            raise AssertionError("not reached: the test stops at the warning")

    X = numpy.random.default_rng(0).standard_normal((20, 4)).astype(numpy.float32)
    y = numpy.arange(20) % 3
    model = gpunet.Sequential(gpunet.Dense(4, 3), Probs()).to(device)
    tr = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(model.parameters()))

    class Stop(gpunet.Callback):
        def on_train_begin(self, trainer):
            raise KeyboardInterrupt             # after fit's checks, before any step

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(KeyboardInterrupt):
            tr.fit((X, y), epochs=1, progress=False, callbacks=[Stop()])
    assert [str(w.message)[:61] for w in seen] == [
        "SoftmaxCrossEntropy: every row of the prediction is in [0, 1]"]
    assert tr.global_step == 0 and tr.loss_fn._checked_input


@pytest.mark.parametrize("other", [[0, 2, 1, 1], 1])
def test_labels_that_are_not_an_array_are_named_so_on_every_device(xp, other):
    """SoftmaxCrossEntropy given a Python list (or a number) for the labels of logits on the
    sim said 'expected labels on sim (the device of the logits), got them on cpu' where the
    CPU said what is wrong: not an array. Every device says that now, as BCEWithLogits and
    MSELoss already did."""
    z = xp.asarray(numpy.random.default_rng(0).standard_normal((4, 3)).astype(numpy.float32))
    with pytest.raises(TypeError, match=rf"^softmax_cross_entropy: expected labels as a NumPy or CuPy "
                                        rf"array, got {type(other).__name__}"):
        gpunet.SoftmaxCrossEntropy()(z, other)


def test_a_loss_of_your_own_as_the_loss_docstring_shows(rng):
    """The errors for weight=/class_weight= say 'write a Loss of your own', and Loss had no
    docstring: a subclass whose forward set no gradient got, at backward(), 'backward called
    before the loss was computed' (it was computed). Now Loss's docstring gives the contract
    (forward returns the loss and sets self._grad) and a forward without a gradient raises
    at the call, naming it; the docstring's WeightedMSE trains with Trainer."""
    from gpunet.losses import Loss

    class Quartic(Loss):
        def forward(self, x, y):
            return ((x - y) ** 4).mean()

    x = numpy.ones((4, 2), numpy.float32)
    with pytest.raises(NotImplementedError, match=r"^Quartic\.forward returned the loss without its "
                                                  r"gradient: .*self\._grad"):
        Quartic()(x, numpy.zeros_like(x))

    ns = {}
    code = re.search(r"::\n\n(.*?)\n\n", Loss.__doc__, re.S).group(1)
    exec(textwrap.dedent(code), {"gpunet": gpunet}, ns)
    X = rng.standard_normal((128, 4)).astype(numpy.float32)
    Y = (X @ numpy.arange(1.0, 5.0)[:, None]).astype(numpy.float32)
    gpunet.manual_seed(0)
    model = gpunet.Sequential(gpunet.Dense(4, 1))
    loss_fn = ns["WeightedMSE"](numpy.array([2.0], numpy.float32))
    tr = gpunet.Trainer(model, loss_fn, gpunet.optim.SGD(model, lr=0.05), metrics=())
    h = tr.fit((X, Y), epochs=30, batch_size=32, progress=False)
    assert h["loss"][-1] < 1e-3 * h["loss"][0]
    l_ = loss_fn(model.eval()(X), Y)
    numpy.testing.assert_allclose(float(l_), float((2.0 * (model(X) - Y) ** 2).mean()), rtol=1e-5)
