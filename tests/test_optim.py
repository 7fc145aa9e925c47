"""Tests for gpunet.optim: optimizers against hand-written formulas and torch.optim,
regularization on decay=True parameters only, dtypes, state round trips, clipping,
schedules and argument checks."""
import math
import re

import numpy
import pytest

from gpunet import Dense, optim
from gpunet.backend import to_numpy
from gpunet.layers.base import Layer, Parameter
from npz_helpers import through_npz

# ``xp`` (numpy, and cupy where a CUDA device is present) comes from tests/conftest.py.


def make_param(xp, values, name="w", decay=True, dtype=numpy.float64):
    return Parameter(xp.asarray(numpy.array(values, dtype=dtype)), name, decay)


def run_steps(opt, p, grads, xp):
    """Assign each gradient in turn and step; returns the data after every step."""
    out = []
    for g in grads:
        p.grad = xp.asarray(numpy.array(g, dtype=p.data.dtype))
        opt.step()
        out.append(to_numpy(p.data).copy())
    return out


# -- each optimizer against the formula, written out by hand -----------------------------

def test_sgd_plain_by_hand(xp):
    p = make_param(xp, [1.0, -2.0])
    got = run_steps(optim.SGD([p], lr=0.1), p, [[0.5, 1.0], [-1.0, 0.25]], xp)
    # w -= lr*g
    numpy.testing.assert_allclose(got[0], [1.0 - 0.1 * 0.5, -2.0 - 0.1 * 1.0], rtol=1e-15)
    numpy.testing.assert_allclose(got[1], [0.95 + 0.1 * 1.0, -2.1 - 0.1 * 0.25], rtol=1e-15)


def test_sgd_momentum_by_hand(xp):
    p = make_param(xp, [1.0])
    got = run_steps(optim.SGD([p], lr=0.1, momentum=0.9), p, [[1.0], [2.0], [3.0]], xp)
    # b1 = g1 = 1            w1 = 1 - 0.1*1      = 0.9
    # b2 = 0.9*1 + 2 = 2.9   w2 = 0.9 - 0.1*2.9  = 0.61
    # b3 = 0.9*2.9 + 3 = 5.61  w3 = 0.61 - 0.561 = 0.049
    numpy.testing.assert_allclose([g[0] for g in got], [0.9, 0.61, 0.049], rtol=1e-13)


def test_sgd_nesterov_by_hand(xp):
    p = make_param(xp, [1.0])
    got = run_steps(optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True), p, [[1.0], [2.0], [3.0]], xp)
    # buffers as above (1, 2.9, 5.61); w -= lr*(g + 0.9*b)
    # w1 = 1 - 0.1*(1 + 0.9)          = 0.81
    # w2 = 0.81 - 0.1*(2 + 0.9*2.9)   = 0.349
    # w3 = 0.349 - 0.1*(3 + 0.9*5.61) = -0.4559
    numpy.testing.assert_allclose([g[0] for g in got], [0.81, 0.349, -0.4559], rtol=1e-13)


def test_sgd_weight_decay_and_l1_by_hand(xp):
    p = make_param(xp, [2.0, -1.0, 0.0])
    got = run_steps(optim.SGD([p], lr=0.1, weight_decay=0.2, l1=0.5), p, [[0.0, 0.0, 1.0]], xp)
    # g = grad + 0.2*w + 0.5*sign(w) = [0.4 + 0.5, -0.2 - 0.5, 1 + 0 + 0] = [0.9, -0.7, 1]
    numpy.testing.assert_allclose(got[0], [2.0 - 0.09, -1.0 + 0.07, -0.1], rtol=1e-14)


def test_l1_alone_by_hand(xp):
    p = make_param(xp, [2.0, -1.0, 0.0, 0.5])
    got = run_steps(optim.SGD([p], lr=0.1, l1=0.5), p, [[0.0, 0.0, 0.0, 0.0]] * 2, xp)
    # Lasso: each step moves a non-zero weight by lr*l1 = 0.05 towards zero; zero stays zero
    numpy.testing.assert_allclose(got[0], [1.95, -0.95, 0.0, 0.45], rtol=1e-14)
    numpy.testing.assert_allclose(got[1], [1.90, -0.90, 0.0, 0.40], rtol=1e-14)


def test_adam_by_hand(xp):
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    grads = [[1.0, -0.5], [2.0, 0.0], [-1.0, 3.0]]
    p = make_param(xp, [1.0, -1.0])
    got = run_steps(optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps), p, grads, xp)
    for j, w in enumerate([1.0, -1.0]):
        m = v = 0.0
        for t, g in enumerate((row[j] for row in grads), start=1):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            w = w - lr * m_hat / (math.sqrt(v_hat) + eps)
            assert got[t - 1][j] == pytest.approx(w, rel=1e-12, abs=1e-15)
    # the first Adam step moves each weight by lr*sign(g)
    numpy.testing.assert_allclose(got[0], [0.9, -0.9], atol=1e-6)


@pytest.mark.parametrize("wd,l1", [(0.0, 0.3), (0.2, 0.0), (0.2, 0.3)], ids=["l1", "l2", "l1+l2"])
def test_adam_regularization_by_hand(xp, wd, l1):
    """Adam's L2/L1 (coupled: added to the gradient before the moments), against the formula
    g = grad + wd*w + l1*sign(w) written out here; each of the two alone and both."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    w0 = [1.5, -0.5, 0.0]
    grads = [[0.2, 0.1, -0.3], [-0.4, 0.05, 0.2], [0.1, -0.2, 0.0]]
    p = make_param(xp, w0)
    got = run_steps(optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, l1=l1), p, grads, xp)
    for j, w in enumerate(w0):
        m = v = 0.0
        for t, row in enumerate(grads, start=1):
            g = row[j] + wd * w + l1 * (w > 0) - l1 * (w < 0)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w = w - lr * (m / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps)
            assert got[t - 1][j] == pytest.approx(w, rel=1e-12, abs=1e-15), (t, j)
    # the regularization moved the weights: the unregularized run ends elsewhere
    q = make_param(xp, w0)
    plain = run_steps(optim.Adam([q], lr=lr, betas=(b1, b2), eps=eps), q, grads, xp)
    assert numpy.abs(got[-1] - plain[-1]).max() > 1e-3


def test_adamw_by_hand(xp):
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.5
    grads = [[1.0], [2.0]]
    p = make_param(xp, [1.0])
    got = run_steps(optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), p, grads, xp)
    # decoupled: w = w*(1 - lr*wd), then the Adam step on the raw gradient
    m1, v1 = 0.1 * 1.0, 0.001 * 1.0
    w1 = 1.0 * (1 - 0.05) - lr * (m1 / 0.1) / (math.sqrt(v1 / 0.001) + eps)
    m2, v2 = 0.9 * m1 + 0.1 * 2.0, 0.999 * v1 + 0.001 * 4.0
    w2 = w1 * (1 - 0.05) - lr * (m2 / (1 - 0.81)) / (math.sqrt(v2 / (1 - 0.999 ** 2)) + eps)
    numpy.testing.assert_allclose([got[0][0], got[1][0]], [w1, w2], rtol=1e-13)
    assert w1 == pytest.approx(0.85, abs=1e-6)


def test_rmsprop_by_hand(xp):
    eps = 1e-8
    p = make_param(xp, [1.0])
    got = run_steps(optim.RMSProp([p], lr=0.01, alpha=0.9, eps=eps), p, [[1.0], [2.0]], xp)
    # v1 = 0.1*1 = 0.1           w1 = 1 - 0.01*1/(sqrt(0.1) + eps)
    # v2 = 0.9*0.1 + 0.1*4 = 0.49  w2 = w1 - 0.01*2/(0.7 + eps)
    w1 = 1 - 0.01 / (math.sqrt(0.1) + eps)
    w2 = w1 - 0.01 * 2 / (0.7 + eps)
    numpy.testing.assert_allclose([got[0][0], got[1][0]], [w1, w2], rtol=1e-13)


def test_rmsprop_momentum_by_hand(xp):
    eps = 1e-8
    p = make_param(xp, [1.0])
    got = run_steps(optim.RMSProp([p], lr=0.01, alpha=0.9, eps=eps, momentum=0.5), p, [[1.0], [2.0]], xp)
    # b1 = 1/(sqrt(0.1)+eps); b2 = 0.5*b1 + 2/(0.7+eps); w -= lr*b
    b1 = 1 / (math.sqrt(0.1) + eps)
    b2 = 0.5 * b1 + 2 / (0.7 + eps)
    numpy.testing.assert_allclose([got[0][0], got[1][0]], [1 - 0.01 * b1, 1 - 0.01 * b1 - 0.01 * b2], rtol=1e-13)


def test_adagrad_by_hand(xp):
    eps = 1e-10
    p = make_param(xp, [1.0])
    got = run_steps(optim.AdaGrad([p], lr=0.1, eps=eps), p, [[1.0], [2.0], [-1.0]], xp)
    # s accumulates g^2: 1, 5, 6;  w -= lr*g/(sqrt(s)+eps)
    w1 = 1 - 0.1 * 1 / (1 + eps)
    w2 = w1 - 0.1 * 2 / (math.sqrt(5) + eps)
    w3 = w2 + 0.1 * 1 / (math.sqrt(6) + eps)
    numpy.testing.assert_allclose([g[0] for g in got], [w1, w2, w3], rtol=1e-13)


# -- against torch.optim ---------------------------------------------------------------------

TORCH_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.05)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.3)),
    ("RMSProp", dict(lr=0.01)),
    ("RMSProp", dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.7)),
    ("AdaGrad", dict(lr=0.1)),
    ("AdaGrad", dict(lr=0.05, eps=1e-6)),
]
TORCH_NAMES = {"SGD": "SGD", "Adam": "Adam", "AdamW": "AdamW", "RMSProp": "RMSprop", "AdaGrad": "Adagrad"}


@pytest.mark.parametrize("name,kwargs", TORCH_CASES, ids=[f"{n}-{k}" for n, k in TORCH_CASES])
def test_matches_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(7)
    w0, b0 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    w, b = Parameter(w0.copy(), "weight", True), Parameter(b0.copy(), "bias", False)
    opt = getattr(optim, name)([w, b], **kwargs)

    tw = torch.tensor(w0.copy(), requires_grad=True)
    tb = torch.tensor(b0.copy(), requires_grad=True)
    tkw = dict(kwargs)
    groups = [{"params": [tw]}, {"params": [tb]}]
    if name in ("SGD", "Adam", "AdamW"):  # gpunet exempts decay=False parameters; torch needs a group
        groups[1]["weight_decay"] = 0.0
    topt = getattr(torch.optim, TORCH_NAMES[name])(groups, **tkw)

    for step in range(10):
        gw, gb = rng.standard_normal((3, 4)), rng.standard_normal(4)
        w.grad, tw.grad = gw.copy(), torch.tensor(gw.copy())
        if step == 4:  # a parameter without a gradient is skipped (its step count too)
            b.grad, tb.grad = None, None
        else:
            b.grad, tb.grad = gb.copy(), torch.tensor(gb.copy())
        opt.step()
        topt.step()
        numpy.testing.assert_allclose(w.data, tw.detach().numpy(), rtol=1e-12, atol=1e-14)
        numpy.testing.assert_allclose(b.data, tb.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert opt.steps == [10, 9]


# -- regularization only on decay=True parameters ------------------------------------------

@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.3, l1=0.2),
    lambda ps: optim.Adam(ps, lr=0.1, weight_decay=0.3, l1=0.2),
    lambda ps: optim.AdamW(ps, lr=0.1, weight_decay=0.3),
], ids=["SGD", "Adam", "AdamW"])
def test_decay_false_parameters_are_exempt(xp, make):
    rng = numpy.random.default_rng(1)
    w0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(3)]
    results = {}
    for decay in (True, False):
        p = Parameter(xp.asarray(w0.copy()), "p", decay)
        run_steps(make([p]), p, grads, xp)
        results[decay] = to_numpy(p.data)
    # the same optimizer with the regularization switched off
    ref = Parameter(xp.asarray(w0.copy()), "p", True)
    plain = make([ref])
    plain.weight_decay = 0.0
    if hasattr(plain, "l1"):
        plain.l1 = 0.0
    run_steps(plain, ref, grads, xp)
    numpy.testing.assert_array_equal(results[False], to_numpy(ref.data))
    assert numpy.abs(results[True] - results[False]).max() > 1e-3  # and decay=True is regularized


def test_regularization_leaves_grad_untouched(xp):
    p = make_param(xp, [1.0, -2.0])
    g = xp.asarray(numpy.array([0.5, 0.5]))
    p.grad = g
    optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1, l1=0.1).step()
    assert p.grad is g
    numpy.testing.assert_array_equal(to_numpy(g), [0.5, 0.5])


# -- dtypes -------------------------------------------------------------------------------

ALL_OPTIONS = [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, l1=0.01),
    lambda ps: optim.SGD(ps, lr=0.1),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.01, l1=0.01),
    lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    lambda ps: optim.RMSProp(ps, lr=0.01, momentum=0.5),
    lambda ps: optim.AdaGrad(ps, lr=0.1),
]
ALL_IDS = ["SGD-all", "SGD", "Adam", "AdamW", "RMSProp", "AdaGrad"]


def _model(xp, dtype, seed=0):
    rng = numpy.random.default_rng(seed)
    return [Parameter(xp.asarray(rng.standard_normal((4, 3)).astype(dtype)), "weight", True),
            Parameter(xp.asarray(rng.standard_normal(4).astype(dtype)), "bias", False)]


def _grads(xp, dtype, n, seed=1):
    rng = numpy.random.default_rng(seed)
    return [[xp.asarray(rng.standard_normal((4, 3)).astype(dtype)), xp.asarray(rng.standard_normal(4).astype(dtype))]
            for _ in range(n)]


def _train(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.copy()
        opt.step()


@pytest.mark.parametrize("make", ALL_OPTIONS, ids=ALL_IDS)
def test_float32_stays_float32(xp, make):
    params32, params64 = _model(xp, numpy.float32), _model(xp, numpy.float64)
    opt32, opt64 = make(params32), make(params64)
    _train(opt32, params32, _grads(xp, numpy.float32, 5))
    _train(opt64, params64, [[g.astype(numpy.float64) for g in gs] for gs in _grads(xp, numpy.float32, 5)])
    for p32, p64 in zip(params32, params64):
        assert p32.data.dtype == numpy.float32
        numpy.testing.assert_allclose(to_numpy(p32.data), to_numpy(p64.data), rtol=1e-5, atol=1e-6)
    for st in opt32.state:
        for v in st.values():
            assert v.dtype == numpy.float32


@pytest.mark.parametrize("make", ALL_OPTIONS, ids=ALL_IDS)
def test_a_float16_model_steps_on_a_device_as_on_the_cpu(gpu_xp, make):
    """Found by the dtype audit: a model cast with model.to(dtype=numpy.float16) (PyTorch's
    .half()) trained on the CPU, but on the sim every optimizer's step failed with a bare
    KeyError: dtype('float16') from the multi-tensor launch (kernels/optim.cu has float and
    double variants only). The device now steps float16 parameters one at a time with the
    same array operations as the CPU: the same numbers (bit for bit on the sim, which
    computes with NumPy), float16 state, the step counts on the host."""
    host, dev = _model(numpy, numpy.float16), _model(gpu_xp, numpy.float16)
    opt_h, opt_d = make(host), make(dev)
    _train(opt_h, host, _grads(numpy, numpy.float16, 5))
    _train(opt_d, dev, _grads(gpu_xp, numpy.float16, 5))
    assert opt_d.steps == [5, 5]
    for ph, pd in zip(host, dev):
        assert pd.data.dtype == numpy.float16 and numpy.isfinite(to_numpy(pd.data)).all()
        if type(pd.data).__module__.startswith("gpunet.sim"):
            numpy.testing.assert_array_equal(to_numpy(pd.data), ph.data)
        else:   # CuPy's float16 arithmetic: within a float16 rounding of each operation
            numpy.testing.assert_allclose(to_numpy(pd.data), ph.data, rtol=1e-2, atol=1e-3)
    for st in opt_d.state:
        assert all(v.dtype == numpy.float16 for v in st.values())


def test_sgd_float32_arithmetic_is_float32(xp):
    # A float64 lr (e.g. a NumPy scalar) must not turn the update into float64 arithmetic:
    # the result is bit-identical to the update computed with float32 scalars.
    rng = numpy.random.default_rng(3)
    w0 = rng.standard_normal(2000).astype(numpy.float32)
    g = rng.standard_normal(2000).astype(numpy.float32)
    p = Parameter(xp.asarray(w0.copy()), "w", True)
    opt = optim.SGD([p], lr=0.1)
    opt.lr = numpy.float64(0.1)
    p.grad = xp.asarray(g)
    opt.step()
    expected = w0 - numpy.float32(0.1) * g
    numpy.testing.assert_array_equal(to_numpy(p.data), expected)
    promoted = (w0 - 0.1 * g.astype(numpy.float64)).astype(numpy.float32)
    assert not numpy.array_equal(promoted, expected)  # the check can tell the two apart


# -- state_dict ---------------------------------------------------------------------------

@pytest.mark.parametrize("make", ALL_OPTIONS, ids=ALL_IDS)
def test_state_dict_round_trip_continues_bit_for_bit(xp, make):
    grads = _grads(xp, numpy.float32, 8)
    params_a = _model(xp, numpy.float32)
    opt_a = make(params_a)
    _train(opt_a, params_a, grads)

    params_b = _model(xp, numpy.float32)
    opt_b = make(params_b)
    _train(opt_b, params_b, grads[:4])
    saved = through_npz(opt_b.state_dict())
    for v in saved.values():
        assert isinstance(v, numpy.ndarray) and v.dtype != object

    params_c = [Parameter(p.data.copy(), p.name, p.decay) for p in params_b]
    opt_c = make(params_c)
    opt_c.lr = 123.0  # restored from the state
    opt_c.load_state_dict(saved)
    assert type(opt_c.lr) is float and opt_c.lr == opt_b.lr
    assert opt_c.steps == [4, 4]
    _train(opt_c, params_c, grads[4:])
    for pa, pc in zip(params_a, params_c):
        assert pc.data.dtype == numpy.float32
        assert type(pc.data) is type(pa.data)
        numpy.testing.assert_array_equal(to_numpy(pc.data), to_numpy(pa.data))
    for sa, sc in zip(opt_a.state, opt_c.state):
        assert sa.keys() == sc.keys()
        for k in sa:
            assert sc[k].dtype == numpy.float32
            numpy.testing.assert_array_equal(to_numpy(sa[k]), to_numpy(sc[k]))


def test_state_dict_contents():
    params = _model(numpy, numpy.float64)
    opt = optim.Adam(params, lr=0.01, betas=(0.8, 0.9))
    params[0].grad = numpy.ones((4, 3))
    opt.step()
    d = opt.state_dict()
    assert int(d["num_params"]) == 2
    assert float(d["lr"]) == 0.01
    numpy.testing.assert_array_equal(d["betas"], [0.8, 0.9])
    assert int(d["state.0.step"]) == 1 and int(d["state.1.step"]) == 0
    assert d["state.0.exp_avg"].shape == (4, 3)
    assert "state.1.exp_avg" not in d  # never stepped: no state
    d["state.0.exp_avg"][...] = 99.0  # a copy, not the live buffer
    assert float(opt.state[0]["exp_avg"][0, 0]) != 99.0


def test_load_state_dict_errors():
    params = _model(numpy, numpy.float64)
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = numpy.ones_like(p.data)
    opt.step()
    good = opt.state_dict()

    d = dict(good)
    del d["state.0.momentum_buffer"]
    with pytest.raises(ValueError, match=r"SGD.load_state_dict.*missing key 'state.0.momentum_buffer'"):
        optim.SGD(_model(numpy, numpy.float64), momentum=0.9).load_state_dict(d)

    d = dict(good)
    d["state.1.momentum_buffer"] = numpy.zeros(5)
    with pytest.raises(ValueError, match=r"'state.1.momentum_buffer': expected shape \(4,\), got \(5,\)"):
        optim.SGD(_model(numpy, numpy.float64), momentum=0.9).load_state_dict(d)

    d = dict(good)
    del d["lr"]
    with pytest.raises(ValueError, match="missing key 'lr'"):
        optim.SGD(_model(numpy, numpy.float64)).load_state_dict(d)

    with pytest.raises(ValueError, match="expected state for 1 parameters, got 2"):
        optim.SGD(_model(numpy, numpy.float64)[:1]).load_state_dict(good)

    target = optim.SGD(_model(numpy, numpy.float64), lr=0.5)
    d = dict(good)
    del d["state.1.step"]
    with pytest.raises(ValueError, match="missing key 'state.1.step'"):
        target.load_state_dict(d)
    assert target.lr == 0.5 and target.steps == [0, 0]  # nothing changed by a failed load


# -- skipping, zero_grad, parameter lists -----------------------------------------------------

@pytest.mark.parametrize("make", ALL_OPTIONS, ids=ALL_IDS)
def test_parameters_without_grad_are_skipped(xp, make):
    params = _model(xp, numpy.float64)
    before = to_numpy(params[1].data).copy()
    opt = make(params)
    params[0].grad = xp.ones((4, 3))
    opt.step()
    numpy.testing.assert_array_equal(to_numpy(params[1].data), before)
    assert opt.steps == [1, 0] and opt.state[1] == {}
    assert not numpy.array_equal(to_numpy(params[0].data), to_numpy(_model(xp, numpy.float64)[0].data))


def test_zero_grad_sets_none(xp):
    params = _model(xp, numpy.float32)
    for p in params:
        p.grad = xp.ones_like(p.data)
    optim.Adam(params).zero_grad()
    assert all(p.grad is None for p in params)


class TwoParams(Layer):
    def __init__(self):
        super().__init__()
        self.weight = Parameter(numpy.ones((2, 2)), "weight", True)
        self.bias = Parameter(numpy.zeros(2), "bias", False)


def test_accepts_a_layer():
    layer = TwoParams()
    opt = optim.SGD(layer, lr=0.5)
    assert opt.params == [layer.weight, layer.bias]
    layer.weight.grad = numpy.ones((2, 2))
    opt.step()
    numpy.testing.assert_array_equal(layer.weight.data, numpy.full((2, 2), 0.5))
    layer.weight.grad = numpy.full((2, 2), 3.0)
    assert optim.clip_grad_norm(layer, 1.0) == pytest.approx(6.0)


def test_bad_parameter_lists():
    with pytest.raises(TypeError, match=r"SGD: params\[0\] must be a Parameter"):
        optim.SGD([numpy.ones(3)])
    with pytest.raises(TypeError, match="SGD: expected a list of Parameters or a Layer, got ndarray"):
        optim.SGD(numpy.ones(3))
    with pytest.raises(ValueError, match="Adam: expected at least one parameter"):
        optim.Adam([])
    p = make_param(numpy, [1.0])
    with pytest.raises(ValueError, match="duplicates"):
        optim.SGD([p, p])


def test_grad_must_match_data():
    p = make_param(numpy, [1.0, 2.0], dtype=numpy.float32)
    opt = optim.SGD([p])
    p.grad = numpy.ones(2, dtype=numpy.float64)
    with pytest.raises(ValueError, match=r"SGD: params\[0\] \(w\) has data \(2,\) float32 but grad \(2,\) float64"):
        opt.step()
    p.grad = numpy.ones(3, dtype=numpy.float32)
    with pytest.raises(ValueError, match=r"grad \(3,\) float32"):
        opt.step()


# -- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda ps: optim.SGD(ps, lr=-0.1), r"SGD: expected lr >= 0, got -0.1"),
    (lambda ps: optim.SGD(ps, momentum=-0.5), r"SGD: expected momentum >= 0, got -0.5"),
    (lambda ps: optim.SGD(ps, nesterov=True), r"SGD: expected momentum > 0 with nesterov=True, got momentum=0.0"),
    (lambda ps: optim.SGD(ps, weight_decay=-1e-4), r"SGD: expected weight_decay >= 0, got -0.0001"),
    (lambda ps: optim.SGD(ps, l1=-1.0), r"SGD: expected l1 >= 0, got -1.0"),
    (lambda ps: optim.SGD(ps, lr=float("nan")), r"SGD: expected lr >= 0, got nan"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), r"Adam: expected betas\[0\] in \[0, 1\), got 1.0"),
    (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), r"Adam: expected betas\[1\] in \[0, 1\), got -0.1"),
    (lambda ps: optim.Adam(ps, eps=-1e-8), r"Adam: expected eps >= 0, got -1e-08"),
    (lambda ps: optim.Adam(ps, lr=-1.0), r"Adam: expected lr >= 0, got -1.0"),
    (lambda ps: optim.Adam(ps, weight_decay=-0.1), r"Adam: expected weight_decay >= 0, got -0.1"),
    (lambda ps: optim.Adam(ps, l1=-0.1), r"Adam: expected l1 >= 0, got -0.1"),
    (lambda ps: optim.AdamW(ps, weight_decay=-0.01), r"AdamW: expected weight_decay >= 0, got -0.01"),
    (lambda ps: optim.AdamW(ps, betas=(0.9, 1.5)), r"AdamW: expected betas\[1\] in \[0, 1\), got 1.5"),
    (lambda ps: optim.RMSProp(ps, alpha=1.0), r"RMSProp: expected alpha in \[0, 1\), got 1.0"),
    (lambda ps: optim.RMSProp(ps, momentum=-0.9), r"RMSProp: expected momentum >= 0, got -0.9"),
    (lambda ps: optim.RMSProp(ps, eps=-1.0), r"RMSProp: expected eps >= 0, got -1.0"),
    (lambda ps: optim.AdaGrad(ps, lr=-0.01), r"AdaGrad: expected lr >= 0, got -0.01"),
    (lambda ps: optim.AdaGrad(ps, eps=-1e-10), r"AdaGrad: expected eps >= 0, got -1e-10"),
])
def test_bad_hyper_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make([make_param(numpy, [1.0])])


def test_bad_hyper_parameter_types():
    with pytest.raises(TypeError, match="SGD: expected lr to be a real number, got '0.1'"):
        optim.SGD([make_param(numpy, [1.0])], lr="0.1")
    with pytest.raises(TypeError, match="Adam: expected betas to be a pair"):
        optim.Adam([make_param(numpy, [1.0])], betas=0.9)


def test_negative_lr_set_later_is_rejected_at_step():
    p = make_param(numpy, [1.0])
    p.grad = numpy.ones(1)
    opt = optim.SGD([p])
    opt.lr = -1.0
    with pytest.raises(ValueError, match="SGD: expected lr >= 0, got -1.0"):
        opt.step()


# -- clipping --------------------------------------------------------------------------------

def test_clip_grad_norm_by_hand(xp):
    a, b, c = make_param(xp, [3.0, 0.0]), make_param(xp, [[0.0, 0.0]]), make_param(xp, [1.0])
    a.grad = xp.asarray(numpy.array([3.0, 0.0]))
    b.grad = xp.asarray(numpy.array([[0.0, 4.0]]))  # c has no gradient
    total = optim.clip_grad_norm([a, b, c], max_norm=1.0)
    if xp is numpy:
        assert type(total) is float
    else:   # computed on the device, no host sync: a 0-d float64 device array
        assert type(total) is type(a.grad) and total.shape == () and total.dtype == numpy.float64
    assert float(total) == pytest.approx(5.0, rel=1e-15)
    scale = 1.0 / (5.0 + 1e-6)
    numpy.testing.assert_allclose(to_numpy(a.grad), [3.0 * scale, 0.0], rtol=1e-15)
    numpy.testing.assert_allclose(to_numpy(b.grad), [[0.0, 4.0 * scale]], rtol=1e-15)
    assert c.grad is None

    # under the limit: untouched
    a.grad = xp.asarray(numpy.array([0.3, 0.4]))
    assert float(optim.clip_grad_norm([a], max_norm=1.0)) == pytest.approx(0.5)
    numpy.testing.assert_array_equal(to_numpy(a.grad), [0.3, 0.4])
    assert optim.clip_grad_norm([c], 1.0) == 0.0


def test_clip_grad_norm_keeps_float32(xp):
    p = make_param(xp, numpy.zeros(10), dtype=numpy.float32)
    p.grad = xp.asarray(numpy.arange(10, dtype=numpy.float32))
    optim.clip_grad_norm([p], 2.0)
    assert p.grad.dtype == numpy.float32
    assert float(xp.linalg.norm(p.grad)) == pytest.approx(2.0, rel=1e-5)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(5)
    shapes = [(5, 4), (4,), (3, 2, 2)]
    grads = [rng.standard_normal(s) * 3 for s in shapes]
    params = [Parameter(numpy.zeros(s), "p", True) for s in shapes]
    tparams = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    for p, tp, g in zip(params, tparams, grads):
        p.grad, tp.grad = g.copy(), torch.tensor(g.copy())
    total = optim.clip_grad_norm(params, 2.5)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, 2.5)
    assert total == pytest.approx(float(ttotal), rel=1e-13)
    for p, tp in zip(params, tparams):
        numpy.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-13)


def test_clip_grad_norm_of_float16_gradients(xp):
    """Found by the dtype audit: float16 gradients (a model cast to float16) whose sum of
    squares passes 65504 came back from clip_grad_norm with a norm of inf on the CPU and
    were left unclipped (NumPy took the norm in float16; torch.nn.utils.clip_grad_norm_
    gives 346.5 and clips), and on the sim clip_grad_norm and clip_grad_value failed
    with KeyError: dtype('float16') (no float16 multi-tensor kernel). The norm is now
    taken in float32 (float64 on a device), the scaling done in float32 and rounded once."""
    p = make_param(xp, numpy.zeros(300), dtype=numpy.float16)
    q = make_param(xp, numpy.zeros(3), dtype=numpy.float16)
    p.grad = xp.asarray(numpy.full(300, 20.0, numpy.float16))
    q.grad = xp.asarray(numpy.array([1.0, 2.0, 3.0], numpy.float16))
    total = optim.clip_grad_norm([p, q], 1.0)
    expected = math.sqrt(300 * 400.0 + 14.0)
    assert float(total) == pytest.approx(expected, rel=1e-6)
    c = numpy.float32(1.0 / (expected + 1e-6))
    for r, g in ((p, numpy.full(300, 20.0)), (q, numpy.array([1.0, 2.0, 3.0]))):
        assert r.grad.dtype == numpy.float16
        numpy.testing.assert_array_equal(to_numpy(r.grad), (g.astype(numpy.float32) * c).astype(numpy.float16))
    before = to_numpy(q.grad)
    optim.clip_grad_value([p, q], 0.005)
    numpy.testing.assert_array_equal(to_numpy(q.grad), [before[0], numpy.float16(0.005), numpy.float16(0.005)])
    assert q.grad.dtype == numpy.float16


def test_clip_grad_value(xp):
    p, q = make_param(xp, [0.0, 0.0, 0.0]), make_param(xp, [0.0])
    p.grad = xp.asarray(numpy.array([-3.0, 0.2, 7.0]))
    optim.clip_grad_value([p, q], 0.5)
    numpy.testing.assert_array_equal(to_numpy(p.grad), [-0.5, 0.2, 0.5])
    assert q.grad is None


def test_clip_validation():
    with pytest.raises(ValueError, match="clip_grad_norm: expected max_norm >= 0, got -1.0"):
        optim.clip_grad_norm([make_param(numpy, [1.0])], -1.0)
    with pytest.raises(ValueError, match="clip_grad_value: expected clip >= 0, got -0.5"):
        optim.clip_grad_value([make_param(numpy, [1.0])], -0.5)


# -- schedules ---------------------------------------------------------------------------------

SCHEDULES = [
    ("StepLR", lambda o: optim.StepLR(o, step_size=3, gamma=0.5), "StepLR", dict(step_size=3, gamma=0.5)),
    ("StepLR-default", lambda o: optim.StepLR(o, 4), "StepLR", dict(step_size=4)),
    ("ExponentialLR", lambda o: optim.ExponentialLR(o, gamma=0.9), "ExponentialLR", dict(gamma=0.9)),
    ("Cosine", lambda o: optim.CosineAnnealingLR(o, T_max=8, eta_min=0.01), "CosineAnnealingLR",
     dict(T_max=8, eta_min=0.01)),
    ("Cosine-zero", lambda o: optim.CosineAnnealingLR(o, T_max=5), "CosineAnnealingLR", dict(T_max=5)),
    ("Warmup", lambda o: optim.LinearWarmup(o, warmup_steps=6, start_factor=0.1), "LinearLR",
     dict(start_factor=0.1, end_factor=1.0, total_iters=6)),
    ("Warmup-default", lambda o: optim.LinearWarmup(o, 4), "LinearLR", dict(total_iters=4)),
]


@pytest.mark.parametrize("make,torch_name,torch_kwargs", [s[1:] for s in SCHEDULES], ids=[s[0] for s in SCHEDULES])
def test_schedule_matches_torch(make, torch_name, torch_kwargs):
    torch = pytest.importorskip("torch")
    opt = optim.SGD([make_param(numpy, [1.0])], lr=0.2)
    sched = make(opt)
    tp = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.2)
    tsched = getattr(torch.optim.lr_scheduler, torch_name)(topt, **torch_kwargs)
    lrs = [opt.lr]
    assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
    for _ in range(20):
        topt.step()
        tsched.step()
        assert sched.step() == opt.lr
        assert type(opt.lr) is float
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        lrs.append(opt.lr)
    assert len(set(lrs)) > 1  # the schedule does change the rate


def test_schedule_closed_forms_by_hand():
    opt = optim.SGD([make_param(numpy, [1.0])], lr=1.0)
    s = optim.StepLR(opt, step_size=2, gamma=0.5)
    assert [s.step() for _ in range(5)] == [1.0, 0.5, 0.5, 0.25, 0.25]
    opt.lr = 1.0
    s = optim.LinearWarmup(opt, warmup_steps=4, start_factor=0.2)
    assert opt.lr == pytest.approx(0.2)
    assert [s.step() for _ in range(5)] == pytest.approx([0.4, 0.6, 0.8, 1.0, 1.0])
    opt.lr = 1.0
    s = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.0)
    assert [s.step() for _ in range(4)] == pytest.approx([(1 + math.cos(math.pi / 4)) / 2, 0.5,
                                                           (1 - math.cos(math.pi / 4)) / 2, 0.0], abs=1e-15)


@pytest.mark.parametrize("make", [s[1] for s in SCHEDULES], ids=[s[0] for s in SCHEDULES])
def test_schedule_state_round_trip(make):
    opt_a = optim.SGD([make_param(numpy, [1.0])], lr=0.2)
    sched_a = make(opt_a)
    for _ in range(12):
        sched_a.step()

    opt_b = optim.SGD([make_param(numpy, [1.0])], lr=0.2)
    sched_b = make(opt_b)
    for _ in range(5):
        sched_b.step()
    saved = through_npz(sched_b.state_dict())

    opt_c = optim.SGD([make_param(numpy, [1.0])], lr=0.2)
    sched_c = make(opt_c)
    sched_c.load_state_dict(saved)
    assert opt_c.lr == opt_b.lr and type(opt_c.lr) is float
    for _ in range(7):
        sched_c.step()
    assert opt_c.lr == opt_a.lr
    assert sched_c.last_epoch == 12

    del saved["last_epoch"]
    with pytest.raises(ValueError, match="missing key 'last_epoch'"):
        sched_c.load_state_dict(saved)


def test_schedule_validation():
    opt = optim.SGD([make_param(numpy, [1.0])])
    with pytest.raises(ValueError, match="StepLR: expected step_size to be a positive int, got 0"):
        optim.StepLR(opt, 0)
    with pytest.raises(TypeError, match="StepLR: expected step_size to be a positive int, got 2.5"):
        optim.StepLR(opt, 2.5)
    with pytest.raises(ValueError, match="ExponentialLR: expected gamma > 0, got -0.5"):
        optim.ExponentialLR(opt, -0.5)
    with pytest.raises(ValueError, match="CosineAnnealingLR: expected T_max to be a positive int, got 0"):
        optim.CosineAnnealingLR(opt, 0)
    with pytest.raises(ValueError, match="CosineAnnealingLR: expected eta_min >= 0, got -1.0"):
        optim.CosineAnnealingLR(opt, 10, eta_min=-1.0)
    with pytest.raises(ValueError, match=r"LinearWarmup: expected start_factor in \(0, 1\], got 0.0"):
        optim.LinearWarmup(opt, 5, start_factor=0.0)
    with pytest.raises(TypeError, match="StepLR: expected an optimizer"):
        optim.StepLR(object(), 2)
    assert opt.lr == 0.01  # failed constructions left the rate alone


def test_schedule_drives_training_lr():
    p = make_param(numpy, [0.0])
    opt = optim.SGD([p], lr=1.0)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        p.grad = numpy.ones(1)
        opt.step()
        sched.step()
    numpy.testing.assert_allclose(p.data, [-(1.0 + 0.5 + 0.25)])


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW, optim.RMSProp, optim.AdaGrad])
def test_step_names_a_grad_that_is_not_an_array_and_integer_data(cls):
    """Found by fuzzing: a list grad raised AttributeError ('list' object has no attribute
    'shape'); int64 data with an int64 grad failed inside NumPy's update (UFuncTypeError)."""
    from gpunet.layers import Dense
    d = Dense(4, 3)
    o = cls(d)
    d.weight.grad = numpy.ones(d.weight.shape).tolist()
    with pytest.raises(TypeError, match=rf"{cls.__name__}: params\[0\] \(weight\) has a grad that is not an array: list"):
        o.step()
    d.weight.data = d.weight.data.astype(numpy.int64)
    d.weight.grad = numpy.ones(d.weight.shape, numpy.int64)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: params\[0\] \(weight\) has data of dtype int64; expected floating point"):
        o.step()


def test_schedule_load_state_dict_names_a_non_dict():
    """Found by fuzzing: None raised "argument of type 'NoneType' is not iterable"."""
    from gpunet.layers import Dense
    s = optim.StepLR(optim.SGD(Dense(2, 2)), 2)
    with pytest.raises(TypeError, match="StepLR.load_state_dict: expected a dict, got NoneType"):
        s.load_state_dict(None)


def test_step_names_an_lr_reassigned_to_a_bad_value():
    """``opt.lr`` is a plain attribute (schedules set it): a string used to fail in
    float()'s words at step(), naming nothing."""
    p = Parameter(numpy.ones(3, numpy.float32), "w")
    opt = optim.SGD([p], lr=0.1)
    p.grad = numpy.ones(3, numpy.float32)
    opt.lr = "a"
    with pytest.raises(TypeError, match="SGD: expected lr to be a real number, got 'a'"):
        opt.step()
    opt.lr = -1.0
    with pytest.raises(ValueError, match="SGD: expected lr >= 0, got -1.0"):
        opt.step()
    numpy.testing.assert_array_equal(p.data, numpy.ones(3, numpy.float32))


@pytest.mark.parametrize("ours, theirs, names", [
    ("Adam", "Adam", ("lr", "betas", "eps", "weight_decay")),
    ("AdamW", "AdamW", ("lr", "betas", "eps", "weight_decay")),
    ("RMSProp", "RMSprop", ("lr", "alpha", "eps", "momentum")),
    ("AdaGrad", "Adagrad", ("lr", "eps")),
    ("SGD", "SGD", ("momentum", "nesterov", "weight_decay")),
])
def test_defaults_are_pytorchs(ours, theirs, names):
    """The optimizers say "as torch.optim.X": their defaults are PyTorch's (SGD's lr aside:
    gpunet's is 0.01, PyTorch's 1e-3)."""
    import inspect
    torch = pytest.importorskip("torch")
    mine = inspect.signature(getattr(optim, ours)).parameters
    ref = inspect.signature(getattr(torch.optim, theirs)).parameters
    for name in names:
        assert mine[name].default == ref[name].default, (ours, name)


def test_another_optimizers_state_is_named():
    """Found by the first-hour audit: a `gpunet train` checkpoint (Adam) loaded with an SGD
    said only "missing key 'momentum'; missing key 'nesterov'", and loaded into an AdamW
    it was accepted, Adam's l1 dropped. Both name the hyper-parameters the state holds."""
    params = _model(numpy, numpy.float64)
    adam = optim.Adam(params, lr=0.1, l1=1e-3)
    for p in params:
        p.grad = numpy.ones_like(p.data)
    adam.step()
    state = adam.state_dict()
    for other in (optim.SGD, optim.AdamW):
        with pytest.raises(ValueError, match=rf"{other.__name__}\.load_state_dict: .*the state holds the "
                                             r"hyper-parameters betas, eps, l1, lr, weight_decay, expected .*: "
                                             r"another kind of optimizer's state\?"):
            other(_model(numpy, numpy.float64)).load_state_dict(state)
    optim.Adam(_model(numpy, numpy.float64)).load_state_dict(state)       # its own kind loads


def test_pytorch_parameter_habits_say_what_to_pass():
    """Found by the second first-hour audit: optim.SGD(model.parameters) said 'got method',
    model.named_parameters() 'params[0] must be a Parameter ..., got tuple', PyTorch's
    parameter groups 'got dict', and a generator used up by a first optimizer 'got an empty
    list' for the second, with no way out named."""
    from gpunet import Dense, Sequential
    m = Sequential(Dense(4, 3))
    with pytest.raises(TypeError, match=r"^SGD: expected a list of Parameters or a Layer, got the method "
                                        r"'parameters'; call it: model\.parameters\(\)$"):
        optim.SGD(m.parameters)
    with pytest.raises(TypeError, match=r"^Adam: params\[0\] must be a Parameter .* got tuple; named_parameters\(\) "
                                        r"yields \(name, parameter\) pairs: pass model\.parameters\(\)$"):
        optim.Adam(m.named_parameters())
    with pytest.raises(TypeError, match=r"got dict; parameter groups \(dicts\) are PyTorch's: gpunet takes one "
                                        r"list of parameters, so give each group its own optimizer$"):
        optim.SGD([{"params": m.parameters(), "lr": 0.1}])
    gen = (p for p in m.parameters())
    assert len(optim.SGD(gen).params) == 2
    with pytest.raises(ValueError, match=r"^Adam: expected at least one parameter, got an empty iterator \(used up "
                                         r"already\? model\.parameters\(\) returns a new list at each call\)$"):
        optim.Adam(gen)
    with pytest.raises(ValueError, match=r"^SGD: expected at least one parameter, got an empty list$"):
        optim.SGD([])
    assert len(optim.SGD(m).params) == len(optim.SGD(iter(m.parameters())).params) == 2


@pytest.mark.parametrize("make, key, lacks", [
    (lambda ps: optim.RMSProp(ps, lr=0.01, weight_decay=1e-4), "weight_decay", "weight decay (L2)"),
    (lambda ps: optim.AdaGrad(ps, weight_decay=1e-4), "weight_decay", "weight decay (L2)"),
    (lambda ps: optim.RMSProp(ps, l1=1e-4), "l1", "L1 penalty"),
    (lambda ps: optim.AdamW(ps, l1=1e-4), "l1", "L1 penalty")])
def test_l1_l2_on_an_optimizer_without_them_names_those_with_them(make, key, lacks):
    """The course's L1/L2 on RMSProp/AdaGrad (PyTorch's take weight_decay=) got Python's bare
    'unexpected keyword argument': the error says which optimizers have them."""
    ps = Dense(3, 2).parameters()
    with pytest.raises(TypeError, match=rf"unexpected keyword argument '{key}': \w+ has no "
                                        rf"{re.escape(lacks)}; SGD and Adam take weight_decay= \(L2\) "
                                        r"and l1= \(L1\), AdamW a decoupled weight_decay=$"):
        make(ps)


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, momentum=0.9), optim.Adam, optim.AdamW, optim.RMSProp, optim.AdaGrad])
def test_step_names_a_grad_on_another_device_than_its_parameter(gpu_xp, gpu_device, make):
    """A NumPy parameter given a device gradient failed deep in the sim's array module
    ("output must be a cupy.ndarray, got ndarray", "Unsupported type"); a device parameter
    given a NumPy gradient was named, but only by the fused path. Both name the optimizer,
    the parameter and both devices now, before anything changes."""
    for data_xp, grad_xp in ((numpy, gpu_xp), (gpu_xp, numpy)):
        p = make_param(data_xp, [1.0, 2.0], dtype=numpy.float32)
        opt = make([p])
        name = type(opt).__name__
        p.grad = grad_xp.asarray(numpy.ones(2, numpy.float32))
        dp, dg = ("cpu", gpu_device) if data_xp is numpy else (gpu_device, "cpu")
        with pytest.raises(TypeError, match=rf"{name}: params\[0\] \(w\) has data on {dp}\S* but "
                                            rf"grad on {dg}\S*; a gradient must be on its parameter's device"):
            opt.step()
        numpy.testing.assert_array_equal(to_numpy(p.data), [1.0, 2.0])
        assert opt.steps == [0]


@pytest.mark.parametrize("clip", [optim.clip_grad_norm, optim.clip_grad_value])
def test_clipping_gradients_on_two_devices_names_the_function_and_parameters(gpu_xp, gpu_device, clip):
    """Gradients on two devices: clip_grad_norm raised 'arrays on different devices in one
    call' from gpunet.backend, naming no function or parameter; clip_grad_value raised that
    when the first gradient was on the device, and clipped each gradient where it was,
    silently, when the first was a NumPy one. Both raise naming the function and two
    parameters with their devices now, in either order, before any gradient changes."""
    name = clip.__name__
    for first in (numpy, gpu_xp):
        second = gpu_xp if first is numpy else numpy
        a, b = make_param(first, [3.0, 4.0], "a"), make_param(second, [6.0, 8.0], "b")
        a.grad, b.grad = first.asarray(numpy.array([3.0, 4.0])), second.asarray(numpy.array([6.0, 8.0]))
        da, db = ("cpu", gpu_device) if first is numpy else (gpu_device, "cpu")
        with pytest.raises(TypeError, match=rf"^{name}: the gradients are on more than one device: "
                                            rf"params\[0\] \(a\) has its grad on {da}\S*, params\[1\] \(b\) "
                                            rf"on {db}\S*; a model's gradients are on its device"):
            clip([a, b], 1.0)
        numpy.testing.assert_array_equal(to_numpy(a.grad), [3.0, 4.0])
        numpy.testing.assert_array_equal(to_numpy(b.grad), [6.0, 8.0])
